"""catsdogs' own CSV files: safe in a spreadsheet (no cell a formula), read back to what was written."""

import csv

import pytest
from hypothesis import given
from hypothesis import strategies as st

from catsdogs.data import labels
from catsdogs.errors import DataError
from catsdogs.utils.csvfiles import append_row, escape, read_appended, read_csv, unescape, write_csv

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
AWKWARD = ["=1+1", "+1", "-cmd.jpg", "@SUM(A1).jpg", "\tx", "\rx", "'x", "'=1+1", "''", "'", "", "plain.jpg",
           "cats/=HYPERLINK(\"http://x\")", "a,b\n\"c\""]


def raw_cells(path):
    """The cells of a CSV file as a spreadsheet reads them (no unescaping)."""
    with open(path, newline="", encoding="utf-8") as f:
        return [cell for row in csv.reader(f) for cell in row]


@given(st.text())
def test_every_text_reads_back_as_written_and_never_starts_a_formula(text):
    written = escape(text)
    assert unescape(written) == text
    assert not written.startswith(FORMULA_STARTS)


def test_write_csv_escapes_text_only_and_reads_back(tmp_path):
    path = tmp_path / "t.csv"
    rows = [{"path": name, "label": "=1+1", "probability": -0.5, "flag": True, "error": None} for name in AWKWARD]
    write_csv(rows, path)
    # Only the numbers start with "-": a negative number stays a number.
    assert [cell for cell in raw_cells(path) if cell.startswith(FORMULA_STARTS)] == ["-0.5"] * len(AWKWARD)
    assert read_csv(path) == [{"path": name, "label": "=1+1", "probability": "-0.5", "flag": "True", "error": ""}
                              for name in AWKWARD]


def test_write_csv_leaves_out_keys_not_among_the_columns_and_leaves_no_partial_file(tmp_path):
    path = tmp_path / "t.csv"
    write_csv([{"a": 1, "b": 2, "c": 3}], path, ("a", "c"))
    assert read_csv(path) == [{"a": "1", "c": "3"}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]


def test_appended_rows_read_back_escaped_and_a_torn_line_is_cut(tmp_path):
    path, fields = tmp_path / "log.csv", ("path", "label")
    for name in AWKWARD:
        append_row(path, fields, (name, "-1"))
    assert not [cell for cell in raw_cells(path) if cell.startswith(FORMULA_STARTS)]
    expected = [{"path": name, "label": "-1"} for name in AWKWARD]
    assert [row for _, row in read_appended(path, fields)] == expected
    with open(path, "ab") as f:
        f.write(b"'=torn")
    assert [row for _, row in read_appended(path, fields)] == expected
    append_row(path, fields, ("last", "x"))
    assert [row for _, row in read_appended(path, fields)] == expected + [{"path": "last", "label": "x"}]
    with pytest.raises(DataError, match="log.csv: not a log: its header is 'path,label'"):
        append_row(path, ("path", "decision"), ("a", "b"), kind="log")


def test_labels_tables_read_our_escapes_and_keep_a_users_plain_cells(tmp_path):
    ours = tmp_path / "splits.csv"
    write_csv([{"path": "-cmd.jpg", "split": "train", "label": "=1+1"},
               {"path": "'quoted.jpg", "split": "test", "label": "@x"}], ours)
    assert [(row.path, row.label) for row in labels.read_rows(ours)] == [("-cmd.jpg", "=1+1"), ("'quoted.jpg", "@x")]
    users = tmp_path / "labels.csv"
    users.write_text("path,label\n'quoted.jpg,cats\n'=kept as text.jpg,dogs\n")
    assert [row.path for row in labels.read_rows(users)] == ["'quoted.jpg", "=kept as text.jpg"]
