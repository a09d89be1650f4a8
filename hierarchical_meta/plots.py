"""Figures for a fitted model: training curve, predictions with bands, metrics against K.

The functions write files and close their figures; they leave matplotlib's backend to
the caller (the command line chooses a non-interactive one).
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch

from .tasks import TaskBatch, TaskFamily

__all__ = ["plot_training_curve", "plot_predictions", "plot_metrics_vs_shots"]


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


def plot_metrics_vs_shots(results: dict, path: str, metric: str = "loglik", ylabel: str | None = None) -> None:
    """``metric`` against K for several runs: ``results`` maps a label to a metrics.json dict."""
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    oracle_drawn = False
    for i, (label, metrics) in enumerate(results.items()):
        ks = sorted(metrics["shots"], key=int)
        ax.plot([int(k) for k in ks], [metrics["shots"][k][metric] for k in ks], "o-", color=f"C{i}", label=label)
        if "shuffled_metadata" in metrics and i == 0:
            ax.plot([int(k) for k in ks], [metrics["shuffled_metadata"]["shots"][k][metric] for k in ks],
                    "o:", color=f"C{i}", alpha=0.6, label=f"{label}, m shuffled")
        if not oracle_drawn and f"oracle_{metric}" in metrics["shots"][ks[0]]:
            ax.plot([int(k) for k in ks], [metrics["shots"][k][f"oracle_{metric}"] for k in ks], "k--",
                    label="exact Bayes (with m)")
            oracle_drawn = True
        if metric == "loglik" and "noise_floor_loglik" in metrics and i == 0:
            ax.axhline(metrics["noise_floor_loglik"], color="0.5", lw=0.8, label="noise floor")
    ax.set(xlabel="support points K",
           ylabel=ylabel or {"loglik": "held-out loglik / point (nats)"}.get(metric, metric))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
