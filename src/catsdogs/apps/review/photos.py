"""`catsdogs review`: a local web page to keep, relabel or exclude the photos of a run that look
wrongly labelled, each with its Grad-CAM (the app is `catsdogs.apps.review.app`).

What it lists comes from the run directory's review.csv (every photo of every split, with
out-of-sample predictions and cleanlab's label_looks_wrong): the training and validation photos
cleanlab flags, and the most confident mistakes of all splits. Decisions go to a corrections file
(`catsdogs.data.corrections`) that `catsdogs train --labels` reads back. This module imports neither
TensorFlow nor the serving libraries, so that `extras.require` can say what is missing.
"""

import dataclasses

from catsdogs.config.choices import REVIEW_MISTAKES
from catsdogs.errors import ConfigError, DataError
from catsdogs.store.run_dir import PREDICTIONS, REVIEW, RunDirectory

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
    run = RunDirectory(run_dir)
    data_dir = run.data_dir()  # first: a run from elsewhere whose photos are not here fails at once
    if run.has(REVIEW):
        source, note, required = REVIEW, "", (*REQUIRED_COLUMNS, "split")
    elif run.has(PREDICTIONS):
        source, required = PREDICTIONS, REQUIRED_COLUMNS
        note = (f"This run has no {REVIEW} (it was trained before catsdogs wrote one), so only its test photos "
                f"are listed, from {PREDICTIONS}: train again to review the training and validation photos.")
    else:
        raise DataError(f"{run_dir} has neither {REVIEW} nor {PREDICTIONS}: not a finished run directory")
    rows = run.photo_rows(source, required)
    if source == PREDICTIONS:
        rows = [{**row, "split": "test"} for row in rows]  # predictions.csv holds the test photos
    return RunPhotos(data_dir, select_photos(rows, mistakes), source, note)
