"""The columns of a user's grouped data as plain data: roles, encodings and standardization.

A :class:`TabularSchema` records how the x, y and metadata columns of a data set become
the model's inputs and how predictions return to the user's units:

- a numeric column v becomes z = (v - μ) / s, with μ and s fitted on the *training*
  groups (x and y over their rows, metadata over one row per group; s = 1 for a
  constant column);
- a categorical column with training levels l_1..l_L becomes L one-hot entries; a level
  training never saw becomes all zeros ("unknown"), and a note says so;
- a missing metadata value (an empty cell or NaN) becomes NaN entries, which the model
  reads as missing.

Predictions return to user units by y = μ_y + s_y z: a predictive mean maps the same way,
a standard deviation scales by s_y, and a log-density changes by the Jacobian,
log p(y) = log p(z) - Σ_j log s_j over the y columns j.

:meth:`TabularSchema.to_dict` holds only str, int, float, list and dict (a checkpoint
stores it and is read with ``torch.load(weights_only=True)``)::

    {"version": 1, "group": "site",
     "x": [{"name": "dose", "kind": "numeric", "mean": 4.9, "std": 2.9}],
     "y": [{"name": "response", "kind": "numeric", "mean": 18.2, "std": 6.1}],
     "metadata": [{"name": "altitude", "kind": "numeric", "mean": 1510.0, "std": 880.0},
                  {"name": "region", "kind": "categorical", "levels": ["east", "north", "south"]}]}

A prediction file for new groups (:meth:`TabularSchema.read_tasks`) has the data's own x,
y and metadata columns plus ``task`` (the group) and ``role`` (``support`` rows with y,
``query`` rows to predict, with or without y).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch

from ..predictive import MixturePredictive
from .base import TaskBatch
from .frames import import_pandas, read_csv, row_name

__all__ = ["KINDS", "ROLES", "TASK_COLUMNS", "Column", "TabularSchema", "PredictionTasks",
           "level_name", "numeric_values"]

KINDS = ("numeric", "categorical")
ROLES = ("x", "y", "metadata")
TASK_COLUMNS = ("task", "role")  # the columns a prediction file adds to the data's own
_VERSION = 1


def level_name(value) -> str:
    """A categorical level as text: 3, 3.0 and "3" are all the level "3"."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def numeric_values(frame, column: str, what: str):
    """``frame[column]`` as floats (empty cells NaN); ``ValueError`` names the first non-number."""
    pandas = import_pandas()
    values = frame[column]
    if pandas.api.types.is_bool_dtype(values):
        return values.astype(float)
    if pandas.api.types.is_numeric_dtype(values):
        return values.astype(float)
    parsed = pandas.to_numeric(values, errors="coerce")
    bad = parsed.isna() & values.notna() & (values.astype(str).str.strip() != "")
    if bad.any():
        label = bad.index[bad.argmax()]
        raise ValueError(f"{what} column {column!r} must be numeric, but {row_name(frame, label)} holds "
                         f"{values[label]!r}; fix that cell (or make the column categorical)")
    return parsed.astype(float)


@dataclasses.dataclass
class Column:
    """One column: ``kind`` numeric (``mean``, ``std``) or categorical (``levels``)."""

    name: str
    kind: str = "numeric"
    mean: float = 0.0
    std: float = 1.0
    levels: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"column {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "numeric" and not (math.isfinite(self.mean) and math.isfinite(self.std) and self.std > 0):
            raise ValueError(f"column {self.name!r}: mean must be finite and std > 0, got {self.mean}, {self.std}")
        if self.kind == "categorical" and (not self.levels or len(set(self.levels)) != len(self.levels)):
            raise ValueError(f"column {self.name!r}: a categorical column needs distinct levels, "
                             f"got {self.levels}")

    @classmethod
    def fit(cls, name: str, kind: str, values) -> Column:
        """From the training values (a pandas Series; NaN = missing, ignored)."""
        observed = values.dropna()
        if observed.empty:
            raise ValueError(f"column {name!r} has no value in any training group; fill it or leave it out")
        if kind == "categorical":
            return cls(name, kind, levels=sorted({level_name(v) for v in observed}))
        std = float(observed.std()) if len(observed) > 1 else 0.0
        return cls(name, kind, mean=float(observed.mean()), std=std if std > 0 else 1.0)

    @property
    def width(self) -> int:
        """Encoded entries: 1, or one per level."""
        return 1 if self.kind == "numeric" else len(self.levels)

    def encoded_names(self) -> list[str]:
        return [self.name] if self.kind == "numeric" else [f"{self.name}={level}" for level in self.levels]

    def encode(self, values) -> tuple[torch.Tensor, list[str]]:
        """Values (a pandas Series; floats for a numeric column) -> [N, width] float64 and unseen levels.

        NaN (missing) gives NaN entries; an unseen level gives all zeros.
        """
        if self.kind == "numeric":
            v = torch.tensor(values.to_numpy(dtype=float), dtype=torch.float64)
            return ((v - self.mean) / self.std)[:, None], []
        position = {level: j for j, level in enumerate(self.levels)}
        out = torch.zeros(len(values), self.width, dtype=torch.float64)
        unseen = []
        for i, value in enumerate(values.tolist()):
            if value is None or (isinstance(value, float) and math.isnan(value)):
                out[i] = math.nan
                continue
            level = level_name(value)
            if level in position:
                out[i, position[level]] = 1.0
            elif level not in unseen:
                unseen.append(level)
        return out, unseen

    def to_dict(self) -> dict:
        if self.kind == "numeric":
            return {"name": self.name, "kind": self.kind, "mean": self.mean, "std": self.std}
        return {"name": self.name, "kind": self.kind, "levels": list(self.levels)}

    @classmethod
    def from_dict(cls, entry: dict) -> Column:
        known = {"name", "kind", "mean", "std", "levels"}
        if not isinstance(entry, dict) or "name" not in entry or set(entry) - known:
            raise ValueError(f"a schema column must be a dict with keys from {sorted(known)} "
                             f"including 'name', got {entry!r}")
        return cls(**entry)


@dataclasses.dataclass
class PredictionTasks:
    """New tasks read from a prediction file, standardized by a schema.

    ``batch`` holds the tasks in ``labels`` order; ``scored`` is True when every query row
    has y; ``query_rows`` are the file's query rows in the batch's order (task by task,
    slot by slot); ``notes`` are human-readable remarks (unseen levels), not printed.
    """

    batch: TaskBatch
    labels: list[str]
    scored: bool
    query_rows: object  # a pandas DataFrame
    notes: list[str]


@dataclasses.dataclass
class TabularSchema:
    """The group column and the x, y and metadata :class:`Column` lists of a data set."""

    group: str
    x: list[Column]
    y: list[Column]
    metadata: list[Column] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        if not self.x or not self.y:
            raise ValueError("a schema needs at least one x column and one y column")
        if any(c.kind != "numeric" for c in self.y):
            raise ValueError(f"y columns must be numeric, got kinds {[c.kind for c in self.y]}")
        names = [self.group] + [c.name for role in ROLES for c in self.columns(role)]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"column(s) {twice} named twice in the schema; give each column one role")

    # -- shapes and names -----------------------------------------------------------------
    def columns(self, role: str) -> list[Column]:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        return getattr(self, role)

    def names(self, role: str) -> list[str]:
        """The user's column names of a role."""
        return [c.name for c in self.columns(role)]

    def encoded_names(self, role: str) -> list[str]:
        """One name per encoded entry (``region=north`` for a one-hot entry)."""
        return [n for c in self.columns(role) for n in c.encoded_names()]

    @property
    def x_dim(self) -> int:
        return sum(c.width for c in self.x)

    @property
    def y_dim(self) -> int:
        return len(self.y)

    @property
    def metadata_dim(self) -> int:
        return sum(c.width for c in self.metadata)

    def linear_columns(self, role: str) -> list[int]:
        """Encoded entries of a full-rank linear design with an intercept: each categorical
        column drops its first level (treatment coding), so the one-hot entries do not sum to
        the intercept. For the linear baselines; an unknown level then reads as the first one."""
        keep, start = [], 0
        for c in self.columns(role):
            keep += list(range(start + (c.kind == "categorical"), start + c.width))
            start += c.width
        return keep

    # -- encoding -------------------------------------------------------------------------
    def encode(self, frame, role: str) -> tuple[torch.Tensor, list[str]]:
        """The role's columns of ``frame`` -> standardized [N, D] float64 and notes on unseen levels.

        Numeric cells must parse as numbers (empty = NaN); the caller decides where NaN is allowed.
        """
        parts, notes = [], []
        for c in self.columns(role):
            values = numeric_values(frame, c.name, role) if c.kind == "numeric" else frame[c.name]
            encoded, unseen = c.encode(values)
            parts.append(encoded)
            if unseen:
                notes.append(f"column {c.name!r}: level(s) {unseen} were not seen in training; "
                             "they are encoded as unknown (all-zero one-hot)")
        if not parts:
            return torch.zeros(len(frame), 0, dtype=torch.float64), notes
        return torch.cat(parts, -1), notes

    # -- user units -----------------------------------------------------------------------
    def _y_scale(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor([c.mean for c in self.y], dtype=like.dtype, device=like.device)
        std = torch.tensor([c.std for c in self.y], dtype=like.dtype, device=like.device)
        return mean, std

    def y_to_user(self, y: torch.Tensor) -> torch.Tensor:
        """Standardized y [..., Dy] -> user units μ + s z."""
        mean, std = self._y_scale(y)
        return y * std + mean

    def y_from_user(self, y: torch.Tensor) -> torch.Tensor:
        """User-unit y [..., Dy] -> standardized (y - μ) / s."""
        mean, std = self._y_scale(y)
        return (y - mean) / std

    def log_prob_to_user(self, log_prob: torch.Tensor) -> torch.Tensor:
        """A log-density of standardized y (summed over Dy) -> per unit of the user's y: minus Σ_j log s_j."""
        return log_prob - sum(math.log(c.std) for c in self.y)

    def predictive_to_user(self, predictive: MixturePredictive) -> MixturePredictive:
        """The same mixture in user units: means μ + s μ_z, standard deviations s σ_z.

        Its ``log_prob`` of user-unit y equals :meth:`log_prob_to_user` of the standardized one.
        """
        mean, std = self._y_scale(predictive.mean)
        return MixturePredictive(predictive.log_weights, predictive.mean * std + mean, predictive.std * std)

    # -- prediction files -----------------------------------------------------------------
    def read_tasks(self, path: str) -> PredictionTasks:
        """:meth:`tasks_from_frame` of a CSV file (a byte-order mark is fine)."""
        return self.tasks_from_frame(read_csv(path))

    def tasks_from_frame(self, frame) -> PredictionTasks:
        """New tasks from a frame with columns task, role, the x, y and metadata columns.

        ``support`` rows need x and y, ``query`` rows x (y optional: on every query row or
        on none); metadata may be missing (empty or NaN) but must agree within a task. A
        task may have no support rows (zero-shot); each needs a query row.
        """
        pandas = import_pandas()
        xs, ys, ms = self.names("x"), self.names("y"), self.names("metadata")
        missing = [c for c in list(TASK_COLUMNS) + xs + ms if c not in frame.columns]
        if missing:
            raise ValueError(f"the prediction file lacks column(s) {missing}; it needs "
                             f"{list(TASK_COLUMNS) + xs + ys + ms} (y optional on query rows)")
        frame = frame.copy()
        for c in ys:
            if c not in frame.columns:
                frame[c] = math.nan
        if frame.empty:
            raise ValueError("the prediction file has no rows")
        if frame["task"].isna().any():
            label = frame.index[frame["task"].isna().argmax()]
            raise ValueError(f"{row_name(frame, label)}: the task column is empty; name the task of every row")
        roles = frame["role"].astype(str).str.strip()
        bad = ~roles.isin(["support", "query"])
        if bad.any():
            label = bad.index[bad.argmax()]
            raise ValueError(f"{row_name(frame, label)}: role must be 'support' or 'query', "
                             f"got {frame['role'][label]!r}")
        frame["role"] = roles
        frame["task"] = frame["task"].map(level_name)
        x, x_notes = self.encode(frame, "x")
        y = torch.tensor(pandas.concat([numeric_values(frame, c, "y") for c in ys], axis=1)
                            .to_numpy(dtype=float), dtype=torch.float64)
        metadata, m_notes = self.encode(frame, "metadata")
        query = torch.as_tensor(frame["role"].to_numpy() == "query")
        self._check_finite(frame, x, "x", xs, torch.ones_like(query))
        self._check_finite(frame, y, "y", ys, ~query)
        has_y = ~torch.isnan(y).any(-1)
        if query.any() and has_y[query].any() and not has_y[query].all():
            raise ValueError("give y on every query row or on none (query rows with y are scored)")
        y = self.y_from_user(y)
        labels = list(dict.fromkeys(frame["task"].tolist()))
        rows_of = {t: [] for t in labels}
        for i, t in enumerate(frame["task"].tolist()):
            rows_of[t].append(i)
        for t in labels:
            m = metadata[rows_of[t]]
            if not (torch.isclose(m, m[:1], rtol=0, atol=1e-12) | (m.isnan() & m[:1].isnan())).all():
                raise ValueError(f"task {t!r}: metadata differ between its rows; give each task one "
                                 f"value per metadata column {ms} (empty when unknown)")
        roles = frame["role"].to_numpy()
        support = {t: [i for i in rows_of[t] if roles[i] == "support"] for t in labels}
        queries = {t: [i for i in rows_of[t] if roles[i] == "query"] for t in labels}
        no_query = [t for t in labels if not queries[t]]
        if no_query:
            raise ValueError(f"task(s) {no_query[:10]} have no query rows: nothing to predict; add query rows")
        batch = self._pad([support[t] for t in labels], [queries[t] for t in labels], x, y,
                          metadata[[rows_of[t][0] for t in labels]])
        order = [i for t in labels for i in queries[t]]
        scored = bool(query.any() and has_y[query].all())
        return PredictionTasks(batch, labels, scored, frame.iloc[order], x_notes + m_notes)

    @staticmethod
    def _check_finite(frame, values: torch.Tensor, role: str, names: Sequence[str],
                      needed: torch.Tensor) -> None:
        """Rows where ``needed`` [N] must have finite ``values`` [N, D]; else name the first bad row."""
        bad = ~torch.isfinite(values).all(-1) & needed
        if bad.any():
            label = frame.index[int(bad.nonzero()[0, 0])]
            raise ValueError(f"{row_name(frame, label)}: {role} ({', '.join(names)}) must be a finite "
                             f"number{'' if role == 'x' else ' on support rows'}; fill it or drop the row")

    @staticmethod
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

    def prediction_frame(self, tasks: PredictionTasks, predictive: MixturePredictive, level: float = 0.9):
        """One row per query point in user units: the file's task and x columns, then per y
        column ``{y}_mean`` and the central ``level`` interval ``{y}_q05``/``{y}_q95`` (for
        0.9), and where y was given its value and ``loglik`` (log-density per unit of the
        user's y, summed over the y columns). ``predictive`` is on standardized y."""
        user = self.predictive_to_user(predictive)
        mask = tasks.batch.query_mask
        tail = (1 - level) / 2
        low_name, high_name = f"q{round(tail * 100):02d}", f"q{round((1 - tail) * 100):02d}"
        out = tasks.query_rows[["task"] + self.names("x")].copy()
        mean, low, high = user.predictive_mean()[mask], user.quantile(tail)[mask], user.quantile(1 - tail)[mask]
        for j, name in enumerate(self.names("y")):
            out[f"{name}_mean"] = mean[:, j].tolist()
            out[f"{name}_{low_name}"] = low[:, j].tolist()
            out[f"{name}_{high_name}"] = high[:, j].tolist()
        if tasks.scored:
            y_user = self.y_to_user(tasks.batch.y_query.double()).to(user.mean.dtype)
            for j, name in enumerate(self.names("y")):
                out[name] = y_user[mask][:, j].tolist()
            out["loglik"] = user.log_prob(y_user)[mask].tolist()
        return out

    # -- plain data -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Only str/int/float/list/dict (see the module docstring)."""
        return {"version": _VERSION, "group": self.group,
                **{role: [c.to_dict() for c in self.columns(role)] for role in ROLES}}

    @classmethod
    def from_dict(cls, data: dict) -> TabularSchema:
        if not isinstance(data, dict) or data.get("version") != _VERSION or "group" not in data:
            raise ValueError(f"not a version-{_VERSION} tabular schema (a dict with 'version', "
                             f"'group', 'x', 'y', 'metadata'): {data!r:.200}")
        return cls(data["group"], *[[Column.from_dict(e) for e in data.get(role, [])] for role in ROLES])
