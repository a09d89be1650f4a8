"""Fitted growth of each measured curve, and the study's text summary.

For the ``steps`` and ``layers`` sweeps the fit is a least-squares line y = a + b x
(b: MB or ms per inner step or per layer). For the ``units`` sweep it is a power law
y ∝ h^k fitted by least squares on log y against log h over the widest half of the
points, where fixed per-step costs matter least (k: the exponent in width; 2 means the
cost follows the h² weights of each hidden layer, 1 the h activations).
"""

from __future__ import annotations

import math

import numpy as np

from .study import SWEEP_PARAMETER

__all__ = ["fit", "growth_table", "summary_text"]

UNIT = {"steps": "per inner step", "layers": "per layer"}


def fit(sweep: str, xs, ys) -> tuple[str, float]:
    """('slope', b) for steps/layers, ('exponent', k) for units; NaN with fewer than 2 points."""
    pts = [(x, y) for x, y in zip(xs, ys, strict=True) if math.isfinite(y)]
    if pts and all(y == 0 for _, y in pts):  # e.g. ES saves nothing for backward
        return ("exponent" if sweep == "units" else "slope"), 0.0
    pts = [(x, y) for x, y in pts if y > 0]
    if sweep == "units":
        pts = sorted(pts)[-max(2, math.ceil(len(pts) / 2)):]  # the widest half
        if len(pts) < 2:
            return "exponent", math.nan
        x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
        return "exponent", float(np.polyfit(x, y, 1)[0])
    if len(pts) < 2:
        return "slope", math.nan
    x, y = np.array([p[0] for p in pts], float), np.array([p[1] for p in pts], float)
    return "slope", float(np.polyfit(x, y, 1)[0])


def growth_table(rows: list[dict]) -> list[dict]:
    """One entry per (sweep, method, quantity) with its fitted growth."""
    out = []
    ok = [r for r in rows if r.get("status") == "ok"]
    for sweep in SWEEP_PARAMETER:
        for method in sorted({r["method"] for r in ok if r["sweep"] == sweep}):
            sel = sorted((r for r in ok if r["sweep"] == sweep and r["method"] == method),
                         key=lambda r: r[SWEEP_PARAMETER[sweep]])
            xs = [r[SWEEP_PARAMETER[sweep]] for r in sel]
            for quantity, unit in (("peak_mb", "MB"), ("saved_peak_mb", "MB"), ("time_median_ms", "ms")):
                kind, value = fit(sweep, xs, [r[quantity] for r in sel])
                out.append({"sweep": sweep, "method": method, "quantity": quantity, "kind": kind,
                            "value": value, "unit": unit, "x": xs, "y": [r[quantity] for r in sel]})
    return out


def summary_text(rows: list[dict], command: str) -> str:
    """The human-readable summary: environment, fitted growth, and the raw medians."""
    ok = [r for r in rows if r.get("status") == "ok"]
    lines = [f"command: {command}"]
    if rows:
        first = rows[0]
        devices = sorted({r["device_name"] for r in rows})
        lines.append(f"device: {', '.join(devices)}  (torch {first['torch']}, CUDA {first['cuda']})")
        if first["device"] == "cpu":
            loads = [r["load_1min"] for r in ok if math.isfinite(r["load_1min"])]
            threads = sorted({r["threads"] for r in ok})
            lines.append(
                "RAN ON THE CPU: peak_mb is the peak of CPU bytes allocated above the step's start "
                "(torch.profiler memory events), not GPU memory."
            )
            if loads:
                lines.append(f"torch threads {threads}; "
                             f"1-min load average during the study {min(loads):.2f}..{max(loads):.2f}")
    bad = [r for r in rows if r.get("status") != "ok"]
    statuses = ", ".join(sorted({r["status"] for r in bad})) or "-"
    lines.append(f"{len(ok)} configurations measured, {len(bad)} not ({statuses})")
    lines.append("")
    lines.append("fitted growth (steps, layers: least-squares slope; units: power-law exponent over the widest half)")
    for g in growth_table(rows):
        if g["kind"] == "slope":
            value = f"{g['value']:10.3f} {g['unit']} {UNIT[g['sweep']]}"
        else:
            value = f"{g['value']:10.2f}   (exponent in hidden units)"
        lines.append(f"  {g['sweep']:7s} {g['method']:7s} {g['quantity']:15s} {value}")
    lines.append("")
    lines.append("medians: sweep method value -> time ms [q25, q75] | peak MB | saved-for-backward peak MB")
    for r in sorted(ok, key=lambda r: (r["sweep"], r["method"], r[SWEEP_PARAMETER[r["sweep"]]])):
        lines.append(
            f"  {r['sweep']:7s} {r['method']:7s} {r[SWEEP_PARAMETER[r['sweep']]]:5d} -> "
            f"{r['time_median_ms']:9.2f} [{r['time_q25_ms']:.2f}, {r['time_q75_ms']:.2f}] | "
            f"{r['peak_mb']:9.2f} | {r['saved_peak_mb']:9.2f}"
        )
    return "\n".join(lines) + "\n"
