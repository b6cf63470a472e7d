"""The run directory: every file a run holds, named once here; written complete or not at all; read back here.

`catsdogs train` writes one self-contained folder per run (`runs/<name>/`). Everything is staged in
a hidden `.partial-*` folder beside it and renamed into place at the end (`staged_run`), so that a
run that fails or is killed never leaves a folder that looks finished; each file in it is written
atomically as well (`RunWriter`). An evaluation (`catsdogs evaluate --output DIR`) writes the
evaluation's part of the same files, by the same names, into its own folder.

Readers (`RunDirectory`) are what `catsdogs runs`, `predict`, `serve`, `review` and `export` use. A
run directory from someone else may be hostile: it is read with JSON and CSV readers only, whose
errors name the file, and the photos its tables name are read only inside the run's data folder
(`RunDirectory.photo_rows`). Its model is a program, loaded by `models.model.load` in Keras' safe mode.
"""

import contextlib
import csv
import datetime
import json
import os
import shutil

from catsdogs.errors import DataError
from catsdogs.utils.csvfiles import read_csv, write_csv
from catsdogs.utils.files import atomic_path, is_inside, timestamp, write_text

CONFIG = "config.json"  # every setting used; only training writes it (its time is the run's date)
SPLITS = "splits.csv"  # every photo (relative to the data folder config.json names), its split and label
INTEGRITY = "integrity.json"  # what the scan skipped and why, conversions, duplicates, leaks
MODEL = "model.keras"  # the end-to-end Keras model
BACKBONE = "backbone.onnx"  # the backbone as it ran, where it ran in ONNX Runtime: what predict and serve run
HISTORY = "history.csv"  # loss and accuracy per epoch (dense head and fine-tuning)
METRICS = "metrics.json"  # test metrics, validation, calibration, open set, each training stage
PREDICTIONS = "predictions.csv"  # every test photo, as predicted
REVIEW = "review.csv"  # every photo of every split, out-of-sample, as `catsdogs review` lists them
SIMILAR = "similar.csv"  # the training photos the model's kNN bank holds, in its row order: path, label
SIMILAR_COLUMNS = ("path", "label")
REPORT = "report.html"  # all of it on one page
CORRECTIONS = "corrections.csv"  # decisions made in `catsdogs review` (read by train --labels)
EXPORTS = "exports"  # a folder of export folders (`store.export_dir`)
EVALUATION_PREFIX = "eval-"  # a folder per `catsdogs evaluate` written beside the model (`evaluation_folder`)
EVALUATIONS = f"{EVALUATION_PREFIX}<time>"

SPLITS_COLUMNS = ("path", "split", "label")
STAGING_PREFIX = ".partial-"  # of a run directory still being written (or left by a run that died)

GRID = "grid.png"
CURVES = "curves.png"
CONFUSION = "confusion.png"
PRECISION_RECALL = "precision_recall.png"  # a multi-label run's, in place of the confusion matrix
ERRORS = "errors.png"
GRADCAM = "gradcam.png"
SIMILAR_FIGURE = "similar.png"
RELIABILITY = "reliability.png"
OPEN_SET = "open_set.png"
REJECTIONS = "rejections.png"
LEARNING_CURVE = "learning_curve.png"
NEAR_DUPLICATES = "near_duplicates.png"
# The figures, in the order the report shows them, with their headings there.
FIGURES = {
    GRID: "The study's grid: 25 random test images",
    CURVES: "Learning curves",
    CONFUSION: "Confusion matrix",
    PRECISION_RECALL: "Precision and recall of each label",
    ERRORS: "Most confident mistakes",
    GRADCAM: "Grad-CAM of the most confident mistakes",
    SIMILAR_FIGURE: "The training photos most similar to the most confident mistakes",
    RELIABILITY: "Reliability of the probabilities (test)",
    OPEN_SET: "Open set: in-distribution scores of known and unknown photos",
    REJECTIONS: "Open set: photos rejected as none of the classes",
    LEARNING_CURVE: "Learning curve: test scores against training photos per class",
    NEAR_DUPLICATES: "Near-duplicates across splits",
}

# Every entry a run directory may hold: the docs' table of a run's files lists the same (a test checks).
FILES = (CONFIG, SPLITS, INTEGRITY, MODEL, BACKBONE, HISTORY, METRICS, PREDICTIONS, REVIEW, SIMILAR, *FIGURES, REPORT,
         CORRECTIONS, EXPORTS, EVALUATIONS)


def evaluation_folder(run_or_model):
    """Where `catsdogs evaluate` writes by default: a new eval-<time> folder beside the model."""
    folder = run_or_model if os.path.isdir(run_or_model) else os.path.dirname(os.path.abspath(run_or_model))
    return os.path.join(folder, f"{EVALUATION_PREFIX}{timestamp()}")


def new_run_path(runs_dir, name):
    """A free path runs/<name>, adding -2, -3... rather than overwriting an earlier run."""
    path, suffix = os.path.join(runs_dir, name), 1
    while os.path.exists(path):
        suffix += 1
        path = os.path.join(runs_dir, f"{name}-{suffix}")
    return path


class RunWriter:
    """Writes the files of a run (or evaluation) folder by the names above, each atomically.

    Attributes:
        folder: where the files are written.
        final: where the folder will be once complete: `folder` itself, unless staged (`staged_run`).
    """

    def __init__(self, folder, final=None):
        """Args:
            folder: created if missing.
            final: see the class.
        """
        self.folder = os.fspath(folder)
        self.final = final or self.folder
        os.makedirs(self.folder, exist_ok=True)

    def path(self, name):
        """Where `name` goes: for writers that take a path and write it atomically themselves (the model)."""
        return os.path.join(self.folder, name)

    def atomic(self, name):
        """A context yielding a temporary path (ending as `name` does), moved over `name` only if the block
        succeeds: for writers that take a path (a figure)."""
        return atomic_path(self.path(name))

    def write_json(self, name, value):
        write_text(self.path(name), json.dumps(value, indent=2))

    def write_csv(self, name, rows, fieldnames=None):
        """Rows of dicts as a CSV file (`csvfiles.write_csv`: safe to open in a spreadsheet)."""
        write_csv(rows, self.path(name), fieldnames)

    def copy(self, source, name):
        with self.atomic(name) as partial:
            shutil.copyfile(source, partial)


@contextlib.contextmanager
def staged_run(runs_dir, name):
    """A run directory written in a hidden staging folder and renamed into place when the block succeeds.

    Args:
        runs_dir: the folder of run directories (created if missing).
        name: the run's name; -2, -3... is added where a run of that name exists.

    Yields:
        a `RunWriter` of the staging folder; its `final` is where the run will be.

    Raises:
        whatever the block raises, after removing the staging folder: nothing is left that looks
        like a run, finished or not.
    """
    os.makedirs(runs_dir, exist_ok=True)
    final = new_run_path(runs_dir, name)
    staging = os.path.join(runs_dir, f"{STAGING_PREFIX}{timestamp()}-{os.getpid()}")
    os.makedirs(staging)
    try:
        yield RunWriter(staging, final)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def read_json(path) -> dict:
    """A JSON object from a file; DataError naming the file if it is missing, unreadable or not an object."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: not found") from None
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot be read as JSON ({error})") from None
    if not isinstance(value, dict):
        raise DataError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def is_run_directory(path):
    """Whether `path` holds a run's config.json (`catsdogs train` writes it first)."""
    return os.path.isfile(os.path.join(path, CONFIG))


class RunDirectory:
    """A run directory, read back: its settings, metrics, tables and files by name.

    Nothing is read until asked for; each reader raises DataError naming the file it could not read.
    """

    def __init__(self, path):
        self.path = os.fspath(path)

    @property
    def name(self):
        return os.path.basename(os.path.normpath(self.path))

    def file(self, name):
        return os.path.join(self.path, name)

    def has(self, name):
        return os.path.exists(self.file(name))

    def require(self, *names):
        """Raises DataError unless the run directory holds each of `names`."""
        for name in names:
            if not self.has(name):
                raise DataError(f"{self.path}: not a run directory: no {name}")

    def config(self) -> dict:
        return read_json(self.file(CONFIG))

    def metrics(self) -> dict:
        return read_json(self.file(METRICS))

    def written(self) -> datetime.datetime:
        """When the run was written: config.json's modification time (only training writes it)."""
        return datetime.datetime.fromtimestamp(os.path.getmtime(self.file(CONFIG)))

    def data_dir(self):
        """The data folder the run was trained on (config.json's data_dir), checked to be there."""
        config_file, data_dir = self.file(CONFIG), self.config().get("data_dir")
        if not isinstance(data_dir, str) or not data_dir:
            raise DataError(f"{config_file}: no data_dir, the data folder the run was trained on")
        if not os.path.isdir(data_dir):
            raise DataError(f"{config_file}: the run's data folder {data_dir} is not found from here (moved, "
                            f"deleted, or named relative to the folder the run was trained from), so its photos "
                            f"cannot be read")
        return data_dir

    def rows(self, name) -> list:
        """The rows of one of the run's CSV files, as dicts of the text written."""
        file = self.file(name)
        try:
            return read_csv(file)
        except FileNotFoundError:
            raise DataError(f"{file}: not found") from None
        except (OSError, csv.Error) as error:
            raise DataError(f"{file}: cannot be read as CSV ({error})") from None

    def photo_folders(self) -> list:
        """The folders the run's photos lie in: its data folder, and those that photos added from discovered
        clusters came from (config.json's discovered_sources)."""
        config_file, sources = self.file(CONFIG), self.config().get("discovered_sources", [])
        if not (isinstance(sources, list) and all(isinstance(s, str) and os.path.isabs(s) for s in sources)):
            raise DataError(f"{config_file}: discovered_sources is not a list of absolute folders")
        return [self.data_dir(), *sources]

    def photo_rows(self, name, columns=("path",)) -> list:
        """The rows of a table of the run's photos (splits.csv, review.csv, predictions.csv), each photo's
        path checked to lie inside the run's data folder, or a folder that discovered photos came from
        (`photo_folders`), by name: `..` and absolute paths that lead out are refused.

        Args:
            name: the table.
            columns: those it must have ("path" among them).

        Returns:
            the rows as dicts of text, paths relative to `data_dir()` as written.

        Raises:
            DataError: naming the table: missing, unreadable, without one of `columns`, or naming a photo
                outside the data folder (a run directory from elsewhere could name any file); or
                `data_dir`'s errors.
        """
        file, folders, rows = self.file(name), self.photo_folders(), self.rows(name)
        data_dir = folders[0]
        missing = [column for column in columns if rows and column not in rows[0]]
        if missing:
            raise DataError(f"{file}: no column {', '.join(missing)}; it has {', '.join(rows[0])}")
        outside = [row["path"] for row in rows
                   if not any(is_inside(folder, os.path.join(data_dir, row["path"])) for folder in folders)]
        if outside:
            raise DataError(f"{file}: the photo {outside[0]!r} lies outside the run's data folder {data_dir}"
                            + (f" (and {len(outside) - 1} more)" if len(outside) > 1 else "")
                            + ": only the photos inside it are read, as a run directory from elsewhere could "
                              "name any file")
        return rows
