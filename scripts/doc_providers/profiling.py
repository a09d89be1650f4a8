"""docs/profiling.md: the profiling study (docs/profiling/scale.csv through ``profiling.growth``,
docs/profiling/benchmark_cpu*.txt), the two exact MAMLs' steps sweep (docs/profiling/checkpointed/scale.csv)
and the accuracy study's CSVs (docs/profiling/accuracy/, through ``profiling.accuracy_study``).
Its scale values serve README.md too."""

from __future__ import annotations

import math
import re
import statistics

from profiling.accuracy_study import (
    CURVE_COLUMNS,
    QUALITY_COLUMNS,
    RUN_COLUMNS,
    AccuracyConfig,
    chosen_noise_std,
    summary_markdown,
    targets,
    time_to_target_table,
)
from profiling.accuracy_study import read_csv as read_study_csv
from profiling.algorithms.maml_checkpointed import default_segment_steps
from profiling.growth import growth_table
from profiling.study import SWEEP_PARAMETER, read_rows

from .common import ROOT, and_list, cells, grouped, markdown_tables, read_text, row, sci, span, table

QUANTITIES = ("peak_mb", "saved_peak_mb", "time_median_ms")
BENCHMARKS = {2: "docs/profiling/benchmark_cpu.txt", 1: "docs/profiling/benchmark_cpu_1thread.txt"}  # by threads
CHECKPOINTED = "docs/profiling/checkpointed/scale.csv"
CHECKPOINTED_SHOWN = (1, 4, 16, 32, 64, 128)   # the L of docs/profiling/checkpointed/ the steps table shows
CHECKPOINTED_TARGETS = {32: 0.5, 128: 0.25}    # L -> the most of MAML's memory the checkpointed MAML may use
SEGMENT_LS = (5, 32, 64, 128)                  # the L whose default segment length docs/profiling.md names
ACCURACY = ROOT / "docs/profiling/accuracy"


# ---- the committed runs ------------------------------------------------------------------

def read_benchmark(path: str) -> dict:
    """A ``profiling.benchmark`` output: (method, impl) -> (median ms, loop/this), and the load."""
    lines = read_text(path).splitlines()
    loads = [float(v) for v in re.findall(r"(?:before|after) \(([\d.]+),", lines[1])]  # 1-min, before and after
    rows = {}
    for line in lines[4:]:
        method, impl, median, _, _, ratio = line.split()
        rows[method, impl] = (float(median), float(ratio.rstrip("x")))
    return {"rows": rows, "loads": loads}


def checkpointed_rows() -> dict[tuple[str, int], dict]:
    """docs/profiling/checkpointed/scale.csv: (method, L) -> its measured row (every row must be ok)."""
    rows = read_rows(ROOT / CHECKPOINTED)
    bad = [r for r in rows if r["status"] != "ok"]
    if bad:
        raise ValueError(f"{CHECKPOINTED} has {len(bad)} rows not ok: rerun the sweep")
    return {(r["method"], r["inner_steps"]): r for r in rows}


def accuracy_study() -> dict:
    """The accuracy study's committed CSVs, read and summarized by ``profiling.accuracy_study``."""
    runs = read_study_csv(ACCURACY / "runs.csv", RUN_COLUMNS)
    curves = read_study_csv(ACCURACY / "curves.csv", CURVE_COLUMNS)
    quality = read_study_csv(ACCURACY / "quality.csv", QUALITY_COLUMNS)
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


def collapses(curves: list[dict], method: str) -> list[dict]:
    """Per seed of ``method``'s comparison runs: the largest rise of the meta-test MSE between two evaluations."""
    compare = [c for c in curves if c["phase"] == "compare" and c["method"] == method]
    out = []
    for seed in sorted({c["seed"] for c in compare}):
        points = sorted((c for c in compare if c["seed"] == seed), key=lambda c: c["outer_step"])
        before, after = max(zip(points, points[1:], strict=False),
                            key=lambda pair: pair[1]["meta_test_mse"] - pair[0]["meta_test_mse"])
        out.append({"before": before["meta_test_mse"], "after": after["meta_test_mse"],
                    "outer_step": after["outer_step"], "seconds": after["seconds"]})
    return out


# ---- values: the scale study and the benchmark -------------------------------------------

def scale_values() -> dict[str, object]:
    """growth.SWEEP.METHOD.QUANTITY (fitted) and scale.SWEEP.METHOD.X.QUANTITY (measured), and the load."""
    rows = read_rows(ROOT / "docs/profiling/scale.csv")
    ok = [r for r in rows if r["status"] == "ok"]
    v: dict[str, object] = {f"growth.{g['sweep']}.{g['method']}.{g['quantity']}": g["value"]
                            for g in growth_table(rows)}
    for r in ok:
        key = f"scale.{r['sweep']}.{r['method']}.{r[SWEEP_PARAMETER[r['sweep']]]}"
        v.update({f"{key}.{quantity}": r[quantity] for quantity in QUANTITIES})
        v[f"{key}.time_median_s"] = r["time_median_ms"] / 1000
    loads = [r["load_1min"] for r in ok]
    v["scale.load_min"], v["scale.load_max"] = min(loads), max(loads)
    v["scale.load_median"] = statistics.median(loads)
    v["scale.configurations"] = len(ok)
    return v


def benchmark_values() -> dict[str, object]:
    """benchTHREADS.METHOD.IMPL.median and .ratio (loop / this), and the load, at 1 and 2 threads."""
    v: dict[str, object] = {}
    for threads, path in BENCHMARKS.items():
        bench = read_benchmark(path)
        for (method, impl), (median, ratio) in bench["rows"].items():
            v[f"bench{threads}.{method}.{impl}.median"], v[f"bench{threads}.{method}.{impl}.ratio"] = median, ratio
        v[f"bench{threads}.load_min"], v[f"bench{threads}.load_max"] = min(bench["loads"]), max(bench["loads"])
    return v


# ---- values: the checkpointed MAML -------------------------------------------------------

def segment_values(ck: dict[tuple[str, int], dict]) -> dict[str, object]:
    """The sweep's setting, the default segment lengths, and the memory slopes that choose them."""
    first = next(iter(ck.values()))
    growth = {(g["method"], g["quantity"]): g["value"] for g in growth_table(list(ck.values()))}
    step_mb = growth["maml", "peak_mb"]
    # a checkpoint: the float32 adapted weights of every task
    checkpoint_mb = int(first["num_tasks"]) * int(first["num_params"]) * 4 / 2**20
    v: dict[str, object] = {f"ckpt.segment_steps.{L}": default_segment_steps(L) for L in SEGMENT_LS}
    v.update({"ckpt.layers": first["layers"], "ckpt.hidden": first["hidden"], "ckpt.num_tasks": int(first["num_tasks"]),
              "ckpt.segment_steps_list": and_list(str(default_segment_steps(L)) for L in SEGMENT_LS),
              "ckpt.segment_ls": ", ".join(str(L) for L in SEGMENT_LS),
              "ckpt.segments.5": math.ceil(5 / default_segment_steps(5)),
              "ckpt.checkpoint_mb": checkpoint_mb, "ckpt.step_mb": step_mb,
              "ckpt.best_segment_factor": math.sqrt(checkpoint_mb / step_mb),  # argmin of (L/s)·c + s·k is √(c L / k)
              "ckpt.maml_slope": step_mb, "ckpt.checkpointed_slope": growth["maml_checkpointed", "peak_mb"]})
    return v


def measured_values(ck: dict[tuple[str, int], dict]) -> dict[str, object]:
    """Each measured row, the checkpointed MAML's share of MAML's per L, the targets, the load."""
    steps = sorted({L for _, L in ck})
    v: dict[str, object] = {f"ckpt.{method}.{L}.{quantity}": r[quantity]
                            for (method, L), r in ck.items() for quantity in QUANTITIES}
    v.update({f"ckpt.ratio.{L}.{quantity}": ck["maml_checkpointed", L][quantity] / ck["maml", L][quantity]
              for L in steps for quantity in QUANTITIES})
    v.update({f"ckpt.target.{L}": {0.5: "half", 0.25: "a quarter"}.get(share, f"{share:g}")
              for L, share in CHECKPOINTED_TARGETS.items()})
    v["ckpt.max_time_ratio"] = max(v[f"ckpt.ratio.{L}.time_median_ms"] for L in steps)
    for method in ("maml", "maml_checkpointed"):
        v[f"ckpt.{method}.saved_growth.16.64"] = ck[method, 64]["saved_peak_mb"] / ck[method, 16]["saved_peak_mb"]
    loads = [r["load_1min"] for r in ck.values()]
    v["ckpt.load_min"], v["ckpt.load_max"] = min(loads), max(loads)
    for L in (32, 128):
        v[f"ckpt.saved.{L}"] = ck["maml", L]["peak_mb"] - ck["maml_checkpointed", L]["peak_mb"]
    return v


def checkpointed_values() -> dict[str, object]:
    ck = checkpointed_rows()
    return {**segment_values(ck), **measured_values(ck)}


# ---- values: the accuracy study ----------------------------------------------------------

def setup_values(study: dict) -> dict[str, object]:
    """The study's setting: the training, the seeds, the load, and the search for the ES noise σ."""
    config, runs = study["config"], study["runs"]
    search = [r for r in runs if r["phase"] == "search"]
    scores = [cells(line) for line in study["noise_md"][2:]]
    return {"acc.outer_lr": sci(config.outer_lr), "acc.inner_steps": config.inner_steps,
            "acc.inner_lr": config.inner_lr, "acc.seconds": config.seconds, "acc.half_seconds": config.seconds / 2,
            "acc.seeds": len({r["seed"] for r in runs if r["phase"] == "compare"}),
            "acc.load_range": span([r["load_1min"] for r in runs], ".1f"),
            "acc.search_pairs": search[0]["pairs"], "acc.search_steps": search[0]["outer_steps"],
            "acc.search_seed": search[0]["seed"],
            "acc.noise_stds": ", ".join(sci(r["noise_std"]) for r in sorted(search, key=lambda r: r["noise_std"])),
            "acc.noise_scores": and_list(f"**{score}**" if "chosen" in sigma else score for sigma, score in scores),
            "acc.noise_std": sci(study["noise_std"])}


def time_to_target_values(study: dict) -> dict[str, object]:
    """The targets, each method's time to each, its memory and step time; first-order MAML's collapses."""
    by = study["table"]
    v: dict[str, object] = {f"acc.{name}": f"{goal:.3g}" for name, goal in study["goals"].items()}
    v["acc.initial_mse"] = statistics.median(r["initial_mse"] for r in study["runs"]
                                             if r["phase"] == "compare" and r["method"] == "maml")
    v.update({f"acc.{name}.{label}.{key}": r[key] for (name, label), r in by.items()
              for key in ("seconds_median", "seconds_min", "seconds_max", "peak_mb", "saved_peak_mb", "step_ms",
                          "final_mse_median", "reached")})
    v["acc.saved.5"] = by["T1", "maml"]["peak_mb"] - by["T1", "maml_checkpointed"]["peak_mb"]
    v["acc.step_ratio"] = by["T1", "maml_checkpointed"]["step_ms"] / by["T1", "maml"]["step_ms"]
    fo = collapses(study["curves"], "fomaml")
    for name, key, spec in (("before", "before", ".2f"), ("after", "after", ".2f"), ("step", "outer_step", "d"),
                            ("seconds", "seconds", ".0f")):
        v[f"acc.fomaml.collapse_{name}"] = span([c[key] for c in fo], spec)
    v["acc.fomaml.seeds"] = len(fo)
    v["acc.fomaml.missed_T1"] = by["T1", "fomaml"]["seeds"] - by["T1", "fomaml"]["reached"]
    return v


def es_values(study: dict) -> dict[str, object]:
    """ES at each number of pairs P: P, its time to T3, its memory, the best and worst final MSE."""
    by = study["table"]
    es = list(dict.fromkeys(label for _, label in by if label.startswith("es")))
    finals = {label: by["T1", label]["final_mse_median"] for label in es}
    best, worst = min(finals, key=finals.get), max(finals, key=finals.get)
    return {"acc.es.pairs": and_list(label.split("=")[1] for label in es),
            "acc.es.T3": and_list(f"{by['T3', label]['seconds_median']:.1f}" for label in es),
            "acc.es.peaks": " → ".join(f"{by['T1', label]['peak_mb']:.0f}" for label in es),
            "acc.es.best_pairs": best.split("=")[1], "acc.es.worst_pairs": worst.split("=")[1],
            "acc.es.best_final": finals[best], "acc.es.worst_final": finals[worst]}


def es_quality_values(study: dict) -> dict[str, object]:
    """How well ES's gradient estimate points: its cosine and relative error per P and σ, against √(D/P)."""
    quality = study["quality"]
    rows = [cells(line) for line in study["quality_md"][2:]]  # P, σ, cosine, relative error, √(D/P), law
    pairs = sorted({q["pairs"] for q in quality})
    low = min(q["noise_std"] for q in quality)
    at_low = {int(P): (float(rel), float(root)) for P, sigma, _, rel, root, _ in rows if float(sigma) == low}
    coarse = {P: rel / root for P, (rel, root) in at_low.items()}
    medians = [float(r[2].split()[0]) for r in rows]
    _, _, _, _, root, law = rows[-1]
    return {"q.dim": grouped(quality[0]["dim"]).replace(" ", ","), "q.draws": len({q["draw"] for q in quality}),
            "q.pairs_min": pairs[0], "q.pairs_max": pairs[-1],
            "q.noise_stds": and_list(("the chosen " if s == study["noise_std"] else "") + sci(s)
                                     for s in sorted({q["noise_std"] for q in quality})),
            "q.low_noise_std": sci(low), "q.coarse_under.min_pairs": coarse[pairs[0]],
            "q.coarse_under.large": span([x for P, x in coarse.items() if P >= 64], ".1f"),
            "q.rel_errors": " → ".join(f"{at_low[P][0]:.0f}" for P in pairs if P >= 64),
            "q.law_factor": float(law) / float(root),
            "q.excess": span([float(r[3]) / float(r[5]) for r in rows], ".2f"),
            "q.cosine_min": min(medians), "q.cosine_max": max(medians), "q.max_pairs_loops": 2 * pairs[-1],
            "q.degrees_from_orthogonal": 90 - math.degrees(math.acos(max(medians))),
            "q.num_tasks": study["config"].num_tasks}


def accuracy_values() -> dict[str, object]:
    study = accuracy_study()
    return {**setup_values(study), **time_to_target_values(study), **es_values(study), **es_quality_values(study)}


# ---- tables ------------------------------------------------------------------------------

BENCHMARK_SHOWN = (("maml", "batched"), ("maml", "vmap"), ("maml", "loop"), ("fomaml", "batched"),
                   ("es", "batched"), ("es", "vmap"), ("es", "loop"))
METHOD_NAMES = {"maml": "MAML", "fomaml": "first-order MAML", "es": "ES"}


def benchmark_table() -> str:
    """Median ms per step at 2 and 1 threads, with the loop's time over this one's."""
    two, one = (read_benchmark(BENCHMARKS[threads])["rows"] for threads in (2, 1))

    def cell(bench, key):
        median, ratio = bench[key]
        return f"{median:.1f}" if key[1] == "loop" else f"{median:.1f} ({ratio:.1f}×)"

    return table(["median ms (loop / this)", "2 threads", "1 thread"],
                 [[f"{METHOD_NAMES[m]} {impl}", cell(two, (m, impl)), cell(one, (m, impl))]
                  for m, impl in BENCHMARK_SHOWN])


def checkpointed_table() -> str:
    """Per L: both MAMLs' time, peak and saved memory, and the checkpointed one's share (bold at a target)."""
    ck = checkpointed_rows()

    def ratio(L, quantity):
        r = ck["maml_checkpointed", L][quantity] / ck["maml", L][quantity]
        return f"**{r:.2f}**" if L in CHECKPOINTED_TARGETS else f"{r:.2f}"

    return table(
        ["L", "MAML ms", "checkpointed ms", "MAML peak MB", "checkpointed peak MB", "ratio", "MAML saved MB",
         "checkpointed saved MB", "ratio"],
        [[L, f"{ck['maml', L]['time_median_ms']:.1f}", f"{ck['maml_checkpointed', L]['time_median_ms']:.1f}",
          f"{ck['maml', L]['peak_mb']:.1f}", f"{ck['maml_checkpointed', L]['peak_mb']:.1f}", ratio(L, "peak_mb"),
          f"{ck['maml', L]['saved_peak_mb']:.1f}", f"{ck['maml_checkpointed', L]['saved_peak_mb']:.1f}",
          ratio(L, "saved_peak_mb")] for L in CHECKPOINTED_SHOWN])


def accuracy_tables(study: dict) -> dict[str, str]:
    """The study's summary tables: the time to each target (the targets named), and ES's gradient quality
    at every P for the lower σ and at the largest P for the chosen σ."""
    header, *rows = study["targets_md"]
    named = [f"{c} = {study['goals'][c]:.3g}" if c in study["goals"] else c for c in cells(header)]
    header, rule, *quality = study["quality_md"]
    low = min(q["noise_std"] for q in study["quality"])
    top = max(q["pairs"] for q in study["quality"])
    shown = [line for line in quality if float(cells(line)[1]) == low
             or (int(cells(line)[0]) == top and float(cells(line)[1]) == study["noise_std"])]
    return {"profiling-accuracy": "\n".join([row(named), *rows]) + "\n",
            "profiling-es-quality": "\n".join([header, rule, *shown]) + "\n"}


def tables() -> dict[str, str]:
    return {"profiling-benchmark": benchmark_table(), "profiling-checkpointed": checkpointed_table(),
            **accuracy_tables(accuracy_study())}
