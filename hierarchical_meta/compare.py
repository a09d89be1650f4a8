"""Honest comparisons on a data set: the model and its baselines over several random group splits.

One split's scores (:func:`~hierarchical_meta.pipeline.run_fit`) depend on which groups
happen to be held out, and the model's own score on its importance samples.
:func:`run_compare` fits and scores each split seed S into ``OUT/split-S/`` (a run folder of
``fit``) and :func:`summarize` reads the per-split metrics dicts into, per K:

- ``models``: each model's held-out loglik per point, its mean and sample sd over splits;
- ``margins``: the model minus each baseline, paired: the difference on each split, then
  its mean and sd over splits, and ``wins``, the number of splits where it is above zero;
- ``mc_error``: the Monte Carlo error of the model's score. The model is scored a second
  time with another prediction seed on the same groups and support draws; a split's two
  scores differ by d, whose variance is twice a score's and whose mean is zero, so the sd of
  one score is estimated by sqrt(mean over splits of d² / 2);
- ``num_groups``: the number of test groups scored on each split (at each K, every test
  group with more than K rows: :func:`~hierarchical_meta.evaluate.comparable_groups`);
- ``worst_group_loglik``: where the metrics have it, the lowest per-group loglik of the model
  on each split, and the lowest of all (``min``), with its split and group.

An sd over fewer than two splits is None. Everything but :func:`run_compare` is a pure
function of metrics dicts. Outputs: ``comparison.json`` (the summary), ``comparison.csv``
(:func:`comparison_rows`), ``comparison.png``
(:func:`~hierarchical_meta.plots.plot_comparison`) and the printed :func:`format_comparison`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import statistics
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from .evaluate import EvalConfig, comparable_groups
from .meta_model import ModelConfig, load_checkpoint
from .pipeline import evaluate_model, run_fit
from .predict import NUM_SAMPLES
from .report import LABELS
from .runfiles import atomic_write, hold_folder
from .tasks import TaskFamily
from .train import TrainConfig, data_sized

__all__ = ["RESCORE_FILE", "CSV_COLUMNS", "model_scores", "model_labels", "spread", "paired_margin", "mc_error",
           "summarize", "comparison_rows", "format_comparison", "run_compare"]

#: The second scoring of a split's model (``OUT/split-S/rescore.json``), for its Monte Carlo error.
RESCORE_FILE = "rescore.json"
#: The columns of ``comparison.csv``: one row per K and model.
CSV_COLUMNS = ("K", "model", "label", "splits", "groups_min", "groups_max", "loglik_mean", "loglik_sd",
               "margin_mean", "margin_sd", "splits_won", "mc_error", "worst_group_loglik")


# -- one split's metrics -------------------------------------------------------------------------

def model_scores(metrics: dict) -> dict[str, dict[str, dict]]:
    """name -> that model's scores per K (``{"K": entry}``) in one split's metrics: the model
    first, then its baselines (the :data:`~hierarchical_meta.report.LABELS` first, in order)."""
    found = {"model": metrics["shots"], **{name: b["shots"] for name, b in metrics.get("baselines", {}).items()}}
    order = [name for name in LABELS if name in found] + [name for name in found if name not in LABELS]
    return {name: found[name] for name in order}


def model_labels(metrics: dict) -> dict[str, str]:
    """name -> the label of each model of one split's metrics, in :func:`model_scores` order."""
    labels = {name: b["label"] for name, b in metrics.get("baselines", {}).items()}
    return {name: labels.get(name, LABELS.get(name, name)) for name in model_scores(metrics)}


# -- statistics over splits ----------------------------------------------------------------------

def spread(values: dict[str, float]) -> dict:
    """``values`` (split -> loglik) with their mean, sample sd (None under two splits) and count."""
    numbers = list(values.values())
    sd = statistics.stdev(numbers) if len(numbers) > 1 else None
    return {"values": values, "mean": statistics.fmean(numbers), "sd": sd, "splits": len(numbers)}


def paired_margin(model: dict[str, float], baseline: dict[str, float]) -> dict:
    """The model minus the baseline on each split both have (split -> loglik): :func:`spread`
    of the differences, and ``wins``, the splits where the model is ahead."""
    differences = {s: model[s] - baseline[s] for s in model if s in baseline}
    return {**spread(differences), "wins": sum(d > 0 for d in differences.values())}


def mc_error(first: dict[str, float], second: dict[str, float]) -> dict:
    """The Monte Carlo sd of one score from two scorings per split (split -> loglik) that differ
    only in the prediction seed: ``values`` |d| / √2 per split, ``value`` sqrt(mean d² / 2)."""
    differences = [first[s] - second[s] for s in first if s in second]
    return {"values": {s: abs(first[s] - second[s]) / math.sqrt(2) for s in first if s in second},
            "value": math.sqrt(statistics.fmean(d * d for d in differences) / 2)}


def _at_k(runs: dict[str, dict], rescored: dict[str, dict], k: str, labels: dict[str, str]) -> dict:
    """The summary of one K (the module docstring) over the splits of ``runs`` that scored it."""
    scores = {s: model_scores(m) for s, m in runs.items()}
    logliks = {name: {s: sc[name][k]["loglik"] for s, sc in scores.items() if k in sc.get(name, {})}
               for name in labels}
    logliks = {name: values for name, values in logliks.items() if values}
    entry = {"num_groups": {s: sc["model"][k]["num_groups"] for s, sc in scores.items() if k in sc["model"]},
             "models": {name: spread(values) for name, values in logliks.items()},
             "margins": {name: paired_margin(logliks["model"], values)
                         for name, values in logliks.items() if name != "model"}}
    second = {s: r[k]["loglik"] for s, r in rescored.items() if k in r}
    if second:
        entry["mc_error"] = mc_error(logliks["model"], second)
    lowest = {name: min(sc[name][k]["worst_group_loglik"] for sc in scores.values()
                        if "worst_group_loglik" in sc.get(name, {}).get(k, {}))
              for name in logliks if any("worst_group_loglik" in sc.get(name, {}).get(k, {}) for sc in scores.values())}
    if lowest:
        entry["worst_group_by_model"] = lowest  # name -> its lowest one-group loglik per point over the splits
    worst = {s: sc["model"][k] for s, sc in scores.items() if "worst_group_loglik" in sc["model"].get(k, {})}
    if worst:
        split = min(worst, key=lambda s: worst[s]["worst_group_loglik"])
        entry["worst_group_loglik"] = {"values": {s: e["worst_group_loglik"] for s, e in worst.items()},
                                       "min": worst[split]["worst_group_loglik"], "split": int(split),
                                       "group": worst[split].get("worst_group")}
    return entry


def summarize(runs: dict, rescored: dict | None = None) -> dict:
    """The comparison of the per-split metrics ``runs`` (split seed -> run_fit's metrics dict).

    ``rescored`` (split seed -> ``{"K": {"loglik": ...}}``) holds the model's second scoring
    per split, for ``mc_error``. Returns ``{"splits", "labels" (name -> label), "loglik_units",
    "scored_groups", "shots": {"K": {"num_groups", "models", "margins", "mc_error",
    "worst_group_loglik"}}}`` (the module docstring); split seeds become text keys (JSON).
    """
    runs = {str(s): m for s, m in runs.items()}
    rescored = {str(s): r for s, r in (rescored or {}).items()}
    first = next(iter(runs.values()))
    labels = {}
    for metrics in runs.values():
        labels.update(model_labels(metrics))
    shots = sorted({k for m in runs.values() for k in m["shots"]}, key=int)
    return {"splits": [int(s) for s in runs], "labels": labels, "loglik_units": first.get("loglik_units", ""),
            "scored_groups": first.get("data", {}).get("scored_groups", ""),
            "shots": {k: _at_k(runs, rescored, k, labels) for k in shots}}


# -- tables ----------------------------------------------------------------------------------------

def _blank(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def _range(counts: dict) -> tuple[int, int]:
    return min(counts.values()), max(counts.values())


def comparison_rows(summary: dict) -> list[list]:
    """``comparison.csv``: a header (:data:`CSV_COLUMNS`), then one row per K and model. The
    margin columns are the model minus that row's model (empty on the model's own row); the
    Monte Carlo error and the worst group are the model's, on its row."""
    rows = [list(CSV_COLUMNS)]
    for k, entry in summary["shots"].items():
        low, high = _range(entry["num_groups"])
        for name, score in entry["models"].items():
            margin = entry["margins"].get(name, {})
            own = name == "model"
            rows.append([k, name, summary["labels"][name], score["splits"], low, high, f"{score['mean']:.4f}",
                         _blank(score["sd"], ".4f"), _blank(margin.get("mean"), ".4f"), _blank(margin.get("sd"), ".4f"),
                         margin.get("wins", ""), _blank(entry.get("mc_error", {}).get("value") if own else None, ".4f"),
                         _blank(entry.get("worst_group_loglik", {}).get("min") if own else None, ".4f")])
    return rows


def _pm(score: dict | None, spec: str) -> str:
    """``mean ± sd`` of a :func:`spread` (``n/a`` for a missing sd, ``-`` for a missing score)."""
    if score is None:
        return "-"
    return f"{score['mean']:{spec}} ± {_blank(score['sd'], '.3f') or 'n/a'}"


def _row(k: str, groups: str, label: str, score: dict, margin: str, entry: dict, own: bool, worst: bool) -> str:
    """One line of :func:`format_comparison`: the model's own line carries its MC error and worst group."""
    line = f"{k:>3} {groups:>7}  {label:<{_LABEL}} {_pm(score, '.3f'):>16} {margin:>22}"
    line += f" {_blank(entry.get('mc_error', {}).get('value') if own else None, '.4f'):>9}"
    if worst and own and "worst_group_loglik" in entry:
        w = entry["worst_group_loglik"]
        where = f"split {w['split']}" + ("" if w["group"] is None else f", group {w['group']}")
        line += f" {w['min']:>12.3f} ({where})"
    return line


_LABEL = 26  # the width of the model column (longer labels shift their line)


def format_comparison(summary: dict) -> str:
    """The printed comparison, one line per K and model: the groups scored, the loglik (mean ± sd
    over splits), the model minus that model (paired: mean ± sd, splits won of splits), and on
    the model's line its Monte Carlo error and, where known, its worst test group."""
    seeds = ", ".join(str(s) for s in summary["splits"])
    worst = any("worst_group_loglik" in entry for entry in summary["shots"].values())
    lines = [f"held-out loglik per point over {len(summary['splits'])} group splits (seeds {seeds}), mean ± sd; "
             f"{summary['loglik_units']}",
             f"groups scored: {summary['scored_groups']}; 'groups' is their number (its range over splits)",
             "'model minus it': the model's loglik minus that model's on the same split, mean ± sd (splits won); "
             "'MC error': the sd of the model's score over prediction seeds"
             + ("; 'worst group': the lowest loglik per point of one test group over all splits" if worst else ""),
             f"{'K':>3} {'groups':>7}  {'model':<{_LABEL}} {'loglik':>16} {'model minus it':>22} {'MC error':>9}"
             + (f" {'worst group':>12}" if worst else "")]
    for k, entry in summary["shots"].items():
        low, high = _range(entry["num_groups"])
        groups = str(low) if low == high else f"{low}-{high}"
        for name, score in entry["models"].items():
            margin = entry["margins"].get(name)
            text = "" if margin is None else f"{_pm(margin, '+.3f')} ({margin['wins']}/{margin['splits']})"
            lines.append(_row(k if name == "model" else "", groups if name == "model" else "",
                              summary["labels"][name], score, text, entry, name == "model", worst))
    return "\n".join(line.rstrip() for line in lines)


# -- the runs --------------------------------------------------------------------------------------

def _settings(metrics: dict) -> dict:
    """What a finished split's metrics were run with: the options a rerun must match to be read back."""
    evaluation = {key: value for key, value in metrics.get("eval", {}).items()
                  if key not in ("shots", "shuffled_metadata")}
    shots = sorted(int(k) for k in [*metrics.get("shots", {}), *metrics.get("skipped_shots", {})])
    return json.loads(json.dumps({"model": metrics.get("model"), "train": metrics.get("train"),
                                  "eval": evaluation, "shots": shots, "num_samples": metrics.get("num_samples"),
                                  "schema": metrics.get("schema"), "split": metrics.get("data", {}).get("split")}))


def _expected(family: TaskFamily, model_config: ModelConfig, train_config: TrainConfig, eval_config: EvalConfig,
               num_samples: int) -> dict:
    """:func:`_settings` of the metrics that :func:`run_fit` writes for these arguments (the training
    config as run_fit sizes it to the family)."""
    evaluation = dataclasses.asdict(eval_config)
    sized, _ = data_sized(train_config, family)
    return _settings({"model": dataclasses.asdict(model_config), "train": dataclasses.asdict(sized),
                      "eval": evaluation, "shots": {str(k): {} for k in eval_config.shots},
                      "num_samples": num_samples, "schema": family.schema.to_dict(),
                      "data": {"split": family.split_options}})


def _read_json(path: str, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as error:
        raise ValueError(f"{path} is not the {what} this command writes ({error}); remove it to "
                         "compute it again") from None


def _finished(folder: str, expected: dict, log: Callable[[str], None]) -> dict | None:
    """The metrics of a split finished with the ``expected`` settings, else None (run it)."""
    path = os.path.join(folder, "metrics.json")
    if not os.path.exists(path):
        return None
    metrics = _read_json(path, "metrics.json of fit")
    found = _settings(metrics)
    differ = [key for key in expected if found[key] != expected[key]]
    if differ:
        log(f"note: {path} was run with other {', '.join(differ)} options: running fit on {folder} again "
            "(it resumes the training, or names the option that differs)")
        return None
    return metrics


def rescore(folder: str, family: TaskFamily, metrics: dict, seed: int) -> dict[str, dict]:
    """The model of the run folder ``folder`` scored again on the groups and support draws of its
    ``metrics`` (the same evaluation settings, without shuffled metadata), with torch seeded by
    ``seed``: ``{"K": {"loglik": ..., ...}}``."""
    config = EvalConfig(**{**metrics["eval"], "shuffled_metadata": False})
    view, _, _ = comparable_groups(family, config.shots, config.same_groups)
    meta_model, _ = load_checkpoint(os.path.join(folder, "model.pt"))
    torch.manual_seed(seed)
    return evaluate_model(meta_model, view, config, num_samples=metrics["num_samples"])["shots"]


def _second_scoring(folder: str, family: TaskFamily, metrics: dict, seed: int, log) -> dict[str, dict]:
    """The split's :func:`rescore` with ``seed``: read back from ``folder/rescore.json`` when it
    belongs to these metrics (its first scores are theirs), else computed and written there."""
    path = os.path.join(folder, RESCORE_FILE)
    first = {k: e["loglik"] for k, e in metrics["shots"].items()}
    if os.path.exists(path):
        stored = _read_json(path, RESCORE_FILE)
        if stored.get("seed") == seed and stored.get("first") == first:
            return stored["shots"]
    with hold_folder(folder, log):
        shots = rescore(folder, family, metrics, seed)
        with atomic_write(path) as f:
            json.dump({"seed": seed, "first": first, "shots": shots}, f, indent=2)
    return shots


@dataclasses.dataclass
class _Compare:
    """The arguments of :func:`run_compare` that every split shares."""

    family_of_split: Callable[[int], TaskFamily]
    model_config: ModelConfig
    train_config: TrainConfig
    eval_config: EvalConfig
    num_samples: int
    progress: bool
    log: Callable[[str], None]
    extend: bool
    baseline_degree: int | str

    def split(self, seed: int, out_dir: str) -> tuple[dict, dict]:
        """Split ``seed``'s metrics (run, or read back when finished) and the model's second scoring."""
        family = self.family_of_split(seed)
        if not family.fixed_dataset:
            raise ValueError(f"compare splits the groups of a data set; {family.name!r} is a sampled family, "
                             "whose tasks are fresh draws: use fit (its scores already average over tasks)")
        config = dataclasses.replace(self.model_config, x_dim=family.x_dim, y_dim=family.y_dim,
                                     metadata_dim=family.metadata_dim)
        folder = os.path.join(out_dir, f"split-{seed}")
        expected = _expected(family, config, self.train_config, self.eval_config, self.num_samples)
        metrics = _finished(folder, expected, self.log)
        if metrics is None:
            self.log(f"== split {seed} -> {folder}")
            metrics = run_fit(family, config, self.train_config, folder, self.eval_config, self.num_samples,
                              progress=self.progress, log=self.log, extend=self.extend,
                              baseline_degree=self.baseline_degree)
        else:
            self.log(f"== split {seed}: finished, read back from {folder}")
        return metrics, _second_scoring(folder, family, metrics, self.train_config.seed + 1, self.log)


def _check_seeds(split_seeds: Sequence[int]) -> list[int]:
    seeds = list(split_seeds)
    if not seeds or len(set(seeds)) < len(seeds) or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise ValueError(f"split_seeds must be one or more distinct integers >= 0, got {seeds}")
    return seeds


def _write_comparison(out_dir: str, summary: dict) -> None:
    from .plots import plot_comparison

    with atomic_write(os.path.join(out_dir, "comparison.json")) as f:
        json.dump(summary, f, indent=2)
    with atomic_write(os.path.join(out_dir, "comparison.csv"), newline="") as f:
        csv.writer(f).writerows(comparison_rows(summary))
    plot_comparison(summary, os.path.join(out_dir, "comparison.png"))


def run_compare(family_of_split: Callable[[int], TaskFamily], split_seeds: Sequence[int], model_config: ModelConfig,
                train_config: TrainConfig, out_dir: str, eval_config: EvalConfig | None = None,
                num_samples: int = NUM_SAMPLES, progress: bool = True, log: Callable[[str], None] | None = print,
                extend: bool = False, baseline_degree: int | str = "auto") -> dict:
    """Fit and score a data set on each split of ``split_seeds``; compare over splits; returns the summary.

    ``family_of_split(seed)`` is the data set with its groups split by ``seed``. Each split is
    :func:`~hierarchical_meta.pipeline.run_fit` into ``out_dir/split-SEED`` (the model's
    dimensions from that split's family), unless that folder holds a run finished with the same
    options, which is read back; then the model is scored a second time with the prediction
    seed ``train_config.seed + 1`` (``split-SEED/rescore.json``). Writes ``comparison.json``
    (:func:`summarize`), ``comparison.csv`` and ``comparison.png`` into ``out_dir``, whose lock
    it holds throughout, and logs :func:`format_comparison`. ``progress`` shows a bar over the
    splits (and run_fit's bars). ``baseline_degree``: as for run_fit.
    """
    seeds = _check_seeds(split_seeds)
    say = log or (lambda text: None)

    def write(text: str) -> None:
        with tqdm.external_write_mode():
            say(text)

    work = _Compare(family_of_split, model_config, train_config, eval_config or EvalConfig(), num_samples,
                    progress, write if progress else say, extend, baseline_degree)
    runs, rescored = {}, {}
    with hold_folder(out_dir, say):
        for seed in tqdm(seeds, desc="splits", unit="split", disable=not progress):
            runs[seed], rescored[seed] = work.split(seed, out_dir)
        summary = summarize(runs, rescored)
        _write_comparison(out_dir, summary)
    say(format_comparison(summary))
    say(f"comparison of {len(seeds)} splits -> {os.path.join(out_dir, 'comparison.json')}, comparison.csv, "
        "comparison.png")
    return summary
