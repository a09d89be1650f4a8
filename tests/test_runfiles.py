"""The run-folder kit shared by both packages: a cheap import, the folder lock, atomic writes, resumable CSVs.

Bad inputs against the same code (links, special files, unwritable folders) are in
tests/test_bad_input_files.py.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import hierarchical_meta
from hierarchical_meta.runfiles import LOCK_NAME, FolderInUseError, atomic_write, hold_folder
from profiling import rows

ROOT = Path(__file__).resolve().parents[1]


def python(code: str) -> str:
    """Run ``code`` in a fresh interpreter at the repository root; its stdout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_runfiles_and_errors_load_neither_torch_nor_pyro():
    out = python("import sys\nimport hierarchical_meta.errors, hierarchical_meta.runfiles\n"
                 "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'pyro')))")
    assert out.strip() == "[]"


def test_every_public_name_is_importable_listed_and_in_dir():
    names = hierarchical_meta.__all__
    assert len(names) == len(set(names)) >= 22
    for name in names:
        assert getattr(hierarchical_meta, name) is not None, name
    assert set(names) <= set(dir(hierarchical_meta))
    with pytest.raises(AttributeError, match="no_such_name"):
        hierarchical_meta.no_such_name  # noqa: B018


def test_star_import_and_a_public_name_spelled_like_its_submodule():
    """``evaluate`` stays the function after ``hierarchical_meta.evaluate`` (the module) is imported."""
    out = python("import hierarchical_meta.evaluate, sys\nimport hierarchical_meta as hm\n"
                 "from hierarchical_meta import *\n"
                 "print(hm.evaluate is sys.modules['hierarchical_meta.evaluate'].evaluate, callable(evaluate),"
                 " make_family.__name__, 'pyro' in sys.modules)")
    assert out.split() == ["True", "True", "make_family", "True"]


def test_the_lock_names_its_holder_and_is_removed_at_the_end(tmp_path):
    with hold_folder(str(tmp_path)):
        assert (tmp_path / LOCK_NAME).read_text() == f"pid {os.getpid()} on {socket.gethostname()}\n"
        assert os.listdir(tmp_path) == [LOCK_NAME]  # neither the temporary name nor a write test is left
        with pytest.raises(FolderInUseError, match=f"pid {os.getpid()} "):
            with hold_folder(str(tmp_path)):
                pass
    assert os.listdir(tmp_path) == []


def test_two_processes_taking_over_one_stale_lock_end_with_one_holder(tmp_path):
    """A dead run's lock, then two processes at once: exactly one takes it over, the other is refused."""
    (tmp_path / LOCK_NAME).write_text("pid 1 on elsewhere\n")  # nobody holds it: stale
    code = ("import sys\nfrom hierarchical_meta.runfiles import FolderInUseError, hold_folder\n"
            "try:\n    with hold_folder(sys.argv[1]):\n        print('held', flush=True)\n        sys.stdin.read()\n"
            "except FolderInUseError:\n    print('refused')\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    deadline = time.monotonic() + 60
    while all(p.poll() is None for p in procs) and time.monotonic() < deadline:  # the refused one ends first
        time.sleep(0.05)
    outcomes = sorted(p.communicate(timeout=60)[0].strip() for p in procs)  # closes the holder's stdin
    assert outcomes == ["held", "refused"]
    assert os.listdir(tmp_path) == []


def test_a_killed_holders_lock_is_taken_over(tmp_path):
    pid = os.fork()
    if pid == 0:  # the child takes the lock and dies holding it
        try:
            with hold_folder(str(tmp_path)):
                os.kill(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(1)
    os.waitpid(pid, 0)
    told = []
    with hold_folder(str(tmp_path), told.append):
        pass
    assert told == [f"took over the lock of {str(tmp_path)!r} from a run that ended without releasing it "
                    f"(pid {pid} on {socket.gethostname()})"]


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path):
    path = tmp_path / "result.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(str(path)) as f:
        f.write("half")
        raise RuntimeError
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["result.txt"]


def test_resumable_csv_appends_drops_a_torn_row_and_rewrites(tmp_path):
    path = str(tmp_path / "rows.csv")
    rows.append_row(path, ["a", "b"], {"a": 1, "b": None, "extra": 9})
    rows.append_row(path, ["a", "b"], {"a": 2, "b": 2.5})
    with open(path, "a") as f:
        f.write("3,")  # a kill in the middle of the third row
    assert rows.read_rows(path) == [{"a": "1", "b": ""}, {"a": "2", "b": "2.5"}]
    assert rows.drop_torn_row(path) and not rows.drop_torn_row(path)
    assert Path(path).read_bytes() == b"a,b\r\n1,\r\n2,2.5\r\n"
    rows.rewrite_rows(path, ["a"], [{"a": 5, "b": 6}])
    assert Path(path).read_bytes() == b"a\r\n5\r\n" and os.listdir(tmp_path) == ["rows.csv"]
    assert rows.read_rows(str(tmp_path / "absent.csv")) == []
