"""Reading a user's table: pandas on demand, CSV files with or without a byte-order mark.

pandas is the optional ``examples`` extra (``pip install 'hierarchical-meta[examples]'``);
it is imported only when a table is read, so the package imports without it.

Rows are named in messages by :func:`row_name`: a frame read by :func:`read_csv` is
indexed by the file's line numbers (the header is line 1), any other frame by its own
index labels.
"""

from __future__ import annotations

import csv
import os

__all__ = ["INSTALL_HINT", "import_pandas", "read_csv", "row_name"]

INSTALL_HINT = "pip install 'hierarchical-meta[examples]'"
_LINE = "line"  # the index name of a frame read from a file: its values are line numbers


def import_pandas():
    """The pandas module, or ``ImportError`` naming the install command."""
    try:
        import pandas
    except ImportError as error:
        raise ImportError(f"reading grouped data needs pandas; install it with: {INSTALL_HINT}") from error
    return pandas


def read_csv(path: str):
    """A CSV file as a data frame indexed by line number; a byte-order mark is skipped.

    Raises ``FileNotFoundError`` (no such file), ``IsADirectoryError`` (a folder) and
    ``ValueError`` for an empty file or a header that names a column twice.
    """
    pandas = import_pandas()
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a folder; pass the CSV file inside it")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no file {path!r}; check the path (relative paths start at "
                                f"{os.getcwd()!r})")
    with open(path, newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f), None)
    if not header:
        raise ValueError(f"{path}: the file is empty; it needs a header line naming the columns")
    seen = set()
    for name in header:
        if name in seen:
            raise ValueError(f"{path}: the header names column {name!r} twice; rename one of them")
        seen.add(name)
    frame = pandas.read_csv(path, encoding="utf-8-sig", skipinitialspace=True)
    frame.index = pandas.RangeIndex(2, len(frame) + 2, name=_LINE)
    return frame


def row_name(frame, label) -> str:
    """How messages name the row ``label`` of ``frame``: ``line 7`` of a file, else ``row 5``."""
    if frame.index.name == _LINE:
        return f"line {label}"
    return f"row {label!r}"
