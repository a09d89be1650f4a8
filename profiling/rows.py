"""The studies' resumable CSV files: one row appended and flushed per result.

A study appends each row as soon as it is measured (:func:`append_row`), so a killed run
loses at most the row it was writing. A kill in the middle of that write leaves a last line
without its newline: :func:`read_rows` leaves it out and :func:`drop_torn_row` cuts it off
before the study appends again, so that result is measured again. A damaged row elsewhere
(the wrong number of fields, a value the study cannot read) stops the reader naming its line.
Files that are derived, not appended to, are rewritten whole (:func:`rewrite_rows`).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Sequence

from hierarchical_meta.runfiles import atomic_write

__all__ = ["append_row", "drop_torn_row", "read_rows", "rewrite_rows"]


def append_row(path: str, columns: Sequence[str], row: dict) -> None:
    """Append ``row``'s ``columns`` (writing the header first if the file is new) and flush it to disk.

    Keys not in ``columns`` are ignored; a missing key or None is an empty cell.
    """
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)
        f.flush()
        os.fsync(f.fileno())


def drop_torn_row(path: str) -> bool:
    """Cut a torn last row (a kill in the middle of its write) off the CSV ``path``; True if there was one."""
    if not os.path.exists(path):
        return False
    with open(path, "rb+") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return False
        f.truncate(data.rfind(b"\n") + 1)
    return True


def read_rows(path: str, parse: Callable[[dict], dict] = dict) -> list[dict]:
    """The complete rows of the CSV ``path`` (dicts of strings), each passed through ``parse``; [] if absent.

    A torn last row (no newline) is left out. A row without the header's number of fields, or
    one ``parse`` rejects with ValueError, raises ValueError naming the file and line.
    """
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        text = f.read()
    reader = csv.DictReader(io.StringIO(text[:text.rfind("\n") + 1]))  # complete lines only
    rows = []
    for row in reader:
        where = f"{path}, line {reader.line_num}"
        if None in row or None in row.values():
            raise ValueError(f"{where}: the row does not have the header's fields; delete that line to measure "
                             "it again")
        try:
            rows.append(parse(row))
        except ValueError as error:
            raise ValueError(f"{where}: {error}; delete that line to measure it again") from None
    return rows


def rewrite_rows(path: str, columns: Sequence[str], rows: list[dict]) -> None:
    """Write ``rows`` (a header, then ``columns`` of each) to ``path`` atomically: the whole file or the old one."""
    with atomic_write(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
