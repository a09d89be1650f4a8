"""effects.csv and effects.png (hierarchical_meta/effects.py, plots.plot_effects): the curves laid
out in the data's units, the K = 0 tasks built from them, each predictor's mean and 90% band,
and the mixed model's curves against its own fixed effects in the data's units."""

import math

import pytest
import torch

pandas = pytest.importorskip("pandas")
pytest.importorskip("statsmodels")

from hierarchical_meta.baselines import linear_baselines  # noqa: E402
from hierarchical_meta.effects import EFFECT_POINTS, effect_grid, effect_tasks, effects_frame, training_values  # noqa: E402
from hierarchical_meta.tasks import TabularTasks  # noqa: E402
from hierarchical_meta.tasks.synthetic import grouped_frame  # noqa: E402


@pytest.fixture(scope="module")
def sites():
    """The sample hierarchy (dose, response; altitude numeric and region categorical metadata) with a
    categorical x (the batch of each row) and the dose in large units (mg instead of g)."""
    frame = grouped_frame(60, seed=0)
    frame["batch"] = [("first", "second", "second")[i % 3] for i in range(len(frame))]
    frame["dose"] = 1000 * frame["dose"]
    return TabularTasks(frame, group="site", x=["dose", "batch"], y="response", metadata=["altitude", "region"])


@pytest.fixture(scope="module")
def mixed(sites):
    return linear_baselines(sites, shots=(0, 2), degree=2)


def test_the_grid_spans_the_training_range_with_a_curve_per_level(sites):
    grid = effect_grid(sites)
    assert list(grid.columns) == ["varied", "dose", "batch", "altitude", "region"]
    x, metadata = training_values(sites, "x"), training_values(sites, "metadata")
    quantiles = metadata["altitude"].quantile([0.1, 0.5, 0.9]).tolist()
    mode = metadata["region"].value_counts().index[0]  # held while the altitude varies
    curves = [("altitude", q, mode) for q in quantiles] + [("region", metadata["altitude"].median(), r)
                                                         for r in ("east", "north", "south")]
    assert len(grid) == len(curves) * EFFECT_POINTS
    for i, (varied, altitude, region) in enumerate(curves):
        curve = grid.iloc[i * EFFECT_POINTS:(i + 1) * EFFECT_POINTS]
        assert (curve["varied"] == varied).all() and (curve["region"] == region).all()
        assert curve["altitude"].tolist() == pytest.approx([altitude] * EFFECT_POINTS, rel=1e-6)
        assert (curve["batch"] == "second").all()  # the mode of the categorical x
        assert curve["dose"].iloc[0] == pytest.approx(x["dose"].min(), abs=1e-3)
        assert curve["dose"].iloc[-1] == pytest.approx(x["dose"].max(), abs=1e-3)
        assert curve["dose"].is_monotonic_increasing
    assert x["dose"].max() > 9000  # the data's units, not the standardized ones


def test_the_curves_are_k0_tasks_in_the_schemas_encoding(sites):
    grid = effect_grid(sites, num_points=7)
    tasks = effect_tasks(sites.schema, grid, num_points=7)
    assert tasks.x_support.shape == (6, 0, sites.x_dim) and tasks.x_query.shape == (6, 7, sites.x_dim)
    x, _ = sites.schema.encode(grid, "x")
    assert torch.allclose(tasks.x_query.reshape(-1, sites.x_dim).double(), x, atol=1e-6)
    metadata, _ = sites.schema.encode(grid.iloc[::7], "metadata")
    assert torch.allclose(tasks.metadata.double(), metadata, atol=1e-6)


def test_effects_frame_has_every_predictor_with_finite_ordered_bands(sites, mixed):
    frame = effects_frame({"pooled regression": mixed.predictors["pooled"],
                           "mixed model (BLUP)": mixed.predictors["mixed_model"]}, sites)
    assert list(frame.columns) == ["predictor", "varied", "dose", "batch", "altitude", "region",
                                   "response_mean", "response_q05", "response_q95"]
    assert frame["predictor"].value_counts().to_dict() == {"pooled regression": 6 * EFFECT_POINTS,
                                                           "mixed model (BLUP)": 6 * EFFECT_POINTS}
    values = frame[["response_mean", "response_q05", "response_q95"]].to_numpy()
    assert torch.isfinite(torch.as_tensor(values)).all()
    assert ((frame["response_q05"] < frame["response_mean"]) & (frame["response_mean"] < frame["response_q95"])).all()
    # a new site's band holds the group spread and the noise: wider than the noise's ±1.64
    assert (frame["response_q95"] - frame["response_q05"]).min() > 2 * 1.64


def term_value(term: str, row) -> float:
    """The value of a fixed-effect term (``I(dose^2):region=south``) at a row in the data's units."""
    value = 1.0
    for factor in term.split(":"):
        if factor == "(Intercept)":
            continue
        if "=" in factor:
            column, level = factor.split("=")
            value *= float(row[column] == level)
        elif factor.startswith("I("):
            column, power = factor[2:-1].split("^")
            value *= row[column] ** int(power)
        else:
            value *= row[factor]
    return value


def test_the_mixed_models_curves_are_its_fixed_effects_in_the_datas_units(sites, mixed):
    """The K = 0 mean is f(x, m)ᵀ β: with the estimates of metrics.json on the user's columns."""
    frame = effects_frame({"mixed": mixed.predictors["mixed_model"]}, sites, num_points=5)
    effects = mixed.details["mixed_model"]["fixed_effects"]
    assert [e["term"] for e in effects][:4] == ["(Intercept)", "dose", "batch=second", "I(dose^2)"]
    assert all(e["std_error"] > 0 and math.isfinite(e["std_error"]) for e in effects)
    for _, row in frame.iterrows():
        expected = sum(e["estimate"] * term_value(e["term"], row) for e in effects)
        assert row["response_mean"] == pytest.approx(expected, rel=1e-4, abs=1e-3)
    # the true slope of the response on dose at 1200 m in the east is 1.2 per g: 0.0012 per mg
    def mean(dose):
        row = {"dose": dose, "batch": "first", "altitude": 1200.0, "region": "east"}
        return sum(e["estimate"] * term_value(e["term"], row) for e in effects)

    assert (mean(5000.0) - mean(0.0)) / 5000 == pytest.approx(0.0012, rel=0.2)


def test_without_metadata_one_curve_and_without_a_numeric_x_an_error(sites):
    frame = grouped_frame(30, seed=1)
    plain = TabularTasks(frame, group="site", x="dose", y="response")
    grid = effect_grid(plain, num_points=4)
    assert list(grid.columns) == ["varied", "dose"] and len(grid) == 4 and (grid["varied"] == "").all()
    categorical = TabularTasks(frame, group="site", x="region", y="response")
    with pytest.raises(ValueError, match="numeric x column"):
        effect_grid(categorical)


def test_plot_effects_draws_every_panel(sites, mixed, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from hierarchical_meta.plots import plot_effects

    frame = effects_frame({"mixed model": mixed.predictors["mixed_model"], "pooled": mixed.predictors["pooled"]},
                          sites, num_points=9)
    path = tmp_path / "effects.png"
    plot_effects(frame, sites.schema, str(path))
    assert path.stat().st_size > 10_000
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
    assert width > height  # two columns of panels (predictors), two rows (altitude, region)
