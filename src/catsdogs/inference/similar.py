"""Answers explained by example: the training photos a model finds most similar to a photo.

A model whose open-set score has a kNN bank (`--open-set auto`, or any score with knn) keeps the
normalised backbone features of its training photos (all of them, or a random subset beyond
`models.openset.MAX_BANK`), and `InDistributionScore.nearest` finds the k most similar to a photo by
cosine similarity, in the same feature space the score and the head use. The bank holds features
only: which photo each of its rows is, and its label, the run directory's similar.csv says
(`run_dir.SIMILAR`), in the bank's order. `TrainingPhotos` is that table, read back.

The photos' paths are relative to the run's data folder; a photo is opened only inside it
(`TrainingPhotos.file`), as a run directory from elsewhere could name any file.
"""

import dataclasses
import os

from catsdogs.errors import DataError
from catsdogs.store import run_dir
from catsdogs.utils.files import is_inside


@dataclasses.dataclass(frozen=True)
class SimilarPhoto:
    """One training photo similar to a predicted photo.

    Attributes:
        row: its row in the model's kNN bank (and in similar.csv).
        path: relative to the run's data folder, as similar.csv names it.
        label: the label it was trained with.
        similarity: the cosine similarity of its features to the photo's, from -1 to 1 (1: the same features).
        file: where it is on this machine, or None where the run's data folder is not reachable from here.
    """

    row: int
    path: str
    label: str
    similarity: float
    file: str = None


@dataclasses.dataclass
class TrainingPhotos:
    """The training photos a model's kNN bank holds, in the bank's row order.

    Attributes:
        paths: relative to `data_dir`, as similar.csv names them.
        labels: the labels they were trained with.
        data_dir: the run's data folder where it is reachable from here, else None (the photos are named, not shown).
    """

    paths: list
    labels: list
    data_dir: str = None

    def __len__(self):
        return len(self.paths)

    def file(self, row):
        """The file of a row, inside the data folder (by name: `..` and absolute paths that lead out are
        refused), or None where the data folder is not reachable or the name leads out of it."""
        if self.data_dir is None:
            return None
        path = os.path.join(self.data_dir, self.paths[row])
        return path if is_inside(self.data_dir, path) else None

    def similar(self, rows, similarities) -> tuple:
        """`SimilarPhoto`s of one photo from the bank rows and similarities the model gave (most similar first)."""
        return tuple(SimilarPhoto(int(row), self.paths[row], self.labels[row], float(similarity), self.file(row))
                     for row, similarity in zip(rows, similarities))

    def rows(self) -> list:
        """similar.csv's rows: path, label."""
        return [{"path": path, "label": label} for path, label in zip(self.paths, self.labels)]


def training_photos_of(paths, labels, data_dir) -> TrainingPhotos:
    """The `TrainingPhotos` of a run being trained, from the bank's photos as training holds them.

    Args:
        paths: the files, in the bank's order.
        labels: their class names.
        data_dir: the run's data folder (absolute).
    """
    return TrainingPhotos([os.path.relpath(path, data_dir) for path in paths], list(labels), data_dir)


def read_training_photos(path):
    """The training photos of the kNN bank of the model at `path`, from its run directory's similar.csv.

    Args:
        path: a run directory, or a model file inside one.

    Returns:
        `TrainingPhotos` (with `data_dir` None where the run's data folder is not reachable from
        here), or None where there is no similar.csv (not a run directory, a run trained before
        catsdogs wrote one, or a model without a kNN bank).

    Raises:
        DataError: a similar.csv that cannot be read, or without its columns.
    """
    path = os.fspath(path)
    run = run_dir.RunDirectory(path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path)))
    if not run.has(run_dir.SIMILAR):
        return None
    rows = run.rows(run_dir.SIMILAR)
    missing = [column for column in run_dir.SIMILAR_COLUMNS if rows and column not in rows[0]]
    if missing:
        raise DataError(f"{run.file(run_dir.SIMILAR)}: no column {', '.join(missing)}; it has {', '.join(rows[0])}")
    try:
        data_dir = run.data_dir()
    except DataError:  # moved, or a run from elsewhere: its photos are named, not shown
        data_dir = None
    return TrainingPhotos([row["path"] for row in rows], [row["label"] for row in rows], data_dir)
