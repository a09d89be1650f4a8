"""Reading a user's table: pandas on demand, UTF-8 CSV files checked before they are parsed.

pandas (a dependency: task files and predictions are tables) is imported only when a table
is read, so importing the package stays cheap.

:func:`read_csv` takes UTF-8 CSV text, with or without a byte-order mark (Excel's "CSV
UTF-8"); a binary file (Parquet, Excel, a checkpoint) or text in another encoding (Latin-1
from a spreadsheet) is refused with the file's name and what to do. Every row must have the
header's number of fields and each column name must appear once. Label columns (groups,
tasks) are read as text, exactly as written: ``007`` stays ``007``.

Rows are named in messages by :func:`row_name` and cells by :func:`cell_name`: a frame read
by :func:`read_csv` is indexed by the file's line numbers (the header is line 1), any other
frame by its own index labels.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Sequence

__all__ = ["INSTALL_HINT", "SAVE_AS_CSV", "import_pandas", "read_csv", "row_name", "cell_name"]

INSTALL_HINT = "pip install 'hierarchical-meta[examples]'"
SAVE_AS_CSV = "save it as UTF-8 CSV (in Excel: File > Save As > 'CSV UTF-8')"
_LINE = "line"  # the index name of a frame read from a file: its values are line numbers
#: The first bytes of binary files that are mistaken for tables, and what they are.
_BINARY = {b"PAR1": "a Parquet file", b"PK\x03\x04": "a zip archive (an Excel .xlsx file, or a model.pt)",
           b"\xd0\xcf\x11\xe0": "an old Excel .xls file", b"\x80": "a pickle file"}


def import_pandas():
    """The pandas module, or ``ImportError`` naming the install command."""
    try:
        import pandas
    except ImportError as error:
        raise ImportError(f"reading grouped data needs pandas; install it with: {INSTALL_HINT}") from error
    return pandas


def _text(path: str) -> str:
    """The file's text; ValueError naming the file when it is binary or not UTF-8."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a folder; pass the CSV file inside it")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no file {path!r}; check the path (relative paths start at {os.getcwd()!r})")
    with open(path, "rb") as f:
        data = f.read()
    kind = next((what for magic, what in _BINARY.items() if data.startswith(magic)), None)
    if kind is None and b"\x00" in data:
        kind = "a binary file"
    if kind is not None:
        raise ValueError(f"{path}: this is {kind}, not CSV text; {SAVE_AS_CSV}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise ValueError(f"{path}: not UTF-8 text (byte 0x{data[error.start]:02x} on line {line}; a spreadsheet's "
                         f"Latin-1 or Windows-1252 export?); {SAVE_AS_CSV}") from None


def _rows(path: str, text: str, check_header: Callable[[list[str]], None] | None) -> list[tuple[int, list[str]]]:
    """``(line, fields)`` of every non-blank row, the header first; ValueError for a broken table."""
    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True)
    try:
        rows = [(reader.line_num, row) for row in reader if row]
    except csv.Error as error:
        raise ValueError(f"{path}, line {reader.line_num}: not a CSV table ({error}); {SAVE_AS_CSV}") from None
    if not rows:
        return rows
    header = rows[0][1]
    twice = sorted({name for name in header if header.count(name) > 1})
    if twice:
        raise ValueError(f"{path}, line 1: the header names column(s) {twice} more than once; rename them "
                         "so that each column appears once")
    if check_header is not None:
        try:
            check_header(header)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
    for line, row in rows[1:]:
        if len(row) != len(header):
            raise ValueError(f"{path}, line {line}: the row does not have the header's {len(header)} fields "
                             f"(it has {len(row)}); check its commas and quotes")
    return rows


def read_csv(path: str, text_columns: Sequence[str] = (), check_header: Callable[[list[str]], None] | None = None):
    """A CSV file as a data frame indexed by line number (see the module docstring).

    ``text_columns`` are read as text (an empty cell is missing, None); the others as pandas
    infers them. ``check_header(names)`` may raise ValueError for a header the caller cannot
    use, before the rows are checked. A file without a header gives an empty frame. Raises
    ``FileNotFoundError``, ``IsADirectoryError``, and ``ValueError`` naming the file for what
    is not UTF-8 CSV text.
    """
    pandas = import_pandas()
    text = _text(path)
    rows = _rows(path, text, check_header)
    if not rows:
        return pandas.DataFrame()
    frame = pandas.read_csv(io.StringIO(text), skipinitialspace=True, skip_blank_lines=True)
    header = rows[0][1]
    for column in text_columns:
        if column in header:
            index = header.index(column)
            frame[column] = pandas.Series([row[index].strip() or None for _, row in rows[1:]], dtype=object)
    frame.index = pandas.Index([line for line, _ in rows[1:]], name=_LINE)
    return frame


def row_name(frame, label) -> str:
    """How messages name the row ``label`` of ``frame``: ``line 7`` of a file, else ``row 5``."""
    if frame.index.name == _LINE:
        return f"line {label}"
    return f"row {label!r}"


def cell_name(frame, label, column) -> str:
    """How messages name a cell: ``line 7, column dose`` (``row 5, column dose`` in a frame)."""
    return f"{row_name(frame, label)}, column {column}"
