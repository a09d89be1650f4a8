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
  model treats as missing. x and y must be finite numbers; every number must be within
  ±``MAX_INPUT`` (1e6: the model takes its inputs on the scale it was trained on).
- UTF-8 text, with or without a byte-order mark (Excel's "CSV UTF-8"); each column name once;
  every row has the header's number of fields.

The predictions file has one row per query point: ``task``, the inputs, ``mean``,
``q05``, ``q95`` (central 90% interval) per output, and ``loglik`` where y was given
(:func:`prediction_header`, :func:`prediction_rows`; a value that is not finite is an error).
"""

from __future__ import annotations

import csv
import math
import re

import torch

from .meta_model import MAX_INPUT
from .runfiles import check_input_file
from .tasks import TaskBatch

__all__ = ["column_names", "read_task_file", "write_predictions", "prediction_header", "prediction_rows"]


def column_names(prefix: str, dim: int) -> list[str]:
    return [prefix] if dim == 1 else [f"{prefix}{i + 1}" for i in range(dim)]


def _float(text: str, where: str) -> float:
    """A finite number (x, y) within ±MAX_INPUT."""
    value = _number(text, where)
    if not math.isfinite(value):
        raise ValueError(f"{where}: {text!r} is NaN or infinite; drop or impute that point")
    return _bounded(value, text, where)


def _bounded(value: float, text: str, where: str) -> float:
    if abs(value) > MAX_INPUT:
        raise ValueError(f"{where}: {text.strip()} is out of range: beyond ±{MAX_INPUT:g}, the model's inputs "
                         "overflow; standardize the data to the scale the model was trained on")
    return value


def _metadata(text: str, where: str) -> float:
    """A metadata value: a number, or NaN (missing) for an empty cell or ``nan``."""
    if not text.strip():
        return math.nan
    value = _number(text, where)
    if math.isinf(value):
        raise ValueError(f"{where}: {text!r} is infinite; leave the cell empty (or write nan) "
                         "when the metadata value is unknown")
    return value if math.isnan(value) else _bounded(value, text, where)


def _number(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not a number") from None


def _same(a: list[float], b: list[float]) -> bool:
    """Equal metadata rows, NaN (missing) matching NaN."""
    return all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b, strict=True))


def read_task_file(path: str, x_dim: int, y_dim: int, metadata_dim: int) -> tuple[TaskBatch, list[str], bool]:
    """Parse ``path`` into a padded :class:`TaskBatch`; returns ``(batch, task_labels, has_query_y)``.

    FileNotFoundError (IsADirectoryError, PermissionError) for a path that is not a readable
    file; ValueError naming the line for a file that breaks the format (module docstring).
    """
    check_input_file(path, "task file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            tasks = _read_rows(path, csv.DictReader(f), x_dim, y_dim, metadata_dim)
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); save it as "
                         "CSV UTF-8") from None
    except csv.Error as error:
        raise ValueError(f"{path}: not a CSV file ({error})") from None
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

    def padded(role: str, part: int, dim: int) -> torch.Tensor:  # [T, max points, dim]
        n = max(len(tasks[t][role]) for t in labels)
        zeros = [0.0] * dim
        return torch.tensor([[point[part] or zeros for point in tasks[t][role]]
                             + [zeros] * (n - len(tasks[t][role])) for t in labels]).reshape(len(labels), n, dim)

    def mask(role: str) -> torch.Tensor:  # [T, max points]
        n = max(len(tasks[t][role]) for t in labels)
        return torch.arange(n) < torch.tensor([len(tasks[t][role]) for t in labels])[:, None]

    batch = TaskBatch(x_support=padded("support", 0, x_dim), y_support=padded("support", 1, y_dim),
                      x_query=padded("query", 0, x_dim), y_query=padded("query", 1, y_dim),
                      metadata=torch.tensor([tasks[t]["metadata"] for t in labels]),
                      support_mask=mask("support"), query_mask=mask("query"))
    return batch, labels, all(has_y)


def _read_rows(path: str, reader: csv.DictReader, x_dim: int, y_dim: int, metadata_dim: int) -> dict:
    """``{task: {"metadata": [Dm], "support": [(x, y)], "query": [(x, y or None)]}}`` of the rows of ``reader``."""
    xs, ys = column_names("x", x_dim), column_names("y", y_dim)
    ms = column_names("m", metadata_dim)  # none for a model without metadata
    header = reader.fieldnames or []
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise ValueError(f"{path}, line 1: column(s) {repeated} appear more than once in the header; "
                         "give each column once")
    if metadata_dim == 1 and "m" not in header and "m1" in header:
        ms = ["m1"]
    missing = [c for c in ["task", "role"] + xs + ys + ms if c not in header]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; a task file for this model needs "
                         f"columns {['task', 'role'] + xs + ys + ms} (see hierarchical_meta.taskfile)")
    dims = {"x": x_dim, "y": y_dim, "m": metadata_dim}
    for name in header:
        match = re.fullmatch(r"([xym])(\d+)", name)
        if match and int(match.group(2)) > dims[match.group(1)]:
            raise ValueError(f"{path}: column {name!r} does not fit the model, which takes "
                             f"{dims[match.group(1)]} {match.group(1)} column(s) "
                             f"{column_names(match.group(1), dims[match.group(1)])}")
    tasks = {}
    for row in reader:
        where = f"{path}, line {reader.line_num}"
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
    return tasks


def prediction_header(x_dim: int, y_dim: int, score: bool) -> list[str]:
    """The columns of a predictions file: task, inputs, mean, q05, q95 per output (y and loglik when ``score``)."""
    suffix = (lambda name, i: name) if y_dim == 1 else (lambda name, i: f"{name}{i + 1}")
    header = ["task"] + column_names("x", x_dim)
    for i in range(y_dim):
        header += [suffix("mean", i), suffix("q05", i), suffix("q95", i)]
    return header + (column_names("y", y_dim) + ["loglik"] if score else [])


def prediction_rows(batch: TaskBatch, labels: list[str], predictive, score: bool) -> list[list[str]]:
    """The rows of :func:`prediction_header` for the query points of ``batch`` (task ``labels``).

    ``predictive`` is a regression model's (a ``MixturePredictive``: mean and quantiles).

    Raises FloatingPointError naming the task if a predicted value is NaN or infinite.
    """
    values = {"mean": predictive.predictive_mean(), "q05": predictive.quantile(0.05),
              "q95": predictive.quantile(0.95)}
    if score:
        values["loglik"] = predictive.log_prob(batch.y_query)[..., None]
    for name, value in values.items():
        bad = ~torch.isfinite(value).all(-1) & batch.query_mask
        if bad.any():
            t, q = bad.nonzero()[0].tolist()
            raise FloatingPointError(f"the {name} predicted for query point {q + 1} of task {labels[t]!r} is "
                                     f"{value[t, q].tolist()}; no predictions written (are that task's inputs "
                                     "far outside the range the model was trained on?)")
    x, mask, y = batch.x_query.tolist(), batch.query_mask.tolist(), batch.y_query.tolist()
    mean, low, high = values["mean"].tolist(), values["q05"].tolist(), values["q95"].tolist()
    logp = values["loglik"].tolist() if score else None
    rows = []
    for t, label in enumerate(labels):
        for q, kept in enumerate(mask[t]):
            if not kept:
                continue
            row = [label] + [f"{v:.6g}" for v in x[t][q]]
            for i in range(len(mean[t][q])):
                row += [f"{mean[t][q][i]:.6g}", f"{low[t][q][i]:.6g}", f"{high[t][q][i]:.6g}"]
            if score:
                row += [f"{v:.6g}" for v in y[t][q]] + [f"{logp[t][q][0]:.6g}"]
            rows.append(row)
    return rows


def write_predictions(path: str, batch: TaskBatch, labels: list[str], predictive, score: bool) -> None:
    """One row per query point: task, inputs, mean, q05, q95 (and loglik when ``score``)."""
    rows = prediction_rows(batch, labels, predictive, score)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(prediction_header(batch.x_query.shape[-1], batch.y_query.shape[-1], score))
        writer.writerows(rows)
