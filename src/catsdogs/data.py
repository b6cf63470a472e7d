"""Datasets: finding the images and their labels, the integrity scan, splits, tf.data pipelines."""

import collections
import dataclasses
import hashlib
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from sklearn.model_selection import train_test_split
from tqdm.auto import tqdm

from catsdogs.errors import ConfigError, DataError, ImageError
from catsdogs.host import usable_cpus
from catsdogs.images import describe_quirks, load_image, open_image, read_file
from catsdogs.pixels import resizer

log = logging.getLogger(__name__)

SPLIT_ALIASES = {
    "train": "train", "training": "train", "training_set": "train", "trainingset": "train",
    "val": "val", "valid": "val", "validation": "val", "validation_set": "val",
    "test": "test", "testing": "test", "test_set": "test", "testset": "test",
}


@dataclasses.dataclass(frozen=True)
class Sample:
    path: str
    label: int


@dataclasses.dataclass
class Dataset:
    """Images found in a folder: class names and the samples of each split found there.

    `splits` has some of "train", "val", "test", or only "all" for a plain folder of classes.
    A dataset from a labels table (`labels.table_dataset`) also says where each photo's row is
    (`rows`: path -> "labels.csv line 5") and which rows name no file (`problems`: path -> reason).
    """

    root: str
    class_names: list
    splits: dict
    problems: dict = dataclasses.field(default_factory=dict)
    rows: dict = dataclasses.field(default_factory=dict)


# Folders that archivers add beside the photos: macOS zips carry "__MACOSX" with "._" resource forks.
IGNORED_FOLDERS = ("__MACOSX",)


def _hidden(name):
    """Whether a file or folder is skipped: hidden (".DS_Store", ".git") or an archiver's ("__MACOSX")."""
    return name.startswith(".") or name in IGNORED_FOLDERS


def _visible_entries(folder):
    return sorted((e for e in os.scandir(folder) if not _hidden(e.name)), key=lambda e: e.name)


def _unwrap_doubled(folder):
    """Kaggle archives repeat the split folder: training_set/training_set/cats."""
    entries = _visible_entries(folder)
    if len(entries) == 1 and entries[0].is_dir() and entries[0].name == os.path.basename(folder):
        return entries[0].path
    return folder


def list_files(folder):
    """Every file below a folder, in a stable order, skipping hidden files and folders (".DS_Store", ".git",
    "__MACOSX")."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if not _hidden(f))
    return found


def expand_inputs(inputs) -> list:
    """Files as given and every non-hidden file below the given folders, in a stable order.

    Here rather than beside prediction so that listing inputs needs no TensorFlow: a Ray driver
    (`distributed`) lists them without loading it (seconds of start-up).
    """
    paths = []
    for item in [inputs] if isinstance(inputs, (str, os.PathLike)) else inputs:
        item = os.fspath(item)
        paths += list_files(item) if os.path.isdir(item) else [item]
    return paths


def _class_folders(folder):
    classes = {e.name: e.path for e in _visible_entries(folder) if e.is_dir()}
    if not classes:
        loose = [e.name for e in _visible_entries(folder) if e.is_file()]
        raise DataError(
            f"{folder}: no class subfolders. Expected one folder per class, e.g. "
            f"{folder}/cats/1.jpg and {folder}/dogs/2.jpg"
            + (f" (found {len(loose)} loose files such as {loose[0]!r})" if loose else "")
        )
    return classes


def discover(data_dir):
    """Finds the images of a dataset folder and labels them by their class folder.

    Accepted layouts: the Kaggle one (training_set/[training_set/]cats, test_set/[test_set/]dogs),
    train/ [val/] test/ folders of classes, or one folder of class folders.

    Args:
        data_dir: the dataset folder.

    Returns:
        a `Dataset`.
    """
    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise DataError(f"{data_dir}: no such folder")
    split_folders = {}
    for entry in _visible_entries(data_dir):
        split = SPLIT_ALIASES.get(entry.name.lower())
        if entry.is_dir() and split:
            if split in split_folders:
                raise DataError(f"{data_dir}: two folders for the {split} split: "
                                f"{split_folders[split]} and {entry.path}")
            split_folders[split] = _unwrap_doubled(entry.path)
    if not split_folders:
        split_folders = {"all": data_dir}
    classes_per_split = {split: _class_folders(folder) for split, folder in split_folders.items()}
    reference = classes_per_split.get("train") or classes_per_split.get("all") or next(iter(classes_per_split.values()))
    class_names = sorted(reference)
    for split, classes in classes_per_split.items():
        unknown = sorted(set(classes) - set(class_names))
        if unknown:
            raise DataError(f"{split_folders[split]}: classes {unknown} do not exist in the training "
                            f"folder, which has {class_names}")
    if len(class_names) < 2:
        raise DataError(f"{data_dir}: found only the class {class_names}; at least two class folders are needed")
    splits = {
        split: [Sample(path, class_names.index(name)) for name, folder in sorted(classes.items())
                for path in list_files(folder)]
        for split, classes in classes_per_split.items()
    }
    for split, samples in splits.items():
        if not samples:
            raise DataError(f"{split_folders[split]}: the class folders hold no files")
    return Dataset(data_dir, class_names, splits)


@dataclasses.dataclass
class ScanReport:
    """What the integrity scan found. Paths map to content hashes, problems and quirks; `rows`
    (path -> "labels.csv line 5") says where a labels table lists a photo, to name it in problems."""

    hashes: dict = dataclasses.field(default_factory=dict)
    problems: dict = dataclasses.field(default_factory=dict)
    quirks: dict = dataclasses.field(default_factory=dict)
    duplicates: list = dataclasses.field(default_factory=list)
    leaks: list = dataclasses.field(default_factory=list)
    rows: dict = dataclasses.field(default_factory=dict)

    def add_problem(self, path, reason):
        self.problems[path] = f"{self.rows[path]}: {reason}" if path in self.rows else reason
        self.hashes.pop(path, None)

    def to_json(self):
        return {
            "skipped": [{"path": p, "problem": r} for p, r in sorted(self.problems.items())],
            "handled_quirks": [{"path": p, "quirks": q} for p, q in sorted(self.quirks.items())],
            "duplicate_groups": self.duplicates,
            "test_train_leaks": self.leaks,
        }

    def summary_lines(self):
        lines = [f"{len(self.hashes)} images usable, {len(self.problems)} skipped, "
                 f"{len(self.quirks)} read with conversions, {len(self.duplicates)} groups of "
                 f"identical files, {len(self.leaks)} test images identical to training images"]
        lines += [f"  skipped {p}: {r}" for p, r in sorted(self.problems.items())]
        lines += [f"  duplicates: {' = '.join(group)}" for group in self.duplicates]
        lines += [f"  leak: test {leak['test']} = {leak['train']}" for leak in self.leaks]
        return lines


def content_hash(data):
    """The hash of a file's bytes: what names its features in the cache and finds identical files."""
    return hashlib.sha256(data).hexdigest()


def file_hash(path):
    """`content_hash` of a file, or an ImageError naming it."""
    return content_hash(read_file(path))


def _scan_file(path):
    """Hashes one file and reads its header; returns (content hash, quirks) or raises ImageError."""
    data = read_file(path)
    with open_image(data, path) as image:
        quirks = describe_quirks(image, path)
    return content_hash(data), quirks


def scan(dataset, workers=8):
    """Integrity scan: hashes every file, reads its header, finds duplicates and test leaks.

    Files that are empty, unreadable or not images are listed as problems; the pixels are
    decoded later, where a truncated or corrupt image is added to the same report.

    Args:
        dataset: from `discover`.
        workers: threads reading files.

    Returns:
        a `ScanReport`.
    """
    report = ScanReport(problems=dict(dataset.problems), rows=dataset.rows)
    paths = [s.path for samples in dataset.splits.values() for s in samples]
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(_scan_file, p) for p in paths]
        for path, future in tqdm(zip(paths, futures), total=len(paths), desc="scan", unit="file", leave=False, disable=None):
            try:
                report.hashes[path], quirks = future.result()
            except ImageError as error:
                report.add_problem(path, error.reason)
            else:
                if quirks:
                    report.quirks[path] = quirks
    by_hash = collections.defaultdict(list)
    for path, digest in report.hashes.items():
        by_hash[digest].append(path)
    report.duplicates = [group for group in by_hash.values() if len(group) > 1]
    split_of = {s.path: split for split, samples in dataset.splits.items() for s in samples}
    for group in report.duplicates:
        seen_in_training = [p for p in group if split_of[p] in ("train", "val")]
        report.leaks += [{"test": p, "train": seen_in_training[0]}
                         for p in group if split_of[p] == "test" and seen_in_training]
    return report


def _grouped_stratified_split(samples, hashes, fraction, seed):
    """Splits off `fraction` of the samples, stratified by label; identical files stay together."""
    groups = collections.defaultdict(list)
    for sample in samples:
        groups[hashes[sample.path]].append(sample)
    keys = sorted(groups)
    labels = [groups[k][0].label for k in keys]
    try:
        kept, held = train_test_split(keys, test_size=fraction, stratify=labels, random_state=seed)
    except ValueError as error:
        raise DataError(f"cannot split {len(samples)} images into {1 - fraction:.0%}/{fraction:.0%} "
                        f"with every class on both sides: {error}") from None
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
        counts = collections.Counter(s.label for s in samples)
        for label, name in enumerate(dataset.class_names):
            if counts[label] >= needed:
                continue
            found = [s.path for s in dataset.splits[split] if s.label == label]
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

    Returns:
        dict split name -> list of `Sample`, without the files the scan rejected.
    """
    usable = {split: [s for s in samples if s.path in report.hashes]
              for split, samples in dataset.splits.items()}
    train = usable.get("train", usable.get("all"))
    if train is None:
        raise DataError(f"{dataset.root}: no training images (expected a train or training_set folder)")
    check_class_counts(dataset, report, usable)
    test = usable.get("test")
    if test is None:
        train, test = _grouped_stratified_split(train, report.hashes, test_fraction, seed)
    val = usable.get("val")
    if val is None:
        train, val = _grouped_stratified_split(train, report.hashes, val_fraction, seed)
    return {"train": train, "val": val, "test": test}


def spread(paths, count):
    """`count` paths evenly spread over the list (every class of a sorted folder tree), in order."""
    if count >= len(paths):
        return list(paths)
    return [paths[i] for i in np.linspace(0, len(paths) - 1, count).astype(int)]


class ImagePipeline:
    """A tf.data pipeline from image files to resized float batches, decoding with Pillow.

    Decoding runs in parallel and overlaps the model; a file that fails to decode is recorded in
    `errors` (path -> reason) and arrives as a blank image with `ok` false, so
    nothing stops. Files are passed to TensorFlow by index, never by name, so that any file name
    works, including names that are not valid UTF-8.
    """

    def __init__(self, image_size, batch_size):
        """Args:
            image_size: the model's input side; images are resized as the model does (`pixels.resizer`).
            batch_size: images per batch.
        """
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}")
        self.image_size = image_size
        self.resize = resizer(image_size)
        self.batch_size = batch_size
        self.errors = {}
        self._lock = threading.Lock()

    def _decode(self, index):
        try:
            # Large photos decoded near the model's size, as `catsdogs serve` decodes them: the same pixels.
            return load_image(self._paths[index], min_side=self.image_size), True
        except ImageError as error:
            with self._lock:
                self.errors[self._paths[index]] = error.reason
            return np.zeros((1, 1, 3), np.uint8), False

    def dataset(self, paths, shuffle_seed=None, shard=None):
        """Returns a tf.data.Dataset of (images, ok, index) batches.

        In the order of `paths`, or reshuffled on every pass when `shuffle_seed` is given.
        `shard` (index, count) keeps one worker's share of that order: every count-th image from
        index on, len(paths) // count of them on every worker, so that all run the same number
        of steps (the last len(paths) % count images of each pass are left out). Only the images
        of the share are decoded.
        """
        import tensorflow as tf

        def decode(index):
            image, ok = tf.numpy_function(self._decode, [index], [tf.uint8, tf.bool], stateful=False)
            image.set_shape([None, None, 3])
            ok.set_shape([])
            return self.resize(tf.cast(image, tf.float32)), ok, index

        self._paths = [os.fspath(p) for p in paths]
        ds = tf.data.Dataset.range(len(self._paths))
        if shuffle_seed is not None:
            ds = ds.shuffle(len(self._paths), seed=shuffle_seed, reshuffle_each_iteration=True)
        if shard is not None:  # after the shuffle, which every worker makes alike (same seed)
            index, count = shard
            ds = ds.shard(count, index).take(len(self._paths) // count)
        # Fixed parallelism (one decoder per core, two batches ahead) instead of tf.data's autotuning,
        # which was measured to take CPU from the model it feeds and, when a second pipeline of
        # the same process ends, to stall for 9-40 s (docs/BENCHMARKS.md).
        options = tf.data.Options()
        options.autotune.enabled = False
        ds = ds.map(decode, num_parallel_calls=usable_cpus(), deterministic=True)
        return ds.batch(self.batch_size).prefetch(2).with_options(options)
