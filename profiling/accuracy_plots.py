"""The accuracy study's figures, drawn from its CSV rows (:mod:`profiling.accuracy_study`).

- ``loss_vs_time.png``: the meta-test MSE against outer steps and against training
  seconds, one thin line per seed, one colour per setting, the targets dashed;
- ``pareto.png``: time to target (median over seeds, bars from the fastest to the slowest
  seed) against the peak memory of one outer step, one point per setting, one panel per
  target; a setting whose median seed did not reach the target is drawn hollow at its
  training budget;
- ``es_gradient_quality.png``: ES's relative error and cosine against MAML's exact
  gradient as the population grows, beside √(D/P) and the variance law.

Every figure names the device and the command that produced it.
"""

from __future__ import annotations

import math
import statistics

import matplotlib.pyplot as plt

__all__ = ["draw_curves", "draw_pareto", "draw_quality", "color"]

EXACT_COLORS = {"maml": "tab:red", "maml_checkpointed": "tab:purple", "fomaml": "tab:orange"}
LABELS = {"maml": "MAML", "maml_checkpointed": "MAML, checkpointed", "fomaml": "first-order MAML"}


def color(method: str, pairs: int | None):
    """MAML red, checkpointed MAML purple, first-order orange; ES blue, darker with more pairs."""
    if method != "es":
        return EXACT_COLORS[method]
    shade = 0.35 + 0.65 * min(1.0, max(0.0, (math.log2(pairs) - 2) / 8))  # P = 4 … 1024: light … dark
    return plt.cm.Blues(shade)


def _label(row: dict) -> str:
    return LABELS.get(row["method"], row.get("label", row["method"]))


def _footer(fig, rows, command: str) -> None:
    names = sorted({r["device_name"] for r in rows if "device_name" in r})
    cpu = any(r.get("device") == "cpu" for r in rows)
    fig.text(0.01, 0.005, ("CPU run: " if cpu else "") + ", ".join(names) + "\n" + command, fontsize=6, color="gray")


def draw_curves(runs: list[dict], curves: list[dict], goals: dict[str, float], path: str, command: str) -> None:
    """Meta-test MSE against outer steps (left) and training seconds (right)."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    key = ("phase", "method", "pairs", "noise_std", "seed")
    seen = set()
    for run in (r for r in runs if r["phase"] == "compare"):
        points = sorted((c for c in curves if all(c[k] == run[k] for k in key)), key=lambda c: c["outer_step"])
        label = None if run["label"] in seen else _label(run)
        seen.add(run["label"])
        for ax, x in zip(axes, ("outer_step", "seconds"), strict=True):
            ax.plot([c[x] for c in points], [c["meta_test_mse"] for c in points],
                    color=color(run["method"], run["pairs"]),
                    linewidth=1, alpha=0.8, label=label if ax is axes[0] else None)
    for ax, xlabel in zip(axes, ("outer steps", "training seconds (evaluation excluded)"), strict=True):
        for name, goal in goals.items():
            ax.axhline(goal, color="black", linestyle="--" if name == "T1" else ":", linewidth=0.8)
            ax.text(ax.get_xlim()[1], goal, f" {name}", va="center", fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("meta-test MSE (post-adaptation, held-out tasks)")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_xscale("symlog", linthresh=10)
    axes[0].set_xlim(left=0)
    axes[0].legend(fontsize=8)
    fig.suptitle("Meta-training from the same θ_0 and tasks: one line per seed", fontsize=11)
    _footer(fig, runs, command)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_pareto(table: list[dict], path: str, command: str) -> None:
    """Time to target against peak memory of one outer step; one panel per target."""
    names = list(dict.fromkeys(r["target"] for r in table))
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 5.5), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        rows = [r for r in table if r["target"] == name]
        for r in rows:
            c = color(r["method"], r["pairs"])
            top = r["budget_seconds"]
            text = _label(r) + ("" if r["reached"] == r["seeds"] else f" ({r['reached']}/{r['seeds']} reached)")
            if math.isfinite(r["seconds_median"]):
                high = r["seconds_max"] if math.isfinite(r["seconds_max"]) else top
                ax.errorbar([r["peak_mb"]], [r["seconds_median"]], color=c, fmt="o", markersize=8, capsize=3,
                            yerr=[[r["seconds_median"] - r["seconds_min"]], [high - r["seconds_median"]]], label=text)
            else:
                ax.plot([r["peak_mb"]], [top], marker="^", markersize=9, markerfacecolor="none", color=c,
                        linestyle="none", label=text)
        ax.set_xscale("log")
        times = [r["seconds_median"] if math.isfinite(r["seconds_median"]) else r["budget_seconds"] for r in rows]
        ax.set_yscale("log" if min(times) > 0 else "linear")  # 0 s: a seed's initial MSE already met it
        ax.set_xlabel("peak memory of one outer step, MB (above its start)")
        ax.set_ylabel("training seconds to target (median; bar: fastest–slowest seed)")
        ax.set_title(f"{name}: meta-test MSE ≤ {rows[0]['target_mse']:.3g}\n"
                     "hollow ▲: not reached within the budget", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Cost of reaching the same meta-test accuracy: time against memory", fontsize=11)
    fig.text(0.01, 0.005, command, fontsize=6, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_quality(quality: list[dict], path: str, command: str) -> None:
    """Relative error (left) and cosine (right) of ES against MAML's gradient, against pairs P."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    pairs = sorted({q["pairs"] for q in quality})
    if pairs:
        dim = quality[0]["dim"]
        law = [next(q["law_rel_error"] for q in quality if q["pairs"] == p) for p in pairs]
        axes[0].plot(pairs, [math.sqrt(dim / p) for p in pairs], "k--", label="√(D/P) (docs)")
        axes[0].plot(pairs, law, "k-", alpha=0.6, label="variance law √((D+1) Σ|h_i|²)/(P|g|)")
        axes[1].plot(pairs, [1 / math.sqrt(1 + dim / p) for p in pairs], "k--", label="1/√(1 + D/P)")
        axes[1].plot(pairs, [1 / math.sqrt(1 + r**2) for r in law], "k-", alpha=0.6, label="1/√(1 + law²)")
    for i, sigma in enumerate(sorted({q["noise_std"] for q in quality})):
        for ax, field in zip(axes, ("rel_error", "cosine"), strict=True):
            ps = [p for p in pairs if any(q["pairs"] == p and q["noise_std"] == sigma for q in quality)]
            values = [[q[field] for q in quality if q["pairs"] == p and q["noise_std"] == sigma] for p in ps]
            medians = [statistics.median(v) for v in values]
            ax.errorbar(ps, medians, yerr=[[m - min(v) for m, v in zip(medians, values, strict=True)],
                                           [max(v) - m for m, v in zip(medians, values, strict=True)]],
                        fmt="os"[i % 2] + "-", color=plt.cm.Blues(0.5 + 0.3 * i), capsize=3, markersize=5,
                        label=f"ES, σ = {sigma:g} (median, min–max of {len(values[0])} draws)")
    for ax, ylabel in zip(axes, ("relative error |ĝ − g| / |g|", "cosine(ĝ, g)"), strict=True):
        ax.set_xscale("log", base=2)
        if ax is axes[0]:  # a cosine can be negative: linear axis
            ax.set_yscale("log")
        ax.set_xlabel("antithetic pairs P")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    dims = f"D = {quality[0]['dim']} parameters" if quality else "no data"
    fig.suptitle(f"ES meta-gradient against MAML's exact one ({dims})", fontsize=11)
    fig.text(0.01, 0.005, command, fontsize=6, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
