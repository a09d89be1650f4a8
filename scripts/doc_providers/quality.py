"""docs/quality/README.md: the model-quality sweep (docs/quality/*/metrics.json), the SVI benchmarks
(docs/quality/benchmark_svi*.txt), the heteroscedastic nlschools comparison and the bounds of
tests/test_fit_quality.py. Its targets and seed groups serve docs/model.md and README.md too."""

from __future__ import annotations

import statistics

from .common import (
    ROOT,
    extent,
    grouped,
    ks,
    ks_or_none,
    mean_sd,
    merged,
    minus,
    module_constant,
    read_csv,
    read_json,
    sci,
    slashed,
    table,
)
from .model import COVERAGE, GAP_TARGET, SHOTS, SVI_BENCHMARK, per_k, read_svi_benchmark, run_values

QUALITY_RUNS = {              # docs/quality/<folder>/ -> its label in the sweep's table, in the table's order
    "base": "lr 3e-3, 32 tasks, 10% swaps (the first defaults), seed 0",
    "base_s1": "same, seed 1",
    "lr6": "lr 6e-3, seed 0",
    "lr6_s1": "lr 6e-3, seed 1",
    "lr10": "lr 1e-2",
    "lr6_a300": "lr 6e-3, KL annealing over 300 steps",
    "b64": "lr 3e-3, 64 tasks",
    "lr6_b64": "lr 6e-3, 64 tasks (the second defaults), seed 0",
    "lr6_b64_s1": "the second defaults, seed 1",
    "mix2": "lr 3e-3, 32 tasks, mixture guide J = 2",
    "mix2_lr6_b64": "the second defaults, mixture guide J = 2",
    "het": "lr 3e-3, 32 tasks, heteroscedastic noise",
    "decay100": "the second defaults, lr decay 100 (not 10)",
    "swap0": "the second defaults, no metadata swaps, seed 0",
    "swap0_s1": "the same, seed 1",
    "swap5": "the second defaults, 5% swaps, seed 0",
    "swap5_s1": "the same, seed 1",
    "swap2": "the second defaults, 2% swaps, seed 0",
    "swap2_s1": "the same, seed 1",
    "swap2_s2": "the same, seed 2",
    "swap3": "**3% swaps (the defaults now), seed 0**",
    "swap3_s1": "**the defaults now, seed 1**",
    "swap3_s2": "**the defaults now, seed 2**",
    "b96": "3% swaps, 96 tasks, seed 0",
    "b96_s1": "the same, seed 1",
    "b96_s2": "the same, seed 2",
    "b128": "3% swaps, 128 tasks, seed 0",
    "b128_s1": "the same, seed 1",
    "swap3_decay100": "3% swaps, lr decay 100, seed 0",
    "swap3_decay100_s1": "the same, seed 1",
    "swap3_decay100_s2": "the same, seed 2",
    "nls_const": None,        # nlschools runs (no exact Bayes): quoted in the prose, not in the table
    "nls_het": None,
}
DEFAULTS = ("swap3", "swap3_s1", "swap3_s2")   # the sweep's runs at TrainConfig's defaults, three seeds
SEED_GROUPS = {               # one setting, several seeds: the metadata-swap comparison of docs/quality/README.md
    "swap0": ("swap0", "swap0_s1"),
    "swap2": ("swap2", "swap2_s1", "swap2_s2"),
    "swap3": DEFAULTS,
    "swap5": ("swap5", "swap5_s1"),
    "swap10": ("lr6_b64", "lr6_b64_s1"),
    "swap3_decay100": ("swap3_decay100", "swap3_decay100_s1", "swap3_decay100_s2"),
    "b96": ("b96", "b96_s1", "b96_s2"),
    "b128": ("b128", "b128_s1"),
}
SVI_RUNS = {"svi32": SVI_BENCHMARK, "svi64": "docs/quality/benchmark_svi_64.txt"}
NLS_TARGET = 0.025            # the nlschools target on Δ loglik over the mixed model
NLS_HET = "docs/quality/nlschools_heteroscedastic"  # the heteroscedastic nlschools comparison
NLS_RUNS = {"swap10": NLS_HET, "swap3": "docs/quality/nlschools_het_swap3"}
FIT_TEST = "tests/test_fit_quality.py"


def quality_runs() -> dict[str, dict]:
    """Every run folder of docs/quality/ with a metrics.json, in QUALITY_RUNS's order; an unlisted one raises."""
    found = {p.parent.name for p in (ROOT / "docs/quality").glob("*/metrics.json")}
    if found != set(QUALITY_RUNS):
        raise ValueError(f"docs/quality/ run folders {sorted(found)} are not QUALITY_RUNS's {sorted(QUALITY_RUNS)}: "
                         "add (or remove) the folder's label in scripts/doc_providers/quality.py")
    return {name: read_json(f"docs/quality/{name}/metrics.json") for name in QUALITY_RUNS}


def sinusoid_sweep() -> dict[str, dict]:
    """The sweep's runs with an exact-Bayes reference: the rows of the sweep's table."""
    return {name: run for name, run in quality_runs().items() if QUALITY_RUNS[name]}


def nls_paired(model: str, reference: str) -> dict[int, tuple[float, float]]:
    """Per K: mean and sample sd over splits of model's loglik minus reference's, same split."""
    loglik = {(r["split"], r["model"], int(r["K"])): float(r["loglik"])
              for r in read_csv(f"{NLS_HET}/per_split.csv")}
    splits = sorted({s for s, _, _ in loglik})
    shots = sorted({k for _, m, k in loglik if m == model})
    diffs = {k: [loglik[(s, model, k)] - loglik[(s, reference, k)] for s in splits] for k in shots}
    return {k: (statistics.fmean(d), statistics.stdev(d)) for k, d in diffs.items()}


def ours(path: str) -> dict[int, dict]:
    """K -> the row of our model in a nlschools comparison.csv."""
    return {int(r["K"]): r for r in read_csv(path) if r["model"] == "ours"}


def nls_missed() -> list[int]:
    """The K where the heteroscedastic nlschools run's Δ loglik over the mixed model misses NLS_TARGET or is NaN."""
    return [k for k, r in ours(f"{NLS_HET}/comparison.csv").items()
            if not float(r["loglik_minus_mixed"]) >= NLS_TARGET]


# ---- values: each run, and runs compared -------------------------------------------------

def labelled_run_values() -> dict[str, object]:
    """quality.RUN.* of every run in the sweep's table, as model.run_values gives a sinusoid run's."""
    return {key: value for name, run in sinusoid_sweep().items()
            for key, value in run_values(f"quality.{name}", run).items()}


def setting_values() -> dict[str, object]:
    """Every run's training settings (quality.RUN.train.KEY) and logliks per K (quality.RUN.logliks)."""
    v: dict[str, object] = {}
    for name, run in quality_runs().items():
        v.update({f"quality.{name}.train.{key}": value for key, value in run["train"].items()})
        v[f"quality.{name}.logliks"] = minus(slashed((run["shots"][str(k)]["loglik"] for k in SHOTS), ".3f"))
    return v


def pair_values(key: str, run_a: dict, run_b: dict) -> dict[str, object]:
    """Run a against run b (the same held-out tasks): where a's loglik is better, by how much, time ratio."""
    delta = {k: run_a["shots"][str(k)]["loglik"] - run_b["shots"][str(k)]["loglik"] for k in SHOTS}
    return {f"{key}.better": ks_or_none(k for k in SHOTS if delta[k] > 0),
            f"{key}.worse": ks_or_none(k for k in SHOTS if delta[k] < 0),
            f"{key}.min_delta": min(delta.values()), f"{key}.max_delta": max(delta.values()),
            f"{key}.max_abs_delta": max(abs(d) for d in delta.values()),
            f"{key}.abs_delta_range": extent(map(abs, delta.values()), ".3f"),
            f"{key}.time_ratio": run_a["train_seconds"] / run_b["train_seconds"]}


def all_pair_values() -> dict[str, object]:
    """quality.A.vs.B.* for every ordered pair of the sweep's runs."""
    sweep = quality_runs()
    return {key: value for a, run_a in sweep.items() for b, run_b in sweep.items() if a != b
            for key, value in pair_values(f"quality.{a}.vs.{b}", run_a, run_b).items()}


def common_values() -> dict[str, object]:
    """What every run of the sweep's table shares (its steps, evaluation tasks, samples, K); a difference raises."""
    sinusoid = sinusoid_sweep().values()
    common = {"steps": {r["train"]["steps"] for r in sinusoid},
              "num_tasks": {r["eval"]["num_tasks"] for r in sinusoid},
              "num_query": {r["eval"]["num_query"] for r in sinusoid},
              "num_samples": {r["num_samples"] for r in sinusoid},
              "shots": {tuple(r["eval"]["shots"]) for r in sinusoid}}
    for key, found in common.items():
        if len(found) != 1:
            raise ValueError(f"the docs/quality/ runs differ in {key} ({sorted(found)}); the README quotes one")
    one = {key: found.pop() for key, found in common.items()}
    return {"quality.steps": grouped(one["steps"]), "quality.num_tasks": one["num_tasks"],
            "quality.num_query": one["num_query"], "quality.num_samples": one["num_samples"],
            "quality.shots": ks(one["shots"])}


# ---- values: the targets and the runs at the defaults ------------------------------------

def target_values() -> dict[str, object]:
    """The exact-Bayes gap target and the coverage band."""
    return {"quality.gap_target": GAP_TARGET, "quality.coverage_low": COVERAGE[0],
            "quality.coverage_high": COVERAGE[1]}


def default_values() -> dict[str, object]:
    """The runs at the defaults (DEFAULTS, one per seed) against the targets."""
    sweep = quality_runs()
    gaps = {name: per_k(sweep[name]) for name in DEFAULTS}
    worst = {name: max(SHOTS, key=lambda k, s=s: s[k]["gap"]) for name, s in gaps.items()}
    low, high = COVERAGE
    wide = [k for k in SHOTS if any(s[k]["coverage90"] > high for s in gaps.values())]
    met = [name for name, s in gaps.items()
           if all(s[k]["gap"] <= GAP_TARGET and low <= s[k]["coverage90"] <= high for k in SHOTS)]
    v: dict[str, object] = {
        "quality.defaults.max_gap_k": ks(sorted(set(worst.values()))),
        "quality.defaults.other_max_gap": max(s[k]["gap"] for name, s in gaps.items() for k in SHOTS
                                              if k != worst[name]),
        "quality.defaults.gap_missed": ks_or_none(k for k in SHOTS
                                                  if any(s[k]["gap"] > GAP_TARGET for s in gaps.values())),
        "quality.defaults.too_wide": ks_or_none(wide),
        "quality.defaults.coverage_inside": ks_or_none(
            k for k in SHOTS if all(low <= s[k]["coverage90"] <= high for s in gaps.values())),
        "quality.defaults.seeds_met": f"{len(met)} of {len(gaps)}"}
    if wide:
        v["quality.defaults.too_wide_range"] = extent((s[k]["coverage90"] for s in gaps.values() for k in wide), ".3f")
    return v


def seed_group_values() -> dict[str, object]:
    """One setting over seeds (SEED_GROUPS): each seed's and the range of what the README compares."""
    sweep = quality_runs()
    v: dict[str, object] = {}
    for group, names in SEED_GROUPS.items():
        scores = [per_k(sweep[name]) for name in names]
        for key, values in (("gap.1", [s[1]["gap"] for s in scores]),
                            ("max_gap", [max(s[k]["gap"] for k in SHOTS) for s in scores]),
                            ("shuffled.10", [s[10]["shuffled_loglik"] for s in scores]),
                            ("max_coverage", [max(s[k]["coverage90"] for k in SHOTS) for s in scores])):
            v[f"quality.{group}.{key}.range"] = minus(extent(values, ".3f"))
            v[f"quality.{group}.{key}.each"] = minus(slashed(values, ".3f"))
        v[f"quality.{group}.seeds"] = len(names)
        v[f"quality.{group}.gap.1.mean"] = statistics.mean(s[1]["gap"] for s in scores)
    v["quality.swap3.vs.swap0.gap.1"] = v["quality.swap3.gap.1.mean"] - v["quality.swap0.gap.1.mean"]
    return v


# ---- values: the SVI step's speed, the nlschools runs, the fit test's bounds --------------

def svi_values() -> dict[str, object]:
    """The vectorized Pyro step against the fast path, at 32 and 64 tasks."""
    v: dict[str, object] = {}
    for name, path in SVI_RUNS.items():
        svi = read_svi_benchmark(path)
        v[f"quality.{name}.pyro_ms"], v[f"quality.{name}.fast_ms"] = svi["vectorized"][0], svi["fast"][0]
        v[f"quality.{name}.fast_speedup"], v[f"quality.{name}.load"] = svi["fast_speedup"], svi["load"]
        v[f"quality.{name}.overhead_ms"] = svi["vectorized"][0] - svi["fast"][0]
        v[f"quality.{name}.half_pyro_ms"] = svi["vectorized"][0] / 2
    return v


def nls_run_values() -> dict[str, object]:
    """The heteroscedastic nlschools runs at 10% and 3% swaps: their swaps, Δ loglik and metadata gain per K."""
    v: dict[str, object] = {}
    for name, folder in NLS_RUNS.items():
        rows = ours(f"{folder}/comparison.csv").values()
        v[f"quality.nls_{name}.metadata_swap"] = read_json(f"{folder}/fits.json")["args"].get(
            "metadata_swap", 0.1)  # 0.1: before the option
        for column in ("loglik_minus_mixed", "metadata_gain"):
            v[f"quality.nls_{name}.{column}"] = minus(slashed((float(r[column]) for r in rows), "+.3f"))
    return v


def nls_target_values() -> dict[str, object]:
    """The heteroscedastic nlschools run against NLS_TARGET: its settings, where it meets the target, where not."""
    het = ours(f"{NLS_HET}/comparison.csv")
    args = read_json(f"{NLS_HET}/fits.json")["args"]
    missed = nls_missed()
    met = [k for k in het if k not in missed]
    v: dict[str, object] = {
        "quality.nls.target": NLS_TARGET, "quality.nls.splits": len(args["splits"]),
        "quality.nls.steps": grouped(args["steps"]), "quality.nls.batch_tasks": args["batch_tasks"],
        "quality.nls.lr": sci(args["lr"]), "quality.nls.met": ks_or_none(met), "quality.nls.missed": ks_or_none(missed)}
    if missed:
        v["quality.nls.missed_sd_range"] = extent((float(het[k]["loglik_minus_mixed_sd"]) for k in missed), ".3f")
    return v


def het_mixed_values() -> dict[str, object]:
    """The linear mixed model with the same IQ-dependent noise: what that noise is worth to it, and ours against it."""
    het_mixed = nls_paired("mixed_model_heteroscedastic", "mixed_model")
    ours_vs = nls_paired("ours", "mixed_model_heteroscedastic")
    missed = nls_missed()
    slopes = [s["mixed_model_heteroscedastic"]["log_sd_slopes"]["IQ"]
              for s in read_json(f"{NLS_HET}/fits.json")["splits"]]
    return {
        "quality.nls.het_mixed.gains": slashed((m for m, _ in het_mixed.values()), "+.3f"),
        "quality.nls.het_mixed.shots": ks(het_mixed),
        "quality.nls.het_mixed.below": ks_or_none(k for k, (m, _) in het_mixed.items() if m < NLS_TARGET),
        "quality.nls.het_mixed.max_gain": max(m for m, _ in het_mixed.values()),
        "quality.nls.het_mixed.slope_range": minus(extent(slopes, ".3f", " to ")),
        "quality.nls.het_mixed.slope_sq_max": max(c * c for c in slopes),
        "quality.nls.ours_vs_het_mixed": minus(slashed((m for m, _ in ours_vs.values()), "+.3f")),
        # at the missed K: what ours − het. mixed would need for the target, and what it gets
        "quality.nls.need_vs_het_mixed": minus(slashed((NLS_TARGET - het_mixed[k][0] for k in missed), "+.3f")),
        "quality.nls.ours_vs_het_mixed.missed": minus(slashed((ours_vs[k][0] for k in missed), "+.3f"))}


def fit_test_values() -> dict[str, object]:
    """The bounds tests/test_fit_quality.py holds the fit to (read, not imported)."""
    gap_bounds = module_constant(FIT_TEST, "GAP_BOUNDS")
    coverage_bounds = module_constant(FIT_TEST, "COVERAGE_BOUNDS")
    highs = {high for _, high in coverage_bounds.values()}
    if len(highs) != 1:
        raise ValueError(f"{FIT_TEST} has several coverage upper bounds {sorted(highs)}; the README quotes one")
    return {"quality.fit_test.shots": ks(int(k) for k in gap_bounds),
            "quality.fit_test.gap_bounds": slashed(gap_bounds.values(), "g"),
            "quality.fit_test.coverage_low": slashed((low for low, _ in coverage_bounds.values()), "g"),
            "quality.fit_test.coverage_high": highs.pop()}


def values() -> dict[str, object]:
    """Every quality.* value but the diverged runs' (reliability.values)."""
    return merged((labelled_run_values, setting_values, all_pair_values, common_values, target_values,
                   default_values, seed_group_values, svi_values, nls_run_values, nls_target_values,
                   het_mixed_values, fit_test_values), "values")


# ---- tables ------------------------------------------------------------------------------

def tables() -> dict[str, str]:
    return {"quality-sinusoid": sinusoid_table(), "quality-nlschools": nlschools_table()}


def sinusoid_table() -> str:
    """One row per run of the sweep's table: its gaps and coverage per K, shuffled m at K = 10, ELBO, time."""
    return table(
        ["run", "folder", "gap (nats)", "coverage90", "m shuffled, K = 10", "held-out ELBO", "train s"],
        [sweep_row(name, run) for name, run in sinusoid_sweep().items()])


def sweep_row(name: str, run: dict) -> list[str]:
    scores = per_k(run).values()
    return [QUALITY_RUNS[name], f"`{name}`", slashed((s["gap"] for s in scores), ".3f"),
            slashed((s["coverage90"] for s in scores), ".3f"),
            minus(f"{run['shuffled_metadata']['shots']['10']['loglik']:.3f}"), f"{run['elbo']:.3f}",
            f"{run['train_seconds']:.0f}"]


def nlschools_table() -> str:
    """Ours minus the mixed model with constant and with heteroscedastic noise, and the two mixed models paired."""
    constant, het = ({k: mean_sd(r, "loglik_minus_mixed", "+") for k, r in ours(path).items()}
                     for path in ("docs/nlschools/comparison.csv", f"{NLS_HET}/comparison.csv"))
    if set(constant) != set(het):
        raise ValueError(f"the nlschools comparisons have other K: {sorted(constant)} and {sorted(het)}")
    het_mixed = nls_paired("mixed_model_heteroscedastic", "mixed_model")
    ours_vs = nls_paired("ours", "mixed_model_heteroscedastic")
    if set(het_mixed) != set(het):
        raise ValueError(f"{NLS_HET}: the heteroscedastic mixed model has other K: {sorted(het_mixed)}")
    return table(
        ["K", "ours − mixed, constant noise (docs/nlschools)",
         "ours − mixed, heteroscedastic (`nlschools_heteroscedastic/`)",
         "het. mixed − mixed (same run)", "ours − het. mixed (same run)"],
        [[k, constant[k], het[k], *(f"{d[k][0]:+.3f} ± {d[k][1]:.3f}" for d in (het_mixed, ours_vs))] for k in het])
