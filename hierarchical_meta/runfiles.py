"""The files of a run: checked input and output paths, a lock on an output folder, atomic writes.

- :func:`check_input_file`: an existing, readable file, or FileNotFoundError,
  IsADirectoryError or PermissionError with a one-line message naming the path.
- :func:`check_output_file`: a file that may be (over)written: not a directory, not one of the
  run's inputs, in a folder that exists or can be created.
- :func:`output_folder`: creates the folder of a run and checks that files can be created in
  it; FileExistsError if the path is a file, PermissionError if nothing can be written there.
- :func:`hold_folder`: an exclusive lock on a run folder for as long as the run writes into
  it. The lock is ``flock`` on ``FOLDER/.lock``, which holds the holder's pid and host: a
  second run on the folder fails at once (:class:`FolderInUseError`) naming them. The
  operating system releases the lock of a killed run, so the next run takes it over
  (and says so). The lock file is only ever created (O_EXCL, O_NOFOLLOW), never opened for
  writing if it exists, and no symbolic link is followed: a ``.lock`` that is a link or a
  special file stops the run (FileExistsError) and is left as it is; a stale one is removed.
- :func:`atomic_write`: a file that appears complete or not at all (written beside the target,
  then renamed over it), so a killed run never leaves half a result.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence

__all__ = ["FolderInUseError", "LOCK_NAME", "check_input_file", "check_output_file", "output_folder",
           "hold_folder", "atomic_write"]

LOCK_NAME = ".lock"
_NOTE_MAX = 100  # the longest holder's note read back from a lock file
_NOTE = re.compile(r"pid [0-9]{1,10} on [\w.-]{0,80}")
_NO_LINK = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # open no symbolic link; never block on a FIFO


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
    """Create the folder ``path`` (and its parents) if needed and check that files can be created in it.

    Returns ``path``; raises with a one-line message naming it. The check creates and removes a
    file, so it holds for root and for read-only or virtual file systems (``/proc``, ``/sys``) too.
    """
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileExistsError(f"{what} {path!r} is an existing file, not a folder; give a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise type(error)(f"cannot create {what} {path!r}: {error.strerror or error}; give another folder") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
    except OSError as error:
        raise PermissionError(f"cannot write in {what} {path!r} ({error.strerror or error}); "
                              "give another folder") from None
    os.close(fd)
    os.unlink(probe)
    return path


def _holder(fd: int) -> str:
    """The holder's note ("pid 123 on host") at the start of the lock file ``fd``, or "" if it holds none.

    Reads one short line and returns it only when it has the note's form, so a file that is not
    a lock file never reaches a message.
    """
    line = os.pread(fd, 2 * _NOTE_MAX, 0).split(b"\n", 1)[0].decode("ascii", errors="replace")
    return line if _NOTE.fullmatch(line) else ""


def _same_file(dir_fd: int, fd: int) -> bool:
    """True if the folder's ``.lock`` entry (not followed if a link) is the open file ``fd``."""
    try:
        entry = os.stat(LOCK_NAME, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (entry.st_dev, entry.st_ino) == (held.st_dev, held.st_ino)


def _create_lock(dir_fd: int, folder: str) -> int | None:
    """A new ``.lock``, locked and holding this process's note; None if one exists or another process took it.

    Created with O_EXCL and O_NOFOLLOW, so no existing file or link is ever opened for writing.
    Between its creation and its ``flock`` another process may take the empty file for a stale
    lock and remove it: the check after the ``flock`` sees that, and the caller looks again.
    """
    try:
        fd = os.open(LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NO_LINK, 0o644, dir_fd=dir_fd)
    except FileExistsError:
        return None
    except OSError as error:
        raise PermissionError(f"cannot create the lock file in output folder {folder!r} "
                              f"({error.strerror or error}); give another folder") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if _same_file(dir_fd, fd):
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()[:_NOTE_MAX - 20]}\n".encode())
            return fd
    except BlockingIOError:
        pass  # another process is checking whether this empty file is stale
    os.close(fd)
    return None


def _clear_stale(dir_fd: int, folder: str) -> str | None:
    """Remove the ``.lock`` of a run that ended without releasing it; returns its note (None: none was there).

    FolderInUseError if a live process holds it; FileExistsError if ``.lock`` is not a regular
    file (a link, a folder...), which is never followed, written or removed.
    """
    path = os.path.join(folder, LOCK_NAME)
    try:
        if not stat.S_ISREG(os.stat(LOCK_NAME, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            raise FileExistsError(f"{path!r} is not a lock file of this program (a link or a special file); "
                                  "remove it if no run uses the folder, or use another output folder")
        fd = os.open(LOCK_NAME, os.O_RDONLY | _NO_LINK, dir_fd=dir_fd)
    except FileNotFoundError:
        return None  # released meanwhile
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderInUseError(f"output folder {folder!r} is in use by another run "
                                   f"({_holder(fd) or 'another process'}); wait for it to finish or use "
                                   "another output folder") from None
        if not _same_file(dir_fd, fd):
            return None  # replaced meanwhile: look again
        os.unlink(LOCK_NAME, dir_fd=dir_fd)
        return _holder(fd)
    finally:
        os.close(fd)


def _take_lock(dir_fd: int, folder: str, log: Callable[[str], None] | None) -> int:
    """The open, locked ``.lock`` of the folder, now this process's; a stale one is replaced (``log`` is told)."""
    while (fd := _create_lock(dir_fd, folder)) is None:
        previous = _clear_stale(dir_fd, folder)
        if previous is not None and log:
            log(f"took over the lock of {folder!r} from a run that ended without releasing it "
                f"({previous or 'it named no holder'})")
    return fd


@contextlib.contextmanager
def hold_folder(folder: str, log: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the lock of the run folder ``folder`` (created if needed) inside the ``with`` block.

    Raises :class:`FolderInUseError` at once if another live process holds it. A lock file
    left by a killed run is taken over; ``log`` (if given) is told so. The lock is released
    even if the folder was renamed meanwhile (the folder is held open, not looked up by name).
    """
    output_folder(folder)
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = _take_lock(dir_fd, folder, log)
        try:
            yield
        finally:
            if _same_file(dir_fd, fd):
                os.unlink(LOCK_NAME, dir_fd=dir_fd)  # while still locked: a waiting process re-checks and retries
            os.close(fd)
    finally:
        os.close(dir_fd)


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
