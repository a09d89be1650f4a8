"""Write the result tables and quoted numbers of README.md and docs/*.md from the committed runs.

``python scripts/doc_tables.py`` (``make docs``) rewrites, in place, every region between

    <!-- table:NAME -->            a whole Markdown table, from ``tables()[NAME]`` (indented as the marker)
    ...
    <!-- /table -->

and every inline ``<!--v:KEY-->TEXT<!--/v-->`` (or ``<!--v:KEY:SPEC-->``, SPEC a Python format
spec such as ``.3f``), from ``values()[KEY]``. Every table and number comes from a file
committed under docs/: the demo (docs/demo/summary.json), the long run
(docs/long/metrics.json), the SVI benchmark (docs/benchmarks/svi_cpu.txt), the
nlschools comparison (docs/nlschools/*.csv), the grouped-data runs of ``fit --tasks
nlschools|sleepstudy`` (docs/own_data/*/metrics.json), the model-quality sweep
(docs/quality/*/metrics.json, docs/quality/benchmark_svi*.txt, docs/quality/nlschools_heteroscedastic/,
the bounds of tests/test_fit_quality.py), and the profiling study
(docs/profiling/scale.csv through ``profiling.growth``, docs/profiling/benchmark_cpu*.txt).
``--check`` writes nothing and exits 1 naming each doc that differs (tests/test_docs.py).
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import math
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from profiling.growth import growth_table  # noqa: E402  (the repository root is on the path only now)
from profiling.study import SWEEP_PARAMETER, read_rows  # noqa: E402

__all__ = ["DOCS", "values", "tables", "render", "expected", "main"]

DOCS = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")),
        "docs/quality/README.md"]
TABLE = re.compile(r"^([ \t]*)(<!-- table:([\w-]+) -->\n)(.*?)^[ \t]*(<!-- /table -->)", re.DOTALL | re.MULTILINE)
VALUE = re.compile(r"<!--v:([\w.-]+)(?::([^>]*?))?-->(.*?)<!--/v-->")
SHOTS = (0, 1, 2, 5, 10)
OWN_DATA = ("nlschools", "sleepstudy")  # the committed runs under docs/own_data/
OWN_MODELS = {"model": "model", "no_metadata": "model, m withheld", "mixed_model": "mixed model (BLUP)",
              "pooled": "pooled regression"}
COVERAGE = (0.85, 0.95)       # the calibration band the docs hold coverage90 to
QUALITY_RUNS = {              # docs/quality/<folder>/ -> its label in the sweep's table, in the table's order
    "base": "lr 3e-3, 32 tasks (the old defaults), seed 0",
    "base_s1": "same, seed 1",
    "lr6": "lr 6e-3, seed 0",
    "lr6_s1": "lr 6e-3, seed 1",
    "lr10": "lr 1e-2",
    "lr6_a300": "lr 6e-3, KL annealing over 300 steps",
    "b64": "lr 3e-3, 64 tasks",
    "lr6_b64": "**lr 6e-3, 64 tasks (the new defaults), seed 0**",
    "lr6_b64_s1": "**the new defaults, seed 1**",
    "mix2": "lr 3e-3, 32 tasks, mixture guide J = 2",
    "mix2_lr6_b64": "the new defaults, mixture guide J = 2",
    "het": "lr 3e-3, 32 tasks, heteroscedastic noise",
    "nls_const": None,        # nlschools runs (no exact Bayes): quoted in the prose, not in the table
    "nls_het": None,
}
DEFAULTS = ("lr6_b64", "lr6_b64_s1")   # the sweep's runs at TrainConfig's defaults, two seeds
GAP_TARGET = 0.15             # the demo-budget target on the gap to exact Bayes (docs/quality/README.md)
NLS_TARGET = 0.025            # the nlschools target on Δ loglik over the mixed model


# ---- formatting -------------------------------------------------------------------------

def minus(text: str) -> str:
    """Typographic minus, as the model tables print it."""
    return text.replace("-", "−")


def grouped(n: int) -> str:
    """80000 -> '80 000' (SI grouping from five digits on), 8000 -> '8000'."""
    return f"{n:,}".replace(",", " ") if n >= 10_000 else str(n)


def ks(shots) -> str:
    """[1, 2] -> 'K = 1 and 2', [0, 2, 5] -> 'K = 0, 2 and 5'."""
    shots = [str(k) for k in shots]
    if not shots:
        raise ValueError("no K to name")
    return "K = " + (shots[0] if len(shots) == 1 else ", ".join(shots[:-1]) + " and " + shots[-1])


def ks_or_none(shots) -> str:
    """ks(shots), or 'no K' for none."""
    shots = list(shots)
    return ks(shots) if shots else "no K"


def and_list(items) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def row(cells) -> str:
    return "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"


def table(header, rows) -> str:
    return "\n".join([row(header), "|" + "---|" * len(header), *(row(r) for r in rows)]) + "\n"


# ---- the committed runs ------------------------------------------------------------------

def read_json(path: str) -> dict:
    return json.loads((ROOT / path).read_text())


def read_csv(path: str) -> list[dict]:
    with open(ROOT / path, newline="") as f:
        return list(csv.DictReader(f))


def sinusoid_runs() -> dict[str, dict]:
    """The three sinusoid runs the docs quote: the demo with and without m, and the long run."""
    demo = read_json("docs/demo/summary.json")["runs"]
    return {"demo": demo["with metadata"], "demo_no_m": demo["metadata withheld"],
            "long": read_json("docs/long/metrics.json")}


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


def quality_runs() -> dict[str, dict]:
    """Every run folder of docs/quality/ with a metrics.json, in QUALITY_RUNS's order; an unlisted one raises."""
    found = {p.parent.name for p in (ROOT / "docs/quality").glob("*/metrics.json")}
    if found != set(QUALITY_RUNS):
        raise ValueError(f"docs/quality/ run folders {sorted(found)} are not QUALITY_RUNS's {sorted(QUALITY_RUNS)}: "
                         "add (or remove) the folder's label in scripts/doc_tables.py")
    return {name: read_json(f"docs/quality/{name}/metrics.json") for name in QUALITY_RUNS}


def module_constant(path: str, name: str):
    """The literal a module assigns to ``name`` (read, not imported)."""
    for node in ast.parse((ROOT / path).read_text()).body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == [name]:
            return ast.literal_eval(node.value)
    raise ValueError(f"{path} assigns no literal {name}")


def sci(x: float) -> str:
    """0.003 -> '3e-3'."""
    mantissa, exponent = f"{x:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def own_data_run(name: str) -> dict[str, dict]:
    """A committed grouped-data run: model name -> its scores (``{"shots": {K: ...}}``), the model first."""
    metrics = read_json(f"docs/own_data/{name}/metrics.json")
    found = {"model": metrics, **metrics["baselines"]}
    return {model: found[model] for model in OWN_MODELS if model in found}


def read_benchmark(path: str) -> dict:
    """A ``profiling.benchmark`` output: (method, impl) -> (median ms, loop/this), and the load."""
    lines = (ROOT / path).read_text().splitlines()
    loads = [float(v) for v in re.findall(r"(?:before|after) \(([\d.]+),", lines[1])]  # 1-min, before and after
    rows = {}
    for line in lines[4:]:
        method, impl, median, _, _, ratio = line.split()
        rows[method, impl] = (float(median), float(ratio.rstrip("x")))
    return {"rows": rows, "loads": loads}


def read_svi_benchmark(path: str) -> dict:
    """``examples/benchmark_svi.py`` output: the setting line and ms, tasks/s per variant."""
    lines = (ROOT / path).read_text().splitlines()
    setting, load = re.fullmatch(r"(.*), \d+ thread\(s\), load average ([\d.]+)", lines[0]).groups()
    numbers = [[float(v) for v in re.findall(r"(\d[\d.]*) (?:ms|tasks)", line)] for line in lines[1:]]
    speedups = [float(re.search(r"([\d.]+)x$", line).group(1)) for line in lines[3::2]]
    out = {"setting": setting.replace(" x ", " × "), "load": float(load),
           "vectorized": numbers[0], "loop": numbers[1], "speedup": speedups[0]}
    if len(lines) > 4:  # the fast path (hierarchical_meta/bound.py) against the vectorized Pyro step
        out["fast"], out["fast_speedup"] = numbers[3], speedups[1]
    return out


# ---- values and tables -------------------------------------------------------------------

def values() -> dict[str, object]:
    """Every quotable number (float or int, formatted by the marker's spec) or phrase (str)."""
    v: dict[str, object] = {}
    runs = sinusoid_runs()
    sweep = quality_runs()
    labelled = {f"quality.{name}": run for name, run in sweep.items() if QUALITY_RUNS[name]}
    for name, run in {**runs, **labelled}.items():
        scores = per_k(run)
        for k, at_k in scores.items():
            for metric, value in at_k.items():
                v[f"{name}.{metric}.{k}"] = value
        for key in ("elbo", "kl_phi1", "kl_phi2", "noise_floor_loglik", "num_samples", "train_seconds"):
            v[f"{name}.{key}"] = run[key]
        v[f"{name}.steps"] = grouped(run["train"]["steps"])
        v[f"{name}.train_minutes"] = run["train_seconds"] / 60
        v[f"{name}.gaps"] = " / ".join(f"{scores[k]['gap']:.2f}" for k in SHOTS)
        coverage = [scores[k]["coverage90"] for k in SHOTS]
        v[f"{name}.coverage_range"] = f"{min(coverage):.2f}–{max(coverage):.2f}"
        wide = [k for k in SHOTS if scores[k]["coverage90"] > COVERAGE[1]]
        inside = [k for k in SHOTS if COVERAGE[0] <= scores[k]["coverage90"] <= COVERAGE[1]]
        v[f"{name}.too_wide"] = ks(wide) if wide else "no K"
        v[f"{name}.too_wide_values"] = and_list(f"{scores[k]['coverage90']:.3f}" for k in wide) if wide else "none"
        v[f"{name}.coverage_inside"] = ks(inside) if inside else "no K"
        worst = max(SHOTS, key=lambda k: scores[k]["gap"])
        v[f"{name}.max_gap"], v[f"{name}.max_gap_k"] = scores[worst]["gap"], ks([worst])
        v[f"{name}.gap_within_0.1"] = ks_or_none(k for k in SHOTS if scores[k]["gap"] <= 0.1)
    demo, no_m = per_k(runs["demo"]), per_k(runs["demo_no_m"])
    v["demo.metadata_gain.0"] = demo[0]["loglik"] - no_m[0]["loglik"]

    svi = read_svi_benchmark("docs/benchmarks/svi_cpu.txt")
    v["svi.load"] = svi["load"]

    v.update(quality_values(sweep))

    comparison = {(r["model"], int(r["K"])): r for r in read_csv("docs/nlschools/comparison.csv")}
    ours = [float(r["loglik_minus_mixed"]) for (model, _), r in comparison.items() if model == "ours"]
    v["nlschools.delta_range"] = f"{min(ours):+.3f} to {max(ours):+.3f}"
    split = {(r["split"], r["model"], r["K"]): float(r["loglik"]) for r in read_csv("docs/nlschools/per_split.csv")}
    cells = [split[s, "ours", k] - split[s, "mixed_model", k] for s, model, k in split if model == "ours"]
    v["nlschools.cells_won"] = f"{sum(d > 0 for d in cells)} of {len(cells)}"
    v["nlschools.cell_delta_range"] = f"{min(cells):+.3f} to {max(cells):+.3f}"
    for (model, k), r in comparison.items():
        for column in ("loglik", "mse", "coverage90", "loglik_minus_mixed", "metadata_gain", "metadata_gain_sd"):
            v[f"nlschools.{model}.{column}.{k}"] = float(r[column])

    for name in OWN_DATA:
        run = own_data_run(name)
        shots = list(run["model"]["shots"])
        for model, scores in run.items():
            for k in shots:
                for metric in ("loglik", "mse", "coverage90", "num_groups"):
                    v[f"own.{name}.{model}.{metric}.{k}"] = scores["shots"][k][metric]
        if "mixed_model" in run:
            deltas = [run["model"]["shots"][k]["loglik"] - run["mixed_model"]["shots"][k]["loglik"] for k in shots]
            v[f"own.{name}.minus_mixed_range"] = f"{min(deltas):+.3f} to {max(deltas):+.3f}"
            ahead = [int(k) for k, d in zip(shots, deltas, strict=True) if d > 0]
            v[f"own.{name}.ahead_of_mixed"] = ks(ahead) if ahead else "no K"
        metrics = read_json(f"docs/own_data/{name}/metrics.json")
        v[f"own.{name}.steps"] = grouped(metrics["train"]["steps"])
        v[f"own.{name}.train_minutes"] = metrics["train_seconds"] / 60
        v[f"own.{name}.draws"] = metrics["eval"]["draws"]
        v[f"own.{name}.shots"] = ks(int(k) for k in shots)
        for split, n in metrics["data"]["groups"].items():
            v[f"own.{name}.groups.{split}"] = n
        v[f"own.{name}.evaluated_groups"] = metrics["data"]["evaluated_groups"]
        v[f"own.{name}.sd_y"] = metrics["schema"]["y"][0]["std"]

    rows = read_rows(ROOT / "docs/profiling/scale.csv")
    ok = [r for r in rows if r["status"] == "ok"]
    for g in growth_table(rows):
        v[f"growth.{g['sweep']}.{g['method']}.{g['quantity']}"] = g["value"]
    for r in ok:
        key = f"scale.{r['sweep']}.{r['method']}.{r[SWEEP_PARAMETER[r['sweep']]]}"
        for quantity in ("peak_mb", "saved_peak_mb", "time_median_ms"):
            v[f"{key}.{quantity}"] = r[quantity]
        v[f"{key}.time_median_s"] = r["time_median_ms"] / 1000
    loads = [r["load_1min"] for r in ok]
    v["scale.load_min"], v["scale.load_max"] = min(loads), max(loads)
    v["scale.load_median"] = statistics.median(loads)
    v["scale.configurations"] = len(ok)
    for threads in (1, 2):
        bench = read_benchmark(f"docs/profiling/benchmark_cpu{'_1thread' if threads == 1 else ''}.txt")
        for (method, impl), (median, ratio) in bench["rows"].items():
            v[f"bench{threads}.{method}.{impl}.median"], v[f"bench{threads}.{method}.{impl}.ratio"] = median, ratio
        v[f"bench{threads}.load_min"], v[f"bench{threads}.load_max"] = min(bench["loads"]), max(bench["loads"])
    return v


def quality_values(sweep: dict[str, dict]) -> dict[str, object]:
    """The numbers docs/quality/README.md quotes beyond each run's own (which values() gives as quality.RUN.*)."""
    v: dict[str, object] = {}
    for name, run in sweep.items():
        for key, value in run["train"].items():
            v[f"quality.{name}.train.{key}"] = value
        v[f"quality.{name}.logliks"] = minus(" / ".join(f"{run['shots'][str(k)]['loglik']:.3f}" for k in SHOTS))
    for a, run_a in sweep.items():  # every pair: a's loglik minus b's per K (the same held-out tasks)
        for b, run_b in sweep.items():
            if a == b:
                continue
            delta = {k: run_a["shots"][str(k)]["loglik"] - run_b["shots"][str(k)]["loglik"] for k in SHOTS}
            key = f"quality.{a}.vs.{b}"
            v[f"{key}.better"] = ks_or_none(k for k in SHOTS if delta[k] > 0)
            v[f"{key}.worse"] = ks_or_none(k for k in SHOTS if delta[k] < 0)
            v[f"{key}.min_delta"], v[f"{key}.max_delta"] = min(delta.values()), max(delta.values())
            v[f"{key}.max_abs_delta"] = max(abs(d) for d in delta.values())
            v[f"{key}.abs_delta_range"] = f"{min(map(abs, delta.values())):.3f}–{max(map(abs, delta.values())):.3f}"
            v[f"{key}.time_ratio"] = run_a["train_seconds"] / run_b["train_seconds"]
    sinusoid = [run for name, run in sweep.items() if QUALITY_RUNS[name]]
    common = {"steps": {r["train"]["steps"] for r in sinusoid},
              "num_tasks": {r["eval"]["num_tasks"] for r in sinusoid},
              "num_query": {r["eval"]["num_query"] for r in sinusoid},
              "num_samples": {r["num_samples"] for r in sinusoid},
              "shots": {tuple(r["eval"]["shots"]) for r in sinusoid}}
    for key, found in common.items():
        if len(found) != 1:
            raise ValueError(f"the docs/quality/ runs differ in {key} ({sorted(found)}); the README quotes one")
    v["quality.steps"] = grouped(common["steps"].pop())
    v["quality.num_tasks"], v["quality.num_query"] = common["num_tasks"].pop(), common["num_query"].pop()
    v["quality.num_samples"], v["quality.shots"] = common["num_samples"].pop(), ks(common["shots"].pop())

    gaps = {name: per_k(sweep[name]) for name in DEFAULTS}
    worst = {name: max(SHOTS, key=lambda k, s=s: s[k]["gap"]) for name, s in gaps.items()}
    v["quality.gap_target"], v["quality.coverage_low"], v["quality.coverage_high"] = GAP_TARGET, *COVERAGE
    v["quality.defaults.max_gap_k"] = ks(sorted(set(worst.values())))
    v["quality.defaults.other_max_gap"] = max(s[k]["gap"] for name, s in gaps.items()
                                              for k in SHOTS if k != worst[name])
    missed = [k for k in SHOTS if any(s[k]["gap"] > GAP_TARGET for s in gaps.values())]
    v["quality.defaults.gap_missed"] = ks_or_none(missed)
    wide = [k for k in SHOTS if any(s[k]["coverage90"] > COVERAGE[1] for s in gaps.values())]
    inside = [k for k in SHOTS if all(COVERAGE[0] <= s[k]["coverage90"] <= COVERAGE[1] for s in gaps.values())]
    v["quality.defaults.too_wide"], v["quality.defaults.coverage_inside"] = ks_or_none(wide), ks_or_none(inside)
    if wide:
        coverage = [s[k]["coverage90"] for s in gaps.values() for k in wide]
        v["quality.defaults.too_wide_range"] = f"{min(coverage):.3f}–{max(coverage):.3f}"

    for name, path in (("svi32", "docs/quality/benchmark_svi.txt"), ("svi64", "docs/quality/benchmark_svi_64.txt")):
        svi = read_svi_benchmark(path)
        v[f"quality.{name}.pyro_ms"], v[f"quality.{name}.fast_ms"] = svi["vectorized"][0], svi["fast"][0]
        v[f"quality.{name}.fast_speedup"], v[f"quality.{name}.load"] = svi["fast_speedup"], svi["load"]
        v[f"quality.{name}.overhead_ms"] = svi["vectorized"][0] - svi["fast"][0]
        v[f"quality.{name}.half_pyro_ms"] = svi["vectorized"][0] / 2

    het = {int(r["K"]): r for r in read_csv("docs/quality/nlschools_heteroscedastic/comparison.csv")
           if r["model"] == "ours"}
    args = read_json("docs/quality/nlschools_heteroscedastic/fits.json")["args"]
    v["quality.nls.target"] = NLS_TARGET
    v["quality.nls.splits"] = len(args["splits"])
    v["quality.nls.steps"], v["quality.nls.batch_tasks"] = grouped(args["steps"]), args["batch_tasks"]
    v["quality.nls.lr"] = sci(args["lr"])
    met = [k for k, r in het.items() if float(r["loglik_minus_mixed"]) >= NLS_TARGET]
    missed = [k for k in het if k not in met]
    v["quality.nls.met"], v["quality.nls.missed"] = ks_or_none(met), ks_or_none(missed)
    if missed:
        sds = [float(het[k]["loglik_minus_mixed_sd"]) for k in missed]
        v["quality.nls.missed_sd_range"] = f"{min(sds):.3f}–{max(sds):.3f}"

    gap_bounds = module_constant("tests/test_fit_quality.py", "GAP_BOUNDS")
    coverage_bounds = module_constant("tests/test_fit_quality.py", "COVERAGE_BOUNDS")
    highs = {high for _, high in coverage_bounds.values()}
    if len(highs) != 1:
        raise ValueError(f"tests/test_fit_quality.py has several coverage upper bounds {sorted(highs)}; "
                         "the README quotes one")
    v["quality.fit_test.shots"] = ks(int(k) for k in gap_bounds)
    v["quality.fit_test.gap_bounds"] = " / ".join(f"{b:g}" for b in gap_bounds.values())
    v["quality.fit_test.coverage_low"] = " / ".join(f"{low:g}" for low, _ in coverage_bounds.values())
    v["quality.fit_test.coverage_high"] = highs.pop()
    return v


def tables() -> dict[str, str]:
    """Every generated table, by the name its marker gives."""
    out = {}
    runs = sinusoid_runs()
    demo, no_m, long = per_k(runs["demo"]), per_k(runs["demo_no_m"]), per_k(runs["long"])
    out["demo"] = table(
        ["K", "loglik", "exact Bayes", "gap", "mse", "coverage90", f"ESS (of {runs['demo']['num_samples']})",
         "m shuffled", "m withheld", "coverage90, m withheld"],
        [[k, minus(f"{s['loglik']:.3f}"), minus(f"{s['oracle_loglik']:.3f}"), f"{s['gap']:.3f}", f"{s['mse']:.3f}",
          f"{s['coverage90']:.3f}", f"{s['ess']:.0f}", minus(f"{s['shuffled_loglik']:.3f}"),
          minus(f"{no_m[k]['loglik']:.3f}"), f"{no_m[k]['coverage90']:.3f}"] for k, s in demo.items()])
    out["long"] = table(
        ["K", "loglik", "exact Bayes", "gap", "mse", "coverage90", "m shuffled"],
        [[k, minus(f"{s['loglik']:.3f}"), minus(f"{s['oracle_loglik']:.3f}"), f"{s['gap']:.3f}", f"{s['mse']:.3f}",
          f"{s['coverage90']:.3f}", minus(f"{s['shuffled_loglik']:.3f}")] for k, s in long.items()])

    svi = read_svi_benchmark("docs/benchmarks/svi_cpu.txt")
    out["svi-speed"] = table(
        ["", f"ms per step ({svi['setting']})", "tasks / s"],
        [["vectorized (one trace, plate `tasks`)", f"{svi['vectorized'][0]:.1f}", f"{svi['vectorized'][1]:.0f}"],
         [f"per-task loop ({svi['setting'].split()[0]} SVI steps)", f"{svi['loop'][0]:.1f}", f"{svi['loop'][1]:.0f}"],
         ["speed-up", f"{svi['speedup']:.1f}×", ""]])

    def pm(r, column, sign=""):
        mean = float(r[column])
        return "–" if math.isnan(mean) else f"{mean:{sign}.3f} ± {float(r[column + '_sd']):.3f}"

    out["nlschools"] = table(
        ["model", "K", "loglik", "Δ loglik vs mixed", "gain from m", "mse", "coverage90", "test classes",
         "query pupils"],
        [[r["model"], r["K"], pm(r, "loglik"), pm(r, "loglik_minus_mixed", "+"), pm(r, "metadata_gain", "+"),
          pm(r, "mse"), pm(r, "coverage90"), f"{float(r['test_classes']):.1f}", f"{float(r['query_pupils']):.0f}"]
         for r in read_csv("docs/nlschools/comparison.csv")])

    for name in OWN_DATA:
        run = own_data_run(name)
        shots = list(run["model"]["shots"])
        out[f"own-data-{name}"] = table(
            ["K", "groups", *(f"{OWN_MODELS[model]}" for model in run)],
            [[k, run["model"]["shots"][k]["num_groups"],
              *(f"{minus(format(s['shots'][k]['loglik'], '.3f'))} ({s['shots'][k]['coverage90']:.2f})"
                for s in run.values())] for k in shots])

    out["quality-sinusoid"] = table(
        ["run", "folder", "gap (nats)", "coverage90", "held-out ELBO", "train s"],
        [[QUALITY_RUNS[name], f"`{name}`", " / ".join(f"{s['gap']:.3f}" for s in per_k(run).values()),
          " / ".join(f"{s['coverage90']:.3f}" for s in per_k(run).values()), f"{run['elbo']:.3f}",
          f"{run['train_seconds']:.0f}"] for name, run in quality_runs().items() if QUALITY_RUNS[name]])

    def delta(path):
        return {r["K"]: pm(r, "loglik_minus_mixed", "+") for r in read_csv(path) if r["model"] == "ours"}

    constant = delta("docs/nlschools/comparison.csv")
    het = delta("docs/quality/nlschools_heteroscedastic/comparison.csv")
    if set(constant) != set(het):
        raise ValueError(f"the nlschools comparisons have other K: {sorted(constant)} and {sorted(het)}")
    out["quality-nlschools"] = table(
        ["K", "Δ vs mixed, constant noise (docs/nlschools)",
         "Δ vs mixed, heteroscedastic (`nlschools_heteroscedastic/`)"],
        [[k, constant[k], het[k]] for k in het])

    two, one = (read_benchmark(f"docs/profiling/benchmark_cpu{s}.txt")["rows"] for s in ("", "_1thread"))
    names = {"maml": "MAML", "fomaml": "first-order MAML", "es": "ES"}
    shown = [("maml", "batched"), ("maml", "vmap"), ("maml", "loop"), ("fomaml", "batched"),
             ("es", "batched"), ("es", "vmap"), ("es", "loop")]

    def cell(bench, key):
        median, ratio = bench[key]
        return f"{median:.1f}" if key[1] == "loop" else f"{median:.1f} ({ratio:.1f}×)"

    out["profiling-benchmark"] = table(
        ["median ms (loop / this)", "2 threads", "1 thread"],
        [[f"{names[m]} {impl}", cell(two, (m, impl)), cell(one, (m, impl))] for m, impl in shown])
    return out


# ---- rendering ---------------------------------------------------------------------------

def render(text: str, values: dict, tables: dict, where: str = "a doc") -> str:
    """``text`` with every table region and inline value rewritten; unknown names raise ValueError."""
    def put_table(match):  # indented as its opening marker (a table inside a list item)
        indent, name = match.group(1), match.group(3)
        if name not in tables:
            raise ValueError(f"{where}: no table named {name!r}; known: {sorted(tables)}")
        rows = "".join(indent + line for line in tables[name].splitlines(keepends=True))
        return indent + match.group(2) + rows + indent + match.group(5)

    def put_value(match):
        key, spec = match.group(1), match.group(2)
        if key not in values:
            raise ValueError(f"{where}: no value named {key!r} (scripts/doc_tables.py, values())")
        value = values[key]
        if isinstance(value, str) and spec:
            raise ValueError(f"{where}: {key!r} is a phrase and takes no format spec, got {spec!r}")
        return f"<!--v:{key}{':' + spec if spec else ''}-->{format(value, spec or '')}<!--/v-->"

    for pattern, opening, closing in ((TABLE, "<!-- table:", "<!-- /table -->"), (VALUE, "<!--v:", "<!--/v-->")):
        whole = len(pattern.findall(text))
        if not whole == text.count(opening) == text.count(closing):
            raise ValueError(f"{where}: {text.count(opening)} {opening!r} and {text.count(closing)} {closing!r} "
                             f"markers, but {whole} whole regions (a value must stay on one line)")
    return VALUE.sub(put_value, TABLE.sub(put_table, text))


def expected() -> dict[str, str]:
    """Doc path (relative to the repository root) -> the text ``make docs`` would write."""
    v, t = values(), tables()
    return {path: render((ROOT / path).read_text(), v, t, where=path) for path in DOCS}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a doc differs")
    args = parser.parse_args(argv)
    stale = []
    for path, text in expected().items():
        if (ROOT / path).read_text() != text:
            stale.append(path)
            if not args.check:
                (ROOT / path).write_text(text)
    if stale:
        print(("differs from `make docs`: " if args.check else "rewrote: ") + ", ".join(stale))
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
