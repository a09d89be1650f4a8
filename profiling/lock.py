"""An exclusive lock on the study's output folder, so that two runs never append to one CSV.

``flock`` on ``FOLDER/.lock``, which names the holder (pid and host). A second run on the
folder fails at once (:class:`FolderInUseError`); the operating system releases the lock of
a killed run, so the next run takes it over. The file is removed when the run ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator

__all__ = ["FolderInUseError", "hold_folder"]


class FolderInUseError(OSError):
    """Another live run holds the lock of the output folder."""


@contextlib.contextmanager
def hold_folder(folder: str) -> Iterator[None]:
    """Hold the lock of the existing folder ``folder`` inside the ``with`` block."""
    path = os.path.join(folder, ".lock")
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise FolderInUseError(f"output folder {folder!r} is in use by another run ({holder}); wait for it "
                                   "to finish or use another output folder") from None
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break  # else we locked a file its holder had just removed: lock the new one
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    try:
        yield
    finally:
        os.unlink(path)  # while still locked, so a process that opened it re-checks the inode
        os.close(fd)
