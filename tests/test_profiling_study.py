"""The measurement, the study's CLI (resume, OOM, bad input) and the benchmark, at tiny size."""

import math
import os

import pytest
import torch

import profiling
from profiling import benchmark, scale
from profiling.measure import measure, peak_memory_bytes, resolve_device, saved_tensor_peak_bytes
from profiling.study import (
    REPEATS,
    SECONDS_PER_CONFIG,
    Config,
    StudyConfig,
    append_row,
    configurations,
    measure_config,
    read_rows,
)

CPU = torch.device("cpu")


def test_cpu_peak_counts_the_peak_not_what_is_left():
    def step():
        a = torch.ones(1_000_000)  # 4 MB
        b = torch.ones(1_000_000)  # 4 MB: both alive at the peak
        del a, b
        return torch.ones(1000)  # 4 kB left when the step returns, freed after
    peak = peak_memory_bytes(step, CPU)
    # exactly 8 MB of tensors plus small bookkeeping allocations, never less
    assert 8_000_000 <= peak < 8_100_000


def test_saved_tensor_peak_grows_with_inner_steps_for_maml_only():
    torch.manual_seed(0)
    params = dict(profiling.build_mlp(2, 16).named_parameters())
    batch = profiling.sample_sinusoid_tasks(4, generator=torch.Generator().manual_seed(0))

    def saved(method, steps):
        return saved_tensor_peak_bytes(lambda: profiling.meta_gradient(method, params, batch, inner_steps=steps))

    maml = [saved("maml", L) for L in (1, 2, 4)]
    assert maml[0] < maml[1] < maml[2]
    # MAML keeps each inner step's activations, masks and adapted weights: equal increments
    assert abs((maml[2] - maml[1]) - 2 * (maml[1] - maml[0])) < 0.01 * maml[2]
    assert saved("es", 1) == saved("es", 4) == 0  # batched ES keeps no graph at all
    assert saved("fomaml", 1) == saved("fomaml", 4) > 0  # only the query pass at φ_L


def test_measure_returns_a_consistent_row():
    m = measure(lambda: torch.ones(1000).sum(), CPU, repeats=5, warmup=1)
    assert m.time_q25_ms <= m.time_median_ms <= m.time_q75_ms and m.repeats == 5
    assert m.threads == 1 and m.load_1min >= 0


def test_resolve_device_refuses_missing_cuda():
    assert resolve_device("cpu") == CPU
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="device='tpu'"):
        resolve_device("tpu")


def test_out_of_memory_is_recorded(monkeypatch):
    def explode(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 TiB")
    monkeypatch.setattr("profiling.study.meta_gradient", explode)
    row = measure_config(Config("maml", "batched", "units", 5, 2, 32), CPU, repeats=3)
    assert row["status"] == "oom" and math.isnan(row["time_median_ms"])


def test_configurations_and_bad_sweeps():
    todo = configurations(["maml", "es"], ["steps", "units"], "batched", quick=True)
    assert len(todo) == 2 * 3 + 2 * 3
    assert {c.layers for c in todo} == {2} and {c.inner_steps for c in todo if c.sweep == "units"} == {5}
    with pytest.raises(ValueError, match="depth"):
        configurations(["maml"], ["depth"], "batched")
    with pytest.raises(ValueError, match="method='reptile'"):
        configurations(["reptile"], ["steps"], "batched")
    with pytest.raises(ValueError, match="impl='fast'"):
        configurations(["maml"], ["steps"], "fast")


@pytest.mark.parametrize("argv, message", [
    (["--sweeps", "depth"], "depth"),
    (["--methods", "reptile"], "reptile"),
    (["--steps", "0,2"], "positive"),
    (["--units", "-32"], "positive"),
    (["--repeats", "0"], "repeats=0"),
    (["--warmup", "-1"], "warmup=-1"),
    (["--base-units", "0"], "hidden=0"),
])
def test_cli_rejects_bad_input_before_work(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit):
        scale.main(argv + ["--device", "cpu", "--out", str(tmp_path)])
    assert message in capsys.readouterr().err
    assert not os.listdir(tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cli_refuses_cuda_without_one(capsys, tmp_path):
    with pytest.raises(SystemExit):
        scale.main(["--device", "cuda", "--out", str(tmp_path)])
    assert "CUDA is not available" in capsys.readouterr().err


def test_cli_help_names_the_implementations(capsys):
    with pytest.raises(SystemExit):
        scale.main(["--help"])
    out = capsys.readouterr().out
    assert "batched" in out and "vmap" in out and "--quick" in out and "--out" in out


def test_study_runs_resumes_and_draws(tmp_path):
    out = str(tmp_path / "scale")
    argv = ["--device", "cpu", "--out", out, "--sweeps", "steps", "--methods", "maml,es", "--steps", "1,2",
            "--base-units", "16", "--repeats", "2", "--warmup", "0", "--seconds-per-config", "0.05",
            "--isolation", "none"]
    # a first run that was killed after one configuration: its row is in the CSV
    first = measure_config(Config("maml", "batched", "steps", 1, 2, 16), CPU, repeats=2, warmup=0)
    os.makedirs(out)
    append_row(os.path.join(out, "scale.csv"), first)
    assert scale.main(argv) == 0
    rows = read_rows(os.path.join(out, "scale.csv"))
    keys = [(r["method"], r["inner_steps"]) for r in rows]
    assert sorted(keys) == [("es", 1), ("es", 2), ("maml", 1), ("maml", 2)]  # the first row was not redone
    assert all(r["status"] == "ok" and r["device"] == "cpu" and r["hidden"] == 16 for r in rows)
    names = set(os.listdir(out))
    assert {"runtime_vs_steps.png", "memory_vs_steps.png", "combined.png", "summary.txt"} <= names
    with open(os.path.join(out, "summary.txt")) as f:
        summary = f.read()
    assert "RAN ON THE CPU" in summary and "MB per inner step" in summary
    # nothing left to do: the CSV is unchanged; the same run from Python
    config = StudyConfig(methods=("maml", "es"), sweeps=("steps",), steps=(1, 2), base_units=16, repeats=2,
                         warmup=0, seconds_per_config=0.05, isolation="none", device="cpu")
    assert "RAN ON THE CPU" in scale.run_study(config, out, "a command")
    assert len(read_rows(os.path.join(out, "scale.csv"))) == 4


def test_study_config_is_the_one_home_of_the_defaults(capsys):
    full, quick = StudyConfig(device="cpu").timing, StudyConfig(device="cpu", quick=True).timing
    assert (full["repeats"], full["seconds_per_config"], full["threads"]) == (REPEATS["full"],
                                                                              SECONDS_PER_CONFIG["full"], 1)
    assert (quick["repeats"], quick["seconds_per_config"]) == (REPEATS["quick"], SECONDS_PER_CONFIG["quick"])
    assert StudyConfig(device="cpu", repeats=7).timing["repeats"] == 7
    with pytest.raises(SystemExit):
        scale.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"(default {REPEATS['full']}; {REPEATS['quick']} with --quick)" in out
    assert f"(default {SECONDS_PER_CONFIG['full']:g} s; {SECONDS_PER_CONFIG['quick']:g} s with --quick)" in out
    assert f"(default {StudyConfig().base_units})" in out


@pytest.mark.parametrize("field, value, message", [
    ("repeats", 0, "repeats=0"), ("seconds_per_config", 0.0, "seconds_per_config=0.0"),
    ("isolation", "thread", "isolation='thread'"), ("methods", ("reptile",), "reptile"),
    ("steps", (0,), "values must be positive"),
])
def test_study_config_rejects_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        StudyConfig(device="cpu", **{field: value})


def test_study_in_worker_processes(tmp_path):
    out = str(tmp_path / "scale")
    argv = ["--device", "cpu", "--out", out, "--sweeps", "layers", "--methods", "fomaml", "--layers", "1",
            "--base-units", "8", "--repeats", "1", "--warmup", "0", "--seconds-per-config", "0.05"]
    assert scale.main(argv) == 0
    (row,) = read_rows(os.path.join(out, "scale.csv"))
    assert row["status"] == "ok" and row["threads"] == 1 and row["layers"] == 1


@pytest.mark.parametrize("argv, message", [
    (["--repeats", "0"], "--repeats=0"),
    (["--threads", "0"], "--threads=0"),
    (["--device", "tpu"], "device='tpu'"),
])
def test_benchmark_rejects_bad_input_before_work(argv, message, capsys):
    with pytest.raises(SystemExit):
        benchmark.main(argv)
    assert message in capsys.readouterr().err


def test_benchmark_runs_every_method_and_impl():
    times = benchmark.run_benchmark("cpu", repeats=1, hidden=16, num_tasks=4, pairs=2, inner_steps=2)
    assert set(times) == {(m, i) for m in profiling.METHODS for i in profiling.IMPLEMENTATIONS}
    assert all(len(t) == 1 and t[0] > 0 for t in times.values())


def test_full_steps_sweep_extends_only_the_exact_mamls_to_long_inner_loops():
    from profiling.algorithms import METHODS
    from profiling.study import EXACT_MAML_STEPS, EXACT_MAMLS, SWEEPS
    configs = configurations(list(METHODS), ["steps"], "batched")
    for method in METHODS:
        steps = [c.inner_steps for c in configs if c.method == method]
        assert steps == SWEEPS["full"]["steps"] + (EXACT_MAML_STEPS if method in EXACT_MAMLS else [])
    assert "maml_checkpointed" in METHODS and max(EXACT_MAML_STEPS) == 128
    overridden = configurations(["maml"], ["steps"], "batched", values={"steps": [1, 2]})
    assert [c.inner_steps for c in overridden] == [1, 2]  # explicit values are taken as given
