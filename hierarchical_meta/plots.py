"""Figures for a fitted model: training curve, predictions with bands, metrics against K, a comparison over splits.

The functions write files and close their figures; they leave matplotlib's backend to
the caller (the command line chooses a non-interactive one).
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch

from .tasks import TaskBatch, TaskFamily

__all__ = ["plot_training_curve", "plot_predictions", "plot_metrics_vs_shots", "plot_comparison", "plot_effects"]


def plot_training_curve(history: dict, path: str) -> None:
    """Training loss (negative ELBO per point, smoothed) and held-out ELBO and KLs per step; with a
    validation score (``patience`` > 0), a third panel of it, the kept step marked on every panel."""
    scored = [e for e in history["eval"] if "val_loglik" in e]
    fig, axes = plt.subplots(1, 3 if scored else 2, figsize=(15 if scored else 10, 3.6))
    ax, ax_kl = axes[:2]
    loss = torch.tensor(history["loss"])
    window = max(1, len(loss) // 100)
    smooth = loss.unfold(0, window, window).mean(1) if len(loss) >= window else loss
    ax.plot(torch.arange(len(smooth)) * window + window, -smooth, lw=1,
            label="train ELBO / point (β-weighted; ragged tasks, corrupted m)")
    if history["eval"]:
        ax.plot(history["eval_step"], [e["elbo_per_point"] for e in history["eval"]], "o-", ms=3,
                label="held-out ELBO / point")
        ax_kl.plot(history["eval_step"], [e["kl_phi1_per_task"] for e in history["eval"]], label="KL φ1 / task")
        ax_kl.plot(history["eval_step"], [e["kl_phi2_per_task"] for e in history["eval"]], label="KL φ2 / task")
    lows = sorted((-smooth).tolist())
    if lows:
        ax.set_ylim(lows[len(lows) // 20] - 0.5, max(lows) + 0.3)
    ax.set(xlabel="SVI step", ylabel="nats per point")
    ax_kl.set(xlabel="SVI step", ylabel="nats per task")
    ax_kl.set_title("each latent's KL (held-out)", fontsize=9)
    if scored:
        _plot_validation(axes, history)
    for each in axes:
        each.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_validation(axes, history: dict) -> None:
    """The validation score per evaluation on the last of ``axes``; the kept step marked on all of them."""
    ax = axes[-1]
    steps, scores = history["eval_step"], [e["val_loglik"] for e in history["eval"]]
    if history["initial_val_loglik"] is not None:
        steps, scores = [0, *steps], [history["initial_val_loglik"], *scores]
    ax.plot(steps, scores, "o-", ms=3, color="C2", label="validation predictive loglik / point (0: untrained)")
    ax.set(xlabel="SVI step", ylabel="nats per point (y in its units)")
    ax.set_title("the validation score that chooses the kept step", fontsize=9)
    for each in axes:
        each.axvline(history["kept_step"], color="0.4", ls="--", lw=0.8, label=f"kept step {history['kept_step']}")


def _bands(predictive):
    mean = predictive.predictive_mean()[0, :, 0]
    low, high = predictive.quantile(0.05)[0, :, 0], predictive.quantile(0.95)[0, :, 0]
    return mean, low, high


@torch.no_grad()
def plot_predictions(meta_model, batch: TaskBatch, path: str, family: TaskFamily | None = None,
                     shots: Sequence[int] = (0, 1, 5, 10), num_tasks: int = 3,
                     num_samples: int = 2048, x_range: tuple | None = None) -> None:
    """Posterior predictive mean and central 90% band on a grid of x, per task and K.

    Only for one-dimensional x and y. The exact-Bayes band is dashed where the family has one.
    """
    if batch.x_support.shape[-1] != 1 or batch.y_support.shape[-1] != 1:
        raise ValueError("plot_predictions draws 1-D x and y only")
    lo, hi = x_range or (float(batch.x_query.min()), float(batch.x_query.max()))
    grid = torch.linspace(lo, hi, 120)[None, :, None]
    fig, axes = plt.subplots(num_tasks, len(shots), figsize=(3.2 * len(shots), 2.4 * num_tasks),
                             sharex=True, squeeze=False)
    for row in range(num_tasks):
        for col, k in enumerate(shots):
            ax = axes[row][col]
            one = batch.subset([row]).with_support_size(k)
            task = TaskBatch(one.x_support, one.y_support, grid, torch.zeros_like(grid), one.metadata,
                             one.support_mask, params=one.params)
            mean, low, high = _bands(meta_model.predict(task, num_samples=num_samples)[0])
            ax.fill_between(grid[0, :, 0], low, high, alpha=0.3, color="C0", label="model 90%")
            ax.plot(grid[0, :, 0], mean, color="C0", lw=1.5, label="model mean")
            exact = family.exact_predictive(task) if family is not None else None
            if exact is not None:
                _, o_low, o_high = _bands(exact)
                ax.plot(grid[0, :, 0], o_low, "k--", lw=0.8, label="exact Bayes 90%")
                ax.plot(grid[0, :, 0], o_high, "k--", lw=0.8)
            query, support = one.query_mask[0], one.support_mask[0]
            ax.scatter(one.x_query[0, query, 0], one.y_query[0, query, 0], s=4, color="0.6", label="query")
            ax.scatter(one.x_support[0, support, 0], one.y_support[0, support, 0], s=22, color="C3",
                       zorder=3, label="support")
            if row == 0:
                ax.set_title(f"K = {k}")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _shot_axis(ax, shots: Sequence[int], xlabel: str = "support points K") -> None:
    """Ticks at the evaluated K alone, as integers."""
    ax.set_xticks(sorted(shots))
    ax.set_xticklabels([str(k) for k in sorted(shots)])
    ax.set_xlabel(xlabel)


def _save(fig, path: str) -> None:
    """Write the figure with nothing cut (labels included) and close it."""
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_metrics_vs_shots(results: dict, path: str, metric: str = "loglik", ylabel: str | None = None,
                          tasks: str = "tasks") -> None:
    """``metric`` against K for several runs: ``results`` maps a label to a metrics.json dict.

    The first run's scores with the metadata shuffled (each of its ``tasks``, e.g. "groups",
    given another's metadata) are dotted where it has them; ticks at the evaluated K.
    """
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    oracle_drawn, shots = False, set()
    for i, (label, metrics) in enumerate(results.items()):
        ks = sorted(metrics["shots"], key=int)
        shots.update(int(k) for k in ks)
        ax.plot([int(k) for k in ks], [metrics["shots"][k][metric] for k in ks], "o-", color=f"C{i}", label=label)
        if "shuffled_metadata" in metrics and i == 0:
            ax.plot([int(k) for k in ks], [metrics["shuffled_metadata"]["shots"][k][metric] for k in ks],
                    "o:", color=f"C{i}", alpha=0.6, label=f"{label}, metadata shuffled across {tasks}")
        if not oracle_drawn and f"oracle_{metric}" in metrics["shots"][ks[0]]:
            ax.plot([int(k) for k in ks], [metrics["shots"][k][f"oracle_{metric}"] for k in ks], "k--",
                    label="exact Bayes (with m)")
            oracle_drawn = True
        if metric == "loglik" and "noise_floor_loglik" in metrics and i == 0:
            ax.axhline(metrics["noise_floor_loglik"], color="0.5", lw=0.8, label="noise floor")
    _shot_axis(ax, shots)
    ax.set_ylabel(ylabel or {"loglik": "held-out loglik / point (nats)"}.get(metric, metric))
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_comparison(summary: dict, path: str) -> None:
    """A comparison over group splits (:func:`hierarchical_meta.compare.summarize`): left, each
    model's held-out loglik against K, mean ± sd over splits; right, the model minus each
    baseline, paired per split, mean ± sd, with the zero line."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    shots = [int(k) for k in summary["shots"]]
    models = summary["labels"]
    for i, name in enumerate(models):
        _error_bars(left, summary, "models", name, i, len(models), models[name])
    baselines = [name for name in models if name != "model"]
    for i, name in enumerate(baselines, start=1):
        _error_bars(right, summary, "margins", name, i, len(models), f"model − {models[name]}")
    right.axhline(0.0, color="k", lw=0.8)
    left.set_ylabel(f"held-out loglik / point (nats)\nmean ± sd over {len(summary['splits'])} splits")
    right.set_ylabel("model minus baseline, same split (nats)\nmean ± sd over splits")
    for ax in (left, right):
        _shot_axis(ax, shots)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)


def _error_bars(ax, summary: dict, section: str, name: str, i: int, n: int, label: str) -> None:
    """One model's mean ± sd per K of ``summary["shots"][K][section][name]``, dodged by its index ``i`` of ``n``."""
    points = [(int(k), entry[section][name]) for k, entry in summary["shots"].items() if name in entry[section]]
    if not points:
        return
    ks = [k + 0.08 * (i - (n - 1) / 2) for k, _ in points]
    sd = [p["sd"] if p["sd"] is not None else 0.0 for _, p in points]
    ax.errorbar(ks, [p["mean"] for _, p in points], yerr=sd, fmt="o-", color=f"C{i}", capsize=3, label=label)


def _level_label(column: str, value) -> str:
    return f"{column} = {value:.4g}" if isinstance(value, float) else f"{column} = {value}"


def plot_effects(frame, schema, path: str) -> None:
    """``effects.csv`` (:func:`hierarchical_meta.effects.effects_frame`) drawn: one column of
    panels per predictor, one row per metadata column varied; the predictive mean and central
    90% band of the first y against the first numeric x, a curve per level."""
    x = next(c.name for c in schema.x if c.kind == "numeric")
    y = schema.names("y")[0]
    predictors, varied = list(dict.fromkeys(frame["predictor"])), list(dict.fromkeys(frame["varied"]))
    fig, axes = plt.subplots(len(varied), len(predictors), figsize=(4.4 * len(predictors), 3.2 * len(varied)),
                             sharex=True, sharey=True, squeeze=False)
    for row, column in enumerate(varied):
        for col, predictor in enumerate(predictors):
            ax = axes[row][col]
            rows = frame[(frame["predictor"] == predictor) & (frame["varied"] == column)]
            for i, (level, curve) in enumerate(rows.groupby(column, sort=False) if column else [(None, rows)]):
                label = _level_label(column, level) if column else "every group"
                ax.fill_between(curve[x], curve[f"{y}_q05"], curve[f"{y}_q95"], color=f"C{i}", alpha=0.15)
                ax.plot(curve[x], curve[f"{y}_mean"], color=f"C{i}", lw=1.5, label=label)
            ax.set_title(f"{predictor}: a new group (K = 0)", fontsize=9)
            ax.legend(fontsize=7, title="mean, 90% band", title_fontsize=7)
            if col == 0:
                ax.set_ylabel(f"{y} (the data's units)")
            if row == len(varied) - 1:
                ax.set_xlabel(f"{x} (the data's units)")
    _save(fig, path)
