"""docs/own_data.md: the grouped-data runs of ``fit --tasks nlschools|sleepstudy`` (docs/own_data/*/metrics.json)."""

from __future__ import annotations

from .common import extent, grouped, ks, ks_or_none, minus, read_json, table

OWN_DATA = ("nlschools", "sleepstudy")  # the committed runs under docs/own_data/
OWN_MODELS = {"model": "model", "no_metadata": "model, m withheld", "mixed_model": "mixed model (BLUP)",
              "pooled": "pooled regression"}
QUOTED = ("loglik", "mse", "coverage90", "num_groups")


def own_data_run(name: str) -> dict[str, dict]:
    """A committed grouped-data run: model name -> its scores (``{"shots": {K: ...}}``), the model first."""
    metrics = read_json(f"docs/own_data/{name}/metrics.json")
    found = {"model": metrics, **metrics["baselines"]}
    return {model: found[model] for model in OWN_MODELS if model in found}


def versus_mixed(name: str, run: dict[str, dict]) -> dict[str, object]:
    """The model's loglik minus the mixed model's, per K: its range and where it is ahead (none without one)."""
    if "mixed_model" not in run:
        return {}
    shots = run["model"]["shots"]
    deltas = {k: shots[k]["loglik"] - run["mixed_model"]["shots"][k]["loglik"] for k in shots}
    return {f"own.{name}.minus_mixed_range": extent(deltas.values(), "+.3f", " to "),
            f"own.{name}.ahead_of_mixed": ks_or_none(int(k) for k, d in deltas.items() if d > 0)}


def run_values(name: str) -> dict[str, object]:
    """One run's numbers as own.NAME.*: every model's scores per K, its training, evaluation and data."""
    run = own_data_run(name)
    metrics = run["model"]
    v: dict[str, object] = {f"own.{name}.{model}.{metric}.{k}": scores["shots"][k][metric]
                            for model, scores in run.items() for k in metrics["shots"] for metric in QUOTED}
    v.update(versus_mixed(name, run))
    v.update({f"own.{name}.groups.{split}": n for split, n in metrics["data"]["groups"].items()})
    v.update({f"own.{name}.steps": grouped(metrics["train"]["steps"]),
              f"own.{name}.train_minutes": metrics["train_seconds"] / 60,
              f"own.{name}.draws": metrics["eval"]["draws"],
              f"own.{name}.shots": ks(int(k) for k in metrics["shots"]),
              f"own.{name}.evaluated_groups": metrics["data"]["evaluated_groups"],
              f"own.{name}.sd_y": metrics["schema"]["y"][0]["std"]})
    return v


def values() -> dict[str, object]:
    return {key: value for name in OWN_DATA for key, value in run_values(name).items()}


def run_table(name: str) -> str:
    """Per K: the number of groups and every model's loglik (coverage90)."""
    run = own_data_run(name)
    shots = run["model"]["shots"]
    return table(
        ["K", "groups", *(OWN_MODELS[model] for model in run)],
        [[k, shots[k]["num_groups"],
          *(f"{minus(format(s['shots'][k]['loglik'], '.3f'))} ({s['shots'][k]['coverage90']:.2f})"
            for s in run.values())] for k in shots])


def tables() -> dict[str, str]:
    return {f"own-data-{name}": run_table(name) for name in OWN_DATA}
