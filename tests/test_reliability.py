"""Bad inputs and faults against the command lines and the Python API, one table row each.

The error policy (docs/reliability.md): a user's mistake on the command line ends in exit
status 2 and one ``error:`` line containing a word that names the problem, never a
traceback; a fault the program can recover from (a killed run, a stale lock, a torn CSV row,
a byte-order mark) is *handled*: exit 0 with the right result. The Python API raises the
specific exception. ``CLI_CASES`` hold (argv maker, expected exit status, word, optional
extra check); ``API_CASES`` hold (call, exception type, word). The kill-and-resume cases kill
a real subprocess with SIGKILL at a chosen point (right after a checkpoint, in the middle of
writing one, in the middle of a CSV row) and compare the rerun with an uninterrupted run.

Sizes are tiny (hidden 8, D = 2, 6 SVI steps with a checkpoint every 3, 8 held-out tasks,
32 importance samples); ``fitted`` is one fit shared by every case (copied where a case
writes into it); the predictions plot (the slowest) is not drawn.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import profiling
from hierarchical_meta import plots
from hierarchical_meta.__main__ import main
from hierarchical_meta.checkpoint import digest
from hierarchical_meta.errors import DEBUG_ENV
from hierarchical_meta.meta_model import HierarchicalMetaModel, ModelConfig, load_checkpoint
from hierarchical_meta.pipeline import run_predict
from hierarchical_meta.predictive import MixturePredictive
from hierarchical_meta.runfiles import FolderInUseError, atomic_write, hold_folder
from hierarchical_meta.taskfile import PredictionTasks, prediction_frame, read_tasks
from hierarchical_meta.tasks import SinusoidTasks, TaskBatch
from hierarchical_meta.tasks.schema import MAX_INPUT, TabularSchema
from hierarchical_meta.train import TrainConfig
from profiling import scale
from profiling.study import read_rows

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--eval-tasks", "8", "--num-samples", "32", "--batch-tasks", "8", "--no-progress", "--hidden", "8",
        "--latent-dim", "2", "--max-points", "10", "--seed", "0", "--checkpoint-every", "3"]
FIT = ["--steps", "6"] + TINY
TASKS = """task,role,x,y,m1,m2
a,support,0.3,1.2,2.5,0.1
a,query,1.0,,2.5,0.1
b,query,-2.0,,1.0,-0.4
"""
SCALE = ["--device", "cpu", "--sweeps", "steps", "--methods", "fomaml", "--steps", "1,2,3", "--base-units", "8",
         "--repeats", "1", "--warmup", "0", "--seconds-per-config", "0.01", "--isolation", "none"]


@pytest.fixture(autouse=True, scope="module")
def no_prediction_plot():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plots, "plot_predictions", lambda *args, **kwargs: None)
        yield


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, no_prediction_plot):
    out = str(tmp_path_factory.mktemp("fitted") / "run")
    assert main(["fit", "--out", out] + FIT) == 0
    return out


# -- helpers that build inputs ---------------------------------------------------------------

def write(tmp: Path, text: str | bytes, name: str = "tasks.csv") -> str:
    path = tmp / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def predict(tasks: str, checkpoint: str, out: str, *extra: str) -> list[str]:
    return ["predict", "--checkpoint", checkpoint, "--tasks-file", tasks, "--out", out, "--num-samples", "16",
            "--no-progress", *extra]


def predict_text(text: str | bytes) -> Callable:
    """A predict case on a task file with the content ``text``."""
    return lambda tmp, fitted: predict(write(tmp, text), f"{fitted}/model.pt", str(tmp / "pred.csv"))


def checkpoint_case(edit: Callable[[dict], object]) -> Callable:
    """A predict case on a copy of the fitted checkpoint changed by ``edit(state)``, its sha256 resealed."""
    def make(tmp, fitted):
        state = torch.load(f"{fitted}/model.pt", weights_only=True)
        state = edit(state) or state
        if isinstance(state, dict) and "sha256" in state:  # the edit passes the digests: the fields' checks see it
            state["sha256"] = {name: digest(state[name]) for name in state["sha256"] if name in state}
        torch.save(state, tmp / "edited.pt")
        return predict(write(tmp, TASKS), str(tmp / "edited.pt"), str(tmp / "pred.csv"))
    return make


class Shell:
    """A pickled object whose unpickling runs a shell command (what a crafted model.pt does)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def malicious_checkpoint(tmp, fitted):
    marker = tmp / "pwned"
    torch.save({"config": {}, "state_dict": {}, "payload": Shell(f"touch {marker}")}, tmp / "model.pt")
    return predict(write(tmp, TASKS), str(tmp / "model.pt"), str(tmp / "pred.csv"))


def copy_fit(tmp: Path, fitted: str) -> str:
    out = str(tmp / "run")
    shutil.copytree(fitted, out)
    return out


def rerun(*extra: str, steps: str = "6") -> Callable:
    """A fit case rerunning a copy of the fitted folder with options changed by ``extra``."""
    def make(tmp, fitted):
        argv = ["fit", "--out", copy_fit(tmp, fitted), "--steps", steps] + TINY + list(extra)
        for flag in extra[::2]:  # a later flag wins in argparse; drop TINY's value of a flag given in extra
            if flag in TINY:
                i = argv.index(flag)
                del argv[i:i + 2]
        return argv
    return make


def metrics(folder: str) -> dict:
    with open(os.path.join(folder, "metrics.json")) as f:
        result = json.load(f)
    result.pop("train_seconds")
    return result


def python(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


# -- kills of real processes -------------------------------------------------------------------

KILL_FIT = """
import os, signal, sys
from hierarchical_meta import checkpoint
from hierarchical_meta.__main__ import main
mode, argv = sys.argv[1], sys.argv[2:]
write = checkpoint.Checkpoint.write

def killing_write(self, path):
    if mode == "mid-write" and self.step == 6:  # half a temporary file, then the kill
        with open(f"{path}.tmp-{os.getpid()}", "wb") as f:
            f.write(b"PK torn")
        os.kill(os.getpid(), signal.SIGKILL)
    write(self, path)
    if mode == "after-checkpoint" and self.step == 3:
        os.kill(os.getpid(), signal.SIGKILL)

checkpoint.Checkpoint.write = killing_write
main(argv)
"""


def killed_fit(mode: str) -> Callable:
    """Fit in a subprocess SIGKILLed at ``mode``; the case reruns the same command in this process."""
    def make(tmp, fitted):
        argv = ["fit", "--out", str(tmp / "run")] + FIT
        proc = python(KILL_FIT, mode, *argv)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == -signal.SIGKILL, err.decode()
        _, saved = load_checkpoint(str(tmp / "run" / "model.pt"))
        assert saved.step == 3  # the checkpoint before the kill
        return argv
    return make


def same_metrics_as_uninterrupted(tmp, fitted, out, err, capsys):
    assert metrics(str(tmp / "run")) == metrics(fitted)  # bit-identical: every number of metrics.json
    _, resumed = load_checkpoint(str(tmp / "run" / "model.pt"))
    _, whole = load_checkpoint(f"{fitted}/model.pt")
    assert resumed.history["loss"] == whole.history["loss"] and resumed.history["step"] == [1, 2, 3, 4, 5, 6]
    for name, tensor in whole.weights.items():
        assert torch.equal(resumed.weights[name], tensor), name


def concurrent_fit(tmp, fitted):
    """A real fit (resumed and extended to many steps) holds the folder while this process tries it."""
    out = copy_fit(tmp, fitted)
    argv = ["fit", "--out", out, "--steps", "100000", "--extend"] + TINY + ["--checkpoint-every", "100000"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "hierarchical_meta", *argv], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while f"pid {proc.pid} " not in _read(os.path.join(out, ".lock")):
        assert proc.poll() is None and time.monotonic() < deadline, "the first run did not take the lock"
        time.sleep(0.05)
    concurrent_fit.process = proc
    return ["fit", "--out", out] + FIT


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def first_run_kept_its_lock_then_killed(tmp, fitted, out, err, capsys):
    """The first run was not disturbed; killed, its stale lock is taken over by the next run."""
    proc = concurrent_fit.process
    assert proc.poll() is None  # still training
    assert f"pid {proc.pid}" in err
    proc.kill()
    proc.wait()
    folder = str(tmp / "run")
    assert f"pid {proc.pid}" in _read(os.path.join(folder, ".lock"))  # left behind by the kill
    assert main(["fit", "--out", folder] + FIT) == 0
    assert f"took over the lock of {folder!r}" in capsys.readouterr().out
    assert not os.path.exists(os.path.join(folder, ".lock"))  # released at the end


def stale_lock(tmp, fitted):
    """A process that died holding the lock (SIGKILL) leaves its lock file behind."""
    out = copy_fit(tmp, fitted)
    pid = os.fork()
    if pid == 0:  # the child takes the lock and is killed holding it
        try:
            with hold_folder(out):
                os.kill(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and f"pid {pid} " in _read(os.path.join(out, ".lock"))
    return ["fit", "--out", out] + FIT


def held_lock(tmp, fitted):
    """The folder is held by this very process (another ``with hold_folder``): a second run stops."""
    out = copy_fit(tmp, fitted)
    held_lock.context = hold_folder(out)
    held_lock.context.__enter__()
    return ["fit", "--out", out] + FIT


def release_held_lock(tmp, fitted, out, err, capsys):
    held_lock.context.__exit__(None, None, None)
    assert "in use" in err and f"pid {os.getpid()}" in err


TEAR_ROW = """
import csv, io, os, signal, sys
from profiling import scale
append = scale.append_row
calls = []

def tearing_append(path, row):
    calls.append(row)
    if len(calls) == 2:  # half of the second row reaches the file, then the kill
        line = io.StringIO()
        csv.DictWriter(line, fieldnames=list(row), extrasaction="ignore").writerow(row)
        with open(path, "a") as f:
            f.write(line.getvalue()[:25])
        os.kill(os.getpid(), signal.SIGKILL)
    append(path, row)

scale.append_row = tearing_append
scale.main(sys.argv[1:])
"""


def torn_study(tmp, fitted):
    argv = SCALE + ["--out", str(tmp / "scale")]
    proc = python(TEAR_ROW, *argv)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err.decode()
    torn_study.first = read_rows(str(tmp / "scale" / "scale.csv"))
    assert len(torn_study.first) == 1  # the complete row; the torn one is not read
    return argv


def study_redid_only_the_torn_row(tmp, fitted, out, err, capsys):
    rows = read_rows(str(tmp / "scale" / "scale.csv"))
    assert sorted(r["inner_steps"] for r in rows) == [1, 2, 3]  # none lost, none twice
    assert rows[0] == torn_study.first[0]  # the complete row was kept, not measured again
    assert (tmp / "scale" / "combined.png").stat().st_size > 0


def study_rows(tmp, text: str) -> list[str]:
    (tmp / "scale").mkdir()
    (tmp / "scale" / "scale.csv").write_text(text)
    return SCALE + ["--out", str(tmp / "scale"), "--plots-only"]


def study_of_one_row(tmp) -> str:
    """A scale.csv with one measured row (measured in this process), as text."""
    out = tmp / "one"
    assert scale.main(SCALE + ["--steps", "1", "--out", str(out)]) == 0
    return (out / "scale.csv").read_text()


# -- the table of command-line cases -------------------------------------------------------------

@dataclasses.dataclass
class Case:
    id: str
    argv: Callable  # (tmp_path, fitted folder) -> argv; may create files or processes
    code: int  # expected exit status
    word: str  # must be in the error line (code 2) or in the output (code 0)
    cli: str = "hierarchical_meta"  # or "profiling.scale"
    check: Callable | None = None  # (tmp_path, fitted, stdout, stderr, capsys): more assertions
    env: dict | None = None


def bom(tmp, fitted):
    return predict(write(tmp, b"\xef\xbb\xbf" + TASKS.encode()), f"{fitted}/model.pt", str(tmp / "pred.csv"))


def wrote_two_rows(tmp, fitted, out, err, capsys):
    assert (tmp / "pred.csv").read_text().count("\n") == 3  # header + 2 query points


def input_unchanged(tmp, fitted, out, err, capsys):
    assert (tmp / "tasks.csv").read_text() == TASKS


def no_output(tmp, fitted, out, err, capsys):
    assert not (tmp / "pred.csv").exists()


def not_run(tmp, fitted, out, err, capsys):
    assert not (tmp / "pwned").exists()  # the payload never ran
    assert not (tmp / "pred.csv").exists()


def unchanged_model(tmp, fitted, out, err, capsys):
    _, saved = load_checkpoint(str(tmp / "run" / "model.pt"))
    assert saved.step == 6 and "trained 0 steps" in out


def extended(tmp, fitted, out, err, capsys):
    _, saved = load_checkpoint(str(tmp / "run" / "model.pt"))
    assert saved.step == 8 and saved.history["step"] == list(range(1, 9))


def traceback_shown(tmp, fitted, out, err, capsys):
    raise AssertionError("unreachable: the debug cases raise")


BIG = TASKS.replace("a,query,1.0,", f"a,query,{10 * MAX_INPUT:g},")
CLI_CASES = [
    # predict: inputs
    Case("predict-missing-tasks-file", lambda t, f: predict(str(t / "nope.csv"), f"{f}/model.pt", str(t / "o.csv")),
         2, "does not exist"),
    Case("predict-tasks-file-is-a-directory", lambda t, f: predict(str(t), f"{f}/model.pt", str(t / "o.csv")),
         2, "is a directory"),
    Case("predict-missing-checkpoint", lambda t, f: predict(write(t, TASKS), str(t / "no.pt"), str(t / "o.csv")),
         2, "does not exist"),
    Case("predict-checkpoint-is-a-directory", lambda t, f: predict(write(t, TASKS), f, str(t / "o.csv")),
         2, "is a directory"),
    Case("predict-checkpoint-is-text", lambda t, f: predict(write(t, TASKS), write(t, "hello\n", "m.pt"),
                                                            str(t / "o.csv")), 2, "not a hierarchical_meta checkpoint"),
    Case("predict-checkpoint-is-empty", lambda t, f: predict(write(t, TASKS), write(t, b"", "m.pt"), str(t / "o.csv")),
         2, "checkpoint"),
    Case("predict-checkpoint-is-the-task-file", lambda t, f: predict(write(t, TASKS), write(t, TASKS, "m.pt"),
                                                                     str(t / "o.csv")), 2, "checkpoint"),
    Case("predict-malicious-checkpoint", malicious_checkpoint, 2, "refused", check=not_run),
    Case("predict-checkpoint-of-another-version",
         checkpoint_case(lambda s: s["model_config"].update(task_family="sinusoid")), 2, "task_family"),
    Case("predict-checkpoint-without-config", checkpoint_case(lambda s: s.pop("model_config") and s), 2,
         "has no field(s) ['model_config']"),
    Case("predict-checkpoint-config-of-wrong-type", checkpoint_case(lambda s: s["model_config"].update(hidden="8")),
         2, "invalid configuration"),
    Case("predict-checkpoint-weights-do-not-match", checkpoint_case(lambda s: s["model_config"].update(hidden=16)),
         2, "does not match"),
    Case("predict-checkpoint-is-a-list", checkpoint_case(lambda s: [1, 2]), 2, "not a hierarchical_meta checkpoint"),
    # predict: outputs
    Case("predict-out-is-the-tasks-file", lambda t, f: predict(write(t, TASKS), f"{f}/model.pt", str(t / "tasks.csv")),
         2, "destroy the input", check=input_unchanged),
    Case("predict-out-is-the-checkpoint", lambda t, f: predict(write(t, TASKS), f"{f}/model.pt", f"{f}/model.pt"),
         2, "destroy the input"),
    Case("predict-out-is-a-directory", lambda t, f: predict(write(t, TASKS), f"{f}/model.pt", str(t)),
         2, "is a directory"),
    Case("predict-out-folder-cannot-be-created",
         lambda t, f: predict(write(t, TASKS), f"{f}/model.pt", str(t / "tasks.csv" / "sub" / "o.csv")),
         2, "cannot create"),
    # predict: task files
    Case("task-file-with-byte-order-mark", bom, 0, "predicted 2 query points", check=wrote_two_rows),
    Case("task-file-duplicated-column", predict_text(TASKS.replace("x,y,m1,m2", "x,x,m1,m2")), 2, "more than once"),
    Case("task-file-extra-field", predict_text(TASKS.replace("2.5,0.1\n", "2.5,0.1,9\n", 1)), 2, "line 2"),
    Case("task-file-short-row", predict_text(TASKS.replace("b,query,-2.0,,1.0,-0.4", "b,query,-2.0")), 2, "line 4"),
    Case("task-file-huge-x", predict_text(TASKS.replace("a,query,1.0,", "a,query,1e300,")), 2, "out of range",
         check=no_output),
    Case("task-file-x-beyond-the-bound", predict_text(BIG), 2, "column x"),
    Case("task-file-huge-metadata", predict_text(TASKS.replace("b,query,-2.0,,1.0,", "b,query,-2.0,,1e30,")),
         2, "column m1"),
    Case("task-file-huge-y", predict_text(TASKS.replace("a,support,0.3,1.2,", "a,support,0.3,1e30,")),
         2, "out of range"),
    Case("task-file-nan-x", predict_text(TASKS.replace("a,query,1.0,", "a,query,nan,")), 2, "NaN or infinite"),
    Case("task-file-infinite-metadata", predict_text(TASKS.replace("1.0,-0.4", "1.0,inf")), 2, "infinite"),
    Case("task-file-bad-role", predict_text(TASKS.replace("a,support", "a,context")), 2, "role must be"),
    Case("task-file-no-rows", predict_text("task,role,x,y,m1,m2\n"), 2, "no rows"),
    Case("task-file-empty", predict_text(""), 2, "missing column"),
    Case("task-file-task-without-query", predict_text(TASKS.replace("b,query,-2.0,,1.0,-0.4\n", "b,support,-2.0,1,1.0,"
                                                                                            "-0.4\n")), 2, "no query"),
    Case("task-file-y-on-some-query-rows", predict_text(TASKS.replace("a,query,1.0,,", "a,query,1.0,3,")),
         2, "every query row or on none"),
    Case("task-file-metadata-differs-in-a-task", predict_text(TASKS.replace("a,query,1.0,,2.5", "a,query,1.0,,2.6")),
         2, "different metadata"),
    Case("task-file-x-not-a-number", predict_text(TASKS.replace("a,query,1.0,", "a,query,one,")), 2, "not a number"),
    Case("task-file-missing-column", predict_text(TASKS.replace("x,y,m1,m2", "x,y,m1")), 2, "missing column"),
    Case("task-file-extra-metadata-column", predict_text(TASKS.replace("m1,m2\n", "m1,m2,m3\n").replace(
        "0.1\n", "0.1,0\n").replace("-0.4\n", "-0.4,0\n")), 2, "m3"),
    Case("task-file-not-utf8", predict_text(TASKS.replace("a,", "\u00e9,").encode("latin-1")), 2, "UTF-8"),
    Case("task-file-is-a-checkpoint", lambda t, f: predict(f"{f}/model.pt", f"{f}/model.pt", str(t / "o.csv")),
         2, "UTF-8"),
    Case("predict-num-samples-zero", lambda t, f: predict(write(t, TASKS), f"{f}/model.pt", str(t / "o.csv"),
                                                          "--num-samples", "0"), 2, "positive integer"),
    Case("predict-chunk-zero", lambda t, f: predict(write(t, TASKS), f"{f}/model.pt", str(t / "o.csv"), "--chunk",
                                                    "0"), 2, "positive integer"),
    # fit: options
    Case("fit-lr-nan", lambda t, f: ["fit", "--out", str(t / "r"), "--lr", "nan"] + FIT, 2, "lr must be a finite"),
    Case("fit-lr-inf", lambda t, f: ["fit", "--out", str(t / "r"), "--lr", "inf"] + FIT, 2, "lr must be a finite"),
    Case("fit-lr-negative", lambda t, f: ["fit", "--out", str(t / "r"), "--lr", "-1"] + FIT, 2, "lr must be > 0"),
    Case("fit-lr-decay-nan", lambda t, f: ["fit", "--out", str(t / "r"), "--lr-decay", "nan"] + FIT, 2, "lr_decay"),
    Case("fit-clip-norm-nan", lambda t, f: ["fit", "--out", str(t / "r"), "--clip-norm", "nan"] + FIT, 2, "clip_norm"),
    Case("fit-dropout-above-one", lambda t, f: ["fit", "--out", str(t / "r"), "--metadata-dropout", "1.5"] + FIT,
         2, "metadata_dropout"),
    Case("fit-min-points-above-max", lambda t, f: ["fit", "--out", str(t / "r"), "--min-points", "30"] + FIT,
         2, "min_points"),
    Case("fit-steps-zero", lambda t, f: ["fit", "--out", str(t / "r"), "--steps", "0"] + TINY, 2, "positive integer"),
    Case("fit-unknown-family", lambda t, f: ["fit", "--out", str(t / "r"), "--tasks", "mnist"] + FIT, 2, "mnist"),
    Case("fit-lr-not-a-number", lambda t, f: ["fit", "--out", str(t / "r"), "--lr", "fast"] + FIT, 2, "--lr"),
    Case("fit-diverges", lambda t, f: ["fit", "--out", str(t / "r"), "--lr", "1e6", "--steps", "200"] + TINY[:-2],
         2, "lower --lr"),
    # fit: output folder
    Case("fit-out-is-a-file", lambda t, f: ["fit", "--out", write(t, "x")] + FIT, 2, "existing file"),
    Case("fit-out-cannot-be-created", lambda t, f: ["fit", "--out", os.path.join(write(t, "x"), "run")] + FIT,
         2, "cannot create"),
    # fit: resuming a finished folder
    Case("resume-other-seed", rerun("--seed", "1"), 2, "seed 0 (now 1)"),
    Case("resume-other-lr", rerun("--lr", "0.01"), 2, f"lr {TrainConfig().lr!r} (now 0.01)"),
    Case("resume-more-steps-without-extend", rerun(steps="8"), 2, "--extend"),
    Case("resume-fewer-steps", rerun(steps="4"), 2, "fewer than the 6"),
    Case("resume-other-model", rerun("--hidden", "16"), 2, "model hidden 8 (now 16)"),
    Case("resume-other-family", rerun("--tasks", "basis"), 2, "task family 'sinusoid' (now 'basis')"),
    Case("resume-several-differences", rerun("--seed", "1", "--batch-tasks", "4"), 2, "batch_tasks 8 (now 4); seed"),
    Case("resume-same-options", rerun(), 0, "trained 0 steps", check=unchanged_model),
    Case("resume-extend", rerun("--extend", steps="8"), 0, "trained 2 steps", check=extended),
    Case("resume-other-checkpoint-interval", rerun("--checkpoint-every", "5"), 0, "trained 0 steps"),
    Case("resume-model-without-training-state",
         lambda t, f: (HierarchicalMetaModel(ModelConfig(hidden=8, latent_dim=2)).save(str(t / "model.pt")),
                       ["fit", "--out", str(t)] + FIT)[1], 2, "training state"),
    Case("resume-checkpoint-of-another-version",
         lambda t, f: (checkpoint_case(lambda s: s["train_config"].update(warmup=3))(t, f),
                       shutil.move(str(t / "edited.pt"), str(t / "model.pt")), ["fit", "--out", str(t)] + FIT)[-1],
         2, "warmup"),
    # kills, locks
    Case("fit-killed-after-a-checkpoint", killed_fit("after-checkpoint"), 0, "trained 3 steps",
         check=same_metrics_as_uninterrupted),
    Case("fit-killed-while-writing-a-checkpoint", killed_fit("mid-write"), 0, "took over the lock",
         check=same_metrics_as_uninterrupted),
    Case("fit-concurrent-runs", concurrent_fit, 2, "in use by another run", check=first_run_kept_its_lock_then_killed),
    Case("fit-stale-lock-of-a-killed-process", stale_lock, 0, "took over the lock"),
    Case("fit-folder-held-in-this-process", held_lock, 2, "in use", check=release_held_lock),
    # demo, render
    Case("demo-out-is-a-file", lambda t, f: ["demo", "--out", write(t, "x")] + FIT, 2, "existing file"),
    Case("render-out-is-a-directory", lambda t, f: ["render", "--out", str(t)], 2, "is a directory"),
    # profiling.scale
    Case("scale-plots-only-on-an-empty-folder", lambda t, f: (os.mkdir(t / "s"), SCALE + ["--out", str(t / "s"),
                                                                                         "--plots-only"])[1],
         2, "no measured row", cli="profiling.scale"),
    Case("scale-plots-only-on-a-missing-folder", lambda t, f: SCALE + ["--out", str(t / "none"), "--plots-only"],
         2, "no measured row", cli="profiling.scale"),
    Case("scale-out-is-a-file", lambda t, f: SCALE + ["--out", write(t, "x")], 2, "existing file",
         cli="profiling.scale"),
    Case("scale-out-cannot-be-created", lambda t, f: SCALE + ["--out", os.path.join(write(t, "x"), "s")],
         2, "cannot create", cli="profiling.scale"),
    Case("scale-damaged-row-in-the-middle",
         lambda t, f: study_rows(t, study_of_one_row(t).replace("\n", "\nfomaml,batched,steps\n", 1)),
         2, "line 2", cli="profiling.scale"),
    Case("scale-row-with-a-bad-number",
         lambda t, f: study_rows(t, study_of_one_row(t).replace("steps,1,", "steps,one,")),
         2, "line 2", cli="profiling.scale"),
    Case("scale-killed-in-the-middle-of-a-row", torn_study, 0, "torn", cli="profiling.scale",
         check=study_redid_only_the_torn_row),
    Case("scale-unknown-method", lambda t, f: ["--methods", "reptile", "--out", str(t)], 2, "reptile",
         cli="profiling.scale"),
    Case("scale-folder-in-use", lambda t, f: (os.mkdir(t / "s"), setattr(held_lock, "context", hold_folder(
        str(t / "s"))), held_lock.context.__enter__(), SCALE + ["--out", str(t / "s")])[-1],
         2, "in use", cli="profiling.scale", check=release_held_lock),
    # --debug and the environment variable show the traceback instead
    Case("debug-flag", lambda t, f: ["predict", "--debug", "--checkpoint", "no.pt", "--tasks-file", "x.csv",
                                     "--out", str(t / "o.csv")], 1, "FileNotFoundError", check=traceback_shown),
    Case("debug-flag-before-the-command", lambda t, f: ["--debug", "predict", "--checkpoint", "no.pt", "--tasks-file",
                                                        "x.csv", "--out", str(t / "o.csv")], 1, "FileNotFoundError",
         check=traceback_shown),
    Case("debug-environment-variable", lambda t, f: predict(str(t / "x.csv"), "no.pt", str(t / "o.csv")), 1,
         "FileNotFoundError", env={DEBUG_ENV: "1"}, check=traceback_shown),
    Case("scale-debug-flag", lambda t, f: SCALE + ["--out", str(t / "none"), "--plots-only", "--debug"], 1,
         "ValueError", cli="profiling.scale", check=traceback_shown),
]


def run_cli(case: Case, tmp_path: Path, fitted: str, capsys, monkeypatch) -> tuple[int, str, str]:
    for key, value in (case.env or {}).items():
        monkeypatch.setenv(key, value)
    argv = case.argv(tmp_path, fitted)
    capsys.readouterr()
    entry = main if case.cli == "hierarchical_meta" else scale.main
    try:
        code = entry(argv)
    except SystemExit as exit_info:  # argparse
        code = exit_info.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_command_line_case(case, tmp_path, fitted, capsys, monkeypatch):
    if case.code == 1:  # --debug: the library's exception propagates with its traceback
        with pytest.raises(Exception) as raised:
            run_cli(case, tmp_path, fitted, capsys, monkeypatch)
        assert type(raised.value).__name__ == case.word
        return
    code, out, err = run_cli(case, tmp_path, fitted, capsys, monkeypatch)
    assert "Traceback" not in out + err
    assert code == case.code, err
    if code == 2:
        errors = [line for line in err.splitlines() if "error:" in line]
        assert len(errors) == 1 and case.word in errors[0], err
    else:
        assert case.word in out + err
    if case.check:
        case.check(tmp_path, fitted, out, err, capsys)


# -- the table of Python API cases ---------------------------------------------------------------

def nan_predictive_rows():
    batch = SinusoidTasks().sample(2, 3, 4, generator=torch.Generator().manual_seed(0))
    mean = torch.zeros(2, 1, 4, 1)
    mean[1, 0, 2] = float("nan")
    prediction_frame(TabularSchema.identity(1, 1, 2), PredictionTasks(batch, ["a", "b"], False, None, []),
                     MixturePredictive(torch.zeros(2, 1), mean, torch.ones(2, 1, 4, 1)))


def model_predict(**change):
    batch = SinusoidTasks().sample(2, 3, 4, generator=torch.Generator().manual_seed(0))
    fields = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
    for name, (index, value) in change.items():
        fields[name] = fields[name].clone()
        fields[name][index] = value
    HierarchicalMetaModel(ModelConfig(hidden=8, latent_dim=2)).predict(TaskBatch(**fields), num_samples=8)


def nan_meta_gradient():
    batch = profiling.sample_sinusoid_tasks(2, generator=torch.Generator().manual_seed(0))
    y = batch.y_support.clone()
    y[0, 0, 0] = float("nan")
    params = dict(profiling.build_mlp(1, 8).named_parameters())
    profiling.meta_gradient("maml", params, dataclasses.replace(batch, y_support=y))


def lock_twice(tmp):
    with hold_folder(str(tmp)), hold_folder(str(tmp)):
        pass


def atomic_write_interrupted(tmp):
    with atomic_write(str(tmp / "result.json")) as f:
        f.write("{half")
        raise KeyboardInterrupt("killed")


API_CASES = [
    ("train-config-lr-nan", lambda t: TrainConfig(lr=float("nan")), ValueError, "lr must be a finite"),
    ("train-config-lr-inf", lambda t: TrainConfig(lr=float("inf")), ValueError, "lr must be a finite"),
    ("train-config-clip-nan", lambda t: TrainConfig(clip_norm=float("nan")), ValueError, "clip_norm"),
    ("model-config-noise-nan", lambda t: ModelConfig(noise_std=float("nan")), ValueError, "noise_std"),
    ("load-missing-checkpoint", lambda t: load_checkpoint(str(t / "no.pt")), FileNotFoundError, "does not exist"),
    ("load-directory-checkpoint", lambda t: load_checkpoint(str(t)), IsADirectoryError, "is a directory"),
    ("read-missing-task-file", lambda t: read_tasks(str(t / "no.csv"), TabularSchema.identity(1, 1, 2)),
     FileNotFoundError, "does not exist"),
    ("predict-huge-metadata", lambda t: model_predict(metadata=((0, 0), 1e30)), ValueError, "metadata of task 0"),
    ("predict-huge-x", lambda t: model_predict(x_query=((1, 2, 0), 1e10)), ValueError, "x_query of task 1, point 2"),
    ("nan-prediction-is-not-written", lambda t: nan_predictive_rows(), FloatingPointError, "task 'b'"),
    ("run-predict-out-is-input", lambda t: run_predict("m.pt", write(t, TASKS), str(t / "tasks.csv")), ValueError,
     "destroy the input"),
    ("meta-gradient-nan-data", lambda t: nan_meta_gradient(), ValueError, "NaN or infinite"),
    ("lock-held-twice", lock_twice, FolderInUseError, "in use"),
    ("atomic-write-interrupted", atomic_write_interrupted, KeyboardInterrupt, "killed"),
]


@pytest.mark.parametrize("call, error, word", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_python_api_case(call, error, word, tmp_path):
    with pytest.raises(error) as raised:
        call(tmp_path)
    assert word in str(raised.value)
    assert os.listdir(tmp_path) in ([], ["tasks.csv"])  # nothing half-written left behind


def test_the_table_has_every_class_of_the_policy():
    """At least 60 distinct cases, the kill-and-resume, concurrent-run, torn-row and malicious-checkpoint among them."""
    ids = [c.id for c in CLI_CASES] + [c[0] for c in API_CASES]
    assert len(ids) >= 60 and len(set(ids)) == len(ids)
    assert {"fit-killed-after-a-checkpoint", "fit-killed-while-writing-a-checkpoint", "fit-concurrent-runs",
            "scale-killed-in-the-middle-of-a-row", "predict-malicious-checkpoint"} <= set(ids)


def test_ctrl_c_ends_in_one_line(capsys, monkeypatch):
    """Ctrl-C during a command: status 130 and one line, no traceback (the traceback with --debug)."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("hierarchical_meta.__main__.run_render", interrupted)
    assert main(["render", "--out", "x.svg"]) == 130
    assert capsys.readouterr().err.startswith("interrupted")
    with pytest.raises(KeyboardInterrupt):
        main(["render", "--out", "x.svg", "--debug"])
