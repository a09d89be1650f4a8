"""The evaluation protocol of DESIGN.md §2 on held-out tasks.

For each number of support points K, the same held-out tasks keep their first K support
points, and every predictor is scored on a disjoint query set, per query point:
``loglik`` (log of the predictive density), ``mse`` (of the predictive mean) and
``coverage90`` (fraction of query points inside the central 90% predictive interval).
Beside the model: the exact-Bayes reference (``oracle_*``, where the family has one),
the noise floor (the true function with the known noise), the same model with the
metadata shuffled across tasks, and the importance sampler's effective sample size.
A fixed data set (a family with ``all_tasks``, such as nlschools) is scored on every
test task with more than K points, its other points being the query set.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch

from .meta_model import HierarchicalMetaModel
from .oracle import exact_predictive, has_oracle, noise_floor_log_prob
from .predictive import point_metrics
from .tasks import TaskBatch, TaskFamily

__all__ = ["SHOTS", "evaluate", "heldout_tasks", "shuffle_metadata"]

SHOTS = (0, 1, 2, 5, 10)


def heldout_tasks(family: TaskFamily, num_tasks: int, max_shots: int, num_query: int,
                  seed: int = 1234) -> TaskBatch:
    """Test-split tasks with ``max_shots`` support and ``num_query`` query points, seeded."""
    return family.sample(num_tasks, max_shots, num_query, split="test",
                         generator=torch.Generator().manual_seed(seed))


def shuffle_metadata(batch: TaskBatch) -> TaskBatch:
    """Give every task another task's metadata (a cyclic shift: no task keeps its own)."""
    return batch.with_metadata(batch.metadata.roll(1, 0))


def _chunks(batch: TaskBatch, size: int):
    for start in range(0, batch.num_tasks, size):
        sl = slice(start, start + size)
        yield TaskBatch(batch.x_support[sl], batch.y_support[sl], batch.x_query[sl], batch.y_query[sl],
                        batch.metadata[sl], batch.support_mask[sl], batch.query_mask[sl],
                        {k: v[sl] for k, v in batch.params.items()})


def _score(predict, batch: TaskBatch, chunk: int) -> Dict[str, float]:
    """Average point metrics over chunks of tasks, weighted by their query points."""
    totals, points = {}, 0
    for part in _chunks(batch, chunk):
        n = int(part.query_mask.sum())
        if n == 0:
            continue
        for key, value in predict(part).items():
            totals[key] = totals.get(key, 0.0) + value * n
        points += n
    return {key: value / points for key, value in totals.items()}


@torch.no_grad()
def evaluate(meta_model: HierarchicalMetaModel, family: TaskFamily, shots: Sequence[int] = SHOTS,
             num_tasks: int = 200, num_query: int = 50, num_samples: int = 2048, seed: int = 1234,
             chunk: int = 25, batch: Optional[TaskBatch] = None) -> dict:
    """Metrics per K on held-out tasks (see module docstring); a JSON-ready dict."""
    if any(k < 0 for k in shots):
        raise ValueError(f"shots must be >= 0, got {list(shots)}")
    if batch is None and not hasattr(family, "all_tasks"):
        batch = heldout_tasks(family, num_tasks, max(shots), num_query, seed)

    def tasks_with(k):
        """The held-out tasks with K support points: nested supports across K."""
        if batch is None:  # a fixed data set: every test task with more than K points
            return family.all_tasks(k, split="test", generator=torch.Generator().manual_seed(seed))
        return batch.with_support_size(k)

    def model_metrics(part):
        predictive, _ = meta_model.predict(part, num_samples=num_samples)
        metrics = point_metrics(predictive, part.y_query, part.query_mask)
        metrics["ess"] = float(predictive.effective_sample_size().mean())
        return metrics

    def oracle_metrics(part):
        metrics = point_metrics(exact_predictive(family, part), part.y_query, part.query_mask)
        return {f"oracle_{key}": value for key, value in metrics.items()}

    result = {"shots": {}, "shuffled_metadata": {"shots": {}}, "num_samples": num_samples}
    for k in shots:
        tasks = tasks_with(k)
        meta_model.check_batch(tasks)
        entry = _score(model_metrics, tasks, chunk)
        if has_oracle(family):
            entry.update(_score(oracle_metrics, tasks, chunk))
        entry["num_tasks"] = tasks.num_tasks
        result["shots"][str(k)] = entry
        result["shuffled_metadata"]["shots"][str(k)] = _score(model_metrics, shuffle_metadata(tasks), chunk)
    if has_oracle(family) and batch is not None:
        floor = noise_floor_log_prob(family, batch)
        result["noise_floor_loglik"] = float((floor * batch.query_mask).sum() / batch.query_mask.sum())
    return result
