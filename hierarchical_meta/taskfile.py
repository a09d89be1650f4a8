"""Reading new tasks from a CSV file and writing predictions for them.

The task file (one row per point)::

    task,role,x,y,m1,m2
    a,support,0.30,1.21,2.5,0.1
    a,query,1.00,,2.5,0.1
    b,query,-2.0,,1.0,-0.4

- ``task``: any label; rows of a task may come in any order.
- ``role``: ``support`` (labelled points to adapt to) or ``query`` (points to predict).
- inputs ``x`` (or ``x1``, ``x2``, … when the model has several), labels ``y`` (or
  ``y1``, …; optional on query rows: given, they are scored), metadata ``m1``, … (or ``m``),
  the same on every row of a task. A task may have no support rows (zero-shot).
- an unknown metadata value is an empty cell (or ``nan``): it is read as NaN, which the
  model treats as missing. x and y must be finite numbers.

The predictions file has one row per query point: ``task``, the inputs, ``mean``,
``q05``, ``q95`` (central 90% interval) per output, and ``loglik`` where y was given.
"""

from __future__ import annotations

import csv
import math
import re

import torch

from .tasks import TaskBatch

__all__ = ["column_names", "read_task_file", "write_predictions"]


def column_names(prefix: str, dim: int) -> list[str]:
    return [prefix] if dim == 1 else [f"{prefix}{i + 1}" for i in range(dim)]


def _float(text: str, where: str) -> float:
    """A finite number (x, y)."""
    value = _number(text, where)
    if not math.isfinite(value):
        raise ValueError(f"{where}: {text!r} is NaN or infinite; drop or impute that point")
    return value


def _metadata(text: str, where: str) -> float:
    """A metadata value: a number, or NaN (missing) for an empty cell or ``nan``."""
    if not text.strip():
        return math.nan
    value = _number(text, where)
    if math.isinf(value):
        raise ValueError(f"{where}: {text!r} is infinite; leave the cell empty (or write nan) "
                         "when the metadata value is unknown")
    return value


def _number(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not a number") from None


def _same(a: list[float], b: list[float]) -> bool:
    """Equal metadata rows, NaN (missing) matching NaN."""
    return all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b, strict=False))


def read_task_file(path: str, x_dim: int, y_dim: int, metadata_dim: int) -> tuple[TaskBatch, list[str], bool]:
    """Parse ``path`` into a padded :class:`TaskBatch`; returns ``(batch, task_labels, has_query_y)``."""
    xs, ys = column_names("x", x_dim), column_names("y", y_dim)
    ms = column_names("m", metadata_dim) if metadata_dim > 1 else ["m"]
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        if metadata_dim == 1 and "m" not in header and "m1" in header:
            ms = ["m1"]
        missing = [c for c in ["task", "role"] + xs + ys + ms if c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; a task file for this model needs "
                             f"columns {['task', 'role'] + xs + ys + ms} (see hierarchical_meta.taskfile)")
        for name in header:
            match = re.fullmatch(r"([xym])(\d+)", name)
            dims = {"x": x_dim, "y": y_dim, "m": metadata_dim}
            if match and int(match.group(2)) > dims[match.group(1)]:
                raise ValueError(f"{path}: column {name!r} does not fit the model, which takes "
                                 f"{dims[match.group(1)]} {match.group(1)} column(s) "
                                 f"{column_names(match.group(1), dims[match.group(1)])}")
        tasks = {}
        for line, row in enumerate(reader, start=2):
            where = f"{path}, line {line}"
            if None in row or None in row.values():  # csv's marks of a longer or shorter row
                raise ValueError(f"{where}: the row does not have the header's {len(header)} fields")
            role = row["role"].strip()
            if role not in ("support", "query"):
                raise ValueError(f"{where}: role must be 'support' or 'query', got {row['role']!r}")
            meta = [_metadata(row[c], f"{where}, column {c}") for c in ms]
            task = tasks.setdefault(row["task"], {"metadata": meta, "support": [], "query": []})
            if not _same(task["metadata"], meta):
                raise ValueError(f"{where}: task {row['task']!r} has different metadata on different rows")
            x = [_float(row[c], f"{where}, column {c}") for c in xs]
            if role == "support" or any(row[c].strip() for c in ys):
                y = [_float(row[c], f"{where}, column {c}") for c in ys]
            else:
                y = None
            task[role].append((x, y))
    if not tasks:
        raise ValueError(f"{path}: no rows")
    labels = list(tasks)
    no_query = [t for t in labels if not tasks[t]["query"]]
    if no_query:
        raise ValueError(f"{path}: task(s) {no_query} have no query rows: nothing to predict")
    queries = [q for t in labels for q in tasks[t]["query"]]
    has_y = [q[1] is not None for q in queries]
    if any(has_y) and not all(has_y):
        raise ValueError(f"{path}: give y on every query row or on none")
    K = max(len(tasks[t]["support"]) for t in labels)
    Q = max(len(tasks[t]["query"]) for t in labels)
    T = len(labels)
    batch = {name: torch.zeros(T, n, d) for name, n, d in
             [("x_support", K, x_dim), ("y_support", K, y_dim), ("x_query", Q, x_dim), ("y_query", Q, y_dim)]}
    support_mask, query_mask = torch.zeros(T, K, dtype=torch.bool), torch.zeros(T, Q, dtype=torch.bool)
    for i, t in enumerate(labels):
        for role, mask in (("support", support_mask), ("query", query_mask)):
            for j, (x, y) in enumerate(tasks[t][role]):
                batch[f"x_{role}"][i, j] = torch.tensor(x)
                if y is not None:
                    batch[f"y_{role}"][i, j] = torch.tensor(y)
                mask[i, j] = True
    metadata = torch.tensor([tasks[t]["metadata"] for t in labels])
    return (TaskBatch(metadata=metadata, support_mask=support_mask, query_mask=query_mask, **batch),
            labels, all(has_y))


def write_predictions(path: str, batch: TaskBatch, labels: list[str], predictive, score: bool) -> None:
    """One row per query point: task, inputs, mean, q05, q95 (and loglik when ``score``)."""
    x_dim, y_dim = batch.x_query.shape[-1], batch.y_query.shape[-1]
    mean, low, high = predictive.predictive_mean(), predictive.quantile(0.05), predictive.quantile(0.95)
    suffix = (lambda name, i: name) if y_dim == 1 else (lambda name, i: f"{name}{i + 1}")
    header = ["task"] + column_names("x", x_dim)
    for i in range(y_dim):
        header += [suffix("mean", i), suffix("q05", i), suffix("q95", i)]
    if score:
        header += column_names("y", y_dim) + ["loglik"]
        logp = predictive.log_prob(batch.y_query)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for t, label in enumerate(labels):
            for q in range(batch.x_query.shape[1]):
                if not batch.query_mask[t, q]:
                    continue
                row = [label] + [f"{v:.6g}" for v in batch.x_query[t, q].tolist()]
                for i in range(y_dim):
                    row += [f"{float(v[t, q, i]):.6g}" for v in (mean, low, high)]
                if score:
                    row += [f"{v:.6g}" for v in batch.y_query[t, q].tolist()] + [f"{float(logp[t, q]):.6g}"]
                writer.writerow(row)
