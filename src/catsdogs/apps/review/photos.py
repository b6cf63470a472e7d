"""`catsdogs review`: a local web page to keep, relabel or exclude the photos of a run that look
wrongly labelled, each with its Grad-CAM (the app is `catsdogs.apps.review.app`).

What it lists comes from the run directory's review.csv (every photo of every split, with
out-of-sample predictions and cleanlab's label_looks_wrong): the training and validation photos
cleanlab flags, and the most confident mistakes of all splits. Decisions go to a corrections file
(`catsdogs.data.corrections`) that `catsdogs train --labels` reads back. This module imports neither
TensorFlow nor the serving libraries, so that `extras.require` can say what is missing.
"""

import dataclasses
import json
import os

from catsdogs.config.choices import REVIEW_MISTAKES
from catsdogs.errors import ConfigError, DataError
from catsdogs.utils.csvfiles import read_csv
from catsdogs.utils.files import is_inside

REVIEW_FILE = "review.csv"  # every photo of every split, out-of-sample
PREDICTIONS_FILE = "predictions.csv"  # older runs: the test photos only
REQUIRED_COLUMNS = ("path", "true", "predicted", "probability", "loss", "label_looks_wrong")


@dataclasses.dataclass(frozen=True)
class Photo:
    """One photo to review, as the run predicted it (out-of-fold for training photos)."""

    path: str  # relative to the data folder, as in splits.csv
    split: str  # train, val or test
    given_label: str
    predicted: str
    probability: float  # of the predicted class
    loss: float  # cross-entropy of the given label
    label_looks_wrong: bool  # cleanlab's flag
    confident_mistake: bool  # among the most confident mistakes listed


@dataclasses.dataclass
class RunPhotos:
    """The photos of a run to review, and where they came from."""

    data_dir: str
    photos: list  # of `Photo`, highest loss first
    source: str  # the file they were read from: review.csv, or predictions.csv for older runs
    note: str = ""  # what the page should say about the source, if anything


def read_data_dir(run_dir):
    """The data folder a run was trained on (config.json), checked to still be there."""
    config_file = os.path.join(run_dir, "config.json")
    try:
        with open(config_file) as f:
            data_dir = json.load(f)["data_dir"]
    except FileNotFoundError:
        raise DataError(f"{config_file} not found: {run_dir} is not a catsdogs run directory") from None
    except (ValueError, KeyError) as error:
        raise DataError(f"{config_file}: unreadable, or without data_dir ({error})") from None
    if not os.path.isdir(data_dir):
        raise DataError(f"{config_file}: the run's data folder {data_dir} is gone, so its photos cannot be shown")
    return data_dir


def select_photos(rows, mistakes=REVIEW_MISTAKES):
    """The photos worth a look: every training and validation photo whose label looks wrong, and the
    `mistakes` most confident mistakes (highest loss, predicted != given) of all splits; each once,
    highest loss first.

    Args:
        rows: dicts with the columns of review.csv (strings, as read).
        mistakes: how many confident mistakes to list.
    """
    def loss(row):
        return float(row["loss"])

    flagged = {row["path"] for row in rows if row["split"] in ("train", "val") and row["label_looks_wrong"] == "True"}
    wrong = sorted((row for row in rows if row["predicted"] != row["true"]), key=loss, reverse=True)
    confident = {row["path"] for row in wrong[:mistakes]}
    listed = sorted((row for row in rows if row["path"] in flagged | confident), key=loss, reverse=True)
    return [Photo(row["path"], row["split"], row["true"], row["predicted"], float(row["probability"]), loss(row),
                  row["path"] in flagged, row["path"] in confident) for row in listed]


def read_run_photos(run_dir, mistakes=REVIEW_MISTAKES) -> RunPhotos:
    """The photos of a run to review, from its review.csv, else (older runs) its predictions.csv.

    Args:
        run_dir: a run directory (`catsdogs train`).
        mistakes: how many confident mistakes to list.

    Raises:
        ConfigError: a negative `mistakes`.
        DataError: no config.json, a data folder that is gone, no table of predictions, one
            without the columns needed, or one naming a photo outside the data folder.
    """
    if mistakes < 0:
        raise ConfigError(f"mistakes {mistakes}: expected 0 (the flagged photos only) or more")
    data_dir = read_data_dir(run_dir)
    review_file, predictions_file = os.path.join(run_dir, REVIEW_FILE), os.path.join(run_dir, PREDICTIONS_FILE)
    if os.path.isfile(review_file):
        source, note, required = review_file, "", (*REQUIRED_COLUMNS, "split")
    elif os.path.isfile(predictions_file):
        source, required = predictions_file, REQUIRED_COLUMNS
        note = (f"This run has no {REVIEW_FILE} (it was trained before catsdogs wrote one), so only its test photos "
                f"are listed, from {PREDICTIONS_FILE}: train again to review the training and validation photos.")
    else:
        raise DataError(f"{run_dir} has neither {REVIEW_FILE} nor {PREDICTIONS_FILE}: not a finished run directory")
    rows = read_csv(source)
    missing = [column for column in required if rows and column not in rows[0]]
    if missing:
        raise DataError(f"{source}: no column {', '.join(missing)}; it has {', '.join(rows[0])}")
    outside = [row["path"] for row in rows if not is_inside(data_dir, os.path.join(data_dir, row["path"]))]
    if outside:
        raise DataError(f"{source}: the photo {outside[0]!r} lies outside the run's data folder {data_dir}"
                        + (f" (and {len(outside) - 1} more)" if len(outside) > 1 else "")
                        + ": review shows only the photos inside it, as a run directory from elsewhere could "
                          "name any file")
    if source == predictions_file:
        rows = [{**row, "split": "test"} for row in rows]  # predictions.csv holds the test photos
    return RunPhotos(data_dir, select_photos(rows, mistakes), os.path.basename(source), note)
