"""What a modeller asks of a fit: how y moves with x and with the metadata, for a new group.

For a data set (a :class:`~hierarchical_meta.tasks.TabularTasks`), :func:`effect_grid` lays out
curves in the data's units: the first numeric x column over ``num_points`` values spanning its
training range, each other x column at its training median (numeric) or mode (categorical),
and one curve per level of each metadata column -- each level of a categorical column, the
10, 50 and 90% quantiles over the training groups of a numeric one (repeated values once) --
the other metadata at their median or mode; one curve when there is no metadata.
:func:`effect_tasks` makes each curve a K = 0 task (no support rows, the grid as query
points), and :func:`effects_frame` gives each predictor's predictive mean and central 90%
band of y along the curves, in the data's units: the rows of ``effects.csv``::

    predictor, varied, <x columns>, <metadata columns>, <y>_mean, <y>_q05, <y>_q95

``varied`` names the metadata column whose level the row's curve shows (empty without
metadata). Every function is pure: it reads the family and returns new objects.
"""

from __future__ import annotations

import math

import torch

from .tasks.base import TaskBatch
from .tasks.frames import import_pandas
from .tasks.schema import TabularSchema

__all__ = ["EFFECT_POINTS", "METADATA_QUANTILES", "training_values", "effect_grid", "effect_tasks",
           "predict_effects", "effects_frame"]

EFFECT_POINTS = 50  # grid values of x per curve
METADATA_QUANTILES = (0.1, 0.5, 0.9)  # the levels of a numeric metadata column
_TAIL = 0.05  # the band is the central 1 - 2 * _TAIL of the predictive


def _decoded(schema: TabularSchema, role: str, encoded: torch.Tensor):
    """Encoded rows [N, D] of a role as a data frame in the data's units (None where missing)."""
    columns, start = {}, 0
    for c in schema.columns(role):
        block = encoded[:, start:start + c.width].double()
        start += c.width
        if c.kind == "numeric":  # to 6 significant digits of the sd: what float32 storage keeps
            digits = max(0, 5 - math.floor(math.log10(c.std)))
            columns[c.name] = [round(v, digits) + 0.0 for v in (block[:, 0] * c.std + c.mean).tolist()]
        else:
            index = block.nan_to_num(-1.0).argmax(1).tolist()
            missing = torch.isnan(block).any(1).tolist()
            columns[c.name] = [None if gone else c.levels[i] for gone, i in zip(missing, index, strict=True)]
    return import_pandas().DataFrame(columns)


def training_values(family, role: str):
    """The training groups' x rows (``role="x"``) or metadata (one row per group) in the data's units."""
    train = family.split_indices["train"]
    if role == "metadata":
        return _decoded(family.schema, role, family.metadata[train])
    rows = torch.cat([torch.arange(int(family.offsets[c]), int(family.offsets[c + 1])) for c in train.tolist()])
    return _decoded(family.schema, role, family.x[rows])


def _typical(values):
    """The median of numbers, the most frequent of labels (missing values left out)."""
    observed = values.dropna()
    if import_pandas().api.types.is_numeric_dtype(observed):
        return float(observed.median())
    return observed.value_counts(sort=True).index[0]


def _levels(column, values) -> list:
    """A metadata column's curves: its levels, or its quantiles over the training groups."""
    if column.kind == "categorical":
        return list(column.levels)
    return list(dict.fromkeys(float(q) for q in values.dropna().quantile(list(METADATA_QUANTILES))))


def effect_grid(family, num_points: int = EFFECT_POINTS):
    """The curves' rows in the data's units (module docstring): ``varied``, the x and metadata
    columns; curve after curve, ``num_points`` rows each. ValueError without a numeric x column."""
    schema = family.schema
    numeric = [c.name for c in schema.x if c.kind == "numeric"]
    if not numeric:
        raise ValueError("effects are drawn against a numeric x column; the data have none")
    x, metadata = training_values(family, "x"), training_values(family, "metadata")
    first = numeric[0]
    grid = torch.linspace(float(x[first].min()), float(x[first].max()), num_points).tolist()
    base = {**{c: _typical(x[c]) for c in schema.names("x")},
            **{c: _typical(metadata[c]) for c in schema.names("metadata")}}
    curves = [(c.name, level) for c in schema.metadata for level in _levels(c, metadata[c.name])] or [("", None)]
    rows = [{"varied": varied, **base, **({varied: level} if varied else {}), first: value}
            for varied, level in curves for value in grid]
    return import_pandas().DataFrame(rows, columns=["varied"] + schema.names("x") + schema.names("metadata"))


def effect_tasks(schema: TabularSchema, grid, num_points: int = EFFECT_POINTS) -> TaskBatch:
    """The curves of ``grid`` (:func:`effect_grid`) as K = 0 tasks: x_query [C, num_points, Dx]."""
    curves = len(grid) // num_points
    x, _ = schema.encode(grid, "x")
    metadata, _ = schema.encode(grid.iloc[::num_points], "metadata")
    dtype = torch.get_default_dtype()
    x_query = x.to(dtype).reshape(curves, num_points, -1)
    empty = x_query[:, :0]
    return TaskBatch(x_support=empty, y_support=empty.new_zeros(curves, 0, schema.y_dim), x_query=x_query,
                     y_query=x_query.new_zeros(curves, num_points, schema.y_dim), metadata=metadata.to(dtype))


def predict_effects(predictor, schema: TabularSchema, tasks: TaskBatch) -> dict[str, torch.Tensor]:
    """A predictor's ``mean``, ``q05`` and ``q95`` of y on ``tasks``, in the data's units: [C, G, Dy] each."""
    user = schema.predictive_to_user(predictor(tasks))
    return {"mean": user.predictive_mean(), f"q{round(_TAIL * 100):02d}": user.quantile(_TAIL),
            f"q{round((1 - _TAIL) * 100):02d}": user.quantile(1 - _TAIL)}


def effects_frame(predictors: dict, family, num_points: int = EFFECT_POINTS):
    """``effects.csv``'s rows: each predictor's (label -> predictor of standardized tasks)
    predictions along the curves of :func:`effect_grid`, one block per predictor."""
    pandas = import_pandas()
    schema = family.schema
    grid = effect_grid(family, num_points)
    tasks = effect_tasks(schema, grid, num_points)
    blocks = []
    for label, predictor in predictors.items():
        block = grid.copy()
        block.insert(0, "predictor", label)
        for name, value in predict_effects(predictor, schema, tasks).items():
            for j, y_name in enumerate(schema.names("y")):
                block[f"{y_name}_{name}"] = value[..., j].reshape(-1).tolist()
        blocks.append(block)
    return pandas.concat(blocks, ignore_index=True)
