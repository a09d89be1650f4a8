"""A user's grouped data: the model against the baselines a statistician fits, in the user's units.

:func:`run_fit_grouped` is :func:`~hierarchical_meta.pipeline.run_fit` for a
:class:`~hierarchical_meta.tasks.TabularTasks` family (a CSV file, nlschools, sleepstudy).
On the training groups it fits

- ``model``: the hierarchical model (with the metadata, unless ``use_metadata`` is off);
- ``no_metadata``: the same model with the metadata withheld, trained into
  ``out_dir/no_metadata/`` (only when the data have metadata and the model uses them);
- ``mixed_model``: a linear mixed model, random intercept and a random slope of every
  numeric x column, fixed effects x, m and the products of those slopes with m, predicting
  from the BLUP given the support rows
  (:class:`~hierarchical_meta.baselines.MixedModel`); skipped, with the reason recorded,
  where the data do not fit one (several y columns, statsmodels missing, a failed fit);
- ``pooled``: one regression on [1, x, m] for all rows, ignoring the groups
  (:class:`~hierarchical_meta.baselines.PooledRegression`).

The linear baselines read categorical columns in treatment coding
(``TabularSchema.linear_columns``) and leave the metadata out when some group's metadata
are missing. All are scored by :func:`~hierarchical_meta.evaluate.evaluate` on the same
held-out (test) groups and the same support draws: for each K of ``EvalConfig.shots``, K
random rows of a group are its support and its other rows the query. Only groups with more
than K rows can be scored at K; so that the curve over K compares like with like, every K
uses the same groups, those with more than max K rows, and a K for which fewer than
:data:`MIN_GROUP_FRACTION` of the test groups are that large is left out (the reason is
recorded in ``skipped_shots``).

Scores are per query row in the user's units (the schema undoes the standardization
fitted on the training groups): ``loglik`` is the log-density of y in the data's own
units (nats per point; it changes by -log s when y is rescaled by s), ``mse`` is in the
squared units of y, ``coverage90`` is a fraction. ``out_dir`` receives ``model.pt`` (the
schema inside, as plain data, for ``predict``), ``metrics.json``, ``metrics.csv`` (one row
per K and model, with the number of groups), ``loglik_vs_k.png`` (every model) and
``training_curve.png``.

:func:`predict_grouped` predicts new groups given in a CSV file with the data's own columns
(``predict`` on a checkpoint that holds a schema), in the user's units, a chunk of tasks at
a time.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import os
import time

import numpy
import torch

from .baselines import MixedModel, PooledRegression
from .evaluate import EvalConfig, Predictor, evaluate
from .meta_model import HierarchicalMetaModel, ModelConfig
from .pipeline import PREDICT_CHUNK, Log, importance_metrics
from .predict import NUM_SAMPLES, predict_in_chunks
from .predictive import point_metrics
from .runfiles import atomic_write
from .tasks import TabularTasks, TaskBatch
from .tasks.schema import TabularSchema
from .train import TrainConfig, fit

__all__ = ["MIN_GROUP_FRACTION", "LABELS", "run_fit_grouped", "comparable_groups", "linear_baselines",
           "user_metrics", "write_grouped_csv", "format_grouped_table", "predict_grouped"]

#: A K is evaluated only if at least this fraction of the test groups have more than K rows.
MIN_GROUP_FRACTION = 0.5
#: The models of a grouped-data report, in table order, with their labels.
LABELS = {"model": "model", "no_metadata": "model, metadata withheld",
          "mixed_model": "mixed model (BLUP)", "pooled": "pooled regression"}
CSV_METRICS = ("loglik", "mse", "coverage90")


def user_metrics(schema: TabularSchema, importance: bool = False):
    """Scores of a predictive of standardized y, in the user's units (see the module docstring);
    with ``importance``, also the mean effective sample size of the model's importance weights."""
    def scores(predictive, y: torch.Tensor, mask: torch.Tensor) -> dict:
        user = schema.predictive_to_user(predictive)
        y_user = schema.y_to_user(y.double()).to(user.mean.dtype)
        return (importance_metrics if importance else point_metrics)(user, y_user, mask)
    return scores


def comparable_groups(tasks: TabularTasks, shots) -> tuple[TabularTasks, list[int], dict[str, str]]:
    """The family with its test split cut to the groups every kept K can score.

    Returns ``(view, kept_shots, skipped)``: ``view`` shares ``tasks``' data, its test split
    the test groups with more than max(kept_shots) rows; ``skipped`` maps each K left out
    (fewer than :data:`MIN_GROUP_FRACTION` of the test groups have more than K rows) to why.
    """
    test = tasks.split_indices["test"]
    sizes = tasks.group_sizes[test]
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
    view = copy.copy(tasks)
    view.split_indices = {**tasks.split_indices, "test": test[sizes > max(kept)]}
    return view, kept, skipped


def _linear_design(batch: TaskBatch, x_columns: list[int], metadata_columns: list[int]) -> TaskBatch:
    """The batch with the encoded x and metadata entries of a full-rank linear design."""
    return dataclasses.replace(batch, x_support=batch.x_support[..., x_columns],
                               x_query=batch.x_query[..., x_columns],
                               metadata=batch.metadata[:, metadata_columns])


def linear_baselines(tasks: TabularTasks) -> tuple[dict[str, Predictor], dict[str, str], list[str]]:
    """Fit the mixed model and the pooled regression on the training groups.

    Returns ``(predictors, skipped, notes)``: name -> predictor of standardized tasks,
    name -> why a baseline was not fitted, and remarks for the report.
    """
    schema = tasks.schema
    if schema.y_dim != 1:
        reason = f"the linear baselines take one y column, the data have {schema.y_dim}"
        return {}, {"mixed_model": reason, "pooled": reason}, []
    notes = []
    observed = not torch.isnan(tasks.metadata).any()
    if schema.metadata and not observed:
        notes.append("some groups' metadata are missing: the linear baselines leave the metadata out")
    x_columns = schema.linear_columns("x")
    m_columns = schema.linear_columns("metadata") if observed else []
    slopes, position = [], 0  # the numeric x columns, in the linear design's positions
    for column in schema.x:
        if column.kind == "numeric":
            slopes.append(position)
        position += 1 if column.kind == "numeric" else column.width - 1
    train = _linear_design(tasks.all_tasks(0, split="train"), x_columns, m_columns)

    def design(model):
        return lambda batch: model.predict(_linear_design(batch, x_columns, m_columns))

    predictors, skipped = {}, {}
    if not slopes:
        skipped["mixed_model"] = "no numeric x column to give a random slope"
    else:
        names = schema.encoded_names("x")
        mixed = MixedModel(random_slopes=slopes,
                           interactions=[(i, j) for i in slopes for j in range(len(m_columns))],
                           x_names=[names[i] for i in x_columns],
                           metadata_names=[schema.encoded_names("metadata")[j] for j in m_columns])
        try:
            predictors["mixed_model"] = design(mixed.fit(train))
        except (ImportError, RuntimeError, ValueError, ArithmeticError) as error:
            skipped["mixed_model"] = f"the fit failed: {error}"
    predictors["pooled"] = design(PooledRegression(use_metadata=bool(m_columns)).fit(train))
    return predictors, skipped, notes


def _train(tasks: TabularTasks, config: ModelConfig, train_config: TrainConfig, out_dir: str,
           progress: bool, log, extend: bool = False) -> tuple[HierarchicalMetaModel, dict]:
    """Train (or resume) one model into ``out_dir/model.pt``, the schema stored beside the weights."""
    schema = tasks.schema.to_dict()
    path = os.path.join(out_dir, "model.pt")
    torch.manual_seed(train_config.seed)  # the initial weights
    meta_model = HierarchicalMetaModel(config)
    tic = time.perf_counter()
    history = fit(meta_model, tasks, train_config, out_dir=out_dir, progress=progress, extend=extend,
                  checkpoint_extra={"schema": schema})
    log(f"trained {history['trained_steps']} steps in {time.perf_counter() - tic:.0f}s "
        f"(step {history['step'][-1]} of {train_config.steps}) -> {path}")
    return meta_model, history


def _scores(result: dict) -> dict:
    """evaluate()'s result with ``num_tasks`` named ``num_groups``."""
    for section in [result] + ([result["shuffled_metadata"]] if "shuffled_metadata" in result else []):
        for entry in section["shots"].values():
            if "num_tasks" in entry:
                entry["num_groups"] = entry.pop("num_tasks")
    return result


def run_fit_grouped(tasks: TabularTasks, model_config: ModelConfig, train_config: TrainConfig, out_dir: str,
                    eval_config: EvalConfig | None = None, num_samples: int = NUM_SAMPLES,
                    progress: bool = True, log: Log = print, extend: bool = False) -> dict:
    """Train, fit the baselines, evaluate all on the same test groups and write ``out_dir``
    (see the module docstring); returns the metrics dict of ``metrics.json``.

    Its top level is the model's, as :func:`~hierarchical_meta.pipeline.run_fit` writes it
    (``shots``, ``shuffled_metadata``, ``elbo``, the configs, ...), plus ``baselines``
    (name -> ``{"label", "shots"}``), ``skipped_baselines`` and ``skipped_shots`` (name or
    K -> reason), ``data`` (columns, groups per split, notes) and the units.
    """
    from .plots import plot_metrics_vs_shots, plot_training_curve

    eval_config = eval_config if eval_config is not None else EvalConfig()
    log = log or (lambda text: None)
    schema = tasks.schema
    for note in tasks.notes:
        log(f"note: {note}")
    view, shots, skipped_shots = comparable_groups(tasks, eval_config.shots)
    for k, reason in skipped_shots.items():
        log(f"note: K = {k} left out: {reason}")
    with_m = bool(schema.metadata) and model_config.use_metadata
    config = dataclasses.replace(eval_config, shots=tuple(shots), shuffled_metadata=with_m)
    baseline_config = dataclasses.replace(config, shuffled_metadata=False)
    os.makedirs(out_dir, exist_ok=True)

    meta_model, history = _train(tasks, model_config, train_config, out_dir, progress, log, extend)
    torch.manual_seed(train_config.seed)  # the importance samples
    metrics = _scores(evaluate(lambda b: meta_model.predict(b, num_samples=num_samples)[0], view, config,
                               metrics=user_metrics(schema, importance=True), progress=progress))
    baselines, skipped = {}, {}
    if with_m:
        twin, _ = _train(tasks, dataclasses.replace(model_config, use_metadata=False), train_config,
                         os.path.join(out_dir, "no_metadata"), progress, log, extend)
        torch.manual_seed(train_config.seed)
        baselines["no_metadata"] = evaluate(lambda b: twin.predict(b, num_samples=num_samples)[0], view,
                                            baseline_config, metrics=user_metrics(schema, importance=True))
    predictors, skipped_linear, notes = linear_baselines(tasks)
    skipped.update(skipped_linear)
    for name, predictor in predictors.items():
        baselines[name] = evaluate(predictor, view, baseline_config, metrics=user_metrics(schema))
    for name, reason in skipped.items():
        log(f"note: {LABELS[name]} left out: {reason}")
    for note in notes:
        log(f"note: {note}")

    final = history["eval"][-1]
    y = ", ".join(schema.names("y"))
    metrics.update({
        "baselines": {name: {"label": LABELS[name], **_scores(result)} for name, result in baselines.items()},
        "skipped_baselines": skipped, "skipped_shots": skipped_shots,
        "loglik_units": f"nats per query point: log-density of {y} in the data's own units",
        "mse_units": f"squared units of {y}",
        "data": {"name": tasks.name, "group": schema.group, **{role: schema.names(role) for role in
                                                                 ("x", "y", "metadata")},
                 "groups": {split: len(tasks.split_indices[split]) for split in ("train", "val", "test")},
                 "evaluated_groups": len(view.split_indices["test"]), "notes": tasks.notes + notes},
        "schema": schema.to_dict(), "num_samples": num_samples,
        "elbo": final["elbo_per_point"], "kl_phi1": final["kl_phi1_per_task"], "kl_phi2": final["kl_phi2_per_task"],
        "model": dataclasses.asdict(model_config), "train": dataclasses.asdict(train_config),
        "eval": dataclasses.asdict(config), "train_seconds": history["seconds"]})
    with atomic_write(os.path.join(out_dir, "metrics.json")) as f:
        json.dump(metrics, f, indent=2)
    write_grouped_csv(metrics, os.path.join(out_dir, "metrics.csv"))
    plot_training_curve(history, os.path.join(out_dir, "training_curve.png"))
    curves = {LABELS["model"]: metrics, **{b["label"]: b for b in metrics["baselines"].values()}}
    plot_metrics_vs_shots(curves, os.path.join(out_dir, "loglik_vs_k.png"),
                          ylabel=f"held-out loglik / point (nats, {y} in its units)")
    log(format_grouped_table(metrics))
    return metrics


def _models(metrics: dict) -> dict[str, dict]:
    """name -> that model's scores ({"shots": ...}), the model first, in :data:`LABELS` order."""
    found = {"model": metrics, **metrics["baselines"]}
    return {name: found[name] for name in LABELS if name in found}


def write_grouped_csv(metrics: dict, path: str) -> None:
    """One row per K and model: K, model, num_groups, num_query_points, loglik, mse, coverage90."""
    with atomic_write(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["K", "model", "num_groups", "num_query_points", *CSV_METRICS])
        for k in metrics["shots"]:
            for name, scores in _models(metrics).items():
                e = scores["shots"][k]
                writer.writerow([k, name, e["num_groups"], e["num_query_points"]]
                                + [f"{e[key]:.4f}" for key in CSV_METRICS])


def format_grouped_table(metrics: dict) -> str:
    """Held-out loglik per K of every model, with the number of groups, as a text table."""
    models = _models(metrics)
    lines = [f"held-out loglik per point ({metrics['loglik_units']})",
             f"{'K':>3} {'groups':>6} " + " ".join(f"{LABELS[name]:>24}" for name in models)]
    for k in metrics["shots"]:
        lines.append(f"{k:>3} {metrics['shots'][k]['num_groups']:>6} "
                     + " ".join(f"{m['shots'][k]['loglik']:24.3f}" for m in models.values()))
    return "\n".join(lines)


def predict_grouped(predictor, schema: TabularSchema, tasks_file: str, out, chunk: int = PREDICT_CHUNK,
                    progress: bool = False) -> tuple[int, int, list[str]]:
    """Predict the query rows of new groups in ``tasks_file`` into the open CSV file ``out``, in the user's units.

    The file has the training data's own x, y and metadata columns plus ``task`` and ``role``
    (:meth:`~hierarchical_meta.tasks.schema.TabularSchema.tasks_from_frame`); ``predictor`` maps a
    batch to its predictive (standardized units); the output is
    :meth:`~hierarchical_meta.tasks.schema.TabularSchema.prediction_frame`, written ``chunk``
    tasks at a time. Raises FloatingPointError naming the task of a NaN or infinite prediction.
    Returns ``(query points, tasks, notes)``.
    """
    tasks = schema.read_tasks(tasks_file)
    rows = tasks.batch.query_mask.sum(-1).cumsum(0).tolist()  # query rows up to each task's end
    for part, predictive in predict_in_chunks(predictor, tasks.batch, chunk, progress):
        first = rows[part.start - 1] if part.start else 0
        piece = dataclasses.replace(tasks, batch=tasks.batch.subset(part), labels=tasks.labels[part],
                                    query_rows=tasks.query_rows.iloc[first:rows[part.stop - 1]])
        frame = schema.prediction_frame(piece, predictive)
        values = frame.select_dtypes("number")
        bad = ~numpy.isfinite(values.to_numpy()).all(1)
        if bad.any():
            raise FloatingPointError(f"the prediction for task {frame['task'].iloc[int(bad.argmax())]!r} is NaN or "
                                     "infinite; check its inputs for extreme values")
        frame.to_csv(out, header=part.start == 0, index=False, float_format="%.6g")
    return int(tasks.batch.query_mask.sum()), len(tasks.labels), tasks.notes
