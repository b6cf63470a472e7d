"""The corrections file of `catsdogs review`: label decisions on photos, which training reads back.

A CSV with the header `path,split,given_label,decision,label,time`, one row per decision:

    path         the photo, relative to the run's data folder (as in splits.csv and review.csv)
    split        train, val or test
    given_label  the label the photo had
    decision     keep, relabel or exclude
    label        the label to train with: the new class for relabel, the given label otherwise
    time         when the decision was made, ISO 8601

Every decision is appended as it is made and synced to disk before `append_decision` returns,
so a page or process that is closed or killed loses nothing that was answered. The last row of
a photo wins (changing one's mind is one more row), and a last line torn by a kill mid-write is
ignored with a warning. Test photos may be relabelled but never excluded: leaving photos out of
the test set would only flatter the score. This module imports nothing heavy, so that training
can read the file cheaply.
"""

import datetime
import typing

from catsdogs.errors import DataError
from catsdogs.utils.csvfiles import append_row, read_appended

FIELDS = ("path", "split", "given_label", "decision", "label", "time")
DECISIONS = ("keep", "relabel", "exclude")
SPLITS = ("train", "val", "test")
KIND = "corrections file"  # in messages


class Correction(typing.NamedTuple):
    """The decision in force for one photo."""

    decision: str  # keep, relabel or exclude
    label: str  # the label to train with
    split: str  # train, val or test


def check_decision(split, given_label, decision, label, classes):
    """The label to train with for a decision, or why the decision cannot be made.

    Args:
        split: the photo's split.
        given_label: its label.
        decision: keep, relabel or exclude.
        label: the new class, for relabel; None (or the given label) otherwise.
        classes: the model's classes, which a relabel must name.

    Returns:
        the new class for relabel, the given label for keep and exclude.

    Raises:
        DataError: an unknown decision or split, a relabel to no other known class, a label with
            another decision, or an exclusion of a test photo.
    """
    if decision not in DECISIONS:
        raise DataError(f"unknown decision {decision!r}; choose one of {', '.join(DECISIONS)}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if decision == "exclude" and split == "test":
        raise DataError("test photos are never excluded from evaluation: leaving photos out of the test set "
                        "would only flatter the score; keep it, or relabel it if its label is wrong")
    if decision != "relabel":
        if label not in (None, given_label):
            raise DataError(f"a label ({label!r}) goes with relabel only; {decision} trains with the given label")
        return given_label
    if label not in classes:
        raise DataError(f"cannot relabel as {label!r}: not a class of this model (its classes: {', '.join(classes)})")
    if label == given_label:
        raise DataError(f"cannot relabel as {label!r}: that is the photo's label already (keep it instead)")
    return label


def append_decision(corrections_file, path, split, given_label, decision, classes, label=None) -> Correction:
    """Appends one decision to the corrections file and syncs it to disk before returning.

    The file is created with its header if missing. A torn last line (from a kill mid-write) is
    cut off first, so that the new row starts a line of its own.

    Args:
        corrections_file: the CSV to append to.
        path: the photo, relative to the data folder.
        split: train, val or test.
        given_label: the photo's label.
        decision: keep, relabel or exclude.
        classes: the model's classes (a relabel must name one).
        label: the new class, for relabel.

    Returns:
        the `Correction` now in force for the photo.

    Raises:
        DataError: see `check_decision`; or a file that is not a corrections file.
    """
    label = check_decision(split, given_label, decision, label, classes)
    time = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    append_row(corrections_file, FIELDS, (path, split, given_label, decision, label, time), KIND)
    return Correction(decision, label, split)


def read_corrections(corrections_file) -> dict:
    """The decisions in force, from a corrections file: the last row of each photo wins.

    A torn last line (the process was killed while writing it) is ignored with a warning.

    Returns:
        photo path (relative to the data folder) -> `Correction` (decision, label, split).

    Raises:
        DataError: a file that is not a corrections file, or a malformed row before the last.
    """
    rows = {}
    for line, row in read_appended(corrections_file, FIELDS, KIND):
        if row["decision"] not in DECISIONS:
            raise DataError(f"{corrections_file}, line {line}: expected {len(FIELDS)} fields ({','.join(FIELDS)}) "
                            f"with a decision among {', '.join(DECISIONS)}, got {list(row.values())}")
        rows[row["path"]] = Correction(row["decision"], row["label"], row["split"])
    return rows
