"""The tables of a run: ``metrics.csv`` and the text printed after a fit or the demo.

A run's metrics dict (``metrics.json``, :func:`~hierarchical_meta.pipeline.run_fit`) comes in
two layouts, and each writer here handles both:

- a sampled family (sinusoid, basis): one model per K, beside the exact-Bayes reference and
  the model with shuffled metadata;
- a data set (``baselines`` in the metrics): the model and its baselines (:data:`LABELS`) per
  K on the same groups, with the number of groups, in the data's units.
"""

from __future__ import annotations

import csv

from .runfiles import atomic_write

__all__ = ["LABELS", "CSV_METRICS", "WORST", "write_metrics_csv", "format_table", "format_targets"]

#: The models of a data set's report, in table order, with their labels.
LABELS = {"model": "model", "no_metadata": "model, metadata withheld",
          "mixed_model": "mixed model (BLUP)", "pooled": "pooled regression"}
#: The scores of a data set's ``metrics.csv``.
CSV_METRICS = ("loglik", "mse", "coverage90")
#: The worst test group's mean loglik per point and its label (:func:`~hierarchical_meta.evaluate.evaluate`).
WORST = ("worst_group_loglik", "worst_group")


def _shuffled(metrics: dict, k: str) -> dict:
    """The shuffled-metadata scores at K = k; NaN when they were not computed."""
    nan = {"loglik": float("nan"), "coverage90": float("nan")}
    return metrics["shuffled_metadata"]["shots"][k] if "shuffled_metadata" in metrics else nan


def _models(metrics: dict) -> dict[str, dict]:
    """name -> that model's scores ({"shots": ...}), the model first, in :data:`LABELS` order."""
    found = {"model": metrics, **metrics["baselines"]}
    return {name: found[name] for name in LABELS if name in found}


def _comparison_rows(metrics: dict) -> list[list]:
    """A data set's ``metrics.csv``: one row per K and model."""
    rows = [["K", "model", "num_groups", "num_query_points", *CSV_METRICS, *WORST, "formula"]]
    for k in metrics["shots"]:
        for name, scores in _models(metrics).items():
            e = scores["shots"][k]
            rows.append([k, name, e["num_groups"], e["num_query_points"]] + [f"{e[key]:.4f}" for key in CSV_METRICS]
                        + [f"{e.get(WORST[0], float('nan')):.4f}", e.get(WORST[1], ""), scores.get("formula", "")])
    return rows


def _cell(value) -> str:
    """A number with four decimals; a label (a worst group's) as it is."""
    return value if isinstance(value, str) else f"{value:.4f}"


def _shot_rows(metrics: dict) -> list[list]:
    """A sampled family's ``metrics.csv``: one row per K."""
    keys = sorted({key for entry in metrics["shots"].values() for key in entry})
    rows = [["K"] + keys + ["shuffled_loglik", "shuffled_coverage90"]]
    for k, entry in metrics["shots"].items():
        shuffled = _shuffled(metrics, k)
        rows.append([k] + [_cell(entry.get(key, float("nan"))) for key in keys]
                    + [f"{shuffled['loglik']:.4f}", f"{shuffled['coverage90']:.4f}"])
    return rows


def write_metrics_csv(metrics: dict, path: str) -> None:
    """``metrics.csv``: for a data set one row per K and model (K, model, num_groups,
    num_query_points, loglik, mse, coverage90, worst_group_loglik, worst_group, and a baseline's lme4
    formula); else one row
    per K, the model's scores, the reference's and the shuffled-metadata model's side by side."""
    with atomic_write(path, newline="") as f:
        csv.writer(f).writerows(_comparison_rows(metrics) if "baselines" in metrics else _shot_rows(metrics))


def _comparison_table(metrics: dict) -> list[str]:
    models = _models(metrics)
    lines = [f"held-out loglik per point ({metrics['loglik_units']})",
             f"{'K':>3} {'groups':>6} " + " ".join(f"{LABELS[name]:>24}" for name in models)]
    for k in metrics["shots"]:
        lines.append(f"{k:>3} {metrics['shots'][k]['num_groups']:>6} "
                     + " ".join(f"{m['shots'][k]['loglik']:24.3f}" for m in models.values()))
    formulas = [f"{LABELS[name]}: {m['formula']}" for name, m in models.items() if "formula" in m]
    return lines + formulas + _worst_table(metrics, models)


def _worst_table(metrics: dict, models: dict) -> list[str]:
    """The worst test group's mean loglik per point (and which group) of the model and the
    mixed model, per K; nothing for metrics without it."""
    shown = {name: models[name] for name in ("model", "mixed_model") if name in models}
    if not all(WORST[0] in m["shots"][k] for m in shown.values() for k in metrics["shots"]):
        return []
    lines = ["worst test group: its mean loglik per point (group)",
             f"{'K':>3} " + " ".join(f"{LABELS[name]:>34}" for name in shown)]
    for k in metrics["shots"]:
        cells = (f"{m['shots'][k][WORST[0]]:.3f} ({m['shots'][k][WORST[1]]})" for m in shown.values())
        lines.append(f"{k:>3} " + " ".join(f"{cell:>34}" for cell in cells))
    return lines


def _shot_table(metrics: dict) -> list[str]:
    lines = [f"{'K':>3} {'loglik':>8} {'oracle':>8} {'mse':>7} {'cov90':>6} {'shuffled':>9} {'ESS':>6}"]
    for k, e in metrics["shots"].items():
        lines.append(f"{k:>3} {e['loglik']:8.3f} {e.get('oracle_loglik', float('nan')):8.3f} {e['mse']:7.3f} "
                     f"{e['coverage90']:6.2f} {_shuffled(metrics, k)['loglik']:9.3f} {e['ess']:6.0f}")
    if "noise_floor_loglik" in metrics:
        lines.append(f"noise floor {metrics['noise_floor_loglik']:.3f} nats/point; held-out ELBO "
                     f"{metrics['elbo']:.3f}; KL φ1 {metrics['kl_phi1']:.2f}, KL φ2 {metrics['kl_phi2']:.2f} nats/task")
    return lines


def format_table(metrics: dict) -> str:
    """The metrics of a run per K as a text table: for a data set the held-out loglik of every
    model with the number of groups, then each baseline's formula; else the model's scores
    beside the reference's."""
    return "\n".join(_comparison_table(metrics) if "baselines" in metrics else _shot_table(metrics))


def format_targets(targets: dict) -> str:
    """The demo's targets (``pipeline.check_targets``), one line each."""
    return "\ntargets (measured value, met?)\n" + "\n".join(
        f"  {'ok  ' if t['met'] else 'MISS'} {name}: {t['value']}" for name, t in targets.items())
