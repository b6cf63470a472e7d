"""The corrections file of `catsdogs review`: label decisions on photos, which training reads back.

A CSV with the header `path,split,given_label,decision,label,time`, one row per decision:

    path         the photo, relative to the run's data folder (as in splits.csv and review.csv)
    split        train, val or test
    given_label  the label the photo had
    decision     keep, relabel or exclude
    label        the label to train with: the new class for relabel, the given label otherwise
    time         when the decision was made, ISO 8601

A photo of a multi-label run has a set of labels, written joined by the run's label separator
(`cats;dogs`; empty: none): adding or removing a label is a relabel to the new set.

Every decision is appended as it is made and synced to disk before `append_decision` returns,
so a page or process that is closed or killed loses nothing that was answered. The last row of
a photo wins (changing one's mind is one more row), and a last line torn by a kill mid-write is
ignored with a warning. Test photos may be relabelled but never excluded: leaving photos out of
the test set would only flatter the score. This module imports nothing heavy, so that training
can read the file cheaply.

It also owns the one rule by which a listed photo is found in a dataset (`listed_photo_finder`),
used alike by `train --labels corrections.csv` (relabels and exclusions) and `train --exclude FILE`
(exclusions only, from a corrections table or a plain list of photos).
"""

import collections
import datetime
import logging
import os
import typing

from catsdogs.config.choices import DECISIONS, SPLITS
from catsdogs.data.dataset import Sample, label_set
from catsdogs.errors import DataError
from catsdogs.utils.csvfiles import append_row, read_appended, read_header

log = logging.getLogger(__name__)

FIELDS = ("path", "split", "given_label", "decision", "label", "time")
SHOWN = 10  # photos named in one message
KIND = "corrections file"  # in messages


class Correction(typing.NamedTuple):
    """The decision in force for one photo."""

    decision: str  # keep, relabel or exclude
    label: str  # the label to train with
    split: str  # train, val or test


def check_decision(split, given_label, decision, label, classes, label_separator=None):
    """The label to train with for a decision, or why the decision cannot be made.

    Args:
        split: the photo's split.
        given_label: its label.
        decision: keep, relabel or exclude.
        label: the new class, for relabel; None (or the given label) otherwise.
        classes: the model's classes, which a relabel must name.
        label_separator: for a multi-label run's photo, the separator its label sets are joined by:
            `given_label` and `label` are then sets, and a relabel names known labels only.

    Returns:
        the new class for relabel (a multi-label photo's new labels, sorted and joined by the separator),
        the given label for keep and exclude.

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
    if label_separator is not None:
        return _checked_label_set(label, given_label, classes, label_separator)
    if label not in classes:
        raise DataError(f"cannot relabel as {label!r}: not a class of this model (its classes: {', '.join(classes)})")
    if label == given_label:
        raise DataError(f"cannot relabel as {label!r}: that is the photo's label already (keep it instead)")
    return label


def _checked_label_set(label, given_label, classes, label_separator):
    """A multi-label relabel's new label set, joined by the separator (sorted), or why it cannot be."""
    if label is None:
        raise DataError("a relabel names the new labels (an empty label: none of them)")
    names = label_set(label, label_separator)
    unknown = [name for name in names if name not in classes]
    if unknown:
        raise DataError(f"cannot relabel with {', '.join(map(repr, unknown))}: not labels of this model (its "
                        f"labels: {', '.join(classes)})")
    if names == label_set(given_label, label_separator):
        raise DataError(f"cannot relabel as {label!r}: those are the photo's labels already (keep it instead)")
    return label_separator.join(names)


def append_decision(corrections_file, path, split, given_label, decision, classes, label=None,
                    label_separator=None) -> Correction:
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
        label_separator: for a multi-label run's photo (see `check_decision`).

    Returns:
        the `Correction` now in force for the photo.

    Raises:
        DataError: see `check_decision`; or a file that is not a corrections file.
    """
    label = check_decision(split, given_label, decision, label, classes, label_separator)
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


def is_corrections_table(path) -> bool:
    """Whether a CSV file is a corrections table (it has a decision column) rather than a labels table."""
    return "decision" in read_header(path)


def read_listed(source, exclusions_only=False) -> dict:
    """The decisions a file lists: a corrections table's (in force), or a plain list's photos, one a line
    (blank lines and lines starting with # skipped), each an exclusion.

    Args:
        source: the file.
        exclusions_only: keep only the exclusions (`train --exclude`).

    Returns:
        entry (a photo's path as listed) -> `Correction`.
    """
    if is_corrections_table(source):
        decisions = read_corrections(source)
    else:
        with open(source, encoding="utf-8", errors="surrogateescape") as f:
            decisions = {line.strip(): Correction("exclude", None, None) for line in f
                         if line.strip() and not line.lstrip().startswith("#")}
    return {entry: c for entry, c in decisions.items() if c.decision == "exclude" or not exclusions_only}


def listed_photo_finder(entries, data_dir):
    """The one rule by which a listed photo is found in a dataset.

    An entry names a photo by its path relative to the data folder (as splits.csv, review.csv and
    corrections.csv write it), by any trailing part of that path down to its file name (cat.3.jpg,
    cats/cat.3.jpg), or by its absolute path (or a path relative to the working folder); the longest
    match wins.

    Args:
        entries: the listed paths.
        data_dir: the data folder.

    Returns:
        a function: a photo's path -> the entry that names it, or None.
    """
    by_part = {os.path.normpath(entry): entry for entry in entries if not os.path.isabs(entry)}
    by_absolute = {os.path.abspath(entry): entry for entry in entries}

    def find(path):
        parts = os.path.normpath(os.path.relpath(path, data_dir)).split(os.sep)
        for start in range(len(parts)):
            entry = by_part.get(os.path.join(*parts[start:]))
            if entry is not None:
                return entry
        return by_absolute.get(os.path.abspath(path))

    return find


def apply_listed(splits, class_names, data_dir, source, exclusions_only=False, label_separator=None):
    """The splits with a file's decisions applied (`read_listed`, found by `listed_photo_finder`).

    Excluded photos leave training and validation; test photos are never excluded (that would only
    flatter the score), though a corrected test label is applied: it makes the score truer.

    Args:
        splits: split name -> list of `Sample`.
        class_names: the dataset's classes, in label order.
        data_dir: the data folder.
        source: a corrections table, or (with `exclusions_only`) a plain list of photos.
        exclusions_only: apply the exclusions only (`train --exclude`).
        label_separator: for a multi-label dataset, the separator a relabel's label set is joined by.

    Returns:
        the corrected splits.

    Raises:
        DataError: a relabel to a class the dataset does not have.
    """
    def new_label(text):  # the class index, or a multi-label photo's label indices
        if label_separator is None:
            return class_names.index(text)
        return tuple(class_names.index(name) for name in label_set(text, label_separator))

    decisions = read_listed(source, exclusions_only)
    unknown = [f"{entry} as {c.label!r}" for entry, c in decisions.items() if c.decision == "relabel" and not all(
        name in class_names for name in ([c.label] if label_separator is None else label_set(c.label, label_separator)))]
    if unknown:
        raise DataError(f"{source}: relabels to classes the dataset does not have ({class_names}): "
                        + ", ".join(unknown[:SHOWN]) + (f" and {len(unknown) - SHOWN} more" if len(unknown) > SHOWN else ""))
    find = listed_photo_finder(decisions, data_dir)
    corrected, applied, found = {}, collections.Counter(), set()
    for name, samples in splits.items():
        kept = []
        for sample in samples:
            entry = find(sample.path)
            correction = decisions.get(entry)
            found.add(entry)
            if correction is not None and correction.decision == "exclude":
                if name != "test":
                    applied["excluded"] += 1
                    continue
                applied["test photos kept (never excluded)"] += 1
            elif correction is not None and correction.decision == "relabel":
                applied["relabelled" + (" (test)" if name == "test" else "")] += 1
                sample = Sample(sample.path, new_label(correction.label))
            kept.append(sample)
        corrected[name] = kept
    missing = len(set(decisions) - found)
    log.info("%s: %s%s", source, ", ".join(f"{count} {what}" for what, count in applied.items()) or "no change",
             f"; {missing} listed photos are not in this dataset" if missing else "")
    return corrected
