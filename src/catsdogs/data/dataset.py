"""Datasets: finding the images and their labels, the integrity scan, splits, tf.data pipelines."""

import dataclasses
import os

from catsdogs.errors import DataError

SPLIT_ALIASES = {
    "train": "train", "training": "train", "training_set": "train", "trainingset": "train",
    "val": "val", "valid": "val", "validation": "val", "validation_set": "val",
    "test": "test", "testing": "test", "test_set": "test", "testset": "test",
}


@dataclasses.dataclass(frozen=True)
class Sample:
    """A photo and its label: a class index, or in a multi-label dataset a sorted tuple of label indices
    (empty: none of the labels applies)."""

    path: str
    label: int | tuple

    @property
    def labels(self) -> tuple:
        """The photo's label indices: its class alone, or its label set."""
        return self.label if isinstance(self.label, tuple) else (self.label,)


@dataclasses.dataclass
class Dataset:
    """Images found in a folder: class names and the samples of each split found there.

    `splits` has some of "train", "val", "test", or only "all" for a plain folder of classes.
    A dataset from a labels table (`labels.table_dataset`) also says where each photo's row is
    (`rows`: path -> "labels.csv line 5") and which rows name no file (`problems`: path -> reason).
    A multi-label dataset (`multi_label`) gives each photo a set of labels (`Sample.label` a tuple).
    """

    root: str
    class_names: list
    splits: dict
    problems: dict = dataclasses.field(default_factory=dict)
    rows: dict = dataclasses.field(default_factory=dict)
    multi_label: bool = False


def label_set(cell, separator) -> tuple:
    """The labels of a multi-label table's cell, sorted: split at the separator, blank parts dropped ("": none)."""
    return tuple(sorted({part.strip() for part in cell.split(separator) if part.strip()}))


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
