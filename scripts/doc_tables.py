"""Write the result tables and quoted numbers of README.md and docs/*.md from the committed runs.

``python scripts/doc_tables.py`` (``make docs``) rewrites, in place, every region between

    <!-- table:NAME -->            a whole Markdown table, from ``tables()[NAME]`` (indented as the marker)
    ...
    <!-- /table -->

and every inline ``<!--v:KEY-->TEXT<!--/v-->`` (or ``<!--v:KEY:SPEC-->``, SPEC a Python format
spec such as ``.3f``), from ``values()[KEY]``. Every table and number comes from a file
committed under docs/: the demo (docs/demo/summary.json), the long run
(docs/long/metrics.json), the SVI benchmark (docs/quality/benchmark_svi.txt), the
nlschools comparison (docs/nlschools/*.csv), the grouped-data runs of ``fit --tasks
nlschools|sleepstudy`` (docs/own_data/*/metrics.json), the model-quality sweep
(docs/quality/*/metrics.json, docs/quality/benchmark_svi*.txt, docs/quality/nlschools_heteroscedastic/,
the bounds of tests/test_fit_quality.py), and the profiling study
(docs/profiling/scale.csv through ``profiling.growth``, docs/profiling/benchmark_cpu*.txt, the two exact
MAMLs' steps sweep docs/profiling/checkpointed/scale.csv, and the accuracy study's CSVs under
docs/profiling/accuracy/ through ``profiling.accuracy_study``), and the memorization study
(docs/memorization/results.csv and beta.csv, the commands its results.md lists, and the
scenarios' parameters in examples/memorization/scenarios.py).
``--check`` writes nothing and exits 1 naming each doc that differs (tests/test_docs.py).
"""

from __future__ import annotations

import argparse
import ast
import csv
import inspect
import json
import math
import re
import shlex
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from examples.memorization.results import previous_commands  # noqa: E402  (the repository root is on the path only now)
from examples.memorization.scenarios import DiseaseTasks, TaskIdBasisTasks  # noqa: E402
from hierarchical_meta.pipeline import TARGET_COVERAGE as COVERAGE  # noqa: E402
from hierarchical_meta.pipeline import TARGET_ORACLE_GAP as GAP_TARGET  # noqa: E402
from hierarchical_meta.train import DIVERGED_ELBO_DROP, TrainConfig, heldout_collapse  # noqa: E402
from profiling.accuracy_study import (  # noqa: E402
    CURVE_COLUMNS,
    QUALITY_COLUMNS,
    RUN_COLUMNS,
    AccuracyConfig,
    chosen_noise_std,
    summary_markdown,
    targets,
    time_to_target_table,
)
from profiling.accuracy_study import read_csv as read_study_csv  # noqa: E402
from profiling.algorithms.maml_checkpointed import default_segment_steps  # noqa: E402
from profiling.growth import growth_table  # noqa: E402
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
SVI_BENCHMARK = "docs/quality/benchmark_svi.txt"   # examples/benchmark_svi.py's output, 32 tasks
NLS_TARGET = 0.025            # the nlschools target on Δ loglik over the mixed model
CHECKPOINTED_SHOWN = (1, 4, 16, 32, 64, 128)   # the L of docs/profiling/checkpointed/ the steps table shows
CHECKPOINTED_TARGETS = {32: 0.5, 128: 0.25}    # L -> the most of MAML's memory the checkpointed MAML may use
SEGMENT_LS = (5, 32, 64, 128)                  # the L whose default segment length docs/profiling.md names
MEMORIZATION = "docs/memorization"             # the memorization study's committed results
DISEASE_SCENARIOS = ("disease-shared", "disease-disjoint")
BETA_LARGE = 1.0              # the β from which docs/memorization.md says the CNP's encoding collapses


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


NLS_HET = "docs/quality/nlschools_heteroscedastic"  # the heteroscedastic nlschools comparison


def nls_paired(model: str, reference: str) -> dict[int, tuple[float, float]]:
    """Per K: mean and sample sd over splits of model's loglik minus reference's, same split."""
    loglik = {(r["split"], r["model"], int(r["K"])): float(r["loglik"])
              for r in read_csv(f"{NLS_HET}/per_split.csv")}
    splits = sorted({s for s, _, _ in loglik})
    shots = sorted({k for _, m, k in loglik if m == model})
    diffs = {k: [loglik[(s, model, k)] - loglik[(s, reference, k)] for s in splits] for k in shots}
    return {k: (statistics.fmean(d), statistics.stdev(d)) for k, d in diffs.items()}


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


def checkpointed_rows() -> dict[tuple[str, int], dict]:
    """docs/profiling/checkpointed/scale.csv: (method, L) -> its measured row (every row must be ok)."""
    rows = read_rows(ROOT / "docs/profiling/checkpointed/scale.csv")
    bad = [r for r in rows if r["status"] != "ok"]
    if bad:
        raise ValueError(f"docs/profiling/checkpointed/scale.csv has {len(bad)} rows not ok: rerun the sweep")
    return {(r["method"], r["inner_steps"]): r for r in rows}


def markdown_tables(text: str) -> list[list[str]]:
    """The Markdown tables of ``text``, each as its lines (header, rule, rows)."""
    out, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            out.append(current)
            current = []
    return out


def accuracy_study() -> dict:
    """The accuracy study's committed CSVs, read and summarized by ``profiling.accuracy_study``."""
    folder = ROOT / "docs/profiling/accuracy"
    runs = read_study_csv(folder / "runs.csv", RUN_COLUMNS)
    curves = read_study_csv(folder / "curves.csv", CURVE_COLUMNS)
    quality = read_study_csv(folder / "quality.csv", QUALITY_COLUMNS)
    config = AccuracyConfig()
    for name in ("layers", "hidden", "inner_steps", "num_tasks", "outer_lr"):
        found = {r[name] for r in runs}
        if found != {getattr(config, name)}:
            raise ValueError(f"docs/profiling/accuracy/runs.csv has {name} {sorted(found)}, not AccuracyConfig's "
                             f"{getattr(config, name)}: rerun the study with the defaults")
    goals = targets(runs, curves, config.seconds / 2)
    table = time_to_target_table(runs, curves, goals)
    noise, targets_md, quality_md = markdown_tables(
        summary_markdown(config, runs, curves, quality, goals, table, command=""))
    return {"config": config, "runs": runs, "curves": curves, "quality": quality, "goals": goals,
            "noise_std": chosen_noise_std([r for r in runs if r["phase"] == "search"], curves),
            "table": {(r["target"], r["label"]): r for r in table},
            "noise_md": noise, "targets_md": targets_md, "quality_md": quality_md}


def cells(line: str) -> list[str]:
    """'| a | b |' -> ['a', 'b']."""
    return [c.strip() for c in line.strip("|").split("|")]


def collapses(curves: list[dict], method: str) -> list[dict]:
    """Per seed of ``method``'s comparison runs: the largest rise of the meta-test MSE between two evaluations."""
    out = []
    for seed in sorted({c["seed"] for c in curves if c["phase"] == "compare" and c["method"] == method}):
        points = sorted((c for c in curves if c["phase"] == "compare" and c["method"] == method
                         and c["seed"] == seed), key=lambda c: c["outer_step"])
        before, after = max(zip(points, points[1:], strict=False),
                            key=lambda pair: pair[1]["meta_test_mse"] - pair[0]["meta_test_mse"])
        out.append({"before": before["meta_test_mse"], "after": after["meta_test_mse"],
                    "outer_step": after["outer_step"], "seconds": after["seconds"]})
    return out


def span(xs, spec: str) -> str:
    """[0.07, 0.08] -> '0.07–0.08' (one number if all round alike)."""
    low, high = format(min(xs), spec), format(max(xs), spec)
    return low if low == high else f"{low}–{high}"


def profiling_extra_values() -> dict[str, object]:
    """The numbers of docs/profiling.md's checkpointed-MAML and accuracy-matched sections."""
    v: dict[str, object] = {}
    ck = checkpointed_rows()
    first = next(iter(ck.values()))
    v["ckpt.layers"], v["ckpt.hidden"], v["ckpt.num_tasks"] = first["layers"], first["hidden"], int(first["num_tasks"])
    for L in SEGMENT_LS:
        v[f"ckpt.segment_steps.{L}"] = default_segment_steps(L)
    v["ckpt.segment_steps_list"] = and_list(str(default_segment_steps(L)) for L in SEGMENT_LS)
    v["ckpt.segment_ls"] = ", ".join(str(L) for L in SEGMENT_LS)
    v["ckpt.segments.5"] = math.ceil(5 / default_segment_steps(5))
    growth = {(g["method"], g["quantity"]): g["value"] for g in growth_table(list(ck.values()))}
    step_mb = growth["maml", "peak_mb"]
    # a checkpoint: the float32 adapted weights of every task
    checkpoint_mb = int(first["num_tasks"]) * int(first["num_params"]) * 4 / 2**20
    v["ckpt.checkpoint_mb"], v["ckpt.step_mb"] = checkpoint_mb, step_mb
    v["ckpt.best_segment_factor"] = math.sqrt(checkpoint_mb / step_mb)  # argmin of (L/s)·c + s·k is √(c L / k)
    v["ckpt.maml_slope"] = step_mb
    v["ckpt.checkpointed_slope"] = growth["maml_checkpointed", "peak_mb"]
    for (method, L), r in ck.items():
        for quantity in ("peak_mb", "saved_peak_mb", "time_median_ms"):
            v[f"ckpt.{method}.{L}.{quantity}"] = r[quantity]
    for L in sorted({L for _, L in ck}):
        for quantity in ("peak_mb", "saved_peak_mb", "time_median_ms"):
            v[f"ckpt.ratio.{L}.{quantity}"] = ck["maml_checkpointed", L][quantity] / ck["maml", L][quantity]
    for L, share in CHECKPOINTED_TARGETS.items():
        v[f"ckpt.target.{L}"] = {0.5: "half", 0.25: "a quarter"}.get(share, f"{share:g}")
    v["ckpt.max_time_ratio"] = max(v[f"ckpt.ratio.{L}.time_median_ms"] for L in sorted({L for _, L in ck}))
    for method in ("maml", "maml_checkpointed"):
        v[f"ckpt.{method}.saved_growth.16.64"] = ck[method, 64]["saved_peak_mb"] / ck[method, 16]["saved_peak_mb"]
    loads = [r["load_1min"] for r in ck.values()]
    v["ckpt.load_min"], v["ckpt.load_max"] = min(loads), max(loads)
    v["ckpt.saved.32"] = ck["maml", 32]["peak_mb"] - ck["maml_checkpointed", 32]["peak_mb"]
    v["ckpt.saved.128"] = ck["maml", 128]["peak_mb"] - ck["maml_checkpointed", 128]["peak_mb"]

    study = accuracy_study()
    config, runs, goals, by = study["config"], study["runs"], study["goals"], study["table"]
    compare = [r for r in runs if r["phase"] == "compare"]
    search = [r for r in runs if r["phase"] == "search"]
    v["acc.outer_lr"] = sci(config.outer_lr)
    v["acc.inner_steps"], v["acc.inner_lr"] = config.inner_steps, config.inner_lr
    v["acc.seconds"], v["acc.half_seconds"] = config.seconds, config.seconds / 2
    v["acc.seeds"] = len({r["seed"] for r in compare})
    v["acc.load_range"] = span([r["load_1min"] for r in runs], ".1f")
    v["acc.search_pairs"], v["acc.search_steps"] = search[0]["pairs"], search[0]["outer_steps"]
    v["acc.search_seed"] = search[0]["seed"]
    v["acc.noise_stds"] = ", ".join(sci(r["noise_std"]) for r in sorted(search, key=lambda r: r["noise_std"]))
    scores = [cells(line) for line in study["noise_md"][2:]]
    v["acc.noise_scores"] = and_list(f"**{score}**" if "chosen" in sigma else score for sigma, score in scores)
    v["acc.noise_std"] = sci(study["noise_std"])
    for name, goal in goals.items():
        v[f"acc.{name}"] = f"{goal:.3g}"
    v["acc.initial_mse"] = statistics.median(r["initial_mse"] for r in compare if r["method"] == "maml")
    for (name, label), r in by.items():
        for key in ("seconds_median", "seconds_min", "seconds_max", "peak_mb", "saved_peak_mb", "step_ms",
                    "final_mse_median", "reached"):
            v[f"acc.{name}.{label}.{key}"] = r[key]
    peak = {label: by["T1", label]["peak_mb"] for _, label in by}
    v["acc.saved.5"] = peak["maml"] - peak["maml_checkpointed"]
    v["acc.step_ratio"] = by["T1", "maml_checkpointed"]["step_ms"] / by["T1", "maml"]["step_ms"]
    fo = collapses(study["curves"], "fomaml")
    v["acc.fomaml.collapse_before"] = span([c["before"] for c in fo], ".2f")
    v["acc.fomaml.collapse_after"] = span([c["after"] for c in fo], ".2f")
    v["acc.fomaml.collapse_step"] = span([c["outer_step"] for c in fo], "d")
    v["acc.fomaml.collapse_seconds"] = span([c["seconds"] for c in fo], ".0f")
    v["acc.fomaml.seeds"] = len(fo)
    v["acc.fomaml.missed_T1"] = by["T1", "fomaml"]["seeds"] - by["T1", "fomaml"]["reached"]
    es = [label for _, label in by if label.startswith("es")]
    es = list(dict.fromkeys(es))
    v["acc.es.pairs"] = and_list(label.split("=")[1] for label in es)
    v["acc.es.T3"] = and_list(f"{by['T3', label]['seconds_median']:.1f}" for label in es)
    v["acc.es.peaks"] = " → ".join(f"{peak[label]:.0f}" for label in es)
    finals = {label: by["T1", label]["final_mse_median"] for label in es}
    best, worst = min(finals, key=finals.get), max(finals, key=finals.get)
    v["acc.es.best_pairs"], v["acc.es.worst_pairs"] = best.split("=")[1], worst.split("=")[1]
    v["acc.es.best_final"], v["acc.es.worst_final"] = finals[best], finals[worst]

    quality = study["quality"]
    rows = [cells(line) for line in study["quality_md"][2:]]  # P, σ, cosine, relative error, √(D/P), law
    v["q.dim"] = grouped(quality[0]["dim"]).replace(" ", ",")
    v["q.draws"] = len({q["draw"] for q in quality})
    pairs = sorted({q["pairs"] for q in quality})
    v["q.pairs_min"], v["q.pairs_max"] = pairs[0], pairs[-1]
    v["q.noise_stds"] = and_list(("the chosen " if s == study["noise_std"] else "") + sci(s)
                                 for s in sorted({q["noise_std"] for q in quality}))
    low = min(q["noise_std"] for q in quality)
    v["q.low_noise_std"] = sci(low)
    coarse = {int(P): float(rel) / float(root) for P, sigma, _, rel, root, _ in rows if float(sigma) == low}
    v["q.coarse_under.min_pairs"] = coarse[pairs[0]]
    v["q.coarse_under.large"] = span([x for P, x in coarse.items() if P >= 64], ".1f")
    rel = {int(P): float(r) for P, sigma, _, r, _, _ in rows if float(sigma) == low}
    v["q.rel_errors"] = " → ".join(f"{rel[P]:.0f}" for P in pairs if P >= 64)
    P, _, _, _, root, law = rows[-1]
    v["q.law_factor"] = float(law) / float(root)
    v["q.excess"] = span([float(r[3]) / float(r[5]) for r in rows], ".2f")
    medians = [float(r[2].split()[0]) for r in rows]
    v["q.cosine_min"], v["q.cosine_max"] = min(medians), max(medians)
    v["q.max_pairs_loops"] = 2 * pairs[-1]
    v["q.degrees_from_orthogonal"] = 90 - math.degrees(math.acos(max(medians)))
    v["q.num_tasks"] = config.num_tasks
    return v


def zero_unsigned(x: float, digits: int) -> float:
    """``x`` rounded to ``digits`` decimals, with −0 as 0 (so -0.0003 prints as 0.00, not -0.00)."""
    return round(x, digits) + 0.0


def memorization_rows(path: str) -> list[dict]:
    """A memorization CSV (``python -m examples.memorization``): numbers parsed, split without its "meta-"."""
    rows = read_csv(path)
    text = {"scenario", "learner", "split", "metric_name", "chosen"}
    for r in rows:
        r.update({k: float(value) for k, value in r.items() if k not in text})
        r["split"] = r["split"].removeprefix("meta-")
    return rows


def updated_pairs(command: str) -> set[tuple[str, str]]:
    """The (scenario, learner) pairs an ``--update`` command of the memorization study ran."""
    args = shlex.split(command)
    named = {flag: [b for a, b in zip(args, args[1:], strict=False) if a == flag]
             for flag in ("--scenario", "--learner")}
    if not all(named.values()):
        raise ValueError(f"{command!r} names no --scenario or no --learner: say which rows it replaced")
    return {(s, learner) for s in named["--scenario"] for learner in named["--learner"]}


def memorization_values() -> dict[str, object]:
    """The numbers of docs/memorization.md: every score of results.csv and beta.csv, and what follows from them.

    ``mem.SCENARIO.LEARNER.SPLIT.COLUMN`` (SPLIT train, test or val), ``mem.beta.LEARNER.BETA.SPLIT.COLUMN``
    and ``mem.beta.LEARNER.chosen.SPLIT.COLUMN`` (the β chosen by meta-val follow).
    """
    v: dict[str, object] = {}
    results = memorization_rows(f"{MEMORIZATION}/results.csv")
    beta = memorization_rows(f"{MEMORIZATION}/beta.csv")
    by = {(r["scenario"], r["learner"], r["split"]): r for r in results}
    for (scenario, learner, split), r in by.items():
        key = f"mem.{scenario}.{learner}.{split}"
        for column, value in r.items():
            if isinstance(value, float):
                v[f"{key}.{column}"] = value
        v[f"{key}.gain_vs_none_pm"] = minus(f"{r['gain_vs_none']:.3f} ± {r['gain_vs_none_se']:.3f}")
        v[f"{key}.support_gain"] = r["metric"] - r["metric_none"]
        oracle = by.get((scenario, "oracle", split))
        if r["metric_name"] == "mse" and oracle:
            v[f"{key}.vs_oracle"] = r["metric"] / oracle["metric"]
    for scenario, learner in dict.fromkeys((r["scenario"], r["learner"]) for r in results):
        v[f"mem.{scenario}.{learner}.metric_range"] = span(
            [r["metric"] for r in results if (r["scenario"], r["learner"]) == (scenario, learner)], ".2f")
    common = {"probe_tasks": {int(r["num_tasks"]) for r in results + beta},
              "chance_accuracy": {r["chance_metric"] for r in results if r["metric_name"] == "accuracy"}}
    for name, found in common.items():
        if len(found) != 1:
            raise ValueError(f"{MEMORIZATION}/ has several {name} {sorted(found)}; docs/memorization.md quotes one")
        v[f"mem.{name}"] = found.pop()

    disease = [r for r in results if r["scenario"] in DISEASE_SCENARIOS]
    for learner in dict.fromkeys(r["learner"] for r in disease):
        mine = [r for r in disease if r["learner"] == learner]
        for column in ("metric", "follow"):
            v[f"mem.disease.{learner}.{column}_range"] = span([zero_unsigned(r[column], 2) for r in mine], ".2f")
            for split in dict.fromkeys(r["split"] for r in mine):
                v[f"mem.disease.{learner}.{split}.{column}_range"] = span(
                    [zero_unsigned(r[column], 2) for r in mine if r["split"] == split], ".2f")
    shifts = inspect.signature(DiseaseTasks).parameters
    shift = math.hypot(shifts["common_shift"].default, shifts["specific_shift"].default)
    v["mem.disease.bayes_accuracy"] = statistics.NormalDist().cdf(shift / 2)  # known disease: Φ(|μ|/2)
    v["mem.basis-task-id.noise_variance"] = inspect.signature(TaskIdBasisTasks).parameters["noise_std"].default ** 2

    label = {r["beta"]: f"{r['beta']:g}" for r in beta}
    for r in beta:
        keys = [f"mem.beta.{r['learner']}.{label[r['beta']]}.{r['split']}"]
        if r["chosen"] == "True":
            keys.append(f"mem.beta.{r['learner']}.chosen.{r['split']}")
            v[f"mem.beta.{r['learner']}.chosen"] = r["beta"]
        for key in keys:
            v.update({f"{key}.{column}": value for column, value in r.items() if isinstance(value, float)})
    for learner in dict.fromkeys(r["learner"] for r in beta):
        mine = sorted((r for r in beta if r["learner"] == learner), key=lambda r: r["beta"])
        v[f"mem.beta.{learner}.betas"] = " / ".join(dict.fromkeys(label[r["beta"]] for r in mine))
        for split in dict.fromkeys(r["split"] for r in mine):
            at = [r for r in mine if r["split"] == split]
            v[f"mem.beta.{learner}.{split}.follows"] = " / ".join(f"{zero_unsigned(r['follow'], 2):.2f}" for r in at)
            v[f"mem.beta.{learner}.{split}.metrics"] = " / ".join(f"{r['metric']:.3f}" for r in at)
            v[f"mem.beta.{learner}.large.{split}.metric_range"] = span(
                [r["metric"] for r in at if r["beta"] >= BETA_LARGE], ".3f")
    v["mem.beta.large"] = BETA_LARGE

    # training time per command: a (scenario, learner) pair's two rows share one train_seconds
    commands = previous_commands(ROOT / MEMORIZATION / "results.md")
    updated = set().union(*(updated_pairs(c) for c in commands[1:]))  # the first command ran every pair
    seconds = {(r["scenario"], r["learner"]): r["train_seconds"] for r in results}
    v["mem.minutes.first"] = sum(s for pair, s in seconds.items() if pair not in updated) / 60
    v["mem.minutes.update"] = sum(s for pair, s in seconds.items() if pair in updated) / 60
    v["mem.minutes.beta"] = sum({(r["learner"], r["beta"]): r["train_seconds"] for r in beta}.values()) / 60
    return v


# ---- values and tables -------------------------------------------------------------------

def values() -> dict[str, object]:
    """Every quotable number (float or int, formatted by the marker's spec) or phrase (str)."""
    v: dict[str, object] = {}
    train = TrainConfig()  # the defaults docs/model.md describes
    for key in ("batch_tasks", "metadata_dropout", "metadata_swap", "initial_kl_weight", "anneal_steps",
                "eval_every", "checkpoint_every"):
        v[f"train.{key}"] = getattr(train, key)
    v["train.lr"], v["train.points"] = sci(train.lr), f"{train.min_points}–{train.max_points}"
    v["train.diverged_elbo_drop"] = DIVERGED_ELBO_DROP
    for name in ("lr6e-3", "lr3e-3"):  # long runs that diverged: their held-out ELBO, every 250 steps
        trace = [(int(r["step"]), float(r["elbo_per_point"]))
                 for r in read_csv(f"docs/quality/diverged_{name}/heldout_elbo.csv")]
        stop = next(i for i in range(3, len(trace) + 1) if heldout_collapse(trace[:i], after_step=1000))
        best_step, best = max(trace[:stop], key=lambda e: e[1])
        key = f"quality.diverged_{name}"
        v[f"{key}.stop_step"], v[f"{key}.last_step"] = grouped(trace[stop - 1][0]), grouped(trace[-1][0])
        v[f"{key}.best"], v[f"{key}.best_step"] = best, grouped(best_step)
        v[f"{key}.after_stop_min"] = min(e for _, e in trace[stop:]) if stop < len(trace) else float("nan")
    for name in ("swap5", "swap10"):  # runs at lr 6e-3 that fit stopped: its own error line
        stopped = re.search(r"diverged at step (\d+) \(the held-out ELBO fell from ([-\d.]+) nats per point at "
                            r"step (\d+)", (ROOT / f"docs/quality/diverged_{name}/fit_output.txt").read_text())
        key = f"quality.diverged_{name}"
        v[f"{key}.stop_step"], v[f"{key}.best_step"] = grouped(int(stopped.group(1))), grouped(int(stopped.group(3)))
        v[f"{key}.best"] = float(stopped.group(2))
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
        v[f"{name}.gap_within_0.05"] = ks_or_none(k for k in SHOTS if scores[k]["gap"] <= 0.05)
        missed = [k for k in SHOTS if scores[k]["gap"] > GAP_TARGET]
        v[f"{name}.gap_verdict"] = f"missed at {ks(missed)}" if missed else "met at every K"
        narrow = [k for k in SHOTS if scores[k]["coverage90"] < COVERAGE[0]]
        verdicts = ([f"too wide at {ks(wide)}"] if wide else []) + ([f"too narrow at {ks(narrow)}"] if narrow else [])
        v[f"{name}.coverage_verdict"] = "; ".join(verdicts) or "met at every K"
        v[f"{name}.gap_above_0.05"] = ks_or_none(k for k in SHOTS if scores[k]["gap"] > 0.05)
    demo, no_m = per_k(runs["demo"]), per_k(runs["demo_no_m"])
    v["demo.metadata_gain.0"] = demo[0]["loglik"] - no_m[0]["loglik"]

    v["svi.load"] = read_svi_benchmark(SVI_BENCHMARK)["load"]

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
    v.update(profiling_extra_values())
    v.update(memorization_values())
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
    met = [name for name, s in gaps.items() if all(s[k]["gap"] <= GAP_TARGET
                                                   and COVERAGE[0] <= s[k]["coverage90"] <= COVERAGE[1] for k in SHOTS)]
    v["quality.defaults.seeds_met"] = f"{len(met)} of {len(gaps)}"
    for group, names in SEED_GROUPS.items():  # one setting over seeds: ranges of what the README compares
        scores = [per_k(sweep[name]) for name in names]
        for key, values in (("gap.1", [s[1]["gap"] for s in scores]),
                            ("max_gap", [max(s[k]["gap"] for k in SHOTS) for s in scores]),
                            ("shuffled.10", [s[10]["shuffled_loglik"] for s in scores]),
                            ("max_coverage", [max(s[k]["coverage90"] for k in SHOTS) for s in scores])):
            v[f"quality.{group}.{key}.range"] = minus(f"{min(values):.3f}–{max(values):.3f}")
            v[f"quality.{group}.{key}.each"] = minus(" / ".join(f"{x:.3f}" for x in values))
        v[f"quality.{group}.seeds"] = len(names)
        v[f"quality.{group}.gap.1.mean"] = statistics.mean(s[1]["gap"] for s in scores)
    v["quality.swap3.vs.swap0.gap.1"] = v["quality.swap3.gap.1.mean"] - v["quality.swap0.gap.1.mean"]

    for name, path in (("svi32", SVI_BENCHMARK), ("svi64", "docs/quality/benchmark_svi_64.txt")):
        svi = read_svi_benchmark(path)
        v[f"quality.{name}.pyro_ms"], v[f"quality.{name}.fast_ms"] = svi["vectorized"][0], svi["fast"][0]
        v[f"quality.{name}.fast_speedup"], v[f"quality.{name}.load"] = svi["fast_speedup"], svi["load"]
        v[f"quality.{name}.overhead_ms"] = svi["vectorized"][0] - svi["fast"][0]
        v[f"quality.{name}.half_pyro_ms"] = svi["vectorized"][0] / 2

    het = {int(r["K"]): r for r in read_csv(f"{NLS_HET}/comparison.csv") if r["model"] == "ours"}
    for name, folder in (("swap10", NLS_HET), ("swap3", "docs/quality/nlschools_het_swap3")):
        ours = [r for r in read_csv(f"{folder}/comparison.csv") if r["model"] == "ours"]
        swap = read_json(f"{folder}/fits.json")["args"].get("metadata_swap", 0.1)  # 0.1: before the option
        v[f"quality.nls_{name}.metadata_swap"] = swap
        for column in ("loglik_minus_mixed", "metadata_gain"):
            v[f"quality.nls_{name}.{column}"] = minus(" / ".join(f"{float(r[column]):+.3f}" for r in ours))
    het_fits = read_json(f"{NLS_HET}/fits.json")
    args = het_fits["args"]
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
    # the linear mixed model with the same IQ-dependent noise: what that noise is worth to it
    het_mixed = nls_paired("mixed_model_heteroscedastic", "mixed_model")
    v["quality.nls.het_mixed.gains"] = " / ".join(f"{m:+.3f}" for m, _ in het_mixed.values())
    v["quality.nls.het_mixed.shots"] = ks(het_mixed)
    v["quality.nls.het_mixed.below"] = ks_or_none(k for k, (m, _) in het_mixed.items() if m < NLS_TARGET)
    v["quality.nls.het_mixed.max_gain"] = max(m for m, _ in het_mixed.values())
    slopes = [s["mixed_model_heteroscedastic"]["log_sd_slopes"]["IQ"] for s in het_fits["splits"]]
    v["quality.nls.het_mixed.slope_range"] = minus(f"{min(slopes):.3f} to {max(slopes):.3f}")
    v["quality.nls.het_mixed.slope_sq_max"] = max(c * c for c in slopes)
    ours_vs = nls_paired("ours", "mixed_model_heteroscedastic")
    v["quality.nls.ours_vs_het_mixed"] = minus(" / ".join(f"{m:+.3f}" for m, _ in ours_vs.values()))
    # at the missed K: what ours − het. mixed would need for the target, and what it gets
    v["quality.nls.need_vs_het_mixed"] = minus(" / ".join(f"{NLS_TARGET - het_mixed[k][0]:+.3f}" for k in missed))
    v["quality.nls.ours_vs_het_mixed.missed"] = minus(" / ".join(f"{ours_vs[k][0]:+.3f}" for k in missed))

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

    svi = read_svi_benchmark(SVI_BENCHMARK)
    out["svi-speed"] = table(
        ["", f"ms per step ({svi['setting']})", "tasks / s", "speed-up"],
        [[f"per-task loop ({svi['setting'].split()[0]} Pyro SVI steps)", f"{svi['loop'][0]:.1f}",
          f"{svi['loop'][1]:.0f}", ""],
         ["vectorized Pyro step (one trace, plate `tasks`)", f"{svi['vectorized'][0]:.1f}",
          f"{svi['vectorized'][1]:.0f}", f"{svi['speedup']:.1f}× the loop"],
         ["fast path (`--elbo fast`, the default)", f"{svi['fast'][0]:.1f}", f"{svi['fast'][1]:.0f}",
          f"{svi['fast_speedup']:.2f}× the Pyro step"]])

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
        ["run", "folder", "gap (nats)", "coverage90", "m shuffled, K = 10", "held-out ELBO", "train s"],
        [[QUALITY_RUNS[name], f"`{name}`", " / ".join(f"{s['gap']:.3f}" for s in per_k(run).values()),
          " / ".join(f"{s['coverage90']:.3f}" for s in per_k(run).values()),
          minus(f"{run['shuffled_metadata']['shots']['10']['loglik']:.3f}"), f"{run['elbo']:.3f}",
          f"{run['train_seconds']:.0f}"] for name, run in quality_runs().items() if QUALITY_RUNS[name]])

    def delta(path):
        return {r["K"]: pm(r, "loglik_minus_mixed", "+") for r in read_csv(path) if r["model"] == "ours"}

    constant = delta("docs/nlschools/comparison.csv")
    het = delta("docs/quality/nlschools_heteroscedastic/comparison.csv")
    if set(constant) != set(het):
        raise ValueError(f"the nlschools comparisons have other K: {sorted(constant)} and {sorted(het)}")
    het_mixed = nls_paired("mixed_model_heteroscedastic", "mixed_model")
    ours_vs = nls_paired("ours", "mixed_model_heteroscedastic")
    if {str(k) for k in het_mixed} != set(het):
        raise ValueError(f"{NLS_HET}: the heteroscedastic mixed model has other K: {sorted(het_mixed)}")
    out["quality-nlschools"] = table(
        ["K", "ours − mixed, constant noise (docs/nlschools)",
         "ours − mixed, heteroscedastic (`nlschools_heteroscedastic/`)",
         "het. mixed − mixed (same run)", "ours − het. mixed (same run)"],
        [[k, constant[k], het[k], *(f"{d[int(k)][0]:+.3f} ± {d[int(k)][1]:.3f}" for d in (het_mixed, ours_vs))]
         for k in het])

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

    ck = checkpointed_rows()

    def ratio(L, quantity):
        r = ck["maml_checkpointed", L][quantity] / ck["maml", L][quantity]
        return f"**{r:.2f}**" if L in CHECKPOINTED_TARGETS else f"{r:.2f}"

    out["profiling-checkpointed"] = table(
        ["L", "MAML ms", "checkpointed ms", "MAML peak MB", "checkpointed peak MB", "ratio", "MAML saved MB",
         "checkpointed saved MB", "ratio"],
        [[L, f"{ck['maml', L]['time_median_ms']:.1f}", f"{ck['maml_checkpointed', L]['time_median_ms']:.1f}",
          f"{ck['maml', L]['peak_mb']:.1f}", f"{ck['maml_checkpointed', L]['peak_mb']:.1f}", ratio(L, "peak_mb"),
          f"{ck['maml', L]['saved_peak_mb']:.1f}", f"{ck['maml_checkpointed', L]['saved_peak_mb']:.1f}",
          ratio(L, "saved_peak_mb")] for L in CHECKPOINTED_SHOWN])

    study = accuracy_study()
    header, *rows = study["targets_md"]
    named = [f"{c} = {study['goals'][c]:.3g}" if c in study["goals"] else c for c in cells(header)]
    out["profiling-accuracy"] = "\n".join([row(named), *rows]) + "\n"
    header, rule, *rows = study["quality_md"]   # every P at the lower σ, and the largest P at the chosen σ
    low = min(q["noise_std"] for q in study["quality"])
    top = max(q["pairs"] for q in study["quality"])
    out["profiling-es-quality"] = "\n".join(
        [header, rule, *(line for line in rows if float(cells(line)[1]) == low
                         or (int(cells(line)[0]) == top and float(cells(line)[1]) == study["noise_std"]))]) + "\n"
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
