"""The files of a run: checked input and output paths, a lock on an output folder, atomic writes.

- :func:`check_input_file`: an existing, readable file, or FileNotFoundError,
  IsADirectoryError or PermissionError with a one-line message naming the path.
- :func:`check_output_file`: a file that may be (over)written: not a directory, not one of the
  run's inputs, in a folder that exists or can be created.
- :func:`output_folder`: creates the folder of a run; FileExistsError if the path is a file.
- :func:`hold_folder`: an exclusive lock on a run folder for as long as the run writes into
  it. The lock is ``flock`` on ``FOLDER/.lock``, which holds the holder's pid and host: a
  second run on the folder fails at once (:class:`FolderInUseError`) naming them. The
  operating system releases the lock of a killed run, so the next run takes it over
  (and says so).
- :func:`atomic_write`: a file that appears complete or not at all (written beside the target,
  then renamed over it), so a killed run never leaves half a result.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Callable, Iterator, Sequence

__all__ = ["FolderInUseError", "LOCK_NAME", "check_input_file", "check_output_file", "output_folder",
           "hold_folder", "atomic_write"]

LOCK_NAME = ".lock"


class FolderInUseError(OSError):
    """Another live run holds the lock of the output folder."""


def check_input_file(path: str, what: str) -> None:
    """Raise unless ``path`` is a readable file; ``what`` names it in the message (e.g. "task file")."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} {path!r} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what} {path!r} is a directory, not a file")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"{what} {path!r} is not readable (permission denied)")


def check_output_file(path: str, what: str, inputs: Sequence[str] = ()) -> None:
    """Raise unless ``path`` can be written: not a directory, none of ``inputs``, its folder creatable.

    Creates the folder of ``path`` if needed.
    """
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what} {path!r} is a directory; give a file name")
    for source in inputs:
        if os.path.exists(path) and os.path.exists(source) and os.path.samefile(path, source):
            raise ValueError(f"{what} {path!r} is the input {source!r}: writing it would destroy the input; "
                             "give another file name")
    output_folder(os.path.dirname(path) or ".", f"the folder of {what}")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise PermissionError(f"{what} {path!r} is not writable (permission denied)")


def output_folder(path: str, what: str = "output folder") -> str:
    """Create the folder ``path`` (and its parents) if needed; returns it. Raises with a one-line message."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileExistsError(f"{what} {path!r} is an existing file, not a folder; give a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise type(error)(f"cannot create {what} {path!r}: {error.strerror or error}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {path!r} is not writable (permission denied)")
    return path


def _holder(path: str) -> str:
    """What the lock file says of its holder ("pid 123 on host"), or "" if it says nothing."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


@contextlib.contextmanager
def hold_folder(folder: str, log: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the lock of the run folder ``folder`` (created if needed) inside the ``with`` block.

    Raises :class:`FolderInUseError` at once if another live process holds it. A lock file
    left by a killed run is taken over; ``log`` (if given) is told so.
    """
    output_folder(folder)
    path = os.path.join(folder, LOCK_NAME)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = _holder(path) or "another process"
            raise FolderInUseError(f"output folder {folder!r} is in use by another run ({holder}); wait for it "
                                   f"to finish or use another output folder") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:  # the previous holder removed it between our open and lock
            same = False
        if same:
            break
        os.close(fd)  # we locked a file its holder had just removed: lock the new one
    previous = os.read(fd, 4096).decode(errors="replace").strip()
    if previous and log:
        log(f"took over the lock of {folder!r} from a run that ended without releasing it ({previous})")
    os.lseek(fd, 0, os.SEEK_SET)
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    try:
        yield
    finally:
        os.unlink(path)  # while still locked: a waiting process re-checks the inode and retries
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", **open_options) -> Iterator:
    """``open(path, mode)`` whose file appears at ``path`` only when the block ends without error.

    Written to ``path.tmp-PID`` in the same folder, flushed to disk and renamed over ``path``.
    """
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, mode, **open_options) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
