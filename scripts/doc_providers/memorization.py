"""docs/memorization.md: the memorization study (docs/memorization/results.csv and beta.csv, the commands
its results.md lists, and the scenarios' parameters in examples/memorization/scenarios.py).

``mem.SCENARIO.LEARNER.SPLIT.COLUMN`` (SPLIT train, test or val), ``mem.beta.LEARNER.BETA.SPLIT.COLUMN``
and ``mem.beta.LEARNER.chosen.SPLIT.COLUMN`` (the β chosen by meta-val) follow the CSVs' rows.
"""

from __future__ import annotations

import inspect
import math
import shlex
import statistics

from examples.memorization.results import previous_commands
from examples.memorization.scenarios import DiseaseTasks, TaskIdBasisTasks

from .common import ROOT, minus, read_csv, slashed, span, zero_unsigned

MEMORIZATION = "docs/memorization"             # the memorization study's committed results
DISEASE_SCENARIOS = ("disease-shared", "disease-disjoint")
BETA_LARGE = 1.0              # the β from which docs/memorization.md says the CNP's encoding collapses
TEXT_COLUMNS = {"scenario", "learner", "split", "metric_name", "chosen"}


def memorization_rows(path: str) -> list[dict]:
    """A memorization CSV (``python -m examples.memorization``): numbers parsed, split without its "meta-"."""
    rows = read_csv(path)
    for r in rows:
        r.update({k: float(value) for k, value in r.items() if k not in TEXT_COLUMNS})
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


def numbers(r: dict) -> dict[str, float]:
    """A row's number columns."""
    return {column: value for column, value in r.items() if isinstance(value, float)}


def row_values(by: dict[tuple[str, str, str], dict]) -> dict[str, object]:
    """Every results.csv row's numbers, its gain over no support set, and its MSE over the oracle's."""
    v: dict[str, object] = {}
    for (scenario, learner, split), r in by.items():
        key = f"mem.{scenario}.{learner}.{split}"
        v.update({f"{key}.{column}": value for column, value in numbers(r).items()})
        v[f"{key}.gain_vs_none_pm"] = minus(f"{r['gain_vs_none']:.3f} ± {r['gain_vs_none_se']:.3f}")
        v[f"{key}.support_gain"] = r["metric"] - r["metric_none"]
        oracle = by.get((scenario, "oracle", split))
        if r["metric_name"] == "mse" and oracle:
            v[f"{key}.vs_oracle"] = r["metric"] / oracle["metric"]
    return v


def result_values(results: list[dict], beta: list[dict]) -> dict[str, object]:
    """The rows' values, each learner's metric range per scenario, and what every row shares."""
    v = row_values({(r["scenario"], r["learner"], r["split"]): r for r in results})
    for scenario, learner in dict.fromkeys((r["scenario"], r["learner"]) for r in results):
        v[f"mem.{scenario}.{learner}.metric_range"] = span(
            [r["metric"] for r in results if (r["scenario"], r["learner"]) == (scenario, learner)], ".2f")
    common = {"probe_tasks": {int(r["num_tasks"]) for r in results + beta},
              "chance_accuracy": {r["chance_metric"] for r in results if r["metric_name"] == "accuracy"}}
    for name, found in common.items():
        if len(found) != 1:
            raise ValueError(f"{MEMORIZATION}/ has several {name} {sorted(found)}; docs/memorization.md quotes one")
        v[f"mem.{name}"] = found.pop()
    return v


def disease_values(results: list[dict]) -> dict[str, object]:
    """The disease scenarios: each learner's metric and follow ranges (all splits and per split), Bayes accuracy."""
    disease = [r for r in results if r["scenario"] in DISEASE_SCENARIOS]
    v: dict[str, object] = {}
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
    return v


def beta_row_values(beta: list[dict], label: dict[float, str]) -> dict[str, object]:
    """Every beta.csv row's numbers, by its β and, for the β meta-val chose, as ``chosen`` too."""
    v: dict[str, object] = {}
    for r in beta:
        keys = [f"mem.beta.{r['learner']}.{label[r['beta']]}.{r['split']}"]
        if r["chosen"] == "True":
            keys.append(f"mem.beta.{r['learner']}.chosen.{r['split']}")
            v[f"mem.beta.{r['learner']}.chosen"] = r["beta"]
        v.update({f"{key}.{column}": value for key in keys for column, value in numbers(r).items()})
    return v


def beta_values(beta: list[dict]) -> dict[str, object]:
    """The β sweep: every row, and per learner and split its follows and metrics over β."""
    label = {r["beta"]: f"{r['beta']:g}" for r in beta}
    v = beta_row_values(beta, label)
    for learner in dict.fromkeys(r["learner"] for r in beta):
        mine = sorted((r for r in beta if r["learner"] == learner), key=lambda r: r["beta"])
        v[f"mem.beta.{learner}.betas"] = " / ".join(dict.fromkeys(label[r["beta"]] for r in mine))
        for split in dict.fromkeys(r["split"] for r in mine):
            at = [r for r in mine if r["split"] == split]
            v[f"mem.beta.{learner}.{split}.follows"] = slashed((zero_unsigned(r["follow"], 2) for r in at), ".2f")
            v[f"mem.beta.{learner}.{split}.metrics"] = slashed((r["metric"] for r in at), ".3f")
            v[f"mem.beta.{learner}.large.{split}.metric_range"] = span(
                [r["metric"] for r in at if r["beta"] >= BETA_LARGE], ".3f")
    v["mem.beta.large"] = BETA_LARGE
    return v


def minutes_values(results: list[dict], beta: list[dict]) -> dict[str, object]:
    """Training time per command: a (scenario, learner) pair's two rows share one train_seconds."""
    commands = previous_commands(ROOT / MEMORIZATION / "results.md")
    updated = set().union(*(updated_pairs(c) for c in commands[1:]))  # the first command ran every pair
    seconds = {(r["scenario"], r["learner"]): r["train_seconds"] for r in results}
    return {"mem.minutes.first": sum(s for pair, s in seconds.items() if pair not in updated) / 60,
            "mem.minutes.update": sum(s for pair, s in seconds.items() if pair in updated) / 60,
            "mem.minutes.beta": sum({(r["learner"], r["beta"]): r["train_seconds"] for r in beta}.values()) / 60}


def values() -> dict[str, object]:
    """Every score of results.csv and beta.csv, and what follows from them."""
    results = memorization_rows(f"{MEMORIZATION}/results.csv")
    beta = memorization_rows(f"{MEMORIZATION}/beta.csv")
    return {**result_values(results, beta), **disease_values(results), **beta_values(beta),
            **minutes_values(results, beta)}
