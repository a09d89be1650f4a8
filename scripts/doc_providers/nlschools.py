"""docs/nlschools.md: the nlschools comparison (docs/nlschools/comparison.csv and per_split.csv).
Its headline ranges serve README.md too."""

from __future__ import annotations

from .common import extent, mean_sd, read_csv, table

COMPARISON = "docs/nlschools/comparison.csv"
PER_SPLIT = "docs/nlschools/per_split.csv"
QUOTED = ("loglik", "mse", "coverage90", "loglik_minus_mixed", "metadata_gain", "metadata_gain_sd")


def values() -> dict[str, object]:
    """Every quoted column per model and K (nlschools.MODEL.COLUMN.K), and ours against the mixed model."""
    comparison = read_csv(COMPARISON)
    v: dict[str, object] = {f"nlschools.{r['model']}.{column}.{r['K']}": float(r[column])
                            for r in comparison for column in QUOTED}
    ours = [float(r["loglik_minus_mixed"]) for r in comparison if r["model"] == "ours"]
    v["nlschools.delta_range"] = extent(ours, "+.3f", " to ")
    split = {(r["split"], r["model"], r["K"]): float(r["loglik"]) for r in read_csv(PER_SPLIT)}
    cells = [split[s, "ours", k] - split[s, "mixed_model", k] for s, model, k in split if model == "ours"]
    v["nlschools.cells_won"] = f"{sum(d > 0 for d in cells)} of {len(cells)}"
    v["nlschools.cell_delta_range"] = extent(cells, "+.3f", " to ")
    return v


def tables() -> dict[str, str]:
    """Every model and K of the comparison: mean ± sd over splits."""
    return {"nlschools": table(
        ["model", "K", "loglik", "Δ loglik vs mixed", "gain from m", "mse", "coverage90", "test classes",
         "query pupils"],
        [[r["model"], r["K"], mean_sd(r, "loglik"), mean_sd(r, "loglik_minus_mixed", "+"),
          mean_sd(r, "metadata_gain", "+"), mean_sd(r, "mse"), mean_sd(r, "coverage90"),
          f"{float(r['test_classes']):.1f}", f"{float(r['query_pupils']):.0f}"] for r in read_csv(COMPARISON)])}
