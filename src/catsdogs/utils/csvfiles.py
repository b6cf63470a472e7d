"""Every CSV file catsdogs writes and reads back: written whole or appended row by row, safe to open
in a spreadsheet, read back to the same values.

Names are data: a class folder named `=1+1` or a photo named `@SUM(A1).jpg` must not become a
formula when predictions.csv is opened in a spreadsheet. As OWASP advises against CSV injection,
a text cell starting with `=`, `+`, `-`, `@`, a tab or a carriage return is written with a leading
`'`, which spreadsheets show as text; a text cell that already starts with `'` gets one more, so
that reading back is unambiguous. Numbers (and True, False, None) are written as they are: a
negative number stays a number. `read_csv` and `read_appended` undo exactly this, so every file
here reads back to the values written: `unescape(escape(text)) == text` for every text.

Tables written by someone else (a labels table for `--labels`) are read by `labels.read_rows`,
which applies `unescape` to every cell as well, so that a run's own splits.csv (or corrections.csv)
given as `--labels` means what was written. In a user's table that changes only a cell starting
with `'` followed by one of the characters above or by another `'` (`'=x` is read as `=x`,
`'x` stays `'x`): a spreadsheet's text marker, which is not part of the value anyway.

Text is UTF-8, with file names that are not valid UTF-8 kept as their own bytes (surrogateescape).
"""

import csv
import io
import logging
import os

from catsdogs.errors import DataError
from catsdogs.utils.files import write_text

log = logging.getLogger(__name__)


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what makes a spreadsheet read a cell as a formula
ESCAPE = "'"  # what spreadsheets read as "the rest is text"
ENCODING = dict(encoding="utf-8", errors="surrogateescape")


def escape(cell):
    """A cell as written: text that a spreadsheet would take for a formula (or that starts with
    `ESCAPE`) gets a leading `ESCAPE`; other values are left as they are."""
    if isinstance(cell, str) and cell.startswith((*FORMULA_STARTS, ESCAPE)):
        return ESCAPE + cell
    return cell


def unescape(cell):
    """A cell as read: the text that `escape` was given."""
    if cell.startswith(ESCAPE) and cell[1:].startswith((*FORMULA_STARTS, ESCAPE)):
        return cell[1:]
    return cell


def _line(cells):
    """One CSV line (with its line end) of escaped cells."""
    text = io.StringIO()
    csv.writer(text).writerow([escape(cell) for cell in cells])
    return text.getvalue()


def write_csv(rows, path, fieldnames=None):
    """Writes dicts as a CSV file, atomically (a crash leaves the old file or none, never half of one).

    Args:
        rows: dicts; a missing key is an empty cell.
        path: the file.
        fieldnames: the columns; keys of a row that are not among them are left out. Default:
            the keys of every row, in order of appearance.
    """
    if fieldnames is None:
        fieldnames = list(dict.fromkeys(key for row in rows for key in row)) or ["path"]
    write_text(path, _line(fieldnames) + "".join(_line(row.get(name) for name in fieldnames) for row in rows))


def read_header(path) -> list:
    """The column names of a CSV file (a spreadsheet's byte-order mark ignored).

    Raises:
        DataError: the file cannot be read as CSV, naming it.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: cannot read the table: {error}") from None


def read_csv(path) -> list:
    """The rows of a CSV file that `write_csv` wrote, as dicts of the text written."""
    with open(path, newline="", **ENCODING) as f:
        reader = csv.reader(f)
        header = [unescape(name) for name in next(reader, [])]
        return [dict(zip(header, map(unescape, cells))) for cells in reader]


def _parse_appended(text, path, fields, kind):
    """(the complete rows of an appended file's text as (line number, dict), the length in bytes of its
    complete part). The last row is torn when the text does not end with a line end or the row is
    not whole; it is left out with a warning, and the complete part ends before it."""
    lines = io.StringIO(text, newline="").readlines()  # splits as the csv module expects
    reader = csv.reader(lines)
    rows, complete_lines = [], 0
    for number, cells in enumerate(reader, 1):
        if reader.line_num == len(lines) and (not text.endswith("\n") or len(cells) != len(fields)):
            log.warning("%s: ignoring its last line, torn when it was being written (a row whose writer was "
                        "stopped mid-write)", path)
            break
        if number == 1:
            if [unescape(cell) for cell in cells] != list(fields):
                raise DataError(f"{path}: not a {kind}: its header is {','.join(cells)!r}, "
                                f"expected {','.join(fields)!r}")
        elif len(cells) != len(fields):
            raise DataError(f"{path}, line {reader.line_num}: expected {len(fields)} fields ({','.join(fields)}), "
                            f"got {cells}")
        else:
            rows.append((reader.line_num, dict(zip(fields, map(unescape, cells)))))
        complete_lines = reader.line_num
    return rows, len("".join(lines[:complete_lines]).encode(**ENCODING))


def read_appended(path, fields, kind="CSV file") -> list:
    """The rows of a file that `append_row` writes; a last line torn by a kill mid-write is left
    out with a warning.

    Args:
        path: the file.
        fields: its columns, which its header must name.
        kind: what the file is, for messages ("corrections file").

    Returns:
        a list of (line number, dict of the text written).

    Raises:
        DataError: another header, or a row with another number of fields before the last.
    """
    with open(path, "rb") as f:
        return _parse_appended(f.read().decode(**ENCODING), path, fields, kind)[0]


def append_row(path, fields, row, kind="CSV file"):
    """Appends one row to a CSV file and syncs it to disk before returning.

    The file is created with its header if missing. A torn last line (from a kill mid-write) is
    cut off first, so that the new row starts a line of its own; the row is written at once, so
    that a kill tears at most this row.

    Args:
        path: the file.
        fields: its columns, which an existing file's header must name.
        row: the cells, in the order of `fields`.
        kind: what the file is, for messages.

    Raises:
        DataError: an existing file with another header (it is left untouched).
    """
    created = not os.path.exists(path)
    with open(path, "a+b") as f:  # reads anywhere, writes at the end
        f.seek(0)
        complete_bytes = _parse_appended(f.read().decode(**ENCODING), path, fields, kind)[1]
        if complete_bytes < f.tell():
            f.truncate(complete_bytes)
        lines = (_line(fields) if complete_bytes == 0 else "") + _line(row)
        f.write(lines.encode(**ENCODING))
        f.flush()
        os.fsync(f.fileno())
    if created:  # the new file's name must survive a crash too
        _sync_folder(os.path.dirname(os.path.abspath(path)))


def _sync_folder(folder):
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
