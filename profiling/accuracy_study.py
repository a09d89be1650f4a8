"""``python -m profiling.accuracy_study``: what each method costs for the same meta-test accuracy.

Three stages, resumable, each row written to the output folder as soon as it exists:

1. **noise search**: ES with ``search_pairs`` pairs at each σ of ``noise_stds`` for
   ``search_steps`` outer steps (seed 0, side by side); the σ with the lowest meta-test
   MSE (mean of its last three evaluations) is used below;
2. **comparison**: for every seed, the settings (MAML, checkpointed MAML, first-order
   MAML, ES at each of ``pairs`` with the chosen σ) are meta-trained side by side from that
   seed's θ_0 on that seed's stream of tasks, each for ``seconds`` of its own training,
   the one that has trained least stepping next (so a change of load on a shared machine
   hits all alike); the peak memory of one outer step is measured first
   (:mod:`profiling.measure`);
3. **ES gradient quality**: ``quality_draws`` ES estimates at each of ``quality_pairs``
   against MAML's exact meta-gradient at seed 0's θ_0, on one batch, at σ = 1e-3 (the
   study's default) and at the chosen σ.

Files: ``runs.csv`` (one row per finished run), ``curves.csv`` (the meta-test loss at each
evaluation), ``quality.csv`` (one row per ES draw); derived and rewritten every time:
``time_to_target.csv``, ``summary.md``, ``loss_vs_time.png``, ``pareto.png`` and
``es_gradient_quality.png``. Started again on the same folder, it skips finished runs and
draws; a run killed midway loses its partial curve and is redone, and a row torn by the kill
is dropped (:mod:`profiling.rows`). ``settings.json`` records what defines the measurement
(every :class:`AccuracyConfig` field but ``target``, and the device): a rerun with other
settings stops naming each difference. A run holds the lock of its output folder
(:func:`hierarchical_meta.runfiles.hold_folder`); a mistake in the input ends in one ``error:``
line and exit status 2 (``--debug`` or ``PROFILING_DEBUG=1``: the traceback).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import sys
from dataclasses import asdict, dataclass, fields, replace

import torch
from tqdm import tqdm

from hierarchical_meta.errors import debug_requested, report_errors
from hierarchical_meta.runfiles import atomic_write, hold_folder

from . import rows
from .accuracy import (
    CurvePoint,
    MetaTrainer,
    Setting,
    es_error_law,
    es_gradient_quality,
    time_to_target,
    train_side_by_side,
)
from .accuracy_plots import draw_curves, draw_pareto, draw_quality
from .algorithms import es, meta_gradient
from .measure import MIB, environment, peak_memory_bytes, resolve_device, saved_tensor_peak_bytes
from .mlp import build_mlp
from .study import DEBUG_ENV, DEFAULTS, INNER_LR, NUM_TASKS
from .tasks import sample_sinusoid_tasks

__all__ = ["AccuracyConfig", "QUICK", "run_accuracy_study", "settings", "targets", "time_to_target_table",
           "read_csv", "check_settings", "main"]

TEST_TASKS_SEED = 10_000  # the fixed held-out tasks of the meta-test loss
QUALITY_TASKS_SEED = 20_000  # the batch on which ES gradients are compared with MAML's


@dataclass(frozen=True)
class AccuracyConfig:
    """Everything the study varies; the defaults are the full CPU study (about 15 minutes)."""

    layers: int = DEFAULTS["layers"]
    hidden: int = DEFAULTS["hidden"]
    inner_steps: int = DEFAULTS["inner_steps"]
    inner_lr: float = INNER_LR
    num_tasks: int = NUM_TASKS  # tasks per outer step
    outer_lr: float = 1e-3  # Adam, every method
    test_tasks: int = 128  # held-out tasks of the meta-test loss
    seeds: tuple[int, ...] = (0, 1, 2)
    seconds: float = 30.0  # training seconds per run of the comparison
    eval_seconds: float = 1.0  # the most training seconds between meta-test evaluations (denser early)
    pairs: tuple[int, ...] = (16, 64, 256)
    noise_stds: tuple[float, ...] = (1e-3, 1e-2, 1e-1)  # the σ searched
    search_pairs: int = 64
    search_steps: int = 100
    quality_pairs: tuple[int, ...] = (4, 16, 64, 256, 1024)
    quality_draws: int = 16
    target: float | None = None  # None: the best meta-test MSE every MAML seed reaches in seconds / 2

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "target" and value is None:
                continue
            values = value if isinstance(value, tuple) else (value,)
            if not values or any(not _valid(f.name, v) for v in values):
                raise ValueError(f"{f.name}={value!r}: expected positive numbers (seeds: integers ≥ 0)")
            repeated = sorted({v for v in values if values.count(v) > 1})
            if repeated:
                raise ValueError(f"{f.name}={value!r} gives {', '.join(map(str, repeated))} more than once: give "
                                 "each value once (a repeated one would be measured twice and counted twice)")


def _valid(name: str, value) -> bool:
    """Whether ``value`` may be one of field ``name``'s values: a seed is an integer ≥ 0, the rest positive numbers."""
    if isinstance(value, bool):
        return False
    if name == "seeds":
        return isinstance(value, int) and value >= 0
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


QUICK = replace(AccuracyConfig(), layers=1, hidden=16, test_tasks=32, seeds=(0, 1), seconds=1.0, eval_seconds=0.1,
                pairs=(4, 16), search_pairs=16, search_steps=20, quality_pairs=(4, 16, 64), quality_draws=4)

GAIN_FRACTIONS = {"T2": 0.5, "T3": 0.2}  # looser targets: these fractions of MAML's gain down to T1
RUN_KEY = ("phase", "method", "pairs", "noise_std", "seed")
RUN_COLUMNS = {
    "phase": str, "method": str, "label": str, "pairs": int, "noise_std": float, "seed": int,
    "outer_steps": int, "seconds": float, "initial_mse": float, "final_mse": float, "best_mse": float,
    "peak_mb": float, "saved_peak_mb": float, "load_1min": float, "threads": int,
    "layers": int, "hidden": int, "inner_steps": int, "num_tasks": int, "outer_lr": float,
    "device": str, "device_name": str, "torch": str,
}
CURVE_COLUMNS = {"phase": str, "method": str, "pairs": int, "noise_std": float, "seed": int,
                 "outer_step": int, "seconds": float, "meta_test_mse": float}
QUALITY_COLUMNS = {"pairs": int, "noise_std": float, "draw": int, "cosine": float, "rel_error": float,
                   "law_rel_error": float, "dim": int, "layers": int, "hidden": int, "device": str}
FILES = ("runs", "curves", "quality")  # the CSVs the study appends to, resumed by a rerun
SETTINGS_FILE = "settings.json"
#: The settings every row of runs.csv records: all a folder without settings.json can be checked against.
ROW_SETTINGS = ("layers", "hidden", "inner_steps", "num_tasks", "outer_lr", "device")
TARGET_COLUMNS = ["target", "target_mse", "label", "method", "pairs", "noise_std", "peak_mb", "saved_peak_mb",
                  "step_ms", "seeds", "reached", "seconds_median", "seconds_min", "seconds_max", "steps_median",
                  "final_mse_median", "budget_seconds"]


# ---------------------------------------------------------------- CSV files


def read_csv(path, columns: dict) -> list[dict]:
    """Rows of one of the study's CSVs, typed by ``columns`` (empty cells: None); [] if absent.

    A torn last row is left out; a damaged one raises ValueError naming its line (:func:`profiling.rows.read_rows`).
    """
    return rows.read_rows(path, lambda row: {k: (columns[k](v) if v != "" else None) for k, v in row.items()
                                             if k in columns})


def _key(row: dict) -> tuple:
    return tuple(row[k] for k in RUN_KEY)


# ---------------------------------------------------------------- what to run


def settings(config: AccuracyConfig, noise_std: float) -> list[Setting]:
    """The comparison's settings, in the order each seed runs them."""
    exact = [Setting("maml"), Setting("maml_checkpointed"), Setting("fomaml")]
    return exact + [Setting("es", pairs=p, noise_std=noise_std) for p in config.pairs]


def setting_order(row: dict) -> tuple:
    """Sort key of a run row: MAML, checkpointed MAML, first-order MAML, then ES by pairs."""
    return ["maml", "maml_checkpointed", "fomaml", "es"].index(row["method"]), row["pairs"] or 0


def chosen_noise_std(search: list[dict], curves: list[dict]) -> float:
    """The searched σ with the lowest mean meta-test MSE over its last three evaluations."""
    if not search:
        raise ValueError("no finished noise-search run in runs.csv: run the study (not --plots-only) first")
    def score(run):  # a σ that diverged (NaN) is never chosen
        points = sorted((c for c in curves if _key(c) == _key(run)), key=lambda c: c["outer_step"])
        value = statistics.fmean(c["meta_test_mse"] for c in points[-3:])
        return value if math.isfinite(value) else math.inf
    return min(search, key=lambda run: (score(run), run["noise_std"]))["noise_std"]


def _round_up(x: float, digits: int = 2) -> float:
    unit = 10.0 ** (math.floor(math.log10(x)) - digits + 1)
    return round(math.ceil(x / unit - 1e-9) * unit, 12)


def targets(runs: list[dict], curves: list[dict], half_time: float, target: float | None = None) -> dict[str, float]:
    """``{"T1": …, "T2": …, "T3": …}``, the meta-test MSE targets of the comparison.

    T1: unless ``target`` is given, the best meta-test MSE that every MAML seed reaches
    within ``half_time`` seconds of training (rounded up to 2 significant digits, or more where
    that would reach the initial MSE), so a
    method up to twice as slow as MAML can still reach it within the budget. T2 and T3:
    half and a fifth of the way from the initial MSE (median over seeds) down to T1.
    """
    maml = [r for r in runs if r["phase"] == "compare" and r["method"] == "maml"]
    if not maml:
        raise ValueError("no finished MAML run in runs.csv: the targets are defined by MAML's runs")
    initial = statistics.median(r["initial_mse"] for r in maml)
    if target is None:
        best = [min((c["meta_test_mse"] for c in curves if _key(c) == _key(r) and c["seconds"] <= half_time),
                    default=math.inf) for r in maml]
        digits = 2  # more digits where rounding up would put T1 at or above the initial MSE
        while _round_up(max(best), digits) >= initial > max(best) and digits < 12:
            digits += 1
        target = _round_up(max(best), digits)
    out = {"T1": target}
    for name, fraction in GAIN_FRACTIONS.items():
        out[name] = round(initial - fraction * (initial - target), 12)
    return out


def time_to_target_table(runs: list[dict], curves: list[dict], goals: dict[str, float]) -> list[dict]:
    """One row per (target, setting): seeds that reached it and the training seconds they took."""
    compare = [r for r in runs if r["phase"] == "compare"]
    labels = list(dict.fromkeys(r["label"] for r in sorted(compare, key=setting_order)))
    out = []
    for name, goal in goals.items():
        for label in labels:
            sel = [r for r in compare if r["label"] == label]
            hits = []
            for run in sel:
                points = [CurvePoint(c["outer_step"], c["seconds"], c["meta_test_mse"])
                          for c in curves if _key(c) == _key(run)]
                hits.append(time_to_target(points, goal))
            seconds = [h.seconds if h else math.inf for h in hits]
            steps = [h.outer_step if h else math.inf for h in hits]
            out.append({
                "target": name, "target_mse": goal, "label": label, "method": sel[0]["method"],
                "pairs": sel[0]["pairs"], "noise_std": sel[0]["noise_std"],
                "peak_mb": statistics.median(r["peak_mb"] for r in sel),
                "saved_peak_mb": statistics.median(r["saved_peak_mb"] for r in sel),
                "step_ms": statistics.median(1e3 * r["seconds"] / r["outer_steps"] for r in sel),
                "seeds": len(sel), "reached": sum(h is not None for h in hits),
                "seconds_median": statistics.median(seconds), "seconds_min": min(seconds),
                "seconds_max": max(seconds), "steps_median": statistics.median(steps),
                "final_mse_median": statistics.median(r["final_mse"] for r in sel),
                "budget_seconds": statistics.median(r["seconds"] for r in sel),
            })
    return out


# ---------------------------------------------------------------- the stages


def _initial_params(config: AccuracyConfig, seed: int, device) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.detach().to(device) for k, v in build_mlp(config.layers, config.hidden).named_parameters()}


def _step_memory(config: AccuracyConfig, setting: Setting, params, seed: int, device) -> tuple[float, float]:
    """Peak MB above the start and saved-for-backward peak MB of one outer step at θ_0."""
    batch = sample_sinusoid_tasks(config.num_tasks, generator=torch.Generator().manual_seed(seed), device=device)
    options = {}
    if setting.method == "es":
        options = {"pairs": setting.pairs, "noise_std": setting.noise_std,
                   "generator": torch.Generator(device=device).manual_seed(seed + 1)}

    def step():
        return meta_gradient(setting.method, params, batch, inner_steps=config.inner_steps,
                             inner_lr=config.inner_lr, **options)

    step()  # warm-up: one-off allocations are not the method's
    return peak_memory_bytes(step, device) / MIB, saved_tensor_peak_bytes(step) / MIB


def _run_side_by_side(config: AccuracyConfig, phase: str, jobs: list[tuple[Setting, int]], test_tasks, device,
                      paths, bar) -> None:
    """Meta-train the (setting, seed) ``jobs`` side by side; curve rows as they come, a run row as each ends."""
    trainers, memory, points = [], [], []
    for setting, seed in jobs:
        params = _initial_params(config, seed, device)
        memory.append(_step_memory(config, setting, params, seed, device))
        trainers.append(MetaTrainer(setting, params, seed=seed, outer_lr=config.outer_lr,
                                    inner_steps=config.inner_steps, inner_lr=config.inner_lr,
                                    num_tasks=config.num_tasks))
        points.append([])
    budget = {"max_steps": config.search_steps} if phase == "search" else {"max_seconds": config.seconds}
    for i, point, finished in train_side_by_side(trainers, test_tasks, eval_seconds=config.eval_seconds, **budget):
        (setting, seed), (peak, saved) = jobs[i], memory[i]
        key = {"phase": phase, "method": setting.method, "pairs": setting.pairs, "noise_std": setting.noise_std,
               "seed": seed}
        points[i].append(point)
        rows.append_row(paths["curves"], CURVE_COLUMNS, {**key, **asdict(point)})
        bar.set_postfix_str(f"{phase} seed {seed}: {setting.label} step {point.outer_step}, "
                            f"MSE {point.meta_test_mse:.3f}", refresh=True)
        if not finished:
            continue
        finite = [p.meta_test_mse for p in points[i] if math.isfinite(p.meta_test_mse)]
        rows.append_row(paths["runs"], RUN_COLUMNS, {
            **key, "label": setting.label, "outer_steps": point.outer_step, "seconds": point.seconds,
            "initial_mse": points[i][0].meta_test_mse, "final_mse": point.meta_test_mse,
            "best_mse": min(finite, default=math.nan), "peak_mb": peak, "saved_peak_mb": saved,
            "load_1min": os.getloadavg()[0], "threads": torch.get_num_threads(), "layers": config.layers,
            "hidden": config.hidden, "inner_steps": config.inner_steps, "num_tasks": config.num_tasks,
            "outer_lr": config.outer_lr, **environment(device),
        })
        bar.update(1)


def _quality(config: AccuracyConfig, noise_stds, device, path, bar) -> None:
    done = {(r["pairs"], r["noise_std"], r["draw"]) for r in read_csv(path, QUALITY_COLUMNS)}
    params = _initial_params(config, 0, device)
    batch = sample_sinusoid_tasks(config.num_tasks, generator=torch.Generator().manual_seed(QUALITY_TASKS_SEED),
                                  device=device)
    dim = sum(v.numel() for v in params.values())
    kwargs = {"inner_steps": config.inner_steps, "inner_lr": config.inner_lr}
    for pairs in config.quality_pairs:
        law = None
        for noise_std in noise_stds:
            draws = [d for d in range(config.quality_draws) if (pairs, noise_std, d) not in done]
            bar.update(config.quality_draws - len(draws))
            if draws and law is None:
                law = es_error_law(params, batch, pairs, **kwargs)
            for draw, cosine, rel in es_gradient_quality(params, batch, pairs, noise_std, draws, **kwargs):
                rows.append_row(path, QUALITY_COLUMNS, {
                    "pairs": pairs, "noise_std": noise_std, "draw": draw, "cosine": cosine, "rel_error": rel,
                    "law_rel_error": law, "dim": dim, "layers": config.layers, "hidden": config.hidden,
                    "device": device.type})
                bar.set_postfix_str(f"ES gradient quality P={pairs} σ={noise_std:g}", refresh=True)
                bar.update(1)


def _measure(config: AccuracyConfig, device, paths: dict, finished: set) -> None:
    """The three stages, skipping the runs in ``finished`` and the draws already in quality.csv."""
    search = [Setting("es", pairs=config.search_pairs, noise_std=s) for s in config.noise_stds]
    total = len(search) + len(config.seeds) * (3 + len(config.pairs))  # runs; the draws are added below
    with tqdm(total=total, desc="accuracy study", unit="job", dynamic_ncols=True) as bar:
        test_tasks = sample_sinusoid_tasks(config.test_tasks, generator=torch.Generator().manual_seed(
            TEST_TASKS_SEED), device=device)
        jobs = [(setting, 0) for setting in search if ("search", "es", setting.pairs, setting.noise_std, 0)
                not in finished]
        bar.update(len(search) - len(jobs))
        _run_side_by_side(config, "search", jobs, test_tasks, device, paths, bar)
        runs = read_csv(paths["runs"], RUN_COLUMNS)
        noise_std = chosen_noise_std([r for r in runs if r["phase"] == "search"],
                                     read_csv(paths["curves"], CURVE_COLUMNS))
        for seed in config.seeds:
            group = settings(config, noise_std)
            jobs = [(setting, seed) for setting in group
                    if ("compare", setting.method, setting.pairs, setting.noise_std, seed) not in finished]
            bar.update(len(group) - len(jobs))
            _run_side_by_side(config, "compare", jobs, test_tasks, device, paths, bar)
        noise_stds = sorted({es.DEFAULT_NOISE_STD, noise_std})
        bar.total = total + len(config.quality_pairs) * config.quality_draws * len(noise_stds)
        _quality(config, noise_stds, device, paths["quality"], bar)


def _resumable_runs(paths: dict, repair: bool) -> set:
    """The keys of the finished runs; with ``repair``, torn rows and partial curves of killed runs are removed first."""
    for name in FILES:
        if repair and rows.drop_torn_row(paths[name]):
            print(f"{paths[name]}: dropped a row torn by a killed run; it is measured again", file=sys.stderr)
    finished = {_key(r) for r in read_csv(paths["runs"], RUN_COLUMNS)}
    curves = read_csv(paths["curves"], CURVE_COLUMNS)
    if repair and any(_key(c) not in finished for c in curves):  # the partial curve of a killed run
        rows.rewrite_rows(paths["curves"], CURVE_COLUMNS, [c for c in curves if _key(c) in finished])
    return finished


def run_accuracy_study(config: AccuracyConfig, out: str, device="cpu", command: str = "",
                       plots_only: bool = False) -> str:
    """Run (or resume) the study into folder ``out``; write the derived files; return the summary.

    Holds the lock of ``out`` (created if needed) throughout. ValueError if ``out`` was measured
    with other settings (:func:`check_settings`).
    """
    device = resolve_device(device)
    with hold_folder(out, lambda message: print(message, file=sys.stderr)):
        check_settings(out, config, device, record=not plots_only)
        paths = {name: os.path.join(out, f"{name}.csv") for name in FILES}
        finished = _resumable_runs(paths, repair=not plots_only)
        if not plots_only:
            _measure(config, device, paths, finished)
        return write_report(config, out, command)


def write_report(config: AccuracyConfig, out: str, command: str) -> str:
    """The derived files of the folder ``out`` from its CSVs: time_to_target.csv, the plots, summary.md (returned)."""
    runs = read_csv(os.path.join(out, "runs.csv"), RUN_COLUMNS)
    curves = read_csv(os.path.join(out, "curves.csv"), CURVE_COLUMNS)
    quality = read_csv(os.path.join(out, "quality.csv"), QUALITY_COLUMNS)
    goals = targets(runs, curves, config.seconds / 2, config.target)
    table = time_to_target_table(runs, curves, goals)
    rows.rewrite_rows(os.path.join(out, "time_to_target.csv"), TARGET_COLUMNS, table)
    draw_curves(sorted(runs, key=setting_order), curves, goals, os.path.join(out, "loss_vs_time.png"), command)
    draw_pareto(table, os.path.join(out, "pareto.png"), command)
    draw_quality(quality, os.path.join(out, "es_gradient_quality.png"), command)
    text = summary_markdown(config, runs, curves, quality, goals, table, command)
    with atomic_write(os.path.join(out, "summary.md")) as f:
        f.write(text)
    return text


# ---------------------------------------------------------------- the settings of a folder


def measurement_settings(config: AccuracyConfig, device) -> dict:
    """What defines the measurement, as JSON values: every field of ``config`` but ``target``, and the device type."""
    values = {f.name: getattr(config, f.name) for f in fields(config) if f.name != "target"}
    return json.loads(json.dumps({**values, "device": torch.device(device).type}))


def _recorded_settings(out: str) -> dict | None:
    """The settings the folder ``out`` was measured with: its settings.json, else what its runs.csv records.

    None for a folder where nothing was measured yet.
    """
    path = os.path.join(out, SETTINGS_FILE)
    if not os.path.exists(path):
        runs = read_csv(os.path.join(out, "runs.csv"), RUN_COLUMNS)
        return {k: runs[0][k] for k in ROW_SETTINGS} if runs else None
    try:
        with open(path) as f:
            recorded = json.load(f)
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not the study's settings file ({error}): use another --out") from None
    if not isinstance(recorded, dict):
        raise ValueError(f"{path} is not the study's settings file (not a JSON object): use another --out")
    return recorded


def _option(value) -> str:
    """A setting as the command line spells it: 0,1,2 for a list, 0.001 for a float."""
    if isinstance(value, list):
        return ",".join(_option(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def check_settings(out: str, config: AccuracyConfig, device, record: bool = True) -> None:
    """ValueError naming each difference unless folder ``out`` was measured with ``config`` on ``device``.

    A folder where nothing was measured yet gets ``settings.json`` (if ``record``). A folder from
    before settings.json is checked against what its runs.csv records (network, inner loop, tasks,
    outer lr, device).
    """
    wanted = measurement_settings(config, device)
    recorded = _recorded_settings(out)
    if recorded is None:
        if record:
            with atomic_write(os.path.join(out, SETTINGS_FILE)) as f:
                json.dump(wanted, f, indent=1)
        return
    differences = [f"--{name.replace('_', '-')} {_option(value)}, this run asks {_option(wanted.get(name))}"
                   for name, value in recorded.items() if wanted.get(name) != value]
    if differences:
        raise ValueError(f"{out} was measured with {'; '.join(differences)}: use another --out or the same options")


# ---------------------------------------------------------------- the summary


def _seconds(row: dict) -> str:
    if row["reached"] * 2 <= row["seeds"]:  # the median is a seed that did not reach it
        return "not reached"
    spread = f"{row['seconds_min']:.1f}–{row['seconds_max']:.1f}" if math.isfinite(row["seconds_max"]) else \
        f"{row['seconds_min']:.1f}–(not reached)"
    return f"{row['seconds_median']:.1f} [{spread}]"


def summary_markdown(config: AccuracyConfig, runs, curves, quality, goals, table, command: str) -> str:
    """The study's tables in Markdown (what docs/profiling.md quotes), from the CSV rows."""
    compare = [r for r in runs if r["phase"] == "compare"]
    search = [r for r in runs if r["phase"] == "search"]
    first = compare[0]
    loads = [r["load_1min"] for r in runs]
    dim = sum(v.numel() for v in build_mlp(config.layers, config.hidden).parameters())
    noise_std = chosen_noise_std(search, curves)
    lines = [
        f"command: `{command}`", "",
        f"device: {first['device_name']} (torch {first['torch']}, {first['threads']} torch thread(s)); "
        f"1-min load average at the end of each run {min(loads):.2f}–{max(loads):.2f}", "",
        f"{config.layers} × {config.hidden} MLP (D = {dim} parameters), L = {config.inner_steps} inner steps, "
        f"α = {config.inner_lr:g}, {config.num_tasks} tasks per outer step, Adam (lr {config.outer_lr:g}) for every "
        f"method, {config.seconds:g} s of training per run, seeds {list(config.seeds)}; meta-test loss: "
        f"post-adaptation query MSE on {config.test_tasks} fixed held-out tasks, evaluated at training times about "
        f"25 % apart, at most {config.eval_seconds:g} s apart (the resolution of the times to target).", "",
        f"**Noise search** (ES, P = {config.search_pairs}, {config.search_steps} outer steps, seed 0; "
        "meta-test MSE, mean of the last three evaluations):", "",
        "| σ | meta-test MSE |", "|---|---|",
    ]
    for run in sorted(search, key=lambda r: r["noise_std"]):
        points = sorted((c for c in curves if _key(c) == _key(run)), key=lambda c: c["outer_step"])
        mark = " (chosen)" if run["noise_std"] == noise_std else ""
        score = statistics.fmean(c["meta_test_mse"] for c in points[-3:])
        lines.append(f"| {run['noise_std']:g}{mark} | {score:.4f} |")
    lines += [
        "", f"**Targets** (meta-test MSE): T1 = {goals['T1']:g}, the best every MAML seed reaches within "
        f"{config.seconds / 2:g} s (rounded up); "
        + "; ".join(f"{name} = {goals[name]:.3g}, {fraction:g} of the way from the initial MSE down to T1"
                    for name, fraction in GAIN_FRACTIONS.items()) + ". Times: training seconds to the first "
        "evaluation at or below the target, median over seeds [fastest–slowest]; k/n: seeds that reached it.", "",
        "| setting | peak MB | saved MB | ms / outer step | outer steps | final MSE | "
        + " | ".join(goals) + " |",
        "|---|---|---|---|---|---|" + "---|" * len(goals),
    ]
    by = {(r["target"], r["label"]): r for r in table}
    for label in dict.fromkeys(r["label"] for r in table):
        first_row = by["T1", label]
        steps = statistics.median(r["outer_steps"] for r in compare if r["label"] == label)
        cells = [f"{by[name, label]['reached']}/{by[name, label]['seeds']}: {_seconds(by[name, label])}"
                 for name in goals]
        lines.append(
            f"| {label} | {first_row['peak_mb']:.1f} | {first_row['saved_peak_mb']:.1f} | {first_row['step_ms']:.0f} | "
            f"{steps:.0f} | {first_row['final_mse_median']:.4f} | " + " | ".join(cells) + " |")
    if quality:
        lines += [
            "", f"**ES gradient quality** at seed 0's θ_0 (D = {quality[0]['dim']}), {config.quality_draws} draws "
            "per row; relative error |ĝ − g| / |g| against MAML's exact g:", "",
            "| P | σ | cosine, median [min–max] | relative error, median | √(D/P) | variance law |",
            "|---|---|---|---|---|---|",
        ]
        for pairs in sorted({q["pairs"] for q in quality}):
            for sigma in sorted({q["noise_std"] for q in quality if q["pairs"] == pairs}):
                sel = [q for q in quality if q["pairs"] == pairs and q["noise_std"] == sigma]
                cos = [q["cosine"] for q in sel]
                lines.append(
                    f"| {pairs} | {sigma:g} | {statistics.median(cos):.3f} [{min(cos):.3f}–{max(cos):.3f}] | "
                    f"{statistics.median(q['rel_error'] for q in sel):.2f} | {math.sqrt(sel[0]['dim'] / pairs):.2f} | "
                    f"{sel[0]['law_rel_error']:.2f} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the command line


def _list(kind):
    def parse(text: str):
        try:
            values = tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers, e.g. 16,64") from error
        if not values:
            raise argparse.ArgumentTypeError(f"{text!r}: give at least one value")
        return values
    return parse


def parse_args(argv=None) -> tuple[argparse.Namespace, AccuracyConfig]:
    parser = argparse.ArgumentParser(prog="python -m profiling.accuracy_study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    default = AccuracyConfig()
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run under 2 minutes on the CPU: 1 × 16 MLP, 2 seeds, 1 s per run, few draws")
    parser.add_argument("--device", default=None, help="'cpu' or 'cuda' (default: cuda if available, else cpu)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: 1 on the CPU, as the scaling study; torch's default on CUDA)")
    parser.add_argument("--out", default=os.path.join("runs", "accuracy"),
                        help="output folder (default runs/accuracy); the CSVs there are resumed")
    parser.add_argument("--plots-only", action="store_true", help="redraw plots and summary from the CSVs")
    parser.add_argument("--debug", action="store_true", help=f"show the traceback of an error (also: {DEBUG_ENV}=1)")
    overrides = {
        "seeds": (_list(int), "seeds, e.g. 0,1,2"),
        "seconds": (float, "training seconds per run of the comparison"),
        "eval_seconds": (float, "most training seconds between meta-test evaluations (they are denser early)"),
        "pairs": (_list(int), "ES populations (antithetic pairs) to compare"),
        "noise_stds": (_list(float), "the ES noise scales σ searched"),
        "search_pairs": (int, "ES pairs in the noise search"),
        "search_steps": (int, "outer steps per σ in the noise search"),
        "quality_pairs": (_list(int), "ES pairs at which the gradient quality is measured"),
        "quality_draws": (int, "ES draws per (pairs, σ) in the gradient-quality measurement"),
        "target": (float, "target meta-test MSE T1 (default: the best every MAML seed reaches in half the "
                          "training seconds)"),
        "layers": (int, "hidden layers"), "hidden": (int, "hidden units per layer"),
        "outer_lr": (float, "Adam learning rate, every method"),
        "test_tasks": (int, "held-out tasks of the meta-test loss"),
    }
    for name, (kind, text) in overrides.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None,
                            help=f"{text} (default {getattr(default, name)!r}; --quick: {getattr(QUICK, name)!r})")
    args = parser.parse_args(argv)
    try:
        args.device = resolve_device(args.device)
        config = replace(QUICK if args.quick else default,
                         **{k: getattr(args, k) for k in overrides if getattr(args, k) is not None})
    except ValueError as error:
        parser.error(str(error))
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads={args.threads}: it must be a positive integer")
    return args, config


def _run(args: argparse.Namespace, config: AccuracyConfig, command: str) -> None:
    """Run the study as the command line asked, with its torch threads; print the summary."""
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or (1 if args.device.type == "cpu" else threads))
    try:
        text = run_accuracy_study(config, args.out, args.device, command, plots_only=args.plots_only)
    finally:
        torch.set_num_threads(threads)
    print(text)
    print(f"wrote {args.out}/: runs.csv, curves.csv, quality.csv, time_to_target.csv, summary.md and the plots")


def main(argv=None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    args, config = parse_args(argv)
    command = "python -m profiling.accuracy_study " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    return report_errors(lambda: _run(args, config, command), debug=debug_requested(args.debug, DEBUG_ENV))


if __name__ == "__main__":
    raise SystemExit(main())
