"""The evaluation protocol on held-out tasks (docs/model.md), for any predictor.

A *predictor* maps a :class:`~hierarchical_meta.tasks.TaskBatch` to a predictive
distribution of its query points: an object with ``log_prob`` and ``predictive_mean``,
``cdf`` (regression) or ``predicted_class`` (classification), such as the model's
``MixturePredictive``, a linear mixed model's or a neural baseline's. The model, its
ablations and every baseline are scored by the same code.

For each number of support points K, the same held-out tasks keep their first K support
points, and the predictor is scored on a disjoint query set, per query point:
``loglik`` (log of the predictive density), ``mse`` (of the predictive mean) and
``coverage90`` (fraction of query points inside the central 90% predictive interval);
``accuracy`` for classification (:func:`~hierarchical_meta.predictive.point_metrics`); and the
worst task: ``worst_group_loglik``, the lowest of the tasks' mean loglik per point (a data set's
group pooled over draws), and ``worst_group``, which one (a predictive that is confidently
wrong on one atypical group shows here, not in the mean).
Beside it, where the family has them: the exact-Bayes reference (``oracle_*``,
``family.exact_predictive``) and the noise floor (``family.noise_floor_log_prob``: the true
function with the known noise); and the same predictor with the metadata shuffled across
tasks. A fixed data set (``family.fixed_dataset``) is scored at each K on every test task
(group) with more than K points, its other points being the query set
(:func:`comparable_groups` says which groups and which K).

Draw d of ``EvalConfig.draws`` uses the seed ``seed + d``: fresh held-out tasks of a sampled
family, a fresh support/query partition of every task of a fixed data set. Metrics are
pooled over draws and chunks of tasks, weighted by their query points. A stochastic
predictor draws from torch's global RNG: seed it before :func:`evaluate` to reproduce.

Scores are in the user's units where the family's schema standardizes y
(:func:`user_metrics`; the identity schema of a built-in family changes nothing). A fixed
data set is scored on comparable groups (:func:`comparable_groups`), and its report counts
groups (:func:`count_groups`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import tqdm

from .predictive import point_metrics
from .tasks import TaskBatch, TaskFamily
from .tasks.schema import TabularSchema

__all__ = ["SHOTS", "MIN_GROUP_FRACTION", "EvalConfig", "Predictor", "evaluate", "heldout_tasks",
           "shuffle_metadata", "task_metrics", "importance_metrics", "user_metrics", "comparable_groups",
           "scored_groups", "count_groups"]

SHOTS = (0, 1, 2, 5, 10)
#: A K is evaluated on a fixed data set only if at least this fraction of its test groups have more than K rows.
MIN_GROUP_FRACTION = 0.5

#: TaskBatch -> predictive distribution of its query points (None: no prediction, skipped).
Predictor = Callable[[TaskBatch], Any]
#: (predictive, y_query [T, Q, Dy], query_mask [T, Q]) -> {metric: mean over the unmasked points}, and
#: optionally ``task_loglik``: each task's mean loglik per point, a tensor [T] (NaN for a task without points).
Metrics = Callable[[Any, torch.Tensor, torch.Tensor], dict[str, float]]


@dataclasses.dataclass
class EvalConfig:
    """The evaluation protocol's settings, with their defaults (the CLI's defaults are these).

    ``num_tasks`` and ``num_query`` size the held-out tasks of a sampled family (a fixed data
    set brings its own); ``seed`` seeds them; ``chunk`` tasks are predicted at a time (memory);
    ``shuffled_metadata`` also scores the predictor with every task given another's metadata;
    ``same_groups`` scores a fixed data set on the same groups at every K (those with more
    than max(shots) rows) instead of every group with more than K rows at each K
    (:func:`comparable_groups`).
    """

    shots: tuple[int, ...] = SHOTS
    num_tasks: int = 200
    num_query: int = 50
    seed: int = 1234
    draws: int = 1
    chunk: int = 25
    shuffled_metadata: bool = True
    same_groups: bool = False

    def __post_init__(self):
        self.shots = tuple(self.shots)
        if not self.shots or any(k < 0 for k in self.shots):
            raise ValueError(f"shots must be one or more numbers >= 0, got {list(self.shots)}")
        if len(set(self.shots)) < len(self.shots):
            raise ValueError(f"shots must be distinct, got {list(self.shots)}")
        for name in ("num_tasks", "num_query", "draws", "chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")


def heldout_tasks(family: TaskFamily, config: EvalConfig, num_support: int, draw: int = 0) -> TaskBatch:
    """The test tasks of draw ``draw`` with ``num_support`` support points (seed ``config.seed + draw``).

    A sampled family's tasks are the same for every K (nested supports of ``max(config.shots)``
    slots, the same ``config.num_query`` query points).
    """
    generator = torch.Generator().manual_seed(config.seed + draw)
    if family.fixed_dataset:
        return family.all_tasks(num_support, split="test", generator=generator)
    batch = family.sample(config.num_tasks, max(config.shots), config.num_query, split="test", generator=generator)
    return batch.with_support_size(num_support)


def shuffle_metadata(batch: TaskBatch) -> TaskBatch:
    """Give every task another task's metadata (a cyclic shift: no task keeps its own)."""
    return batch.with_metadata(batch.metadata.roll(1, 0))


def task_metrics(predictive, y: torch.Tensor, mask: torch.Tensor) -> dict:
    """:func:`~hierarchical_meta.predictive.point_metrics` with ``task_loglik`` (each task's mean loglik)."""
    return point_metrics(predictive, y, mask, per_task=True)


def _group_label(family: TaskFamily) -> Callable[[Any], str]:
    """Names a group key of :func:`_group_keys`: a data set's group label, or "task i of draw d"."""
    def label(key) -> str:
        return str(family.group_ids[key]) if isinstance(key, int) else f"task {key[1]} of draw {key[0]}"
    return label


def _group_keys(batch: TaskBatch, draw: int) -> list:
    """Who each task of ``batch`` is, the same in every draw and K: a data set's group index
    (``params["group_index"]``), else the task's place ``(draw, task)`` (fresh tasks per draw)."""
    if "group_index" in batch.params:
        return batch.params["group_index"].tolist()
    return [(draw, task) for task in range(batch.num_tasks)]


class _Pool:
    """Scores of chunks pooled over query points, and each group's loglik pooled over draws."""

    def __init__(self):
        self.totals, self.points, self.group_sums, self.group_counts = {}, 0, {}, {}

    def add(self, scores: dict, mask: torch.Tensor, keys: list) -> None:
        """One chunk's ``scores`` (means over its points, ``task_loglik`` per task) with its
        ``query_mask`` [T, Q] and its tasks' group keys."""
        n = int(mask.sum())
        task_loglik = scores.pop("task_loglik", None)
        for key, value in scores.items():
            self.totals[key] = self.totals.get(key, 0.0) + value * n
        self.points += n
        if task_loglik is None:
            return
        for key, mean, count in zip(keys, task_loglik.tolist(), mask.sum(-1).tolist(), strict=True):
            if count:
                self.group_sums[key] = self.group_sums.get(key, 0.0) + mean * count
                self.group_counts[key] = self.group_counts.get(key, 0) + count

    def result(self, label: Callable[[Any], str]) -> dict:
        """The pooled means, and where tasks were scored ``worst_group_loglik``, the lowest of
        the groups' mean loglik per point, and ``worst_group``, its ``label``."""
        result = {key: value / self.points for key, value in self.totals.items()}
        if self.group_sums:
            mean = {key: self.group_sums[key] / self.group_counts[key] for key in self.group_sums}
            worst = min(mean, key=mean.get)
            result.update(worst_group_loglik=mean[worst], worst_group=label(worst))
        return result


def _pooled(predictor: Predictor, batches: list[TaskBatch], chunk: int, metrics: Metrics,
            bar, label: Callable[[Any], str] = str) -> dict[str, float] | None:
    """``metrics`` of ``predictor`` averaged over chunks of ``batches`` (one per draw), weighted by
    query points, with the worst group (:class:`_Pool`; ``label`` names a group key).

    None as soon as the predictor returns None (a family without a reference).
    """
    pool = _Pool()
    for draw, batch in enumerate(batches):
        keys = _group_keys(batch, draw)
        for start in range(0, batch.num_tasks, chunk):
            part = batch.subset(slice(start, start + chunk))
            if part.query_mask.any():
                predictive = predictor(part)
                if predictive is None:
                    return None
                pool.add(metrics(predictive, part.y_query, part.query_mask), part.query_mask,
                         keys[start:start + chunk])
            if bar is not None:
                bar.update(1)
    return pool.result(label)


@torch.no_grad()
def evaluate(predictor: Predictor, family: TaskFamily, config: EvalConfig | None = None,
             metrics: Metrics = task_metrics, progress: bool = False) -> dict:
    """Metrics per K on held-out tasks (see the module docstring); a JSON-ready dict.

    ``{"shots": {"K": {metric: value, "oracle_<metric>": ..., "num_tasks": tasks per draw,
    "num_query_points": over all draws, "worst_group_loglik": the lowest mean loglik per point of
    one task (a data set's group, pooled over draws), "worst_group": its label}},
    "shuffled_metadata": {"shots": {"K": {...}}},
    "noise_floor_loglik": ...}``; the reference, the shuffled scores and the noise floor where
    the family and ``config`` have them. ``metrics`` scores one chunk's predictive
    (default :func:`task_metrics`). ``config`` defaults to
    ``EvalConfig()``; ``progress`` shows a bar over the chunks of tasks.
    """
    config = config if config is not None else EvalConfig()
    draws = range(config.draws)
    tasks = {k: [heldout_tasks(family, config, k, d) for d in draws] for k in config.shots}
    passes = 2 if config.shuffled_metadata else 1
    total = passes * sum(math.ceil(b.num_tasks / config.chunk) for bs in tasks.values() for b in bs)
    result = {"shots": {}}
    if config.shuffled_metadata:
        result["shuffled_metadata"] = {"shots": {}}
    label = _group_label(family)
    with tqdm(total=total, disable=not progress, desc="evaluate", unit="chunk") as bar:
        for k in config.shots:
            bar.set_postfix_str(f"K={k}")
            entry = _pooled(predictor, tasks[k], config.chunk, metrics, bar, label)
            reference = _pooled(family.exact_predictive, tasks[k], config.chunk, task_metrics, None, label)
            if reference is not None:
                entry.update({f"oracle_{key}": value for key, value in reference.items()})
            entry["num_tasks"] = tasks[k][0].num_tasks
            entry["num_query_points"] = sum(int(b.query_mask.sum()) for b in tasks[k])
            result["shots"][str(k)] = entry
            if config.shuffled_metadata:
                shuffled = [shuffle_metadata(b) for b in tasks[k]]
                result["shuffled_metadata"]["shots"][str(k)] = _pooled(predictor, shuffled, config.chunk, metrics, bar,
                                                                        label)
    floors = [(family.noise_floor_log_prob(b), b.query_mask) for b in tasks[max(config.shots)]]
    if all(log_prob is not None for log_prob, _ in floors):  # the same query points for every K
        total_log_prob = sum((log_prob * mask).sum() for log_prob, mask in floors)
        result["noise_floor_loglik"] = float(total_log_prob / sum(mask.sum() for _, mask in floors))
    return result


def importance_metrics(predictive, y: torch.Tensor, mask: torch.Tensor) -> dict:
    """:func:`task_metrics` and ``ess``, the mean effective sample size."""
    return {**task_metrics(predictive, y, mask), "ess": float(predictive.effective_sample_size().mean())}


def user_metrics(schema: TabularSchema, importance: bool = False) -> Metrics:
    """Scores of a predictive of the model's y in the user's units (``schema`` undoes the
    standardization: ``loglik`` is a log-density of the user's y, ``mse`` in its squared units);
    with ``importance``, also the mean effective sample size of the model's importance weights."""
    def scores(predictive, y: torch.Tensor, mask: torch.Tensor) -> dict:
        user = schema.predictive_to_user(predictive)
        y_user = schema.y_to_user(y.double()).to(y.dtype)
        return (importance_metrics if importance else task_metrics)(user, y_user, mask)
    return scores


def comparable_groups(family: TaskFamily, shots,
                      same_groups: bool = False) -> tuple[TaskFamily, list[int], dict[str, str]]:
    """The family with its test split cut to the groups that some kept K scores.

    Returns ``(view, kept_shots, skipped)``. A K is kept when at least
    :data:`MIN_GROUP_FRACTION` of the test groups have more than K rows; ``skipped`` maps each
    other K to why. At each kept K, :func:`evaluate` scores every group of the view with more
    than K rows (:meth:`~hierarchical_meta.tasks.TaskFamily.all_tasks`), so a group is scored
    at every K it can be: ``view``'s test split holds the test groups with more than
    min(kept_shots) rows (with K = 0 kept: all of them, two-row groups included). With
    ``same_groups`` it holds those with more than max(kept_shots) rows, the same groups at
    every K. The view shares the family's data. A sampled family draws tasks of every size: it
    is its own view, every K kept.
    """
    if not family.fixed_dataset:
        return family, list(shots), {}
    test = family.split_indices["test"]
    sizes = family.group_sizes[test]
    kept, skipped = [], {}
    for k in shots:
        n = int((sizes > k).sum())
        if n >= MIN_GROUP_FRACTION * len(test) and n > 0:
            kept.append(k)
        else:
            skipped[str(k)] = (f"only {n} of {len(test)} test groups have more than {k} rows "
                               f"(needs at least {MIN_GROUP_FRACTION:.0%} of them)")
    if not kept:
        raise ValueError(f"no K of {list(shots)} can be evaluated: the {len(test)} test groups have "
                         f"{int(sizes.min())} to {int(sizes.max())} rows; give smaller shots or larger groups")
    view = copy.copy(family)
    view.split_indices = {**family.split_indices, "test": test[sizes > (max(kept) if same_groups else min(kept))]}
    return view, kept, skipped


def scored_groups(shots, same_groups: bool = False) -> str:
    """Which test groups a fixed data set is scored on at each K of ``shots`` (:func:`comparable_groups`), in words."""
    if same_groups:
        return f"at every K, the same test groups: those with more than {max(shots)} rows"
    return "at each K, every test group with more than K rows (the others are too small to leave a query point)"


def count_groups(result: dict) -> dict:
    """:func:`evaluate`'s result with ``num_tasks`` named ``num_groups`` (a fixed data set's tasks are its groups)."""
    for section in [result] + ([result["shuffled_metadata"]] if "shuffled_metadata" in result else []):
        for entry in section["shots"].values():
            if "num_tasks" in entry:
                entry["num_groups"] = entry.pop("num_tasks")
    return result
