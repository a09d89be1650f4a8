"""The study's figures: runtime and peak memory against inner steps, layers and units.

Six single plots (``runtime_vs_steps.png``, ``memory_vs_steps.png``, … for ``layers`` and
``units``) and one combined 2×3 figure (``combined.png``: runtime on top, memory below).
Runtime: the median of the repeats, with the band from the 25th to the 75th percentile.
Memory: the peak above the step's start (solid) and the saved-for-backward peak (dashed).
Every figure names the device and the command that produced it; CPU runs say so.
"""

from __future__ import annotations

import math
import os

import matplotlib.pyplot as plt

from .study import SWEEP_PARAMETER

__all__ = ["draw_all", "draw_panel"]

COLORS = {"maml": "tab:red", "maml_checkpointed": "tab:purple", "fomaml": "tab:orange", "es": "tab:blue"}
LABELS = {"maml": "MAML (2nd order)", "maml_checkpointed": "MAML, checkpointed (exact)",
          "fomaml": "first-order MAML", "es": "ES (antithetic)"}
XLABEL = {"steps": "inner steps L", "layers": "hidden layers", "units": "hidden units per layer"}


def _device_label(rows) -> str:
    if not rows:
        return "no data"
    names = sorted({r["device_name"] for r in rows})
    cpu = rows[0]["device"] == "cpu"
    return ("CPU run (no GPU): " if cpu else "") + ", ".join(names)


def draw_panel(ax, rows: list[dict], sweep: str, quantity: str) -> None:
    """One panel: every method's curve of ``quantity`` ('time' or 'memory') along ``sweep``."""
    param = SWEEP_PARAMETER[sweep]
    for method in COLORS:
        sel = sorted((r for r in rows if r["sweep"] == sweep and r["method"] == method and r["status"] == "ok"),
                     key=lambda r: r[param])
        if not sel:
            continue
        xs = [r[param] for r in sel]
        if quantity == "time":
            ax.plot(xs, [r["time_median_ms"] for r in sel], "o-", color=COLORS[method], label=LABELS[method])
            ax.fill_between(xs, [r["time_q25_ms"] for r in sel], [r["time_q75_ms"] for r in sel],
                            color=COLORS[method], alpha=0.25, linewidth=0)
        else:
            ax.plot(xs, [r["peak_mb"] for r in sel], "o-", color=COLORS[method], label=LABELS[method] + ": peak")
            saved = [r["saved_peak_mb"] for r in sel]
            if any(math.isfinite(s) and s > 0 for s in saved):
                ax.plot(xs, saved, "s--", color=COLORS[method], alpha=0.7, markersize=3,
                        label=LABELS[method] + ": saved for backward")
        oom = [r[param] for r in rows if r["sweep"] == sweep and r["method"] == method and r["status"] != "ok"]
        for x in oom:
            ax.axvline(x, color=COLORS[method], linestyle=":", alpha=0.6)
    ax.set_xlabel(XLABEL[sweep])
    ax.set_ylabel("time per outer step, ms (median, IQR band)" if quantity == "time" else "peak memory above start, MB")
    if sweep in ("steps", "units"):
        ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)


def _legend(ax, fontsize) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=fontsize)


def draw_all(rows: list[dict], out_dir: str, command: str) -> list[str]:
    """Write the six plots and the combined figure; return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    device = _device_label(rows)
    paths = []
    for sweep in SWEEP_PARAMETER:
        if not any(r["sweep"] == sweep for r in rows):
            continue
        for quantity, name in (("time", "runtime"), ("memory", "memory")):
            fig, ax = plt.subplots(figsize=(6, 4.5))
            draw_panel(ax, rows, sweep, quantity)
            _legend(ax, 7)
            ax.set_title(f"{name} vs {XLABEL[sweep]}\n{device}", fontsize=9)
            fig.text(0.01, 0.005, command, fontsize=6, color="gray")
            fig.tight_layout(rect=(0, 0.03, 1, 1))
            path = os.path.join(out_dir, f"{name}_vs_{sweep}.png")
            fig.savefig(path, dpi=110)
            plt.close(fig)
            paths.append(path)
    fig, axes = plt.subplots(2, 3, figsize=(16, 9.5))
    for j, sweep in enumerate(SWEEP_PARAMETER):
        for i, quantity in enumerate(("time", "memory")):
            draw_panel(axes[i][j], rows, sweep, quantity)
    for row, size in zip(axes, (8, 7), strict=True):  # one legend per row, in the first panel that has curves
        first = next((ax for ax in row if ax.get_legend_handles_labels()[0]), None)
        if first is not None:
            first.legend(fontsize=size)
    fig.suptitle(f"MAML vs ES vs first-order MAML on a sinusoid MLP: one outer step\n{device}", fontsize=11)
    fig.text(0.01, 0.005, command, fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.02, 1, 0.96))
    path = os.path.join(out_dir, "combined.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    paths.append(path)
    return paths
