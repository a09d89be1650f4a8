"""The linear baselines of a data set: a mixed model and a pooled regression, fitted on its training groups.

- ``mixed_model``: a linear mixed model, random intercept and a random slope of every numeric
  x column, fixed effects x, m and the products of those slopes with m, predicting from the
  BLUP given the support rows (:class:`~hierarchical_meta.baselines.MixedModel`); skipped,
  with the reason, where the data do not fit one (several y columns, no numeric x,
  statsmodels missing, a failed fit);
- ``pooled``: one regression on [1, x, m] for all rows, ignoring the groups
  (:class:`~hierarchical_meta.baselines.PooledRegression`).

Both read categorical columns in treatment coding (``TabularSchema.linear_columns``) and
leave the metadata out when some group's metadata are missing. They predict standardized
tasks, like the model.
"""

from __future__ import annotations

import dataclasses

import torch

from ..tasks.base import TaskBatch
from .mixed_model import MixedModel
from .pooled import PooledRegression

__all__ = ["LINEAR_BASELINES", "linear_baselines"]

#: The names of the linear baselines, as a family lists them in ``TaskFamily.baselines``.
LINEAR_BASELINES = ("mixed_model", "pooled")


def _design(batch: TaskBatch, x_columns: list[int], metadata_columns: list[int]) -> TaskBatch:
    """The batch with the encoded x and metadata entries of a full-rank linear design."""
    return dataclasses.replace(batch, x_support=batch.x_support[..., x_columns],
                               x_query=batch.x_query[..., x_columns],
                               metadata=batch.metadata[:, metadata_columns])


def _random_slopes(schema) -> list[int]:
    """The positions of the numeric x columns in the linear design (each categorical column
    takes its width minus one)."""
    slopes, position = [], 0
    for column in schema.x:
        if column.kind == "numeric":
            slopes.append(position)
        position += 1 if column.kind == "numeric" else column.width - 1
    return slopes


def _fit_mixed_model(schema, train: TaskBatch, x_columns: list[int], m_columns: list[int]) -> MixedModel | str:
    """The mixed model fitted on the training tasks ``train`` (in the linear design), or why not."""
    slopes = _random_slopes(schema)
    if not slopes:
        return "no numeric x column to give a random slope"
    names, m_names = schema.encoded_names("x"), schema.encoded_names("metadata")
    mixed = MixedModel(random_slopes=slopes, interactions=[(i, j) for i in slopes for j in range(len(m_columns))],
                       x_names=[names[i] for i in x_columns], metadata_names=[m_names[j] for j in m_columns])
    try:
        return mixed.fit(train)
    except (ImportError, RuntimeError, ValueError, ArithmeticError) as error:
        return f"the fit failed: {error}"


def linear_baselines(family) -> tuple[dict, dict[str, str], list[str]]:
    """Fit the linear baselines ``family`` offers (of :data:`LINEAR_BASELINES`) on its training groups.

    ``family`` is a fixed data set with a schema (:class:`~hierarchical_meta.tasks.TabularTasks`).
    Returns ``(predictors, skipped, notes)``: name -> predictor of standardized tasks,
    name -> why a baseline was not fitted, and remarks for the report; all empty for a family
    that offers none.
    """
    offered = [name for name in LINEAR_BASELINES if name in family.baselines]
    schema = family.schema
    if offered and schema.y_dim != 1:
        reason = f"the linear baselines take one y column, the data have {schema.y_dim}"
        return {}, {name: reason for name in offered}, []
    if not offered:
        return {}, {}, []
    observed = not torch.isnan(family.metadata).any()
    notes = ["some groups' metadata are missing: the linear baselines leave the metadata out"] \
        if schema.metadata and not observed else []
    x_columns = schema.linear_columns("x")
    m_columns = schema.linear_columns("metadata") if observed else []
    train = _design(family.all_tasks(0, split="train"), x_columns, m_columns)

    def design(model):
        return lambda batch: model.predict(_design(batch, x_columns, m_columns))

    predictors, skipped = {}, {}
    if "mixed_model" in offered:
        mixed = _fit_mixed_model(schema, train, x_columns, m_columns)
        if isinstance(mixed, str):
            skipped["mixed_model"] = mixed
        else:
            predictors["mixed_model"] = design(mixed)
    if "pooled" in offered:
        predictors["pooled"] = design(PooledRegression(use_metadata=bool(m_columns)).fit(train))
    return predictors, skipped, notes
