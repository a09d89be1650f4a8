"""docs/model.md: the sinusoid runs (the demo with and without m, the 30-minute run, an older 80 000-step
run), the training defaults, and the SVI benchmark. The sinusoid-run values (NAME.METRIC.K and the
verdicts) serve README.md and docs/quality/README.md too."""

from __future__ import annotations

import re

from hierarchical_meta.pipeline import TARGET_COVERAGE as COVERAGE
from hierarchical_meta.pipeline import TARGET_ORACLE_GAP as GAP_TARGET
from hierarchical_meta.tasks import SinusoidTasks
from hierarchical_meta.train import (
    ANNEAL_SHARE,
    DATA_EPOCHS,
    DATA_MAX_STEPS,
    EVALUATIONS,
    PATIENCE,
    VAL_SAMPLES,
    VAL_SHOTS,
    TrainConfig,
    data_sized,
)

from .common import and_list, extent, grouped, ks, ks_or_none, minus, read_json, read_text, sci, slashed, table

SHOTS = (0, 1, 2, 5, 10)
SVI_BENCHMARK = "docs/quality/benchmark_svi.txt"   # examples/benchmark_svi.py's output, 32 tasks
RUN_NUMBERS = ("elbo", "kl_phi1", "kl_phi2", "noise_floor_loglik", "num_samples", "train_seconds")
TRAIN_DEFAULTS = ("batch_tasks", "metadata_dropout", "metadata_swap", "initial_kl_weight", "anneal_steps",
                  "eval_every", "checkpoint_every")


def sinusoid_runs() -> dict[str, dict]:
    """The sinusoid runs the docs quote: the demo with and without m, the 30-minute run and an older 80 000-step run."""
    demo = read_json("docs/demo/summary.json")["runs"]
    return {"demo": demo["with metadata"], "demo_no_m": demo["metadata withheld"],
            "long": read_json("docs/long/metrics.json"), "long80k": read_json("docs/long80k/metrics.json")}


def per_k(run: dict) -> dict[int, dict]:
    """K -> every score at K, with ``gap`` (exact Bayes minus model) and the shuffled-m scores."""
    out = {}
    for k in SHOTS:
        scores = dict(run["shots"][str(k)])
        scores["gap"] = scores["oracle_loglik"] - scores["loglik"]
        for name, value in run["shuffled_metadata"]["shots"][str(k)].items():
            scores[f"shuffled_{name}"] = value
        out[k] = scores
    return out


def read_svi_benchmark(path: str) -> dict:
    """``examples/benchmark_svi.py`` output: the setting line and ms, tasks/s per variant."""
    lines = read_text(path).splitlines()
    setting, load = re.fullmatch(r"(.*), \d+ thread\(s\), load average ([\d.]+)", lines[0]).groups()
    numbers = [[float(v) for v in re.findall(r"(\d[\d.]*) (?:ms|tasks)", line)] for line in lines[1:]]
    speedups = [float(re.search(r"([\d.]+)x$", line).group(1)) for line in lines[3::2]]
    out = {"setting": setting.replace(" x ", " × "), "load": float(load),
           "vectorized": numbers[0], "loop": numbers[1], "speedup": speedups[0]}
    if len(lines) > 4:  # the fast path (hierarchical_meta/bound.py) against the vectorized Pyro step
        out["fast"], out["fast_speedup"] = numbers[3], speedups[1]
    return out


# ---- values ------------------------------------------------------------------------------

def gap_verdicts(scores: dict[int, dict]) -> dict[str, object]:
    """A run's exact-Bayes gaps against the target: the largest, where it is met and where missed."""
    gap = {k: scores[k]["gap"] for k in SHOTS}
    worst = max(SHOTS, key=gap.get)
    missed = [k for k in SHOTS if gap[k] > GAP_TARGET]
    return {"max_gap": gap[worst], "max_gap_k": ks([worst]),
            "gap_within_0.1": ks_or_none(k for k in SHOTS if gap[k] <= 0.1),
            "gap_within_0.05": ks_or_none(k for k in SHOTS if gap[k] <= 0.05),
            "gap_above_0.05": ks_or_none(k for k in SHOTS if gap[k] > 0.05),
            "gap_verdict": f"missed at {ks(missed)}" if missed else "met at every K"}


def coverage_verdicts(scores: dict[int, dict]) -> dict[str, object]:
    """A run's 90% coverage against the target band: its range, where too wide, too narrow or inside."""
    coverage = {k: scores[k]["coverage90"] for k in SHOTS}
    low, high = COVERAGE
    wide = [k for k in SHOTS if coverage[k] > high]
    narrow = [k for k in SHOTS if coverage[k] < low]
    verdicts = [f"too {side} at {ks(at)}" for side, at in (("wide", wide), ("narrow", narrow)) if at]
    return {"coverage_range": extent(coverage.values(), ".2f"), "too_wide": ks_or_none(wide),
            "too_wide_values": and_list(f"{coverage[k]:.3f}" for k in wide) if wide else "none",
            "coverage_inside": ks_or_none(k for k in SHOTS if low <= coverage[k] <= high),
            "coverage_verdict": "; ".join(verdicts) or "met at every K"}


def run_values(name: str, run: dict) -> dict[str, object]:
    """One sinusoid run's numbers as NAME.*: every score per K (NAME.METRIC.K), its training and its verdicts."""
    scores = per_k(run)
    v = {f"{name}.{metric}.{k}": value for k, at_k in scores.items() for metric, value in at_k.items()}
    v.update({f"{name}.{key}": run[key] for key in RUN_NUMBERS})
    v[f"{name}.steps"] = grouped(run["train"]["steps"])
    v[f"{name}.train_minutes"] = run["train_seconds"] / 60
    v[f"{name}.gaps"] = slashed((scores[k]["gap"] for k in SHOTS), ".2f")
    verdicts = {**gap_verdicts(scores), **coverage_verdicts(scores)}
    v.update({f"{name}.{key}": value for key, value in verdicts.items()})
    return v


def sinusoid_values() -> dict[str, object]:
    """Every sinusoid run's numbers (demo.*, demo_no_m.*, long.*, long80k.*) and what m is worth to the demo."""
    runs = sinusoid_runs()
    v = {key: value for name, run in runs.items() for key, value in run_values(name, run).items()}
    v["demo.metadata_gain.0"] = per_k(runs["demo"])[0]["loglik"] - per_k(runs["demo_no_m"])[0]["loglik"]
    return v


def train_values() -> dict[str, object]:
    """TrainConfig's defaults, sized for a sampled family (the demo's schedule), as train.*."""
    train, _ = data_sized(TrainConfig(), SinusoidTasks())
    v: dict[str, object] = {f"train.{key}": getattr(train, key) for key in TRAIN_DEFAULTS}
    v.update({"train.data_epochs": grouped(DATA_EPOCHS), "train.data_max_steps": grouped(DATA_MAX_STEPS),
              "train.evaluations": EVALUATIONS, "train.anneal_share": f"1/{round(1 / ANNEAL_SHARE)}",
              "train.patience": PATIENCE, "train.val_shots": and_list(str(k) for k in VAL_SHOTS),
              "train.val_samples": VAL_SAMPLES, "train.steps": grouped(train.steps)})
    v["train.lr"], v["train.points"] = sci(train.lr), f"{train.min_points}–{train.max_points}"
    return v


def svi_values() -> dict[str, object]:
    return {"svi.load": read_svi_benchmark(SVI_BENCHMARK)["load"]}


# ---- tables ------------------------------------------------------------------------------

SCORE_HEADER = ["K", "loglik", "exact Bayes", "gap", "mse", "coverage90"]


def score_cells(k: int, s: dict) -> list:
    """The cells under SCORE_HEADER of one K's scores."""
    return [k, minus(f"{s['loglik']:.3f}"), minus(f"{s['oracle_loglik']:.3f}"), f"{s['gap']:.3f}", f"{s['mse']:.3f}",
            f"{s['coverage90']:.3f}"]


def tables() -> dict[str, str]:
    """The demo's scores (with the same run trained without m), the long run's, and the SVI step's speed."""
    runs = sinusoid_runs()
    demo, no_m = per_k(runs["demo"]), per_k(runs["demo_no_m"])
    return {
        "demo": table(
            [*SCORE_HEADER, f"ESS (of {runs['demo']['num_samples']})", "m shuffled", "m withheld",
             "coverage90, m withheld"],
            [[*score_cells(k, s), f"{s['ess']:.0f}", minus(f"{s['shuffled_loglik']:.3f}"),
              minus(f"{no_m[k]['loglik']:.3f}"), f"{no_m[k]['coverage90']:.3f}"] for k, s in demo.items()]),
        "long": table(
            [*SCORE_HEADER, "m shuffled"],
            [[*score_cells(k, s), minus(f"{s['shuffled_loglik']:.3f}")] for k, s in per_k(runs["long"]).items()]),
        "svi-speed": svi_speed_table(read_svi_benchmark(SVI_BENCHMARK)),
    }


def svi_speed_table(svi: dict) -> str:
    """The per-task loop, the vectorized Pyro step and the fast path: ms per step, tasks per second, speed-up."""
    return table(
        ["", f"ms per step ({svi['setting']})", "tasks / s", "speed-up"],
        [[f"per-task loop ({svi['setting'].split()[0]} Pyro SVI steps)", f"{svi['loop'][0]:.1f}",
          f"{svi['loop'][1]:.0f}", ""],
         ["vectorized Pyro step (one trace, plate `tasks`)", f"{svi['vectorized'][0]:.1f}",
          f"{svi['vectorized'][1]:.0f}", f"{svi['speedup']:.1f}× the loop"],
         ["fast path (`--elbo fast`, the default)", f"{svi['fast'][0]:.1f}", f"{svi['fast'][1]:.0f}",
          f"{svi['fast_speedup']:.2f}× the Pyro step"]])
