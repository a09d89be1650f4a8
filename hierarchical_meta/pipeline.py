"""The applications end to end, callable from Python: fit and evaluate, predict, and the demo.

:func:`run_fit` trains (or resumes) a model on any task family and scores it on held-out
tasks (:mod:`hierarchical_meta.evaluate`) in the units of the family's schema. A sampled
family (sinusoid, basis) is scored beside its exact-Bayes reference; a fixed data set (a CSV
file, nlschools, sleepstudy: ``family.fixed_dataset``) at each K on the test groups with more
than K rows (:func:`~hierarchical_meta.evaluate.comparable_groups`),
beside the baselines it offers (``family.baselines``): the model with the metadata withheld,
trained into ``out_dir/no_metadata/``, and the linear ones
(:func:`hierarchical_meta.baselines.linear_baselines`), in the data's own units: ``loglik``
is the log-density of y in its units (nats per point; it changes by -log s when y is rescaled
by s), ``mse`` is in the squared units of y, ``coverage90`` a fraction. The output folder
receives ``model.pt`` (a data set's schema inside, as plain data, for ``predict``),
``metrics.json``, ``metrics.csv`` (:mod:`hierarchical_meta.report`), ``training_curve.png``,
``loglik_vs_k.png`` (every model), for a data set with a numeric x ``effects.csv`` and
``effects.png`` (the model's and the mixed model's predictions for a new group along x, per
metadata level: :mod:`hierarchical_meta.effects`) and, for a sampled family with 1-D x and y,
``predictions.png``.

:func:`run_predict` predicts the query points of a task file (:mod:`hierarchical_meta.taskfile`)
with :class:`~hierarchical_meta.fitted.FittedModel`, a chunk of tasks at a time.
:func:`run_demo` draws the plate diagram, fits sinusoid tasks with and without the metadata
and checks the demo's quality targets (:func:`check_targets`). ``python -m hierarchical_meta``
parses its flags into the config dataclasses and calls these. A run holds the lock of its
output folder and writes its results atomically (:mod:`hierarchical_meta.runfiles`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable

import torch

from .baselines import check_degree, linear_baselines
from .effects import effects_frame
from .evaluate import EvalConfig, comparable_groups, count_groups, evaluate, heldout_tasks, scored_groups, user_metrics
from .fitted import FittedModel, checkpoint_extra
from .meta_model import HierarchicalMetaModel, ModelConfig
from .predict import NUM_SAMPLES, PREDICT_CHUNK
from .report import LABELS, format_table, format_targets, write_metrics_csv
from .runfiles import atomic_write, check_input_file, check_output_file, hold_folder
from .taskfile import read_tasks
from .tasks import SPLITS, SinusoidTasks, TaskFamily
from .tasks.schema import ROLES
from .train import TrainConfig, data_sized, fit, kept_evaluation, untrained_warnings

__all__ = ["run_fit", "run_demo", "run_predict", "evaluate_model", "check_targets",
           "TARGET_ORACLE_GAP", "TARGET_COVERAGE", "TARGET_METADATA_GAIN", "TARGET_SHUFFLED_LOSS"]

#: The demo's quality targets (docs/model.md), per query point: at every K the model's loglik
#: is within TARGET_ORACLE_GAP nats of exact Bayes and its coverage90 inside TARGET_COVERAGE;
#: at K = 0 the metadata is worth more than TARGET_METADATA_GAIN nats; at K = 10 shuffled
#: metadata loses at most TARGET_SHUFFLED_LOSS nats against withheld metadata.
TARGET_ORACLE_GAP = 0.15
TARGET_COVERAGE = (0.85, 0.95)
TARGET_METADATA_GAIN = 0.1
TARGET_SHUFFLED_LOSS = 0.2

#: What ``elbo``, ``kl_phi1`` and ``kl_phi2`` of metrics.json measure (the model's units, not the data's).
ELBO_UNITS = ("nats in the model's units (for a data set: y standardized with the training groups' mean and sd, "
              "unlike loglik), elbo per validation point, kl_phi1 and kl_phi2 per validation task, at the last step")

Log = Callable[[str], None] | None


def _quiet(text: str) -> None:
    """The log of a silent run."""


def evaluate_model(meta_model: HierarchicalMetaModel, family: TaskFamily, config: EvalConfig | None = None,
                   num_samples: int = NUM_SAMPLES, progress: bool = False) -> dict:
    """:func:`~hierarchical_meta.evaluate.evaluate` of the model's predictive in the units of the
    family's schema, with its ESS per K and ``num_samples``."""
    def predictor(batch):
        return meta_model.predict(batch, num_samples=num_samples)[0]

    metrics = evaluate(predictor, family, config, metrics=user_metrics(family.schema, importance=True),
                       progress=progress)
    metrics["num_samples"] = num_samples
    return metrics


@dataclasses.dataclass
class _Run:
    """What every model of one :func:`run_fit` shares: the family, the training options, the output."""

    family: TaskFamily
    train_config: TrainConfig
    num_samples: int
    progress: bool
    log: Callable[[str], None]
    extend: bool
    baseline_degree: int | str = "auto"

    def train(self, config: ModelConfig, out_dir: str) -> tuple[HierarchicalMetaModel, dict]:
        """Train (or resume) one model into ``out_dir/model.pt``, the family's schema beside the weights;
        log how it ended: an early stop, the kept step, :func:`~hierarchical_meta.train.untrained_warnings`."""
        torch.manual_seed(self.train_config.seed)  # the initial weights
        meta_model = HierarchicalMetaModel(config)
        tic = time.perf_counter()
        history = fit(meta_model, self.family, self.train_config, out_dir=out_dir, progress=self.progress,
                      extend=self.extend, checkpoint_extra=checkpoint_extra(self.family))
        path = os.path.join(out_dir, "model.pt")
        self.log(f"trained {history['trained_steps']} steps in {time.perf_counter() - tic:.0f}s "
                 f"(step {history['step'][-1]} of {self.train_config.steps}) -> {path}")
        if history["stopped"]:
            self.log(f"stopped at step {history['step'][-1]}: {history['stopped']}")
        if self.train_config.patience:
            self.log(f"kept step {history['kept_step']}: {kept_evaluation(history)['val_loglik']:.3f} nats per "
                     "point on the validation groups")
        for warning in untrained_warnings(history, self.train_config):
            self.log(f"warning: {path}: {warning}")
        return meta_model, history

    def score(self, meta_model: HierarchicalMetaModel, view: TaskFamily, config: EvalConfig,
              progress: bool = False) -> dict:
        """:func:`evaluate_model` with the importance samples seeded by the training seed; without
        ``num_samples``, which :func:`run_fit` reports once."""
        torch.manual_seed(self.train_config.seed)
        scores = evaluate_model(meta_model, view, config, num_samples=self.num_samples, progress=progress)
        del scores["num_samples"]
        return scores


def _check_arguments(family, model_config, train_config, eval_config) -> None:
    """ValueError for an argument of :func:`run_fit` of the wrong kind (a data frame as the family, say)."""
    checks = (("family", family, TaskFamily), ("model_config", model_config, ModelConfig),
              ("train_config", train_config, TrainConfig), ("eval_config", eval_config, (EvalConfig, type(None))))
    for name, value, kind in checks:
        if not isinstance(value, kind):
            expected = "an EvalConfig or None" if name == "eval_config" else f"a {kind.__name__}"
            hint = " (for a data frame: TabularTasks.from_frame(frame, group=..., x=..., y=...))" \
                if name == "family" else ""
            raise ValueError(f"{name} must be {expected}{hint}, got {type(value).__name__}")


def run_fit(family: TaskFamily, model_config: ModelConfig, train_config: TrainConfig, out_dir: str,
            eval_config: EvalConfig | None = None, num_samples: int = NUM_SAMPLES,
            progress: bool = True, log: Log = print, extend: bool = False, baseline_degree: int | str = "auto") -> dict:
    """Train (or resume from ``out_dir/model.pt``), evaluate and plot into ``out_dir``; returns the metrics.

    The metrics dict is ``metrics.json``: the model's scores per K
    (:func:`~hierarchical_meta.evaluate.evaluate`, with ``ess``; for a data set ``num_groups``),
    for a data set also ``baselines`` (name -> ``{"label", "shots"}``), ``skipped_baselines`` and
    ``skipped_shots`` (name or K -> reason), the units, ``data`` (columns, groups per split, the
    groups scored at each K in words, the split options, notes) and ``schema``; then
    ``num_samples``, the held-out ELBO and KLs at the kept step (in the model's units:
    ``elbo_units``), the three configs (``eval`` as used: the kept K; ``train`` as sized) and the
    training seconds, and how the training ended (:func:`_summary`). ``train_config`` is sized
    to the family first (:func:`~hierarchical_meta.train.data_sized`: its options left None
    follow the data; a note says how, and when the groups per step are capped). ``log`` receives
    the status lines, the notes, the warnings and the table (None: silent); ``progress`` shows
    bars while training and evaluating. A resume must have the checkpoint's options
    (:func:`~hierarchical_meta.train.fit`; ``extend`` allows more steps). ``baseline_degree`` is
    the linear baselines' polynomial degree (:func:`~hierarchical_meta.baselines.linear_baselines`).
    The run holds the lock of ``out_dir`` throughout.
    """
    _check_arguments(family, model_config, train_config, eval_config)
    eval_config = eval_config if eval_config is not None else EvalConfig()
    train_config, sizing_notes = data_sized(train_config, family)
    run = _Run(family, train_config, num_samples, progress, log or _quiet, extend, check_degree(baseline_degree))
    with hold_folder(out_dir, run.log):
        for note in [*family.notes, *sizing_notes]:
            run.log(f"note: {note}")
        view, shots, skipped_shots = comparable_groups(family, eval_config.shots, eval_config.same_groups)
        for k, reason in skipped_shots.items():
            run.log(f"note: K = {k} left out: {reason}")
        config = dataclasses.replace(eval_config, shots=tuple(shots),
                                     shuffled_metadata=eval_config.shuffled_metadata and family.metadata_dim > 0)
        meta_model, history = run.train(model_config, out_dir)
        metrics = run.score(meta_model, view, config, progress)
        if family.fixed_dataset:
            metrics = count_groups(metrics)
            metrics.update(_comparison(run, meta_model, model_config, view, config, out_dir, skipped_shots))
        metrics.update(_summary(history, num_samples, model_config, train_config, config))
        _write_outputs(out_dir, family, metrics, history, meta_model, config, num_samples)
    run.log(format_table(metrics))
    return metrics


def _summary(history: dict, num_samples: int, model_config: ModelConfig, train_config: TrainConfig,
             config: EvalConfig) -> dict:
    """The run's settings and training: the held-out ELBO and KLs at the kept step
    (:func:`~hierarchical_meta.train.heldout_elbo`), the configs (training: as sized), the
    training seconds; ``kept_step``, its ``val_loglik`` (None without ``patience``),
    ``last_step``, ``stopped`` (why the run ended early, or None) and ``untrained`` with the
    ``training_warnings`` (:func:`~hierarchical_meta.train.untrained_warnings`)."""
    kept = kept_evaluation(history)
    warnings = untrained_warnings(history, train_config)
    return {"num_samples": num_samples, "elbo": kept["elbo_per_point"], "kl_phi1": kept["kl_phi1_per_task"],
            "kl_phi2": kept["kl_phi2_per_task"], "elbo_units": ELBO_UNITS, "model": dataclasses.asdict(model_config),
            "train": dataclasses.asdict(train_config), "eval": dataclasses.asdict(config),
            "train_seconds": history["seconds"], "kept_step": history["kept_step"],
            "val_loglik": kept.get("val_loglik"), "last_step": history["step"][-1],
            "stopped": history["stopped"], "untrained": bool(warnings), "training_warnings": warnings}


def _comparison(run: _Run, meta_model: HierarchicalMetaModel, model_config: ModelConfig, view: TaskFamily,
                config: EvalConfig, out_dir: str, skipped_shots: dict) -> dict:
    """A data set's baselines scored on the same groups and draws as the model, what was left
    out and why, the units and the data (the module docstring); notes go to the log.
    Writes ``effects.csv`` and ``effects.png`` (:func:`_write_effects`)."""
    family, schema = run.family, run.family.schema
    config = dataclasses.replace(config, shuffled_metadata=False)
    baselines = {}
    if "no_metadata" in family.baselines and family.metadata_dim > 0 and model_config.use_metadata:
        twin, _ = run.train(dataclasses.replace(model_config, use_metadata=False), os.path.join(out_dir, "no_metadata"))
        baselines["no_metadata"] = run.score(twin, view, config)
    tic = time.perf_counter()
    linear = linear_baselines(family, config.shots, run.baseline_degree, config.seed)
    for name, predictor in linear.predictors.items():
        baselines[name] = evaluate(predictor, view, config, metrics=user_metrics(schema))
    if linear.predictors:
        run.log(f"fitted and scored the linear baselines in {time.perf_counter() - tic:.0f}s")
    for name, reason in linear.skipped.items():
        run.log(f"note: {LABELS[name]} left out: {reason}")
    notes = linear.notes + _write_effects(run, meta_model, linear.predictors.get("mixed_model"), out_dir)
    for note in notes:
        run.log(f"note: {note}")
    y = ", ".join(schema.names("y"))
    return {"baselines": {name: {"label": LABELS[name], **linear.details.get(name, {}), **count_groups(result)}
                          for name, result in baselines.items()},
            "skipped_baselines": linear.skipped, "skipped_shots": skipped_shots,
            "loglik_units": f"nats per query point: log-density of {y} in the data's own units",
            "mse_units": f"squared units of {y}",
            "data": {"name": family.name, "group": schema.group, **{role: schema.names(role) for role in ROLES},
                     "groups": {split: len(family.split_indices[split]) for split in SPLITS},
                     "evaluated_groups": len(view.split_indices["test"]),
                     "scored_groups": scored_groups(config.shots, config.same_groups),
                     "split": family.split_options, "notes": list(family.notes) + notes},
            "schema": schema.to_dict()}


def _write_effects(run: _Run, meta_model: HierarchicalMetaModel, mixed_model, out_dir: str) -> list[str]:
    """``effects.csv`` and ``effects.png``: the model's and the mixed model's zero-shot predictions
    along x for each metadata level (:mod:`hierarchical_meta.effects`); returns notes (why not)."""
    from .plots import plot_effects

    family = run.family
    if not any(c.kind == "numeric" for c in family.schema.x):
        return ["no effects.csv: it draws y against a numeric x column, and the data have none"]

    def model(batch):
        return meta_model.predict(batch, num_samples=run.num_samples)[0]

    predictors = {LABELS["model"]: model, **({LABELS["mixed_model"]: mixed_model} if mixed_model else {})}
    torch.manual_seed(run.train_config.seed)
    frame = effects_frame(predictors, family)
    with atomic_write(os.path.join(out_dir, "effects.csv"), newline="") as f:
        frame.to_csv(f, index=False, float_format="%.6g")
    plot_effects(frame, family.schema, os.path.join(out_dir, "effects.png"))
    return []


def _write_outputs(out_dir: str, family: TaskFamily, metrics: dict, history: dict, meta_model: HierarchicalMetaModel,
                   config: EvalConfig, num_samples: int) -> None:
    """metrics.json, metrics.csv and the plots of :func:`run_fit`."""
    from .plots import plot_metrics_vs_shots, plot_predictions, plot_training_curve

    with atomic_write(os.path.join(out_dir, "metrics.json")) as f:
        json.dump(metrics, f, indent=2)
    write_metrics_csv(metrics, os.path.join(out_dir, "metrics.csv"))
    plot_training_curve(history, os.path.join(out_dir, "training_curve.png"))
    if family.x_dim == 1 and family.y_dim == 1 and not family.fixed_dataset:
        shown = heldout_tasks(family, dataclasses.replace(config, num_tasks=3), max(config.shots))
        plot_predictions(meta_model, shown, os.path.join(out_dir, "predictions.png"), family=family,
                         num_samples=num_samples)
    curves = {LABELS["model"]: metrics, **{b["label"]: b for b in metrics.get("baselines", {}).values()}}
    units = ", ".join(family.schema.names("y"))
    plot_metrics_vs_shots(curves, os.path.join(out_dir, "loglik_vs_k.png"), ylabel=(
        f"held-out loglik / point\n(nats, {units} in its units)" if family.fixed_dataset else None),
        tasks="groups" if family.fixed_dataset else "tasks")


def run_predict(checkpoint: str, tasks_file: str, out: str, num_samples: int = NUM_SAMPLES, seed: int = 0,
                chunk: int = PREDICT_CHUNK, progress: bool = True, log: Log = print) -> int:
    """Predict the query points of ``tasks_file`` with the model of ``checkpoint`` into the CSV ``out``.

    The task file and the predictions are those of :mod:`hierarchical_meta.taskfile`, in the
    units of the model's schema (:meth:`~hierarchical_meta.fitted.FittedModel.prediction_frames`).
    Tasks are predicted ``chunk`` at a time (bounded memory) and their rows written as they
    come; ``out`` appears only once every row is written, so an error leaves no partial file.
    A prediction that is not finite raises FloatingPointError naming its task. Seeds torch's
    RNG with ``seed`` once (the draws depend on ``chunk``). Returns the number of query points.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk}")
    log = log or _quiet
    check_input_file(tasks_file, "task file")
    check_output_file(out, "output file", inputs=(tasks_file, checkpoint))
    check_input_file(checkpoint, "checkpoint")  # the file: a run folder is for FittedModel.load
    fitted = FittedModel.load(checkpoint, num_samples=num_samples)
    tasks = read_tasks(tasks_file, fitted.schema)
    with atomic_write(out, newline="") as f:
        for i, frame in enumerate(fitted.prediction_frames(tasks, seed, chunk, progress)):
            frame.to_csv(f, header=i == 0, index=False, float_format="%.6g")
    for note in tasks.notes:
        log(f"note: {note}")
    points = int(tasks.batch.query_mask.sum())
    log(f"predicted {points} query points of {len(tasks.labels)} task(s) -> {out}")
    return points


def run_demo(out_dir: str, model_config: ModelConfig, train_config: TrainConfig,
             eval_config: EvalConfig | None = None, num_samples: int = NUM_SAMPLES,
             progress: bool = True, log: Log = print, extend: bool = False) -> dict:
    """The main job on sinusoid tasks: diagram, fits with and without metadata, targets.

    Writes ``plate_diagram.svg``, ``with_metadata/`` and ``no_metadata/`` (:func:`run_fit`,
    ``model_config.use_metadata`` set for each), ``loglik_vs_k.png`` and ``summary.json``;
    returns the summary ``{"runs": {label: metrics}, "targets": check_targets(...)}``.
    """
    from .plots import plot_metrics_vs_shots
    from .render import render_diagram

    log = log or _quiet
    with hold_folder(out_dir, log):
        diagram = os.path.join(out_dir, "plate_diagram.svg")
        render_diagram(path=diagram, guide=True)
        log(f"wrote {diagram}")
        family = SinusoidTasks()
        runs = {}
        for label, use_metadata, folder in (("with metadata", True, "with_metadata"),
                                            ("metadata withheld", False, "no_metadata")):
            log(f"== fit {label}")
            config = dataclasses.replace(model_config, x_dim=family.x_dim, y_dim=family.y_dim,
                                         metadata_dim=family.metadata_dim, use_metadata=use_metadata)
            runs[label] = run_fit(family, config, train_config, os.path.join(out_dir, folder), eval_config,
                                  num_samples=num_samples, progress=progress, log=log, extend=extend)
        plot_metrics_vs_shots(runs, os.path.join(out_dir, "loglik_vs_k.png"))
        summary = {"runs": runs, "targets": check_targets(runs["with metadata"], runs["metadata withheld"])}
        with atomic_write(os.path.join(out_dir, "summary.json")) as f:
            json.dump(summary, f, indent=2)
    log(format_targets(summary["targets"]))
    log(f"demo results under {out_dir}/")
    return summary


def check_targets(with_m: dict, without_m: dict) -> dict:
    """The demo's quality targets (module constants): ``{name: {"value": measured, "met": bool}}``.

    ``with_m`` and ``without_m`` are metrics dicts of :func:`run_fit` with the metadata used and
    withheld; K = 0 and K = 10 must be among their shots.
    """
    low, high = TARGET_COVERAGE
    targets = {}
    for k, e in with_m["shots"].items():
        gap = e["oracle_loglik"] - e["loglik"]
        targets[f"K={k}: loglik within {TARGET_ORACLE_GAP} nats of exact Bayes"] = (gap, gap <= TARGET_ORACLE_GAP)
        targets[f"K={k}: coverage90 in [{low}, {high}]"] = (e["coverage90"], low <= e["coverage90"] <= high)
    margin = with_m["shots"]["0"]["loglik"] - without_m["shots"]["0"]["loglik"]
    targets["K=0: metadata beats withheld metadata (nats)"] = (margin, margin > TARGET_METADATA_GAIN)
    shuffled = with_m["shuffled_metadata"]["shots"]["10"]["loglik"] - without_m["shots"]["10"]["loglik"]
    targets[f"K=10: shuffled m no worse than withheld by > {TARGET_SHUFFLED_LOSS} nats"] = (
        shuffled, shuffled >= -TARGET_SHUFFLED_LOSS)
    return {name: {"value": round(value, 3), "met": met} for name, (value, met) in targets.items()}

