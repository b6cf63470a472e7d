"""Labels from a table instead of class folders: a CSV file, a pandas DataFrame or (path, label) pairs.

A labels table has a path column (relative to the data folder, or absolute), a label column and
optionally a split column (train / val / test; an empty cell: split as folders are). Column
names can be chosen, as downloaded tables name them otherwise (Kaggle's dog breeds: `id,breed`,
the id being the file name without its extension). A multi-label table (read with a label
separator, `--multi-label`) gives a photo several labels: in one cell joined by the separator
(`cats;dogs`), or in one row per (photo, label); an empty cell gives it none. A corrections table (written by `catsdogs
review`) has a `decision` column as well: it changes the labels of photos the dataset already has.

Nothing is dropped silently: a row whose file is missing is skipped and reported by its row,
as an unreadable file is; a row that cannot be meant (no path, no label, an unknown split, a
path labelled twice differently, a label that appears once) is an error naming its rows.

A CSV table is read as it is, except that every cell is unescaped as catsdogs' own CSV files are
(`csvfiles.unescape`), whoever wrote it: a run's splits.csv is a labels table too, and its cells
that would start a spreadsheet formula (a class named `=1+1`, a photo named `-x.jpg`) are
written with a leading `'`. A user's table keeps every cell but one starting with `'` followed
by `= + - @`, a tab, a carriage return or another `'`, whose first `'` is dropped: the text
marker a spreadsheet would not count as part of the value either. Telling our files from a
user's by their header would not do: splits.csv's (path,split,label) is the default of any table.
"""

import collections
import csv
import dataclasses
import logging
import os

from catsdogs.data.corrections import is_corrections_table
from catsdogs.data.dataset import SPLIT_ALIASES, Dataset, Sample, label_set
from catsdogs.errors import DataError
from catsdogs.utils.csvfiles import unescape

log = logging.getLogger(__name__)


# What a path without an extension (a Kaggle id) is looked for with, in this order.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
DECISION_COLUMN = "decision"  # what marks a corrections table (corrections.py: `catsdogs review` writes them)
SHOWN_ROWS = 10  # bad rows named in one error


@dataclasses.dataclass(frozen=True)
class Columns:
    """The names of a labels table's columns."""

    path: str = "path"
    label: str = "label"
    split: str = "split"


@dataclasses.dataclass(frozen=True)
class Row:
    where: str  # "labels.csv line 5", "row 3": how the user finds the row
    path: str
    label: str
    split: str = ""
    decision: str = ""


def _cell(value):
    """A table's cell as text: "" for a missing one (None, or a DataFrame's NaN)."""
    return "" if value is None or value != value else str(value).strip()


def describe(source):
    """A table's name in messages: its file, or what kind of object it is."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return "the DataFrame" if hasattr(source, "columns") else "the list of (path, label)"


def _require_columns(found, columns, source):
    missing = [name for name in (columns.path, columns.label) if name not in found]
    if missing:
        raise DataError(f"{describe(source)}: no column {' or '.join(map(repr, missing))}; it has {list(found)}. "
                        f"Name the columns with --path-column / --label-column (e.g. --path-column id "
                        f"--label-column breed)")


def read_rows(source, columns=Columns()) -> list:
    """The rows of a labels table, each with where it is.

    Args:
        source: a CSV file, a pandas DataFrame, or a list of (path, label) or (path, label, split).
        columns: the names of the path, label and split columns (CSV and DataFrame).

    Returns:
        a list of `Row`.
    """
    wanted = (columns.path, columns.label, columns.split, DECISION_COLUMN)
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets write a BOM
                reader = csv.DictReader(f)
                _require_columns(reader.fieldnames or [], columns, source)
                return [Row(f"{os.path.basename(source)} line {reader.line_num}",
                            *(unescape(_cell(record.get(name))) for name in wanted)) for record in reader]
        except (OSError, UnicodeDecodeError, csv.Error) as error:
            raise DataError(f"{source}: cannot read the labels table: {error}") from None
    if hasattr(source, "columns"):  # a pandas DataFrame (pandas is not imported for it)
        _require_columns(list(source.columns), columns, source)
        records = source[[name for name in wanted if name in source.columns]].to_dict("records")
        return [Row(f"row {index}", *(_cell(record.get(name)) for name in wanted))
                for index, record in zip(source.index, records)]
    rows = []
    for number, item in enumerate(source, 1):
        if isinstance(item, (str, bytes)) or len(item) not in (2, 3):
            raise DataError(f"item {number} of the labels list is {item!r}: expected (path, label) or "
                            f"(path, label, split)")
        rows.append(Row(f"item {number}", *(str(value).strip() for value in item)))
    return rows


def _resolve(data_dir, path):
    """The file a row names: the path in the data folder, or an id with an image extension added."""
    full = os.path.join(data_dir, path)
    if os.path.isfile(full):
        return full
    for extension in IMAGE_EXTENSIONS:
        if os.path.isfile(full + extension):
            return full + extension
    return full


def _fail(problem, rows, source):
    shown = ", ".join(row.where for row in rows[:SHOWN_ROWS]) + (f" and {len(rows) - SHOWN_ROWS} more"
                                                                if len(rows) > SHOWN_ROWS else "")
    raise DataError(f"{describe(source)}: {problem}: {shown}")


def _checked(rows, source, label_separator=None):
    """The photos of a labels table, once each, as (its first row, its labels), or a DataError naming
    every row of the first kind of bad row: no path, no label (single-label tables), an unknown split,
    a photo listed twice differently, a label that appears once, or decisions (a corrections table
    given as the labels).

    Args:
        label_separator: None for a table of one label a photo; else the separator of a multi-label
            table's label cells, whose rows of one photo add up to its label set.

    Returns:
        a list of (`Row`, its labels: the label, or the sorted tuple of a multi-label photo's).
    """
    if any(row.decision for row in rows):
        raise DataError(f"{describe(source)}: this is a corrections table (it has decisions); give the photos' "
                        f"labels (class folders or a labels table) and the corrections as a second --labels")
    if not rows:
        raise DataError(f"{describe(source)}: the labels table has no rows")
    multi_label = label_separator is not None
    for problem, bad in (("rows without a path", [r for r in rows if not r.path]),
                         ("rows without a label", [] if multi_label else [r for r in rows if not r.label]),
                         ("rows whose split is not one of train, val, test", [
                             r for r in rows if r.split and r.split.lower() not in SPLIT_ALIASES])):
        if bad:
            _fail(problem, bad, source)
    by_path = collections.defaultdict(list)
    for row in rows:
        by_path[os.path.normpath(row.path)].append(row)
    if multi_label:  # the rows of a photo add up to its labels, and must agree on its split
        conflicting = [row for group in by_path.values() if len({r.split for r in group}) > 1 for row in group]
        if conflicting:
            _fail("photos listed twice with different splits", conflicting, source)
        photos = [(group[0], tuple(sorted({name for r in group for name in label_set(r.label, label_separator)})))
                  for group in by_path.values()]
    else:
        conflicting = [row for group in by_path.values() if len({(r.label, r.split) for r in group}) > 1
                       for row in group]
        if conflicting:
            _fail("photos listed twice with different labels or splits (a photo with several labels: train with "
                  "--multi-label, its labels in one cell joined by ';' or one row per label)", conflicting, source)
        repeated = sum(len(group) - 1 for group in by_path.values())
        if repeated:
            log.warning("%s: %d rows repeat a row above; each photo is used once", describe(source), repeated)
        photos = [(group[0], group[0].label) for group in by_path.values()]
    counts = collections.Counter(name for _, names in photos for name in (names if multi_label else [names]))
    once = [(row, name) for row, names in photos for name in (names if multi_label else [names]) if counts[name] == 1]
    if once:
        _fail("labels that appear only once (a class needs photos to train and to check on; a typo?) "
              + ", ".join(repr(name) for _, name in once[:SHOWN_ROWS]) + ", in", [row for row, _ in once], source)
    if multi_label and len(counts) < 2:
        raise DataError(f"{describe(source)}: a multi-label table needs at least two labels; it has "
                        f"{sorted(counts) or 'none'} (labels in one cell are joined by {label_separator!r})")
    return photos


def table_dataset(data_dir, source, columns=Columns(), label_separator=None) -> Dataset:
    """A `data.dataset.Dataset` from a labels table: its classes are the labels, its splits the split column's.

    Rows without a split (or a table without the column) are the training photos, from which
    validation and, without test rows, test photos are carved as for folders.

    Args:
        label_separator: None for a table of one label a photo; else the table is multi-label, its
            label cells holding labels joined by this separator (see `_checked`).

    Raises:
        DataError: naming the rows of every kind of bad row; a missing file is not one (see
        `Dataset.problems`).
    """
    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise DataError(f"{data_dir}: no such folder")
    photos = _checked(read_rows(source, columns), source, label_separator)
    multi_label = label_separator is not None
    class_names = sorted({name for _, names in photos for name in (names if multi_label else [names])})
    has_splits = any(row.split for row, _ in photos)
    splits, problems, where = collections.defaultdict(list), {}, {}
    for row, names in photos:
        path = _resolve(data_dir, row.path)
        where[path] = row.where
        if not os.path.isfile(path):
            problems[path] = f"{row.where}: no such file"
            continue
        split = SPLIT_ALIASES[row.split.lower()] if row.split else "train" if has_splits else "all"
        label = tuple(class_names.index(name) for name in names) if multi_label else class_names.index(names)
        splits[split].append(Sample(path, label))
    if not splits:
        raise DataError(f"{describe(source)}: none of the {len(photos)} files it lists exists below {data_dir} "
                        f"(e.g. {_resolve(data_dir, photos[0][0].path)}); paths are relative to the data folder")
    return Dataset(data_dir, class_names, dict(splits), problems=problems, rows=where, multi_label=multi_label)


def is_table(labels) -> bool:
    """Whether `labels` is a table in memory (a DataFrame or a list of pairs) rather than CSV file names."""
    if labels is None or isinstance(labels, (str, os.PathLike)):
        return False
    return hasattr(labels, "columns") or not all(isinstance(item, (str, os.PathLike)) for item in labels)


def load_dataset(data_dir, labels=(), columns=Columns(), label_separator=None):
    """The dataset of a data folder: labelled by its class folders, or by a labels table.

    Args:
        data_dir: the data folder.
        labels: a table in memory, or CSV files: at most one labels table, then corrections tables
            (applied in order by `corrections.apply_listed`, once the splits are made).
        columns: the labels table's column names.
        label_separator: None, or the separator of a multi-label table's cells (see `table_dataset`).

    Returns:
        (a `data.dataset.Dataset`, the corrections tables).

    Raises:
        DataError: also a multi-label dataset asked of class folders (a photo is in one folder).
    """
    from catsdogs.data.dataset import discover

    if is_table(labels):
        return table_dataset(data_dir, labels, columns, label_separator), []
    labels = [labels] if isinstance(labels, (str, os.PathLike)) else list(labels or ())
    corrections = [source for source in labels if is_corrections_table(source)]
    tables = [source for source in labels if source not in corrections]
    if len(tables) > 1:
        raise DataError(f"{len(tables)} labels tables given ({', '.join(map(os.fspath, tables))}): give one, and "
                        f"corrections tables (with a decision column) after it")
    if label_separator is not None and not tables:
        raise DataError(f"{data_dir}: multi-label photos need a labels table (--labels CSV, its label cells holding "
                        f"labels joined by {label_separator!r}); class folders give each photo one class")
    dataset = table_dataset(data_dir, tables[0], columns, label_separator) if tables else discover(data_dir)
    return dataset, corrections
