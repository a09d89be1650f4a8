"""docs/own_data.md: the grouped-data runs of ``fit --tasks nlschools|sleepstudy`` (docs/own_data/*/metrics.json)."""

from __future__ import annotations

from .common import ROOT, extent, grouped, ks, ks_or_none, minus, read_json, table

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


# ---- the real-data study: compare over five group splits (scripts/real_data_study.sh) ---------

STUDY = "docs/own_data/study"
LINEAR = ("mixed_model", "pooled")  # the textbook baselines; no_metadata is the model's own ablation


def studied() -> list[str]:
    """The data sets with a committed comparison under docs/own_data/study/, sorted."""
    return sorted(path.parent.name for path in (ROOT / STUDY).glob("*/comparison.json"))


def study(name: str) -> dict:
    return read_json(f"{STUDY}/{name}/comparison.json")


def _pm(score: dict | None, spec: str) -> str:
    """'mean ± sd' of a compare spread ('–' when absent, the mean alone over one split)."""
    if score is None:
        return "–"
    sd = "" if score["sd"] is None else f" ± {score['sd']:.3f}"
    return minus(f"{score['mean']:{spec}}{sd}")


def best_baseline(entry: dict) -> str | None:
    """The textbook baseline with the highest mean loglik at one K (None when none was fitted)."""
    fitted = [name for name in LINEAR if name in entry["models"]]
    return max(fitted, key=lambda name: entry["models"][name]["mean"]) if fitted else None


def _margin(entry: dict, name: str | None) -> str:
    margin = entry["margins"].get(name) if name else None
    return "–" if margin is None else f"{_pm(margin, '+.3f')} ({margin['wins']}/{margin['splits']})"


def _worst(entry: dict) -> str:
    worst = entry.get("worst_group_by_model", {})
    return " / ".join(minus(f"{worst[n]:.2f}") if n in worst else "–" for n in ("model", "mixed_model"))


def study_row(k: str, entry: dict) -> list[str]:
    low, high = min(entry["num_groups"].values()), max(entry["num_groups"].values())
    best = best_baseline(entry)
    return [k, str(low) if low == high else f"{low}–{high}",
            *(_pm(entry["models"].get(name), ".3f") for name in ("model", "no_metadata", *LINEAR)),
            f"{_margin(entry, best)} {OWN_MODELS[best].split(' (')[0] if best else ''}".strip(),
            _margin(entry, "no_metadata"), f"{entry['mc_error']['value']:.3f}" if "mc_error" in entry else "–",
            _worst(entry)]


def study_table(name: str) -> str:
    """Per K over the splits: each model's loglik (mean ± sd), the model's paired margins, its MC error
    and the worst test group of the model and of the mixed model."""
    header = ["K", "groups", "model", "model, m withheld", "mixed model", "pooled",
              "model − best baseline (wins)", "model − m withheld (wins)", "MC error", "worst group: model / mixed"]
    return table(header, [study_row(k, e) for k, e in study(name)["shots"].items()])


def study_values(name: str) -> dict[str, object]:
    """own.study.NAME.*: the splits, and the smallest paired margin against the best baseline over K."""
    summary = study(name)
    margins = [entry["margins"][best]["mean"] for entry in summary["shots"].values()
               if (best := best_baseline(entry)) in entry["margins"]]
    return {f"own.study.{name}.splits": len(summary["splits"]),
            f"own.study.{name}.min_margin": minus(f"{min(margins):+.3f}") if margins else "–"}


def study_tables() -> dict[str, str]:
    return {f"own-data-study-{name}": study_table(name) for name in studied()}


def all_study_values() -> dict[str, object]:
    return {key: value for name in studied() for key, value in study_values(name).items()}
