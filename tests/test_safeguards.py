"""Exact checks on the small functions whose silent failure changes every reported number.

Each test here fails if its function is replaced by the do-nothing version (corruption
returning its input, a mask keeping every point, β fixed at 1, shuffling as the identity,
a fitted slope off by a factor). Stochastic checks draw many tasks from a seeded generator
and hold a fraction to its nominal value within 5 binomial standard errors.
"""

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from hierarchical_meta.evaluate import shuffle_metadata
from hierarchical_meta.tasks import SinusoidTasks
from hierarchical_meta.train import DIVERGED_ELBO_DROP, TrainConfig, corrupt_metadata, heldout_collapse, ragged_mask
from profiling.growth import fit, growth_table, summary_text
from profiling.study import read_rows

ROOT = Path(__file__).resolve().parents[1]
TASKS = 20_000


def within_binomial(count: int, total: int, p: float, sds: float = 5.0) -> bool:
    """``count / total`` within ``sds`` binomial standard errors of ``p``."""
    return abs(count / total - p) <= sds * math.sqrt(p * (1 - p) / total)


# ---- corrupt_metadata: drop a fraction, swap a fraction, keep the rest -----------------

def corrupted(dropout, swap, seed=0):
    metadata = torch.arange(TASKS * 2, dtype=torch.float32).reshape(TASKS, 2)  # every row distinct
    out = corrupt_metadata(metadata, dropout, swap, torch.Generator().manual_seed(seed))
    dropped = out.isnan().all(1)
    kept = (out == metadata).all(1)
    swapped = ~dropped & ~kept
    return metadata, out, dropped, kept, swapped


@pytest.mark.parametrize("dropout,swap", [(0.1, 0.1), (0.3, 0.0), (0.0, 0.25), (0.5, 0.5)])
def test_corrupt_metadata_drops_and_swaps_the_configured_fractions(dropout, swap):
    metadata, out, dropped, kept, swapped = corrupted(dropout, swap)
    assert (out.isnan().any(1) == dropped).all()                    # a task loses all of m or none
    assert within_binomial(int(dropped.sum()), TASKS, dropout)
    assert within_binomial(int(swapped.sum()), TASKS, swap)
    assert within_binomial(int(kept.sum()), TASKS, 1 - dropout - swap)
    rows = {tuple(r) for r in metadata.tolist()}
    assert all(tuple(r) in rows for r in out[swapped].tolist())   # another task's m, not noise


def test_corrupt_metadata_without_corruption_is_the_identity():
    metadata, out, dropped, kept, swapped = corrupted(0.0, 0.0)
    assert kept.all() and not dropped.any() and not swapped.any()


def test_corrupt_metadata_is_seeded():
    assert torch.equal(corrupted(0.1, 0.1, seed=3)[1].nan_to_num(-1), corrupted(0.1, 0.1, seed=3)[1].nan_to_num(-1))
    assert not torch.equal(corrupted(0.1, 0.1, seed=3)[1].nan_to_num(-1), corrupted(0.1, 0.1, seed=4)[1].nan_to_num(-1))


# ---- ragged_mask: keep a uniform number minimum..N of each task's points ---------------

@pytest.mark.parametrize("minimum", [0, 5])
def test_ragged_mask_keeps_a_uniform_prefix(minimum):
    N = 20
    mask = torch.ones(TASKS, N, dtype=torch.bool)
    out = ragged_mask(mask, torch.Generator().manual_seed(0), minimum=minimum)
    kept = out.sum(1)
    assert torch.equal(out, torch.arange(N) < kept[:, None])       # a prefix of the points
    values = N + 1 - minimum                                        # kept ~ U{minimum, ..., N}
    counts = torch.bincount(kept, minlength=N + 1)[minimum:]
    assert int(kept.min()) == minimum and int(kept.max()) == N
    assert all(within_binomial(int(c), TASKS, 1 / values) for c in counts)
    mean_se = math.sqrt((values ** 2 - 1) / 12 / TASKS)
    assert abs(kept.float().mean().item() - (minimum + N) / 2) <= 5 * mean_se


def test_ragged_mask_defaults_to_zero_shot_and_is_seeded():
    mask = torch.ones(TASKS, 20, dtype=torch.bool)
    first = ragged_mask(mask, torch.Generator().manual_seed(0))
    assert int(first.sum(1).min()) == 0                             # by default a task may keep no point
    assert torch.equal(first, ragged_mask(mask, torch.Generator().manual_seed(0)))
    assert not torch.equal(first, ragged_mask(mask, torch.Generator().manual_seed(1)))


def test_ragged_mask_never_adds_a_masked_point():
    mask = torch.rand(500, 20, generator=torch.Generator().manual_seed(1)) < 0.5
    out = ragged_mask(mask, torch.Generator().manual_seed(2))
    assert not (out & ~mask).any()
    assert out.sum() < mask.sum()


# ---- TrainConfig.kl_weight: β rises linearly from initial_kl_weight to 1 -------------

def test_kl_weight_anneals_linearly_then_stays_at_one():
    config = TrainConfig(anneal_steps=1000, initial_kl_weight=0.1)
    assert config.kl_weight(0) == pytest.approx(0.1, abs=1e-12)
    assert config.kl_weight(250) == pytest.approx(0.325, abs=1e-12)
    assert config.kl_weight(500) == pytest.approx(0.55, abs=1e-12)
    assert config.kl_weight(1000) == 1.0
    assert config.kl_weight(10_000) == 1.0
    assert TrainConfig(anneal_steps=0).kl_weight(0) == 1.0
    assert TrainConfig(anneal_steps=1, initial_kl_weight=0.2).kl_weight(0) == pytest.approx(0.2, abs=1e-12)


# ---- shuffle_metadata: every task gets another task's metadata -----------------------

def test_shuffle_metadata_moves_every_tasks_metadata_and_nothing_else():
    batch = SinusoidTasks().sample(64, num_support=3, num_query=5, split="test",
                                   generator=torch.Generator().manual_seed(0))
    assert len({tuple(r) for r in batch.metadata.tolist()}) == 64   # distinct, so a move is visible
    shuffled = shuffle_metadata(batch)
    assert not (shuffled.metadata == batch.metadata).all(1).any()   # no task keeps its own m
    assert sorted(shuffled.metadata.tolist()) == sorted(batch.metadata.tolist())  # a permutation
    for name in ("x_support", "y_support", "x_query", "y_query", "support_mask", "query_mask"):
        assert torch.equal(getattr(shuffled, name), getattr(batch, name))


# ---- profiling.growth: the fitted slopes and exponents the docs quote -----------------

@pytest.mark.parametrize("sweep", ["steps", "layers"])
def test_fit_returns_the_slope_of_a_line(sweep):
    xs = [1, 2, 4, 8, 16, 32]
    assert fit(sweep, xs, [13.0 + 2.8 * x for x in xs]) == ("slope", pytest.approx(2.8, abs=1e-9))
    assert fit(sweep, xs, [5.0 - 0.5 * x for x in xs]) == ("slope", pytest.approx(-0.5, abs=1e-9))


def test_fit_returns_the_exponent_of_a_power_law_over_the_widest_half():
    hs = [32, 64, 128, 256, 512, 1024]
    ys = [1.0 + 3.0 * h for h in hs[:3]] + [7e-6 * h ** 1.9 for h in hs[3:]]   # the narrow half is off-law
    assert fit("units", hs, ys) == ("exponent", pytest.approx(1.9, abs=1e-9))
    assert fit("units", hs[::-1], ys[::-1]) == ("exponent", pytest.approx(1.9, abs=1e-9))  # order-free
    odd = [32, 64, 128, 256, 512]                                   # widest ceil(5/2) = 3 points
    assert fit("units", odd, [100.0, 1.0, 2.0 * 128 ** 2, 2.0 * 256 ** 2, 2.0 * 512 ** 2]) == \
        ("exponent", pytest.approx(2.0, abs=1e-9))


@pytest.mark.parametrize("points", [2, 3, 4, 5, 6, 7])
def test_fit_exponent_is_the_log_log_slope_of_the_widest_half(points):
    rng = np.random.default_rng(points)
    hs = 2.0 ** np.arange(5, 5 + points)
    ys = 1e-4 * hs ** 2 * rng.uniform(0.5, 2.0, points)             # off-law: which points enter matters
    widest = max(2, math.ceil(points / 2))                          # the docstring: the widest half
    expected = least_squares_slope(np.log(hs[-widest:]), np.log(ys[-widest:]))
    assert fit("units", hs.tolist(), ys.tolist()) == ("exponent", pytest.approx(expected, abs=1e-9))


def test_fit_edge_cases():
    assert fit("steps", [1, 2], [3.0, 5.5]) == ("slope", pytest.approx(2.5, abs=1e-12))   # two points suffice
    with pytest.raises(ValueError):
        fit("steps", [1, 2, 3], [1.0, 2.0])                          # one y per x, or a loud error
    assert fit("steps", [1, 2, 3], [0.0, 0.0, 0.0]) == ("slope", 0.0)
    assert fit("units", [32, 64], [0.0, 0.0]) == ("exponent", 0.0)
    kind, value = fit("steps", [1, 2, 3], [math.nan, 4.0, math.nan])
    assert kind == "slope" and math.isnan(value)
    kind, value = fit("units", [32], [3.0])
    assert kind == "exponent" and math.isnan(value)
    # NaN (a failed configuration) and non-positive points are left out, not fitted
    assert fit("steps", [1, 2, 3, 4], [2.0, math.nan, 6.0, 8.0]) == ("slope", pytest.approx(2.0, abs=1e-9))
    assert fit("steps", [1, 2, 3, 4], [2.0, 0.0, 6.0, 8.0]) == ("slope", pytest.approx(2.0, abs=1e-9))
    assert fit("units", [1, 2, 4, 8], [1.0, 4.0, 16.0, 64.0]) == ("exponent", pytest.approx(2.0, abs=1e-9))


def least_squares_slope(xs, ys):
    """The closed form cov(x, y) / var(x), independent of ``np.polyfit``."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    return float(((xs - xs.mean()) * (ys - ys.mean())).sum() / ((xs - xs.mean()) ** 2).sum())


def test_growth_table_of_the_committed_study():
    rows = read_rows(ROOT / "docs/profiling/scale.csv")
    table = {(g["sweep"], g["method"], g["quantity"]): g for g in growth_table(rows)}
    assert len(table) == 3 * 3 * 3
    maml = table["steps", "maml", "peak_mb"]
    assert maml["x"] == [1, 2, 4, 8, 16, 32] and maml["unit"] == "MB" and maml["kind"] == "slope"
    assert maml["value"] == pytest.approx(least_squares_slope(maml["x"], maml["y"]), rel=1e-12)
    assert maml["value"] == pytest.approx(2.798, abs=5e-4)               # the README's 2.80 MB per step
    assert table["steps", "es", "peak_mb"]["value"] == pytest.approx(0.0, abs=1e-12)  # flat: equal points
    assert table["layers", "maml", "time_median_ms"]["unit"] == "ms"
    assert table["units", "maml", "peak_mb"]["kind"] == "exponent"
    assert table["units", "maml", "peak_mb"]["value"] == pytest.approx(1.94, abs=5e-3)


def test_growth_table_fits_each_sweep_with_its_own_methods():
    rows = read_rows(ROOT / "docs/profiling/scale.csv")
    rows = [r for r in rows if (r["sweep"], r["method"]) in {("steps", "maml"), ("layers", "es")}]
    assert {(g["sweep"], g["method"]) for g in growth_table(rows)} == {("steps", "maml"), ("layers", "es")}


def test_summary_text_names_every_device_and_every_failed_configuration():
    rows = read_rows(ROOT / "docs/profiling/scale.csv")
    rows[0] = {**rows[0], "status": "oom"}
    rows[1] = {**rows[1], "status": "killed", "device_name": "A second CPU"}
    lines = summary_text(rows, "cmd").splitlines()
    assert lines[1].startswith("device: A second CPU, CPU (2 cores visible, 1 torch threads)  (torch 2.13.0+cpu")
    assert "52 configurations measured, 2 not (killed, oom)" in lines
    one = summary_text(rows[-1:], "cmd").splitlines()                # a study of one configuration
    assert one[4] == "1 configurations measured, 0 not (-)"


def test_summary_text_reproduces_the_committed_summary():
    rows = read_rows(ROOT / "docs/profiling/scale.csv")
    text = summary_text(rows, "python -m profiling.scale --device cpu --out runs/scale_idle")
    assert text == (ROOT / "docs/profiling/summary.txt").read_text()


# ---- heldout_collapse: a run whose held-out ELBO falls apart stops -----------------------

def test_heldout_collapse_on_the_diverged_long_run():
    """The committed trace of a 150 000-step run at lr 6e-3 (docs/quality/README.md): a one-evaluation
    spike at step 25 750 recovers and is let through; the collapse is caught at step 28 250."""
    with open(ROOT / "docs/quality/diverged_lr6e-3/heldout_elbo.csv") as f:
        rows = [(int(r["step"]), float(r["elbo_per_point"])) for r in csv.DictReader(f)]
    fired = [rows[i - 1][0] for i in range(1, len(rows) + 1) if heldout_collapse(rows[:i], after_step=1000)]
    assert fired[0] == 28250
    spike = next(i for i, (step, _) in enumerate(rows) if step == 25750)
    assert rows[spike][1] < max(e for _, e in rows[:spike]) - DIVERGED_ELBO_DROP  # a drop, alone


@pytest.mark.parametrize("elbos, after_step, fires", [
    ([0.1, 0.3, 0.2, -0.1, 0.25, 0.0], 0, False),                 # training noise
    ([0.3, 0.3, 0.3 - DIVERGED_ELBO_DROP - 0.01, 0.2], 0, False),  # one bad evaluation, then back
    ([0.3, 0.3, -1.8, -1.71], 0, True),                            # two in a row, each below 0.3 - 2
    ([0.3, 0.3, -1.8, -1.69], 0, False),                           # the second within the allowance
    ([0.3, 0.3, -5.0, -5.0], 3, False),                            # still annealing at step 3
    ([-5.0, -9.0], 0, False),                                      # nothing before them to fall from
])
def test_heldout_collapse_rule(elbos, after_step, fires):
    evals = list(enumerate(elbos, start=1))
    assert (heldout_collapse(evals, after_step) is not None) == fires


def test_fit_stops_when_the_heldout_elbo_collapses(monkeypatch):
    """fit acts on the rule: held-out scores that collapse after the annealing stop the run with a
    FloatingPointError naming the fall (the real held-out ELBO, shifted down from the 5th evaluation)."""
    from hierarchical_meta import HierarchicalMetaModel, ModelConfig, fit
    from hierarchical_meta import train as train_module

    real, calls = train_module.heldout_elbo, []

    def collapsing(meta_model, batch):
        calls.append(1)
        metrics = real(meta_model, batch)
        return {**metrics, "elbo_per_point": metrics["elbo_per_point"] - (50.0 if len(calls) >= 5 else 0.0)}

    monkeypatch.setattr(train_module, "heldout_elbo", collapsing)
    config = TrainConfig(steps=40, batch_tasks=4, max_points=5, anneal_steps=10, eval_every=5, eval_tasks=4)
    model = HierarchicalMetaModel(ModelConfig(hidden=8))
    with pytest.raises(FloatingPointError, match="held-out ELBO fell from .* at step (5|10|15|20) "):
        fit(model, SinusoidTasks(), config, progress=False)
    assert len(calls) == 6  # stopped at the second collapsed evaluation (step 30), not at the end
    calls.clear()
    fit(HierarchicalMetaModel(ModelConfig(hidden=8)), SinusoidTasks(), TrainConfig(
        steps=40, batch_tasks=4, max_points=5, anneal_steps=40, eval_every=5, eval_tasks=4), progress=False)
