"""The applications end to end, callable from Python: fit and evaluate, and the demo.

:func:`run_fit` trains (or resumes) a model on a task family, evaluates it
(:mod:`hierarchical_meta.evaluate`) and writes into its output folder ``model.pt``,
``metrics.json``, ``metrics.csv``, ``training_curve.png``, ``predictions.png`` (1-D x and y)
and ``loglik_vs_k.png``. :func:`run_demo` draws the plate diagram, fits sinusoid tasks with
and without the metadata and checks the demo's quality targets (:func:`check_targets`).
:func:`run_predict` predicts the query points of a task file (:mod:`hierarchical_meta.taskfile`)
in chunks of tasks. ``python -m hierarchical_meta`` parses its flags into the config dataclasses
and calls these. A run holds the lock of its output folder and writes its results atomically
(:mod:`hierarchical_meta.runfiles`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import time
from collections.abc import Callable

import torch

from .evaluate import EvalConfig, evaluate, heldout_tasks
from .meta_model import HierarchicalMetaModel, ModelConfig, load_checkpoint
from .predict import NUM_SAMPLES, predict_in_chunks
from .predictive import point_metrics
from .runfiles import atomic_write, check_input_file, check_output_file, hold_folder
from .taskfile import prediction_header, prediction_rows, read_task_file
from .tasks import SinusoidTasks, TabularTasks, TaskFamily
from .train import TrainConfig, fit

__all__ = ["run_fit", "run_demo", "run_predict", "PREDICT_CHUNK", "evaluate_model", "importance_metrics",
           "check_targets", "write_metrics_csv", "format_table", "format_targets",
           "TARGET_ORACLE_GAP", "TARGET_COVERAGE", "TARGET_METADATA_GAIN", "TARGET_SHUFFLED_LOSS"]

#: The demo's quality targets (docs/model.md), per query point: at every K the model's loglik
#: is within TARGET_ORACLE_GAP nats of exact Bayes and its coverage90 inside TARGET_COVERAGE;
#: at K = 0 the metadata is worth more than TARGET_METADATA_GAIN nats; at K = 10 shuffled
#: metadata loses at most TARGET_SHUFFLED_LOSS nats against withheld metadata.
TARGET_ORACLE_GAP = 0.15
TARGET_COVERAGE = (0.85, 0.95)
TARGET_METADATA_GAIN = 0.1
TARGET_SHUFFLED_LOSS = 0.2

#: Tasks predicted at a time by :func:`run_predict`: memory grows as chunk x samples x points per task.
PREDICT_CHUNK = 16

Log = Callable[[str], None] | None


def importance_metrics(predictive, y: torch.Tensor, mask: torch.Tensor) -> dict:
    """:func:`~hierarchical_meta.predictive.point_metrics` and ``ess``, the mean effective sample size."""
    return {**point_metrics(predictive, y, mask), "ess": float(predictive.effective_sample_size().mean())}


def evaluate_model(meta_model: HierarchicalMetaModel, family: TaskFamily, config: EvalConfig | None = None,
                   num_samples: int = NUM_SAMPLES, progress: bool = False) -> dict:
    """:func:`~hierarchical_meta.evaluate.evaluate` of the model's predictive, with its ESS per K."""
    def predictor(batch):
        return meta_model.predict(batch, num_samples=num_samples)[0]

    metrics = evaluate(predictor, family, config, metrics=importance_metrics, progress=progress)
    metrics["num_samples"] = num_samples
    return metrics


def run_fit(family: TaskFamily, model_config: ModelConfig, train_config: TrainConfig, out_dir: str,
            eval_config: EvalConfig | None = None, num_samples: int = NUM_SAMPLES,
            progress: bool = True, log: Log = print, extend: bool = False) -> dict:
    """Train (or resume from ``out_dir/model.pt``), evaluate and plot into ``out_dir``; returns the metrics.

    The metrics dict is ``metrics.json``: :func:`evaluate_model`'s entries, the held-out ELBO and
    KLs at the last step, the three configs and the training seconds. ``log`` receives the
    status lines and the table (None: silent); ``progress`` shows bars while training and evaluating.
    A resume must have the checkpoint's options (:func:`~hierarchical_meta.train.fit`;
    ``extend`` allows more steps). The run holds the lock of ``out_dir`` throughout.
    A grouped data set (:class:`~hierarchical_meta.tasks.TabularTasks`: a CSV file, nlschools,
    sleepstudy) is reported against its baselines in the user's units instead
    (:func:`hierarchical_meta.grouped.run_fit_grouped`).
    """
    log = log or (lambda text: None)
    if isinstance(family, TabularTasks):
        from .grouped import run_fit_grouped  # it builds on this module

        with hold_folder(out_dir, log):
            return run_fit_grouped(family, model_config, train_config, out_dir, eval_config, num_samples,
                                   progress, log, extend)
    from .plots import plot_metrics_vs_shots, plot_predictions, plot_training_curve

    eval_config = eval_config if eval_config is not None else EvalConfig()
    with hold_folder(out_dir, log):
        torch.manual_seed(train_config.seed)  # the initial weights
        meta_model = HierarchicalMetaModel(model_config)
        tic = time.perf_counter()
        history = fit(meta_model, family, train_config, out_dir=out_dir, progress=progress, extend=extend)
        log(f"trained {history['trained_steps']} steps in {time.perf_counter() - tic:.0f}s "
            f"(step {history['step'][-1]} of {train_config.steps}) -> {out_dir}/model.pt")

        torch.manual_seed(train_config.seed)  # the importance samples
        metrics = evaluate_model(meta_model, family, eval_config, num_samples=num_samples, progress=progress)
        final = history["eval"][-1]  # held-out ELBO and KLs at the last step (train.heldout_elbo)
        metrics.update({"elbo": final["elbo_per_point"], "kl_phi1": final["kl_phi1_per_task"],
                        "kl_phi2": final["kl_phi2_per_task"], "model": dataclasses.asdict(model_config),
                        "train": dataclasses.asdict(train_config), "eval": dataclasses.asdict(eval_config),
                        "train_seconds": history["seconds"]})
        with atomic_write(os.path.join(out_dir, "metrics.json")) as f:
            json.dump(metrics, f, indent=2)
        write_metrics_csv(metrics, os.path.join(out_dir, "metrics.csv"))
        plot_training_curve(history, os.path.join(out_dir, "training_curve.png"))
        if family.x_dim == 1 and family.y_dim == 1:
            shown = heldout_tasks(family, dataclasses.replace(eval_config, num_tasks=3), max(eval_config.shots))
            plot_predictions(meta_model, shown, os.path.join(out_dir, "predictions.png"), family=family,
                             num_samples=num_samples)
        plot_metrics_vs_shots({"model": metrics}, os.path.join(out_dir, "loglik_vs_k.png"))
    log(format_table(metrics))
    return metrics


def run_predict(checkpoint: str, tasks_file: str, out: str, num_samples: int = NUM_SAMPLES, seed: int = 0,
                chunk: int = PREDICT_CHUNK, progress: bool = True, log: Log = print) -> int:
    """Predict the query points of ``tasks_file`` with the model of ``checkpoint`` into the CSV ``out``.

    Tasks are predicted ``chunk`` at a time (bounded memory) and their rows written as they
    come; ``out`` appears only once every row is written, so an error leaves no partial file.
    A prediction that is not finite raises FloatingPointError naming its task. Seeds torch's
    RNG with ``seed`` once (the draws depend on ``chunk``). Returns the number of query points.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk}")
    log = log or (lambda text: None)
    check_input_file(tasks_file, "task file")
    check_output_file(out, "output file", inputs=(tasks_file, checkpoint))
    meta_model, state = load_checkpoint(checkpoint)
    c = meta_model.config
    if c.likelihood != "normal":
        raise ValueError(f"predict writes the mean and 90% interval of a regression model; {checkpoint!r} is a "
                         f"classifier (likelihood={c.likelihood!r})")

    def predictor(part):
        return meta_model.predict(part, num_samples=num_samples)[0]

    if "schema" in state.extra:  # trained on grouped data: the data's own columns, the user's units
        from .grouped import predict_grouped  # it builds on this module
        from .tasks.schema import TabularSchema

        schema = TabularSchema.from_dict(state.extra["schema"])
        torch.manual_seed(seed)
        with atomic_write(out, newline="") as f:
            points, tasks, notes = predict_grouped(predictor, schema, tasks_file, f, chunk, progress)
        for note in notes:
            log(f"note: {note}")
        log(f"predicted {points} query points of {tasks} task(s) -> {out}")
        return points
    batch, labels, score = read_task_file(tasks_file, c.x_dim, c.y_dim, c.metadata_dim)
    meta_model.check_batch(batch)
    torch.manual_seed(seed)
    with atomic_write(out, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(prediction_header(c.x_dim, c.y_dim, score))
        for tasks, predictive in predict_in_chunks(predictor, batch, chunk, progress):
            writer.writerows(prediction_rows(batch.subset(tasks), labels[tasks], predictive, score))
    points = int(batch.query_mask.sum())
    log(f"predicted {points} query points of {len(labels)} task(s) -> {out}")
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

    log = log or (lambda text: None)
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


def format_targets(targets: dict) -> str:
    """The targets of :func:`check_targets`, one line each."""
    return "\ntargets (measured value, met?)\n" + "\n".join(
        f"  {'ok  ' if t['met'] else 'MISS'} {name}: {t['value']}" for name, t in targets.items())


def _shuffled(metrics: dict, k: str) -> dict:
    """The shuffled-metadata scores at K = k; NaN when they were not computed."""
    nan = {"loglik": float("nan"), "coverage90": float("nan")}
    return metrics["shuffled_metadata"]["shots"][k] if "shuffled_metadata" in metrics else nan


def write_metrics_csv(metrics: dict, path: str) -> None:
    """One row per K: the model, the shuffled-metadata model and the reference side by side."""
    keys = sorted({key for entry in metrics["shots"].values() for key in entry})
    with atomic_write(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["K"] + keys + ["shuffled_loglik", "shuffled_coverage90"])
        for k, entry in metrics["shots"].items():
            shuffled = _shuffled(metrics, k)
            writer.writerow([k] + [f"{entry.get(key, float('nan')):.4f}" for key in keys]
                            + [f"{shuffled['loglik']:.4f}", f"{shuffled['coverage90']:.4f}"])


def format_table(metrics: dict) -> str:
    """The metrics of :func:`run_fit` per K as a text table."""
    lines = [f"{'K':>3} {'loglik':>8} {'oracle':>8} {'mse':>7} {'cov90':>6} {'shuffled':>9} {'ESS':>6}"]
    for k, e in metrics["shots"].items():
        lines.append(f"{k:>3} {e['loglik']:8.3f} {e.get('oracle_loglik', float('nan')):8.3f} {e['mse']:7.3f} "
                     f"{e['coverage90']:6.2f} {_shuffled(metrics, k)['loglik']:9.3f} "
                     f"{e['ess']:6.0f}")
    if "noise_floor_loglik" in metrics:
        lines.append(f"noise floor {metrics['noise_floor_loglik']:.3f} nats/point; held-out ELBO "
                     f"{metrics['elbo']:.3f}; KL φ1 {metrics['kl_phi1']:.2f}, KL φ2 {metrics['kl_phi2']:.2f} nats/task")
    return "\n".join(lines)
