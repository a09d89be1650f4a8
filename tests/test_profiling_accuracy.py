"""The accuracy-matched comparison: its pieces against references, and the study end to end (--quick)."""

import csv
import itertools
import math
import os

import pytest
import torch

import profiling
from profiling import accuracy_study
from profiling.accuracy import (
    CurvePoint,
    MetaTrainer,
    Setting,
    es_error_law,
    es_gradient_quality,
    meta_test_loss,
    meta_train,
    time_to_target,
    train_side_by_side,
)
from profiling.accuracy_study import CURVE_COLUMNS, RUN_COLUMNS, read_csv, targets, time_to_target_table

F64 = torch.float64


def make(layers=1, hidden=8, tasks=6, seed=0, dtype=F64):
    torch.manual_seed(seed)
    params = {k: v.detach() for k, v in profiling.build_mlp(layers, hidden).to(dtype).named_parameters()}
    batch = profiling.sample_sinusoid_tasks(tasks, num_support=5, num_query=7,
                                            generator=torch.Generator().manual_seed(seed + 1), dtype=dtype)
    return params, batch


def test_meta_test_loss_is_the_maml_meta_objective():
    params, batch = make()
    reference = profiling.meta_gradient("maml", params, batch, inner_steps=3, inner_lr=0.05, impl="loop")[0]
    assert meta_test_loss(params, batch, 3, 0.05) == pytest.approx(float(reference), rel=1e-12)


def test_meta_train_same_init_and_tasks_for_every_method():
    params, test = make(dtype=torch.float32)
    kwargs = dict(seed=3, outer_lr=1e-2, inner_steps=2, inner_lr=0.05, num_tasks=4, eval_seconds=1e-9, max_steps=5)
    before = {k: v.clone() for k, v in params.items()}
    maml = list(meta_train(Setting("maml"), params, test, **kwargs))
    checkpointed = list(meta_train(Setting("maml_checkpointed"), params, test, **kwargs))
    fomaml = list(meta_train(Setting("fomaml"), params, test, **kwargs))
    assert all(torch.equal(params[k], before[k]) for k in params)  # θ_0 is copied, not trained in place
    assert [p.outer_step for p in maml] == list(range(6))  # eval_seconds ≈ 0: every step
    assert maml[0].meta_test_mse == checkpointed[0].meta_test_mse == fomaml[0].meta_test_mse
    assert maml[0].meta_test_mse == pytest.approx(meta_test_loss(params, test, 2, 0.05))
    # the same tasks and the same gradient: the same trajectory (float32 rounding only)
    for a, b in zip(maml, checkpointed, strict=True):
        assert a.meta_test_mse == pytest.approx(b.meta_test_mse, rel=1e-5)
    assert abs(fomaml[-1].meta_test_mse - maml[-1].meta_test_mse) > 1e-6  # a different gradient
    assert all(b.seconds > a.seconds for a, b in itertools.pairwise(maml))


def test_side_by_side_training_is_training_alone_interleaved():
    params, test = make(dtype=torch.float32)
    kwargs = dict(seed=1, outer_lr=1e-2, inner_steps=2, inner_lr=0.05, num_tasks=4)
    settings = [Setting("maml"), Setting("es", pairs=4, noise_std=1e-2), Setting("fomaml")]
    trainers = [MetaTrainer(s, params, **kwargs) for s in settings]
    together = {i: [] for i in range(3)}
    finished = []
    for i, point, last in train_side_by_side(trainers, test, eval_seconds=1e-9, max_steps=4):
        together[i].append(point.meta_test_mse)
        if last:
            finished.append(i)
    assert sorted(finished) == [0, 1, 2]
    for i, setting in enumerate(settings):  # each has its own tasks and noise: interleaving changes nothing
        alone = [p.meta_test_mse for p in meta_train(setting, params, test, eval_seconds=1e-9, max_steps=4, **kwargs)]
        assert together[i] == alone
    # with a time budget, each trains for its own seconds, whatever the others cost
    trainers = [MetaTrainer(s, params, **kwargs) for s in settings]
    list(train_side_by_side(trainers, test, eval_seconds=0.05, max_seconds=0.2))
    assert all(0.2 <= t.seconds < 0.5 for t in trainers)


def test_meta_train_stops_on_its_time_budget():
    params, test = make(dtype=torch.float32)
    points = list(meta_train(Setting("fomaml"), params, test, seed=0, outer_lr=1e-2, inner_steps=1, inner_lr=0.05,
                             num_tasks=2, eval_seconds=0.05, max_seconds=0.2))
    assert 0.2 <= points[-1].seconds < 1.0 and points[-1].outer_step > 1
    with pytest.raises(ValueError, match="max_steps and max_seconds"):
        next(meta_train(Setting("maml"), params, test, seed=0, outer_lr=1e-2, inner_steps=1, inner_lr=0.05,
                        num_tasks=2, eval_seconds=1.0))


def test_time_to_target_is_the_first_crossing():
    points = [CurvePoint(20, 2.0, 0.3), CurvePoint(0, 0.0, 0.9), CurvePoint(10, 1.0, 0.5), CurvePoint(30, 3.0, 0.6)]
    assert time_to_target(points, 0.5) == CurvePoint(10, 1.0, 0.5)  # ≤ counts; order of the list does not
    assert time_to_target(points, 0.4).outer_step == 20
    assert time_to_target(points, 0.1) is None


@pytest.mark.parametrize("pairs", [8, 3])  # 8: each of the 4 tasks twice; 3: task 0 and 3 share a pair (biased)
def test_es_error_law_matches_monte_carlo_on_a_quadratic(pairs):
    # no hidden layer: J is exactly quadratic in θ, so ES is ĝ = (1/P) Σ_i ε_i ε_iᵀ h_i for any σ
    g = torch.Generator().manual_seed(0)
    params = {"0.weight": torch.randn(1, 1, generator=g, dtype=F64), "0.bias": torch.randn(1, generator=g, dtype=F64)}
    batch = profiling.sample_sinusoid_tasks(4, num_support=5, num_query=7, generator=g, dtype=F64)
    kwargs = dict(inner_steps=3, inner_lr=0.1)
    law = es_error_law(params, batch, pairs, **kwargs)
    draws = list(es_gradient_quality(params, batch, pairs, 1e-3, range(4000), **kwargs))
    mean_square = sum(rel**2 for _, _, rel in draws) / len(draws)
    # E r² = law²; the mean of 4000 draws of r² (heavy-tailed, a ratio of quadratic forms of
    # Gaussians) is within ~5% of it (seeded); 15% leaves room without being vacuous
    assert mean_square == pytest.approx(law**2, rel=0.15)
    assert all(-1 <= cos <= 1 for _, cos, _ in draws)


def test_settings_are_checked():
    assert Setting("es", pairs=16, noise_std=1e-2).label == "es P=16"
    assert Setting("maml_checkpointed").label == "maml_checkpointed"
    with pytest.raises(ValueError, match="pairs and noise_std"):
        Setting("es")
    with pytest.raises(ValueError, match="pairs and noise_std"):
        Setting("maml", pairs=4, noise_std=1e-3)
    with pytest.raises(ValueError, match="method='reptile'"):
        Setting("reptile")


def run_row(method, seed, best, initial=0.8, pairs=None, label=None):
    return {"phase": "compare", "method": method, "pairs": pairs, "noise_std": 1e-2 if pairs else None, "seed": seed,
            "label": label or method, "best_mse": best, "initial_mse": initial, "final_mse": best, "peak_mb": 1.0,
            "saved_peak_mb": 0.5, "seconds": 10.0, "outer_steps": 100}


def curve(row, values):  # evaluations every second, every 10 steps
    return [{**{k: row[k] for k in ("phase", "method", "pairs", "noise_std", "seed")},
             "outer_step": 10 * i, "seconds": float(i), "meta_test_mse": v} for i, v in enumerate(values)]


def test_targets_and_time_to_target_table():
    runs = [run_row("maml", 0, 0.1234), run_row("maml", 1, 0.2), run_row("es", 0, 0.5, pairs=16, label="es P=16"),
            run_row("es", 1, 0.7, pairs=16, label="es P=16")]
    curves = (curve(runs[0], [0.8, 0.5, 0.1234]) + curve(runs[1], [0.8, 0.6, 0.4, 0.2])
              + curve(runs[2], [0.8, 0.6, 0.5]) + curve(runs[3], [0.8, 0.7]))
    goals = targets(runs, curves, half_time=2.0)
    assert goals["T1"] == 0.4  # within 2 s every MAML seed reaches 0.4 (seed 1 gets to 0.2 only at 3 s)
    assert goals["T2"] == pytest.approx(0.8 - 0.5 * 0.4) and goals["T3"] == pytest.approx(0.8 - 0.2 * 0.4)
    assert targets(runs, curves, half_time=10.0)["T1"] == 0.2  # rounded up to 2 significant digits: 0.2
    assert targets(runs, curves, half_time=2.0, target=0.3)["T1"] == 0.3
    goals = {"T1": 0.2, "T2": 0.5}
    table = {(r["target"], r["label"]): r for r in time_to_target_table(runs, curves, goals)}
    assert table["T1", "maml"]["reached"] == 2 and table["T1", "maml"]["seconds_median"] == 2.5
    assert (table["T1", "maml"]["seconds_min"], table["T1", "maml"]["seconds_max"]) == (2.0, 3.0)
    assert table["T2", "es P=16"]["reached"] == 1 and table["T2", "es P=16"]["seconds_median"] == math.inf
    assert table["T2", "es P=16"]["seconds_min"] == 2.0
    with pytest.raises(ValueError, match="no finished MAML run"):
        targets(runs[2:], curves, half_time=2.0)


def test_target_stays_below_the_initial_mse():
    """A short budget: rounding MAML's best 0.7951 up to 2 digits would give 0.8, the initial MSE,
    which every run meets at step 0; T1 takes a third digit instead."""
    runs = [run_row("maml", 0, 0.7951), run_row("maml", 1, 0.79)]
    curves = curve(runs[0], [0.8, 0.7951]) + curve(runs[1], [0.8, 0.79])
    assert targets(runs, curves, half_time=2.0)["T1"] == 0.796
    table = time_to_target_table(runs, curves, targets(runs, curves, half_time=2.0))
    assert all(r["seconds_median"] > 0 for r in table)


@pytest.mark.parametrize("argv, message", [
    (["--pairs", "0"], "pairs=(0,)"),
    (["--seeds", "-1"], "seeds=(-1,)"),
    (["--seconds", "nan"], "seconds=nan"),
    (["--device", "tpu"], "device='tpu'"),
    (["--threads", "0"], "--threads=0"),
])
def test_cli_rejects_bad_input_before_work(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit):
        accuracy_study.main(argv + ["--out", str(tmp_path / "out")])
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out")


def test_quick_study_runs_resumes_and_draws(tmp_path):
    out = str(tmp_path / "accuracy")
    argv = ["--quick", "--device", "cpu", "--out", out]
    assert accuracy_study.main(argv) == 0
    names = set(os.listdir(out))
    assert {"runs.csv", "curves.csv", "quality.csv", "time_to_target.csv", "summary.md", "loss_vs_time.png",
            "pareto.png", "es_gradient_quality.png"} <= names
    runs = read_csv(os.path.join(out, "runs.csv"), RUN_COLUMNS)
    quick = accuracy_study.QUICK
    assert len(runs) == len(quick.noise_stds) + len(quick.seeds) * (3 + len(quick.pairs))
    assert {r["method"] for r in runs} == {"maml", "maml_checkpointed", "fomaml", "es"}
    # the checkpointed MAML saves less for backward than MAML, and ES saves nothing
    saved = {r["method"]: r["saved_peak_mb"] for r in runs if r["phase"] == "compare"}
    assert saved["es"] == 0 < saved["maml_checkpointed"] < saved["maml"]
    # kill the last run before it finished: its runs.csv row is missing, its partial curve is there
    with open(os.path.join(out, "runs.csv"), newline="") as f:
        lines = f.readlines()
    with open(os.path.join(out, "runs.csv"), "w", newline="") as f:
        f.writelines(lines[:-1])
    last = runs[-1]
    assert accuracy_study.main(argv) == 0
    again = read_csv(os.path.join(out, "runs.csv"), RUN_COLUMNS)
    assert len(again) == len(runs) and again[:-1] == runs[:-1]  # only the killed run was redone
    key = ("phase", "method", "pairs", "noise_std", "seed")
    steps = [c["outer_step"] for c in read_csv(os.path.join(out, "curves.csv"), CURVE_COLUMNS)
             if all(c[k] == last[k] for k in key)]
    assert steps[0] == 0 and steps == sorted(set(steps))  # one clean curve, the partial one dropped
    with open(os.path.join(out, "quality.csv"), newline="") as f:
        quality = list(csv.DictReader(f))
    sigmas = {float(q["noise_std"]) for q in quality}
    assert len(quality) == len(quick.quality_pairs) * quick.quality_draws * len(sigmas)
    with open(os.path.join(out, "summary.md")) as f:
        summary = f.read()
    assert "T3" in summary and "chosen" in summary and "variance law" in summary
