"""Task files: new tasks to predict, read through a family's schema, and their predictions.

A task file (a UTF-8 CSV file, :func:`read_tasks`, or a data frame, :func:`tasks_from_frame`)
has one row per point: the schema's x, y and metadata columns
(:class:`~hierarchical_meta.tasks.schema.TabularSchema`) plus ``task`` and ``role``. For a
built-in family (the identity schema) the columns are ``x`` (or ``x1``, ``x2``, …), ``y``
(or ``y1``, …) and ``m`` (or ``m1``, ``m2``, …)::

    task,role,x,y,m1,m2
    a,support,0.30,1.21,2.5,0.1
    a,query,1.00,,2.5,0.1
    b,query,-2.0,,1.0,-0.4

for a data set, its own columns (``task,role,dose,response,altitude,region``).

- ``task``: a label, read as text (``007`` and ``7`` are two tasks); rows of a task may come
  in any order, tasks are kept in the order they first appear.
- ``role``: ``support`` (labelled points to adapt to) or ``query`` (points to predict).
- x must be a finite number on every row, y on support rows; y on query rows is optional
  (given on every query row or on none: then they are scored), and the y columns may be left
  out of a file without support rows. An empty metadata cell (or ``nan``) is missing, read as
  such by the model; a task's metadata must agree on its rows. Categorical columns take the
  training levels; an unseen level is encoded as unknown, with a note.
- every number within ±``MAX_INPUT`` (1e6); a task may have no support rows (zero-shot), but
  needs a query row. Each column name once; every row has the header's number of fields.

A model's predictions (:func:`prediction_frame`) have one row per query point, task by task:
``task``, the x columns as given, then per y column ``<y>_mean`` and the central 90%
interval ``<y>_q05``, ``<y>_q95``, and where y was given ``<y>`` and ``loglik`` (the
log-density of the query point, summed over the y columns), all in the user's units.
"""

from __future__ import annotations

import dataclasses
import re

import torch

from .runfiles import check_input_file
from .tasks import TaskBatch
from .tasks.frames import cell_name, import_pandas, read_csv, row_name
from .tasks.schema import MAX_INPUT, ROLES, TASK_COLUMNS, TabularSchema, level_name, numeric_values

__all__ = ["PredictionTasks", "read_tasks", "tasks_from_frame", "prediction_frame", "LEVEL"]

#: The central interval of the predictions: 90%, between the quantiles 0.05 and 0.95.
LEVEL = 0.9


@dataclasses.dataclass
class PredictionTasks:
    """New tasks read from a task file, standardized by a schema.

    ``batch`` holds the tasks in ``labels`` order; ``scored`` is True when every query row
    has y; ``query_rows`` are the file's query rows in the batch's order (task by task,
    slot by slot); ``notes`` are remarks for the user (unseen levels).
    """

    batch: TaskBatch
    labels: list[str]
    scored: bool
    query_rows: object  # a pandas DataFrame
    notes: list[str]

    def subset(self, tasks: slice) -> PredictionTasks:
        """The tasks of the slice ``tasks``, with their query rows."""
        ends = [0] + self.batch.query_mask.sum(-1).cumsum(0).tolist()  # query rows before each task
        rows = self.query_rows.iloc[ends[tasks.start]:ends[tasks.stop]]
        return dataclasses.replace(self, batch=self.batch.subset(tasks), labels=self.labels[tasks], query_rows=rows)


def read_tasks(path: str, schema: TabularSchema) -> PredictionTasks:
    """:func:`tasks_from_frame` of a UTF-8 CSV file; messages start with the path and name the line."""
    check_input_file(path, "task file")
    frame = read_csv(path, text_columns=TASK_COLUMNS, check_header=lambda names: _check_columns(names, schema, False))
    try:
        return tasks_from_frame(frame, schema)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def tasks_from_frame(frame, schema: TabularSchema) -> PredictionTasks:
    """New tasks from a data frame with columns task, role and the schema's (module docstring).

    ValueError names the column, row or task of anything the model cannot take.
    """
    frame = _checked_frame(frame, schema)
    support = (frame["role"] == "support").to_numpy()
    x, x_notes = schema.encode(frame, "x")
    y = torch.tensor(frame[schema.names("y")].to_numpy(dtype=float), dtype=torch.float64)
    metadata, m_notes = schema.encode(frame, "metadata")
    scored = _check_query_y(y, support)
    labels = list(dict.fromkeys(frame["task"].tolist()))
    rows_of = {t: [] for t in labels}
    for i, t in enumerate(frame["task"].tolist()):
        rows_of[t].append(i)
    _check_tasks(frame, schema, metadata, rows_of)
    supports = [[i for i in rows_of[t] if support[i]] for t in labels]
    queries = [[i for i in rows_of[t] if not support[i]] for t in labels]
    batch = _pad(supports, queries, x, schema.y_from_user(y), metadata[[rows_of[t][0] for t in labels]])
    return PredictionTasks(batch, labels, scored, frame.iloc[[i for rows in queries for i in rows]], x_notes + m_notes)


def _checked_frame(frame, schema: TabularSchema):
    """A copy of ``frame`` with text task labels, stripped roles, float numeric columns (all
    checked) and the y columns added (empty) where a file without support rows left them out."""
    pandas = import_pandas()
    if not isinstance(frame, pandas.DataFrame):
        raise ValueError(f"the tasks must be a pandas DataFrame, got {type(frame).__name__}")
    with_support = "role" not in frame.columns or (frame["role"].astype(str).str.strip() == "support").any()
    _check_columns(list(frame.columns), schema, with_support)
    if frame.empty:
        raise ValueError("no rows: give support and query rows of the tasks to predict")
    frame = frame.copy()
    empty = frame["task"].isna() | (frame["task"].astype(str).str.strip() == "")
    if empty.any():
        raise ValueError(f"{row_name(frame, empty.index[empty.argmax()])}: the task column is empty; name the "
                         "task of every row")
    frame["task"] = frame["task"].map(level_name)
    frame["role"] = frame["role"].astype(str).str.strip()
    bad = ~frame["role"].isin(["support", "query"])
    if bad.any():
        label = bad.index[bad.argmax()]
        raise ValueError(f"{row_name(frame, label)}: role must be 'support' or 'query', got {frame['role'][label]!r}")
    for c in schema.names("y"):
        if c not in frame.columns:
            frame[c] = float("nan")
    support = frame["role"] == "support"
    for role in ROLES:
        for c in schema.columns(role):
            if c.kind == "numeric":
                frame[c.name] = numeric_values(frame, c.name, role)
                _check_cells(frame, c.name, role, support)
    return frame


def _check_columns(columns: list, schema: TabularSchema, with_support: bool) -> None:
    """The task, role, x and metadata columns (and y ``with_support`` rows) are among ``columns``;
    for the identity schema, no numbered column beyond the model's (m3 for two metadata columns)."""
    xs, ys, ms = schema.names("x"), schema.names("y"), schema.names("metadata")
    needed = ["task", "role", *xs, *(ys if with_support else []), *ms]
    missing = [c for c in needed if c not in columns]
    if missing:
        raise ValueError(f"missing column(s) {missing}; a task file for this model needs columns "
                         f"{['task', 'role', *xs, *ys, *ms]} (y may be left out when no row is a support row)")
    if schema.is_identity():
        known = set(xs + ys + ms)
        extra = [c for c in columns if isinstance(c, str) and re.fullmatch(r"[xym]\d*", c) and c not in known]
        if extra:
            raise ValueError(f"column(s) {extra} do not fit the model, which takes x column(s) {xs}, y column(s) "
                             f"{ys} and metadata column(s) {ms}; drop them or use the model trained on them")


def _check_cells(frame, column: str, role: str, support) -> None:
    """The cells of a numeric column the model takes: x finite, y finite on support rows (and
    not infinite), metadata not infinite (empty = missing); every number within ±MAX_INPUT."""
    values = frame[column]
    finite = values.abs() < float("inf")  # False for NaN
    infinite = values.abs() == float("inf")
    bad = {"x": ~finite, "y": (~finite & support) | infinite, "metadata": infinite}[role]
    if bad.any():
        label = bad.index[bad.argmax()]
        fix = ("leave the cell empty (or write nan) when the metadata value is unknown" if role == "metadata" else
               f"{role} must be a finite number{' on a support row' if role == 'y' else ''}: fill it or drop the row")
        problem = "is infinite" if role == "metadata" else "is NaN or infinite"
        raise ValueError(f"{cell_name(frame, label, column)}: {values[label]:g} {problem}; {fix}")
    huge = finite & (values.abs() > MAX_INPUT)
    if huge.any():
        label = huge.index[huge.argmax()]
        raise ValueError(f"{cell_name(frame, label, column)}: {values[label]:g} is out of range: beyond "
                         f"±{MAX_INPUT:g}, the model's inputs overflow; fix the value, or give the data in the "
                         "units the model was trained on")


def _check_query_y(y: torch.Tensor, support) -> bool:
    """True when every query row has y (they are scored); ValueError when only some have."""
    has_y = ~torch.isnan(y).any(-1)[torch.as_tensor(~support)]
    if has_y.any() and not has_y.all():
        raise ValueError("give y on every query row or on none (query rows with y are scored)")
    return bool(len(has_y) and has_y.all())


def _check_tasks(frame, schema: TabularSchema, metadata: torch.Tensor, rows_of: dict) -> None:
    """Each task has one metadata value per column (NaN matching NaN) and a query row."""
    roles = frame["role"].to_numpy()
    for t, rows in rows_of.items():
        m = metadata[rows]
        same = torch.isclose(m, m[:1], rtol=0, atol=1e-12) | (m.isnan() & m[:1].isnan())
        if not same.all():
            label = frame.index[rows[int((~same).any(-1).nonzero()[0, 0])]]
            raise ValueError(f"{row_name(frame, label)}: task {t!r} has different metadata on different rows; give "
                             f"each task one value per metadata column {schema.names('metadata')} (empty when unknown)")
    no_query = [t for t, rows in rows_of.items() if not (roles[rows] == "query").any()]
    if no_query:
        raise ValueError(f"task(s) {no_query[:10]} have no query rows: nothing to predict; add query rows")


def _pad(support: list[list[int]], query: list[list[int]], x: torch.Tensor, y: torch.Tensor,
         metadata: torch.Tensor) -> TaskBatch:
    """Row lists per task -> a TaskBatch padded to the longest support and query lists."""
    dtype = torch.get_default_dtype()
    T = len(support)

    def gather(lists, values):
        width = max(len(rows) for rows in lists)
        index = torch.zeros(T, width, dtype=torch.long)
        mask = torch.zeros(T, width, dtype=torch.bool)
        for t, rows in enumerate(lists):
            index[t, :len(rows)] = torch.tensor(rows, dtype=torch.long)
            mask[t, :len(rows)] = True
        out = values[index]  # [T, width, D]
        return torch.where(mask[..., None] & torch.isfinite(out), out, 0.0).to(dtype), mask

    xs, support_mask = gather(support, x)
    ys, _ = gather(support, y)
    xq, query_mask = gather(query, x)
    yq, _ = gather(query, y)
    return TaskBatch(x_support=xs, y_support=ys, x_query=xq, y_query=yq, metadata=metadata.to(dtype),
                     support_mask=support_mask, query_mask=query_mask)


def prediction_frame(schema: TabularSchema, tasks: PredictionTasks, predictive):
    """The predictions of ``tasks`` as a data frame in the user's units (module docstring).

    ``predictive`` is a regression model's predictive of their query points in the model's
    units (a ``MixturePredictive``). FloatingPointError names the task and point of a
    prediction that is NaN or infinite.
    """
    user = schema.predictive_to_user(predictive)
    mask = tasks.batch.query_mask
    tail = (1 - LEVEL) / 2
    values = {"mean": user.predictive_mean(), f"q{round(tail * 100):02d}": user.quantile(tail),
              f"q{round((1 - tail) * 100):02d}": user.quantile(1 - tail)}
    y_user = schema.y_to_user(tasks.batch.y_query.double()).to(user.mean.dtype)
    if tasks.scored:
        values["loglik"] = user.log_prob(y_user)[..., None]
    _check_finite(values, mask, tasks.labels)
    out = tasks.query_rows[["task"] + schema.names("x")].copy()
    for j, y_name in enumerate(schema.names("y")):
        for name in list(values)[:3]:
            out[f"{y_name}_{name}"] = values[name][mask][:, j].tolist()
    if tasks.scored:
        for j, y_name in enumerate(schema.names("y")):
            out[y_name] = y_user[mask][:, j].tolist()
        out["loglik"] = values["loglik"][mask][:, 0].tolist()
    return out


def _check_finite(values: dict, mask: torch.Tensor, labels: list[str]) -> None:
    """FloatingPointError naming the first query point whose predicted value is NaN or infinite."""
    for name, value in values.items():
        bad = ~torch.isfinite(value).all(-1) & mask
        if bad.any():
            t, q = bad.nonzero()[0].tolist()
            raise FloatingPointError(f"the {name} predicted for query point {q + 1} of task {labels[t]!r} is "
                                     f"{value[t, q].tolist()}; no predictions written (are that task's inputs "
                                     "far outside the range the model was trained on?)")
