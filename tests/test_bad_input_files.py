"""Bad run folders, lock files, Ray addresses and study settings, one table row each.

Each case has an id, the input (a function of a :class:`Ctx` that builds files and returns
the command line, or for the Python API makes the call), the outcome class and a fragment of
the expected message: ``"error"`` is exit status 2 with exactly one ``error:`` line holding
the fragment and no traceback (the Python API: a ValueError or OSError holding it);
``"handled"`` is exit status 0 (the API: a returned text) holding the fragment. ``check``
asserts more, e.g. that a lock's link target was neither written nor printed.

Tests run as root, so "read-only" folders are under /proc and /sys, or a file where a
folder is expected.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import profiling
from hierarchical_meta import plots
from hierarchical_meta.__main__ import main as hierarchical_meta_main
from hierarchical_meta.runfiles import LOCK_NAME, check_output_file, hold_folder, output_folder
from profiling import accuracy_study, rows, scale
from profiling.accuracy_study import AccuracyConfig, check_settings
from profiling.study import StudyConfig, ray_endpoint

SECRET = "the link's target: never written, never shown\n"
FIT = ["--steps", "6", "--hidden", "8", "--latent-dim", "2", "--eval-tasks", "8", "--num-samples", "16",
       "--no-progress"]
SCALE = ["--device", "cpu", "--sweeps", "steps", "--methods", "fomaml", "--steps", "1", "--base-units", "8",
         "--repeats", "1", "--warmup", "0", "--seconds-per-config", "0.01", "--isolation", "none"]
RAY = SCALE[:-2] + ["--executor", "ray"]  # Ray isolates every configuration in its own process
ACCURACY = ["--quick", "--device", "cpu", "--seeds", "0", "--pairs", "4", "--noise-stds", "0.01", "--search-steps",
            "2", "--search-pairs", "4", "--quality-pairs", "4", "--quality-draws", "1", "--seconds", "0.3",
            "--eval-seconds", "0.1", "--test-tasks", "4"]
CLIS = {"hierarchical_meta": hierarchical_meta_main, "profiling.scale": scale.main,
        "profiling.accuracy_study": accuracy_study.main}


@pytest.fixture(autouse=True, scope="module")
def no_plots():
    """The plots (the slowest part of a tiny run) are not drawn: no case here is about them."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plots, "plot_predictions", lambda *args, **kwargs: None)
        for name in ("draw_curves", "draw_pareto", "draw_quality"):
            patch.setattr(accuracy_study, name, lambda *args, **kwargs: None)
        yield


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory, no_plots) -> str:
    """One finished accuracy study of ``ACCURACY``'s size (a few seconds), copied by the cases that resume it."""
    out = str(tmp_path_factory.mktemp("study") / "accuracy")
    assert accuracy_study.main(ACCURACY + ["--out", out]) == 0
    return out


@dataclasses.dataclass
class Ctx:
    """What a case's input may use: its temporary folder, monkeypatch, and a copy of the tiny study."""

    tmp: Path
    monkeypatch: pytest.MonkeyPatch
    request: pytest.FixtureRequest
    held: list = dataclasses.field(default_factory=list)  # contexts to leave after the case

    def study(self) -> str:
        out = str(self.tmp / "study")
        shutil.copytree(self.request.getfixturevalue("tiny_study"), out)
        return out

    def hold(self, folder: str) -> None:
        context = hold_folder(folder)
        context.__enter__()
        self.held.append(context)


@dataclasses.dataclass
class Case:
    id: str
    cli: str | None  # one of CLIS, or None: ``input`` is a Python API call
    input: Callable[[Ctx], object]  # the argv for a command line; the API call's result
    outcome: str  # "error" or "handled"
    fragment: str
    check: Callable[[Ctx, str], None] | None = None  # (ctx, the output or the message): more assertions


# -- inputs ---------------------------------------------------------------------------------------

def linked_lock(ctx: Ctx, name: str = "run") -> str:
    """A folder whose .lock is a symbolic link to a file outside it."""
    (ctx.tmp / "target").write_text(SECRET)
    folder = ctx.tmp / name
    folder.mkdir()
    (folder / LOCK_NAME).symlink_to(ctx.tmp / "target")
    return str(folder)


def target_untouched(ctx: Ctx, text: str) -> None:
    assert (ctx.tmp / "target").read_text() == SECRET and SECRET.strip() not in text
    assert (ctx.tmp / "run" / LOCK_NAME).is_symlink()


def fifo_lock(ctx: Ctx) -> str:
    folder = ctx.tmp / "run"
    folder.mkdir()
    os.mkfifo(folder / LOCK_NAME)
    return str(folder)


def stale_lock_with_other_content(ctx: Ctx) -> str:
    """A stale .lock (nobody holds it) holding 10 KB that is not a holder's note: taken over, never shown."""
    (ctx.tmp / LOCK_NAME).write_text("root:x:0:0:" + "s" * 10_000 + "\n")
    told = []
    with hold_folder(str(ctx.tmp), told.append):
        note = (ctx.tmp / LOCK_NAME).read_text()
    return f"{told} {note}"


def no_other_content(ctx: Ctx, text: str) -> None:
    assert "root:x" not in text and "ss" not in text and len(text) < 300
    assert not (ctx.tmp / LOCK_NAME).exists()  # released at the end


def other_content_not_shown(ctx: Ctx, text: str) -> None:
    assert "root:x" not in text and len(text) < 300
    assert (ctx.tmp / LOCK_NAME).read_text().startswith("root:x")  # the holder's file is left as it is


def held_lock_with_other_content(ctx: Ctx) -> None:
    """Another process (here: another open file) holds a .lock whose content is not a holder's note."""
    path = ctx.tmp / LOCK_NAME
    path.write_text("root:x:0:0:" + "s" * 10_000 + "\n")
    with open(path) as other:
        fcntl.flock(other, fcntl.LOCK_EX)
        with hold_folder(str(ctx.tmp)):
            pass


def released_after_rename(ctx: Ctx) -> str:
    with hold_folder(str(ctx.tmp / "a")):
        os.rename(ctx.tmp / "a", ctx.tmp / "b")
    return f"released, leaving {os.listdir(ctx.tmp / 'b')}"


def lock_is_a_folder(ctx: Ctx) -> None:
    (ctx.tmp / LOCK_NAME).mkdir()
    with hold_folder(str(ctx.tmp)):
        pass


def api_linked_lock(ctx: Ctx) -> None:
    with hold_folder(linked_lock(ctx)):
        pass


def study_with(ctx: Ctx, *options: str) -> list[str]:
    """The tiny study's folder resumed with ``options`` changed (a later flag wins in argparse)."""
    return ACCURACY + list(options) + ["--out", ctx.study()]


def study_from_before_settings(ctx: Ctx, *options: str) -> list[str]:
    """The tiny study's folder without settings.json, as a study written before it existed."""
    argv = study_with(ctx, *options)
    os.unlink(os.path.join(argv[-1], "settings.json"))
    return argv


def torn_study(ctx: Ctx) -> list[str]:
    """A kill in the middle of the last run's row of runs.csv: the row is half there, without its newline."""
    argv = study_with(ctx)
    path = Path(argv[-1]) / "runs.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]) + lines[-1][:30])
    return argv


def runs_of(folder: str) -> list[tuple]:
    return [tuple(r[k] for k in accuracy_study.RUN_KEY)
            for r in accuracy_study.read_csv(os.path.join(folder, "runs.csv"), accuracy_study.RUN_COLUMNS)]


def redid_only_the_torn_run(ctx: Ctx, text: str) -> None:
    finished = runs_of(ctx.request.getfixturevalue("tiny_study"))
    again = runs_of(str(ctx.tmp / "study"))
    assert again == finished  # every run once, the torn one measured again at the end
    assert (ctx.tmp / "study" / "runs.csv").read_bytes().endswith(b"\n")


def no_folder_made(ctx: Ctx, text: str) -> None:
    assert not (ctx.tmp / "s").exists()


def nothing_measured_again(ctx: Ctx, text: str) -> None:
    before = Path(ctx.request.getfixturevalue("tiny_study"), "runs.csv").read_text()
    assert (ctx.tmp / "study" / "runs.csv").read_text() == before


def damaged_settings(ctx: Ctx) -> list[str]:
    argv = study_with(ctx)
    Path(argv[-1], "settings.json").write_text("{not json")
    return argv


def damaged_row(ctx: Ctx) -> list[str]:
    argv = study_with(ctx)
    path = Path(argv[-1], "runs.csv")
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace(",0,", ",zero,", 1)
    path.write_text("".join(lines))
    return argv


def study_in_use(ctx: Ctx) -> list[str]:
    argv = study_with(ctx)
    ctx.hold(argv[-1])
    return argv


def without_ray_client(ctx: Ctx) -> list[str]:
    pytest.importorskip("ray")
    ctx.monkeypatch.setitem(sys.modules, "grpc", None)  # as if ray[client] were not installed
    return RAY + ["--address", "ray://head:10001", "--out", str(ctx.tmp / "s")]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the with block ends: nobody listens there


def unreachable_ray(ctx: Ctx) -> list[str]:
    pytest.importorskip("ray")
    unreachable_ray.started = time.monotonic()
    return RAY + ["--address", f"127.0.0.1:{closed_port()}", "--out", str(ctx.tmp / "s")]


def failed_fast(ctx: Ctx, text: str) -> None:
    assert time.monotonic() - unreachable_ray.started < 30  # Ray alone waits minutes
    assert "Traceback" not in text


def malformed_ray_address(ctx: Ctx) -> list[str]:
    pytest.importorskip("ray")
    return RAY + ["--address", "head", "--out", str(ctx.tmp / "s")]


def client_check(ctx: Ctx) -> None:
    pytest.importorskip("ray")
    ctx.monkeypatch.setitem(sys.modules, "grpc", None)  # as if ray[client] were not installed
    StudyConfig(device="cpu", executor="ray", address="ray://head:10001")


def nan_in(field: str, index: tuple, value: float) -> Callable[[Ctx], None]:
    """meta_gradient on a batch whose ``field`` holds ``value`` at ``index``."""
    def call(ctx: Ctx) -> None:
        batch = profiling.sample_sinusoid_tasks(2, generator=torch.Generator().manual_seed(0))
        tensor = getattr(batch, field).clone()
        tensor[index] = value
        params = dict(profiling.build_mlp(1, 8).named_parameters())
        profiling.meta_gradient("fomaml", params, dataclasses.replace(batch, **{field: tensor}))
    return call


def other_settings(ctx: Ctx) -> None:
    os.makedirs(ctx.tmp / "s")
    check_settings(str(ctx.tmp / "s"), AccuracyConfig(hidden=40), "cpu")
    check_settings(str(ctx.tmp / "s"), AccuracyConfig(hidden=64), "cpu")


def same_settings(ctx: Ctx) -> str:
    os.makedirs(ctx.tmp / "s")
    for target in (None, 0.5, None):  # the target is derived from the rows, not measured: it may change
        check_settings(str(ctx.tmp / "s"), AccuracyConfig(target=target), "cpu")
    return json.loads((ctx.tmp / "s" / "settings.json").read_text())["device"] + " settings kept"


def short_row(ctx: Ctx) -> None:
    (ctx.tmp / "r.csv").write_text("a,b\n1,2\n3\n")
    rows.read_rows(str(ctx.tmp / "r.csv"))


def torn_last_row(ctx: Ctx) -> str:
    (ctx.tmp / "r.csv").write_text("a,b\n1,2\n3,")
    return f"{len(rows.read_rows(str(ctx.tmp / 'r.csv')))} complete row"


def fit(folder: str) -> list[str]:
    return ["fit", "--out", folder] + FIT


# -- the table ---------------------------------------------------------------------------------------

CASES = [
    # a .lock that is not a lock file this program made: a link is never followed, its target never written
    Case("fit-lock-is-a-link", "hierarchical_meta", lambda c: fit(linked_lock(c)), "error", "not a lock file",
         check=target_untouched),
    Case("demo-lock-is-a-link", "hierarchical_meta", lambda c: ["demo", "--out", linked_lock(c)] + FIT, "error",
         "not a lock file", check=target_untouched),
    Case("scale-lock-is-a-link", "profiling.scale", lambda c: SCALE + ["--out", linked_lock(c)], "error",
         "not a lock file", check=target_untouched),
    Case("accuracy-lock-is-a-link", "profiling.accuracy_study", lambda c: ACCURACY + ["--out", linked_lock(c)],
         "error", "not a lock file", check=target_untouched),
    Case("fit-lock-is-a-fifo", "hierarchical_meta", lambda c: fit(fifo_lock(c)), "error", "not a lock file"),
    Case("api-lock-is-a-link", None, api_linked_lock, "error", "not a lock file", check=target_untouched),
    Case("api-lock-is-a-folder", None, lock_is_a_folder, "error", "not a lock file"),
    Case("api-stale-lock-with-other-content", None, stale_lock_with_other_content, "handled",
         "it named no holder", check=no_other_content),
    Case("api-held-lock-with-other-content", None, held_lock_with_other_content, "error",
         "in use by another run (another process)", check=other_content_not_shown),
    Case("api-folder-renamed-while-held", None, released_after_rename, "handled", "released, leaving []"),
    # output folders nothing can be written in
    Case("fit-out-under-proc", "hierarchical_meta", lambda c: fit("/proc/hierarchical-meta-test/run"), "error",
         "cannot create output folder '/proc/hierarchical-meta-test/run'"),
    Case("fit-out-under-sys", "hierarchical_meta", lambda c: fit("/sys/hierarchical-meta-test"), "error",
         "cannot create output folder '/sys/hierarchical-meta-test'"),
    Case("fit-out-is-a-read-only-folder", "hierarchical_meta", lambda c: fit("/proc/self"), "error",
         "cannot write in output folder '/proc/self'"),
    Case("render-out-in-a-read-only-folder", "hierarchical_meta", lambda c: ["render", "--out", "/proc/x.svg"],
         "error", "cannot write in the folder of --out '/proc'"),
    Case("scale-out-under-proc", "profiling.scale", lambda c: SCALE + ["--out", "/proc/hierarchical-meta-test"],
         "error", "cannot create output folder"),
    Case("scale-out-is-a-read-only-folder", "profiling.scale", lambda c: SCALE + ["--out", "/proc/self"], "error",
         "cannot write in output folder '/proc/self'"),
    Case("accuracy-out-under-sys", "profiling.accuracy_study", lambda c: ACCURACY + ["--out", "/sys/hm-test"],
         "error", "cannot create output folder '/sys/hm-test'"),
    Case("accuracy-out-in-place-of-a-file", "profiling.accuracy_study",
         lambda c: ((c.tmp / "f").write_text("x"), ACCURACY + ["--out", str(c.tmp / "f" / "out")])[1], "error",
         "cannot create output folder"),
    Case("accuracy-out-is-a-file", "profiling.accuracy_study",
         lambda c: ((c.tmp / "f").write_text("x"), ACCURACY + ["--out", str(c.tmp / "f")])[1], "error",
         "is an existing file"),
    Case("api-output-folder-under-proc", None, lambda c: output_folder("/proc/hm-test"), "error", "cannot create"),
    Case("api-output-folder-read-only", None, lambda c: output_folder("/proc/self"), "error", "cannot write in"),
    Case("api-output-file-in-a-read-only-folder", None, lambda c: check_output_file("/proc/x.csv", "predictions"),
         "error", "cannot write in the folder of predictions '/proc'"),
    # the accuracy study: resuming a folder measured with other settings, the lock, torn and damaged rows
    Case("accuracy-other-network", "profiling.accuracy_study", lambda c: study_with(c, "--hidden", "64"), "error",
         "was measured with --hidden 16, this run asks 64: use another --out or the same options"),
    Case("accuracy-several-differences", "profiling.accuracy_study",
         lambda c: study_with(c, "--seeds", "0,1", "--seconds", "0.5", "--noise-stds", "0.01,0.1"), "error",
         "--seeds 0, this run asks 0,1; --seconds 0.3, this run asks 0.5; --noise-stds 0.01, this run asks 0.01,0.1"),
    Case("accuracy-plots-only-with-other-settings", "profiling.accuracy_study",
         lambda c: study_with(c, "--plots-only", "--layers", "2"), "error", "--layers 1, this run asks 2"),
    Case("accuracy-folder-from-before-settings-file", "profiling.accuracy_study",
         lambda c: study_from_before_settings(c, "--hidden", "64"), "error", "--hidden 16, this run asks 64"),
    Case("accuracy-damaged-settings-file", "profiling.accuracy_study", damaged_settings, "error",
         "is not the study's settings file"),
    Case("accuracy-duplicate-seeds", "profiling.accuracy_study", lambda c: ACCURACY + ["--seeds", "0,0", "--out",
                                                                                      str(c.tmp / "s")],
         "error", "seeds=(0, 0) gives 0 more than once", check=no_folder_made),
    Case("accuracy-duplicate-pairs", "profiling.accuracy_study", lambda c: ACCURACY + ["--pairs", "4,16,4", "--out",
                                                                                      str(c.tmp / "s")],
         "error", "gives 4 more than once"),
    Case("accuracy-folder-in-use", "profiling.accuracy_study", study_in_use, "error", "is in use by another run"),
    Case("accuracy-damaged-row", "profiling.accuracy_study", damaged_row, "error", "runs.csv, line 2"),
    Case("accuracy-same-settings-resumes", "profiling.accuracy_study", study_with, "handled", "wrote",
         check=nothing_measured_again),
    Case("accuracy-other-target-is-not-a-new-measurement", "profiling.accuracy_study",
         lambda c: study_with(c, "--target", "0.5", "--plots-only"), "handled", "T1 = 0.5",
         check=nothing_measured_again),
    Case("accuracy-killed-in-the-middle-of-a-row", "profiling.accuracy_study", torn_study, "handled",
         "dropped a row torn by a killed run", check=redid_only_the_torn_run),
    Case("api-accuracy-duplicate-seeds", None, lambda c: AccuracyConfig(seeds=(0, 1, 0)), "error",
         "gives 0 more than once"),
    Case("api-accuracy-other-settings", None, other_settings, "error", "--hidden 40, this run asks 64"),
    Case("api-accuracy-same-settings", None, same_settings, "handled", "cpu settings kept"),
    Case("api-csv-short-row", None, short_row, "error", "line 3"),
    Case("api-csv-torn-last-row", None, torn_last_row, "handled", "1 complete row"),
    # Ray addresses
    Case("scale-ray-client-not-installed", "profiling.scale", without_ray_client, "error",
         "needs Ray's client part (ray[client])"),
    Case("scale-ray-address-unreachable", "profiling.scale", unreachable_ray, "error",
         "cannot reach the Ray cluster at '127.0.0.1:", check=failed_fast),
    Case("scale-ray-address-malformed", "profiling.scale", malformed_ray_address, "error",
         "address='head' is not a Ray cluster address: give ray://HEAD:10001"),
    Case("api-ray-client-not-installed", None, client_check, "error", "pip install 'hierarchical-meta[cluster]'"),
    Case("api-ray-address-without-port", None, lambda c: ray_endpoint("ray://head"), "error",
         "not a Ray cluster address"),
    Case("api-ray-address-bad-port", None, lambda c: ray_endpoint("head:99999"), "error", "not a Ray cluster"),
    Case("api-ray-address-parsed", None, lambda c: str(ray_endpoint("ray://[::1]:10001")), "handled",
         "('::1', 10001)"),
    # NaN and infinity in the data of a meta-gradient
    Case("api-meta-gradient-nan-support-y", None, nan_in("y_support", (0, 1, 0), float("nan")), "error",
         "y_support holds NaN or infinite values"),
    Case("api-meta-gradient-inf-query-x", None, nan_in("x_query", (1, 0, 0), float("inf")), "error",
         "x_query holds NaN or infinite values"),
    Case("api-meta-gradient-nan-query-y", None, nan_in("y_query", (0, 0, 0), float("nan")), "error",
         "y_query holds NaN"),
]


def run_cli(case: Case, ctx: Ctx, capsys) -> tuple[int, str]:
    argv = case.input(ctx)
    capsys.readouterr()
    try:
        code = CLIS[case.cli](argv)
    except SystemExit as exit_info:  # argparse
        code = exit_info.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_case(case, tmp_path, capsys, monkeypatch, request):
    ctx = Ctx(tmp_path, monkeypatch, request)
    try:
        if case.cli is None:
            text = api_case(case, ctx)
        else:
            code, text = run_cli(case, ctx, capsys)
            assert "Traceback" not in text
            assert code == (2 if case.outcome == "error" else 0), text
            errors = [line for line in text.splitlines() if "error:" in line]
            assert len(errors) == (1 if case.outcome == "error" else 0), text
            assert case.fragment in (errors[0] if errors else text), text
    finally:
        for context in ctx.held:
            context.__exit__(None, None, None)
    if case.check:
        case.check(ctx, text)


def api_case(case: Case, ctx: Ctx) -> str:
    if case.outcome == "handled":
        text = case.input(ctx)
        assert case.fragment in text
        return text
    with pytest.raises((ValueError, OSError)) as raised:
        case.input(ctx)
    assert case.fragment in str(raised.value)
    return str(raised.value)


def test_the_table_covers_both_outcomes_and_every_command_line():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) >= 40
    assert {c.outcome for c in CASES} == {"error", "handled"}
    assert {c.cli for c in CASES} == {None, *CLIS}
