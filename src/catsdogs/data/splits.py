"""Splits: usable photos per split, the missing splits carved out of the training photos
(stratified, seeded, identical files and near-duplicates kept together)."""

import collections
import logging

import numpy as np
from sklearn.model_selection import train_test_split

from catsdogs.errors import DataError

log = logging.getLogger(__name__)


def _grouped_stratified_split(samples, keys, fraction, seed):
    """Splits off `fraction` of the samples, stratified by label; samples of one key (`ScanReport.split_keys`:
    identical files, near-duplicates) stay together.

    Multi-label samples are stratified by their label set where every set has photos enough for
    both sides, else split at random (each label is then checked on both sides by training).
    """
    groups = collections.defaultdict(list)
    for sample in samples:
        groups[keys[sample.path]].append(sample)
    keys = sorted(groups)
    multi_label = isinstance(samples[0].label, tuple)
    labels = [str(groups[k][0].label) if multi_label else groups[k][0].label for k in keys]  # a set: one stratum
    try:
        kept, held = train_test_split(keys, test_size=fraction, stratify=labels, random_state=seed)
    except ValueError as error:
        if not multi_label:
            raise DataError(f"cannot split {len(samples)} images into {1 - fraction:.0%}/{fraction:.0%} "
                            f"with every class on both sides: {error}") from None
        log.info("label sets too rare to stratify by (%s): split at random", error)
        kept, held = train_test_split(keys, test_size=fraction, random_state=seed)
    return [s for k in kept for s in groups[k]], [s for k in held for s in groups[k]]


def check_class_counts(dataset, report, usable):
    """Checks that every class has enough usable images in every split, before any is decoded.

    The training images must also provide the splits the dataset lacks (one image of each class
    for each), so a class with one photo, an empty class folder or a class whose files are all
    unreadable is refused here, by name, rather than deep inside splitting or fitting.

    Args:
        dataset: from `discover`.
        report: the `ScanReport` (its problems say why files were skipped).
        usable: split name -> the samples the scan kept.

    Raises:
        DataError: naming the split, the class and how many files were found and skipped.
    """
    carved = [name for name in ("test", "val") if name not in usable]
    for split, samples in usable.items():
        needed = 1 + len(carved) if split in ("train", "all") else 1
        counts = collections.Counter(label for s in samples for label in s.labels)
        for label, name in enumerate(dataset.class_names):
            if counts[label] >= needed:
                continue
            found = [s.path for s in dataset.splits[split] if label in s.labels]
            skipped = [p for p in found if p in report.problems]
            detail = f"{len(found)} files" + (f", {len(skipped)} skipped as unreadable (e.g. {skipped[0]}: "
                                              f"{report.problems[skipped[0]]})" if skipped else "")
            where = f"{dataset.root}" + ("" if split == "all" else f" ({split} split)")
            raise DataError(f"{where}: class {name!r} has {counts[label]} usable images ({detail}); at least "
                            f"{needed} needed" + (f", one for each of training, {' and '.join(carved)}"
                                                  if needed > 1 else ""))


def make_splits(dataset, report, val_fraction, test_fraction, seed):
    """Returns usable train, val and test samples, carving missing splits out of the training data.

    A test split is taken from the images only when the dataset has none; the validation split
    comes from the training images (stratified, shuffled with `seed`) unless a val folder exists.
    Identical files and near-duplicates the scan found stay on one side (`ScanReport.split_keys`).

    Returns:
        dict split name -> list of `Sample`, without the files the scan rejected.
    """
    usable = {split: [s for s in samples if s.path in report.hashes]
              for split, samples in dataset.splits.items()}
    train = usable.get("train", usable.get("all"))
    if train is None:
        raise DataError(f"{dataset.root}: no training images (expected a train or training_set folder)")
    check_class_counts(dataset, report, usable)
    keys = report.split_keys()
    test = usable.get("test")
    if test is None:
        train, test = _grouped_stratified_split(train, keys, test_fraction, seed)
    val = usable.get("val")
    if val is None:
        train, val = _grouped_stratified_split(train, keys, val_fraction, seed)
    return {"train": train, "val": val, "test": test}


def split_added(samples, hashes, class_names, val_fraction, test_fraction, seed):
    """Photos added to a dataset (from `catsdogs discover`) split like a folder without a test split: test
    photos carved out, then validation photos, each stratified by class, so that a new class is trained,
    calibrated and measured.

    Args:
        samples: the added photos that the scan kept.
        hashes: path -> content hash (identical files stay together).
        class_names: every class, to name one with too few photos.
        val_fraction, test_fraction, seed: as for `make_splits`.

    Returns:
        dict "train", "val", "test" -> list of `Sample`.

    Raises:
        DataError: a class with fewer than 3 usable added photos (one for each split).
    """
    counts = collections.Counter(s.label for s in samples)
    few = [f"{class_names[label]} ({count})" for label, count in sorted(counts.items()) if count < 3]
    if few:
        raise DataError(f"photos added from discovered clusters: too few usable photos of {', '.join(few)}; a class "
                        f"needs at least 3, one each for training, validation and test")
    if not samples:
        return {"train": [], "val": [], "test": []}
    train, test = _grouped_stratified_split(samples, hashes, test_fraction, seed)
    train, val = _grouped_stratified_split(train, hashes, val_fraction, seed)
    return {"train": train, "val": val, "test": test}


def spread(paths, count):
    """`count` paths evenly spread over the list (every class of a sorted folder tree), in order."""
    if count >= len(paths):
        return list(paths)
    return [paths[i] for i in np.linspace(0, len(paths) - 1, count).astype(int)]
