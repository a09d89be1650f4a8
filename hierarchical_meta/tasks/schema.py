"""The columns of a family's tasks as plain data: roles, encodings and standardization.

A :class:`TabularSchema` records how the x, y and metadata columns of a table become
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

Every task family has one (``TaskFamily.schema``): a data set's is fitted on its training
groups (:class:`~hierarchical_meta.tasks.TabularTasks`); a built-in family's is the
*identity* schema (:meth:`TabularSchema.identity`): numeric columns ``x`` (or ``x1``,
``x2``, …), ``y`` (or ``y1``, …) and ``m`` (or ``m1``, ``m2``, …) with μ = 0 and s = 1,
the model's own units. Task files of either kind are read by :mod:`hierarchical_meta.taskfile`.

:meth:`TabularSchema.to_dict` holds only str, int, float, list and dict (a checkpoint
stores it and is read with ``torch.load(weights_only=True)``)::

    {"version": 1, "group": "site",
     "x": [{"name": "dose", "kind": "numeric", "mean": 4.9, "std": 2.9}],
     "y": [{"name": "response", "kind": "numeric", "mean": 18.2, "std": 6.1}],
     "metadata": [{"name": "altitude", "kind": "numeric", "mean": 1510.0, "std": 880.0},
                  {"name": "region", "kind": "categorical", "levels": ["east", "north", "south"]}]}

Values in a user's table are bounded by :data:`MAX_INPUT` in magnitude; labels (groups,
tasks, levels) are text (:func:`level_name`).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ..predictive import MixturePredictive
from .frames import cell_name, import_pandas

__all__ = ["KINDS", "ROLES", "TASK_COLUMNS", "MAX_INPUT", "Column", "TabularSchema", "column_names",
           "level_name", "label_order", "numeric_values"]

KINDS = ("numeric", "categorical")
ROLES = ("x", "y", "metadata")
TASK_COLUMNS = ("task", "role")  # the columns a task file adds to the data's own
#: The largest magnitude of a number in a user's table (a task file, ``fit --data``) and of an
#: input the networks accept (the same bound): beyond it products of
#: float32 weights and inputs overflow, and in data that are standardized it is a typo or a
#: unit to rescale.
MAX_INPUT = 1e6
_VERSION = 1
_PREFIXES = {"x": "x", "y": "y", "metadata": "m"}  # the identity schema's column names


def column_names(prefix: str, dim: int) -> list[str]:
    """``[prefix]`` for one column, else ``prefix1``, ``prefix2``, …: the identity schema's names."""
    return [prefix] if dim == 1 else [f"{prefix}{i + 1}" for i in range(dim)]


def level_name(value) -> str:
    """A label as text: groups, tasks and categorical levels. 3, 3.0 and "3" are all "3";
    "007" stays "007" (a file's labels are read as text)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def label_order(label: str) -> tuple:
    """A sort key for text labels: those that read as finite numbers first, by value (then as
    text), then the others as text; so "2" < "10" and "007" < "7"."""
    try:
        number = float(label)
    except ValueError:
        return (1, 0.0, label)
    return (0, number, label) if math.isfinite(number) else (1, 0.0, label)


def numeric_values(frame, column: str, what: str):
    """``frame[column]`` as floats (empty cells NaN); ``ValueError`` names the first non-number."""
    pandas = import_pandas()
    values = frame[column]
    if pandas.api.types.is_bool_dtype(values) or pandas.api.types.is_numeric_dtype(values):
        return values.astype(float)
    parsed = pandas.to_numeric(values, errors="coerce")
    bad = parsed.isna() & values.notna() & (values.astype(str).str.strip() != "")
    if bad.any():
        label = bad.index[bad.argmax()]
        raise ValueError(f"{cell_name(frame, label, column)}: {values[label]!r} is not a number, but {what} "
                         f"column {column!r} is numeric; fix that cell (or make the column categorical)")
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
class TabularSchema:
    """The group column and the x, y and metadata :class:`Column` lists of a family's tasks."""

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

    @classmethod
    def identity(cls, x_dim: int, y_dim: int, metadata_dim: int) -> TabularSchema:
        """A built-in family's schema: numeric ``x``, ``y`` and ``m`` columns (:func:`column_names`)
        taken as they are (μ = 0, s = 1), the group column ``task``."""
        return cls("task", *[[Column(name) for name in column_names(_PREFIXES[role], dim)]
                             for role, dim in zip(ROLES, (x_dim, y_dim, metadata_dim), strict=True)])

    def is_identity(self) -> bool:
        """True for :meth:`identity`'s schema: the model's own units and column names."""
        return self == TabularSchema.identity(len(self.x), len(self.y), len(self.metadata))

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

    def predictive_to_user(self, predictive: MixturePredictive) -> MixturePredictive:
        """The same mixture in user units: means μ + s μ_z, standard deviations s σ_z.

        Its ``log_prob`` of user-unit y is the standardized one's minus Σ_j log s_j (the Jacobian).
        With μ = 0 and s = 1 (any predictive, a classifier's too) it is ``predictive`` itself.
        """
        if all(c.mean == 0 and c.std == 1 for c in self.y):
            return predictive
        mean, std = self._y_scale(predictive.mean)
        return dataclasses.replace(predictive, mean=predictive.mean * std + mean, std=predictive.std * std)

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
