"""docs/reliability.md: the long runs that diverged (docs/quality/diverged_*/) and the held-out check that
stops them. Their values (quality.diverged_*) serve docs/model.md and docs/quality/README.md too."""

from __future__ import annotations

import re

from hierarchical_meta.train import DIVERGED_ELBO_DROP, heldout_collapse

from .common import grouped, read_csv, read_text

TRACED = ("lr6e-3", "lr3e-3")   # runs that went on after diverging: their held-out ELBO, every 250 steps
STOPPED = ("swap5", "swap10")   # runs at lr 6e-3 that fit stopped: its own error line
STOPPED_LINE = re.compile(r"diverged at step (\d+) \(the held-out ELBO fell from ([-\d.]+) nats per point at "
                          r"step (\d+)")


def traced_values(name: str) -> dict[str, object]:
    """Where the held-out check would have stopped a traced run, its best ELBO before, and the lowest after."""
    trace = [(int(r["step"]), float(r["elbo_per_point"]))
             for r in read_csv(f"docs/quality/diverged_{name}/heldout_elbo.csv")]
    stop = next(i for i in range(3, len(trace) + 1) if heldout_collapse(trace[:i], after_step=1000))
    best_step, best = max(trace[:stop], key=lambda e: e[1])
    key = f"quality.diverged_{name}"
    return {f"{key}.stop_step": grouped(trace[stop - 1][0]), f"{key}.last_step": grouped(trace[-1][0]),
            f"{key}.best": best, f"{key}.best_step": grouped(best_step),
            f"{key}.after_stop_min": min(e for _, e in trace[stop:]) if stop < len(trace) else float("nan")}


def stopped_values(name: str) -> dict[str, object]:
    """Where fit stopped a run, and its best held-out ELBO, as fit's error line says."""
    stopped = STOPPED_LINE.search(read_text(f"docs/quality/diverged_{name}/fit_output.txt"))
    key = f"quality.diverged_{name}"
    return {f"{key}.stop_step": grouped(int(stopped.group(1))), f"{key}.best_step": grouped(int(stopped.group(3))),
            f"{key}.best": float(stopped.group(2))}


def values() -> dict[str, object]:
    """quality.diverged_RUN.* of every diverged run, and the ELBO drop that counts as diverged."""
    v: dict[str, object] = {"train.diverged_elbo_drop": DIVERGED_ELBO_DROP}
    for name in TRACED:
        v.update(traced_values(name))
    for name in STOPPED:
        v.update(stopped_values(name))
    return v
