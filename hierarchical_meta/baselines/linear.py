"""The linear baselines of a data set, as a specialist fits them: a mixed model and a pooled
regression with polynomial terms, fitted on its training groups.

Both use one :class:`~hierarchical_meta.baselines.design.PolynomialDesign`: powers 1..d of
each numeric x, the metadata and every numeric term times every metadata entry, categorical
columns in treatment coding (``TabularSchema.linear_columns``), the metadata left out when
some group's metadata are missing.

- ``mixed_model``: random effects of an intercept and of every numeric term, predicting from
  the BLUP given the support rows (:class:`~hierarchical_meta.baselines.MixedModel`). When a
  fit fails (an exception, no convergence, a convergence warning such as a Hessian that is
  not positive definite: ``MixedModel.fit_problems``) it is refitted with fewer random
  slopes (:meth:`~hierarchical_meta.baselines.design.PolynomialDesign.slope_ladder`: the
  highest power first, down to a random intercept), and a note says so; skipped, with the
  reason, where the data do not fit one (several y columns, no numeric x, statsmodels
  missing, every fit failed);
- ``pooled``: one regression on the same fixed-effect features for all rows, ignoring the
  groups (:class:`~hierarchical_meta.baselines.PooledRegression`).

The degree d (1 to :data:`~hierarchical_meta.baselines.design.MAX_DEGREE`) is given, or
chosen on the validation groups (``"auto"``, :func:`choose_degree`): the mixed model of
each degree is fitted on the training groups and scored by its K-shot log-likelihood on the
validation groups at the evaluation's K; the test groups play no part. They predict
standardized tasks, like the model; :func:`fixed_effects_table` reports the mixed model's
estimates in the data's units.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch

from ..evaluate import SHOTS
from ..tasks.base import TaskBatch
from .design import MAX_DEGREE, PolynomialDesign
from .mixed_model import MixedModel
from .pooled import PooledRegression

__all__ = ["LINEAR_BASELINES", "DEGREES", "LinearBaselines", "MixedFit", "check_degree", "linear_baselines",
           "fit_mixed_model", "choose_degree", "validation_scores", "fixed_effects_table"]

#: The names of the linear baselines, as a family lists them in ``TaskFamily.baselines``.
LINEAR_BASELINES = ("mixed_model", "pooled")
#: The values of ``degree``: chosen on the validation groups, or given.
DEGREES = ("auto",) + tuple(range(1, MAX_DEGREE + 1))
_DEGREE_RULE = ("the lowest degree whose mean validation loglik (per group and K, standardized y) is "
                "within one standard error of the best degree's")


def check_degree(value) -> int | str:
    """``value`` as a degree of :data:`DEGREES` ("auto", or 1 to 3 as a number or text); ValueError otherwise."""
    text = str(value).strip()
    if isinstance(value, bool) or text not in [str(d) for d in DEGREES]:
        raise ValueError(f"the baselines' degree must be 'auto' or 1 to {MAX_DEGREE}, got {value!r}")
    return text if text == "auto" else int(text)


@dataclasses.dataclass
class MixedFit:
    """The mixed model of one design after :func:`fit_mixed_model`: ``model`` with random ``slopes``
    (numeric terms), or None; ``failures``: each richer random part tried, with why it failed."""

    design: PolynomialDesign
    model: MixedModel | None = None
    slopes: list = dataclasses.field(default_factory=list)
    failures: list[dict] = dataclasses.field(default_factory=list)

    @property
    def formula(self) -> str:
        return self.design.formula(self.slopes)

    def predict(self, batch: TaskBatch):
        return self.model.predict(self.design.batch(batch))

    def why_not(self) -> str:
        """Why no model was fitted."""
        if len(self.failures) == 1:
            return f"the fit failed: {self.failures[0]['failure']}"
        return "every fit failed: " + "; ".join(f"{f['random']}: {f['failure']}" for f in self.failures)


@dataclasses.dataclass
class LinearBaselines:
    """What :func:`linear_baselines` fitted: ``predictors`` (name -> predictor of standardized
    tasks), ``details`` (name -> entries for ``metrics.json``: formula, degree, …), ``skipped``
    (name -> why not fitted) and ``notes`` for the report."""

    predictors: dict = dataclasses.field(default_factory=dict)
    details: dict = dataclasses.field(default_factory=dict)
    skipped: dict = dataclasses.field(default_factory=dict)
    notes: list = dataclasses.field(default_factory=list)


def fit_mixed_model(design: PolynomialDesign, train: TaskBatch) -> MixedFit:
    """The mixed model of ``design`` on the training tasks ``train`` (the schema's encoding), with
    the richest random part of :meth:`~PolynomialDesign.slope_ladder` that fits."""
    fit = MixedFit(design)
    data = design.batch(train)
    for slopes in design.slope_ladder():
        model = MixedModel(random_slopes=[design.position(term) for term in slopes],
                           interactions=design.interactions, x_names=design.x_names,
                           metadata_names=design.metadata_names)
        try:
            model.fit(data)
            problems = model.fit_problems
        except ImportError as error:
            fit.failures.append({"random": design.random_part(slopes), "failure": str(error)})
            return fit
        except (RuntimeError, ValueError, ArithmeticError) as error:  # numpy's LinAlgError is a ValueError
            problems = [str(error)]
        if not problems:
            fit.model, fit.slopes = model, slopes
            return fit
        fit.failures.append({"random": design.random_part(slopes), "failure": "; ".join(problems)})
    return fit


def validation_scores(predict, family, shots: Sequence[int], seed: int) -> torch.Tensor:
    """The mean log-density (standardized y) of each validation group's query rows at each K of
    ``shots`` it can serve (more than K rows; support rows drawn with ``seed``): [cells]."""
    scores = []
    val = family.split_indices["val"]
    for k in shots:
        if not (family.group_sizes[val] > k).any():
            continue
        batch = family.all_tasks(k, split="val", generator=torch.Generator().manual_seed(seed))
        log_prob = predict(batch).log_prob(batch.y_query).double()  # [T, Q]
        mask = batch.query_mask
        scores.append((log_prob * mask).sum(1) / mask.sum(1))
    return torch.cat(scores)


def choose_degree(scores: dict[int, torch.Tensor]) -> int:
    """The lowest degree whose mean score is within one standard error of the best's (the
    standard error of the mean paired difference over cells): the one-standard-error rule."""
    means = {d: float(s.mean()) for d, s in scores.items()}
    best = max(means, key=means.get)
    for d in sorted(scores):
        difference = scores[d] - scores[best]
        se = float(difference.std() / math.sqrt(len(difference))) if len(difference) > 1 else 0.0
        if means[d] >= means[best] - se:
            return d
    return best


def fixed_effects_table(fit: MixedFit) -> dict:
    """The mixed model's estimates in the data's units (``metrics.json``): fixed effects with their
    standard errors, the random effects' covariance and the residual variance."""
    design, model, schema = fit.design, fit.model, fit.design.schema
    y_mean, y_std = schema.y[0].mean, schema.y[0].std
    p = model.parameters
    to_user = design.user_basis(model.fixed_features, len(p.fixed_effects))  # [P, P]
    estimates = y_std * to_user @ p.fixed_effects
    estimates[0] += y_mean
    std_errors = y_std * (to_user @ model.fixed_effects_cov @ to_user.T).diagonal().sqrt()
    random_basis = design.user_basis(lambda x, m: model.random_features(x), p.random_cov.shape[0])
    random_cov = y_std ** 2 * random_basis @ p.random_cov @ random_basis.T
    fixed, random = model.feature_names(len(design.x_names), len(design.metadata_names))
    rename = {"intercept": "(Intercept)"}
    return {
        "fixed_effects": [{"term": rename.get(t, t), "estimate": float(e), "std_error": float(s)}
                          for t, e, s in zip(fixed, estimates, std_errors, strict=True)],
        "random_effects": {"terms": [rename.get(t, t) for t in random], "covariance": random_cov.tolist()},
        "residual_variance": y_std ** 2 * p.residual_var,
        "scale": (f"the data's units: the coefficients of the formula on the data's own columns, {schema.y[0].name} "
                  "per unit of each term (x and numeric metadata as given, not standardized; a categorical "
                  "column as name=level against its first level); standard errors from the inverse Hessian "
                  "of statsmodels' REML fit")}


def _candidate_degrees(family, degree: int | str, notes: list[str]) -> list[int]:
    """The degrees to fit: the given one or 1..MAX_DEGREE, each below the number of distinct
    training values of every numeric x (a note when one is cut)."""
    schema = family.schema
    train = family.split_indices["train"]
    rows = torch.cat([torch.arange(int(family.offsets[c]), int(family.offsets[c + 1])) for c in train.tolist()])
    highest, start = MAX_DEGREE, 0
    for column in schema.x:
        if column.kind == "numeric":
            distinct = len(torch.unique(family.x[rows, start]))
            if distinct - 1 < highest:
                highest = max(1, distinct - 1)
                limit = f"{column.name!r} takes {distinct} distinct values in the training groups"
        start += column.width
    wanted = MAX_DEGREE if degree == "auto" else degree
    if highest < wanted:
        notes.append(f"the linear baselines' degree is at most {highest}: {limit}")
    return list(range(1, highest + 1)) if degree == "auto" else [min(degree, highest)]


def _select(fits: dict[int, MixedFit], family, shots, seed: int, notes: list[str]) -> tuple[int, dict]:
    """The degree of the fitted mixed models with the best validation score (:func:`choose_degree`)
    and the record of the choice for ``metrics.json``."""
    scores = {d: validation_scores(f.predict, family, shots, seed) for d, f in fits.items() if f.model is not None}
    if len(fits) == 1 or not scores:
        return min(fits), {"choice": "given" if len(fits) == 1 else "no mixed model fitted: the lowest degree"}
    chosen = choose_degree(scores)
    means = {str(d): float(s.mean()) for d, s in scores.items()}
    notes.append(f"the linear baselines' degree {chosen} was chosen on the {len(family.split_indices['val'])} "
                 "validation groups (mean loglik by degree: "
                 + ", ".join(f"{d}: {m:.3f}" for d, m in means.items()) + ")")
    return chosen, {"choice": "validation", "rule": _DEGREE_RULE, "validation_loglik": means,
                    "validation_cells": len(next(iter(scores.values())))}


def _mixed_details(fit: MixedFit, selection: dict, notes: list[str]) -> dict:
    """The mixed model's ``metrics.json`` entries; a note for each richer random part that failed."""
    if fit.failures:
        notes.append(f"mixed model: fitted with the random part {fit.design.random_part(fit.slopes)}, as the richer "
                     "ones failed: " + "; ".join(f"{f['random']} ({f['failure']})" for f in fit.failures))
    return {"formula": fit.formula, "degree": fit.design.degree, "degree_selection": selection,
            "random_slope_fallback": fit.failures, **fixed_effects_table(fit)}


def linear_baselines(family, shots: Sequence[int] = SHOTS, degree: int | str = "auto", seed: int = 0
                     ) -> LinearBaselines:
    """Fit the linear baselines ``family`` offers (of :data:`LINEAR_BASELINES`) on its training groups.

    ``family`` is a fixed data set with a schema (:class:`~hierarchical_meta.tasks.TabularTasks`);
    ``degree`` is one of :data:`DEGREES` (``"auto"``: chosen on the validation groups at the
    K of ``shots``, their support rows drawn with ``seed``). All empty for a family that
    offers none.
    """
    degree = check_degree(degree)
    offered = [name for name in LINEAR_BASELINES if name in family.baselines]
    schema, out = family.schema, LinearBaselines()
    if offered and schema.y_dim != 1:
        reason = f"the linear baselines take one y column, the data have {schema.y_dim}"
        return LinearBaselines(skipped={name: reason for name in offered})
    if not offered:
        return out
    observed = not torch.isnan(family.metadata).any()
    if schema.metadata and not observed:
        out.notes.append("some groups' metadata are missing: the linear baselines leave the metadata out")
    degrees = _candidate_degrees(family, degree, out.notes)
    train = family.all_tasks(0, split="train")
    numeric = any(c.kind == "numeric" for c in schema.x)
    fits = {d: fit_mixed_model(PolynomialDesign(schema, d, observed), train) for d in degrees} \
        if "mixed_model" in offered and numeric else {}
    chosen, selection = _select(fits, family, shots, seed, out.notes) if fits else (degrees[0], {})
    design = PolynomialDesign(schema, chosen, observed)
    if "mixed_model" in offered:
        mixed = fits.get(chosen)
        if mixed is None:
            out.skipped["mixed_model"] = "no numeric x column to give a random slope"
        elif mixed.model is None:
            out.skipped["mixed_model"] = mixed.why_not()
        else:
            out.predictors["mixed_model"] = mixed.predict
            out.details["mixed_model"] = _mixed_details(mixed, selection, out.notes)
    if "pooled" in offered:
        pooled = PooledRegression(use_metadata=bool(design.metadata_names), interactions=design.interactions)
        pooled.fit(design.batch(train))
        out.predictors["pooled"] = lambda batch: pooled.predict(design.batch(batch))
        out.details["pooled"] = {"formula": design.formula(), "degree": chosen}
    return out
