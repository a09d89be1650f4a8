"""The linear baselines a specialist would fit (hierarchical_meta/baselines/design.py, linear.py).

- the design: polynomial terms, cross-level interactions for every power, the random-slope
  ladder and the lme4 formulas;
- the degree chosen on the validation groups: 2 on a quadratic hierarchy, 1 on a linear one;
- a random part that fails (an exception, a convergence warning) falls back to fewer random
  slopes, with a note, and no warning reaches the user;
- the fixed effects, their standard errors and the random-effect covariance in the data's
  units are those of statsmodels' own fit of the formula on the user's columns;
- bad input (the degree), as a table.

Each fit is of a few hundred rows (about a second in all per test).
"""

import math
import warnings

import numpy
import pytest
import torch

pandas = pytest.importorskip("pandas")
pytest.importorskip("statsmodels")

from hierarchical_meta.__main__ import main  # noqa: E402
from hierarchical_meta.baselines import PolynomialDesign, PooledRegression, check_degree, linear_baselines  # noqa: E402
from hierarchical_meta.baselines.linear import choose_degree, fit_mixed_model, fixed_effects_table  # noqa: E402
from hierarchical_meta.meta_model import ModelConfig  # noqa: E402
from hierarchical_meta.pipeline import run_fit  # noqa: E402
from hierarchical_meta.tasks import TabularTasks  # noqa: E402
from hierarchical_meta.train import TrainConfig  # noqa: E402


def hierarchy(curvature: float, slope_sd: float = 0.5, curvature_sd: float = 0.0, groups: int = 60,
              rows: int = 12, seed: int = 0, units=(5, 2, 50, 10)):
    """Groups g0, g1, … with a numeric metadata column m and a two-level kind::

        y_tn = a_t + b_t x_tn + c_t x_tn² + ε,   a_t = 1 + m_t + u_t,   b_t = 1 - m_t / 2 + v_t,
        c_t = curvature + w_t,   u ~ N(0, 0.8²),  v ~ N(0, slope_sd²),  w ~ N(0, curvature_sd²),
        ε ~ N(0, 0.3²),  x ~ U(-2, 2)

    in user units: dose = 5 + 2 x, yield = 50 + 10 y (``units``), m as it is.
    """
    g = torch.Generator().manual_seed(seed)
    f64 = dict(dtype=torch.float64, generator=g)
    m = torch.randn(groups, **f64)
    a = 1 + m + 0.8 * torch.randn(groups, **f64)
    b = 1 - 0.5 * m + slope_sd * torch.randn(groups, **f64)
    c = curvature + curvature_sd * torch.randn(groups, **f64)
    unit = torch.arange(groups).repeat_interleave(rows)
    x = 4 * torch.rand(groups * rows, **f64) - 2
    y = a[unit] + b[unit] * x + c[unit] * x ** 2 + 0.3 * torch.randn(groups * rows, **f64)
    x0, dx, y0, dy = units
    return pandas.DataFrame({"g": [f"g{i}" for i in unit.tolist()], "dose": (x0 + dx * x).tolist(),
                             "yield": (y0 + dy * y).tolist(), "m": m[unit].tolist(),
                             "kind": [("a", "b")[i % 2] for i in unit.tolist()]})


def family(frame, **columns):
    return TabularTasks(frame, **{"group": "g", "x": "dose", "y": "yield", "metadata": ["m"],
                                  "val_fraction": 0.25, **columns})


# -- the design ----------------------------------------------------------------------------------

def test_the_design_names_every_term_and_its_formula():
    frame = hierarchy(0.0)
    frame["site"] = [("a", "b")[i % 2] for i in range(len(frame))]  # a categorical x
    frame["dose2"] = frame["dose"] ** 0.5
    tasks = family(frame, x=["dose", "site", "dose2"], metadata=["m", "kind"])
    design = PolynomialDesign(tasks.schema, degree=2)
    assert design.x_names == ["dose", "site=b", "dose2", "I(dose^2)", "I(dose2^2)"]
    assert design.metadata_names == ["m", "kind=b"]
    # every numeric term (both powers of both columns) with every metadata entry
    assert design.interactions == [(0, 0), (0, 1), (3, 0), (3, 1), (2, 0), (2, 1), (4, 0), (4, 1)]
    assert design.formula() == "yield ~ (dose + I(dose^2) + dose2 + I(dose2^2)) * (m + kind) + site"
    ladder = [design.random_part(slopes) for slopes in design.slope_ladder()]
    assert ladder == ["(1 + dose + I(dose^2) + dose2 + I(dose2^2) | g)", "(1 + dose + dose2 | g)",
                      "(1 + dose | g)", "(1 | g)"]
    batch = tasks.all_tasks(2, split="train")
    expanded = design.batch(batch)
    assert expanded.x_query.shape[-1] == 5 and expanded.metadata.shape[-1] == 2
    assert torch.equal(expanded.x_query[..., 3], batch.x_query[..., 0] ** 2)
    plain = PolynomialDesign(tasks.schema, degree=1, use_metadata=False)
    assert plain.formula([("dose", 1)]) == "yield ~ dose + dose2 + site + (1 + dose | g)"
    assert plain.interactions == []


def test_the_pooled_regression_has_the_same_interactions_as_the_mixed_model():
    tasks = family(hierarchy(1.0))
    design = PolynomialDesign(tasks.schema, degree=2)
    train = design.batch(tasks.all_tasks(0, split="train"))
    pooled = PooledRegression(interactions=design.interactions).fit(train)
    h = pooled.features(train.x_query, train.metadata)
    assert h.shape[-1] == 1 + 2 + 1 + 2  # 1, x, x², m, x·m, x²·m
    assert torch.allclose(h[..., 5], (train.x_query[..., 1] * train.metadata[:, None, 0]).double())
    with pytest.raises(ValueError, match="use_metadata=True"):
        PooledRegression(use_metadata=False, interactions=[(0, 0)])


# -- the degree ----------------------------------------------------------------------------------

@pytest.mark.parametrize("curvature, degree", [(1.0, 2), (0.0, 1)])
def test_the_degree_is_chosen_on_the_validation_groups(curvature, degree):
    tasks = family(hierarchy(curvature))
    fitted = linear_baselines(tasks, shots=(0, 2, 5), degree="auto", seed=0)
    mixed = fitted.details["mixed_model"]
    assert mixed["degree"] == degree and fitted.details["pooled"]["degree"] == degree
    selection = mixed["degree_selection"]
    assert selection["choice"] == "validation" and set(selection["validation_loglik"]) == {"1", "2", "3"}
    assert any(f"degree {degree} was chosen on the 15 validation groups" in note for note in fitted.notes)
    if degree == 2:
        assert mixed["formula"].startswith("yield ~ (dose + I(dose^2)) * m + (1 + dose")
        assert selection["validation_loglik"]["2"] > selection["validation_loglik"]["1"] + 0.1


def test_a_given_degree_is_used_and_a_numeric_x_with_few_values_caps_it():
    frame = hierarchy(1.0)
    fitted = linear_baselines(family(frame), shots=(0, 2), degree=3)
    assert fitted.details["mixed_model"]["degree"] == 3
    assert fitted.details["mixed_model"]["degree_selection"] == {"choice": "given"}
    frame["dose"] = frame["dose"].round().clip(4, 6)  # three values: 4, 5, 6
    capped = linear_baselines(family(frame), shots=(0, 2), degree=3)
    assert capped.details["pooled"]["degree"] == 2
    assert any("'dose' takes 3 distinct values" in note for note in capped.notes)


def test_the_one_standard_error_rule_prefers_the_lower_degree():
    base = torch.tensor([0.0, 1.0, -1.0, 0.5])
    assert choose_degree({1: base, 2: base + torch.tensor([0.02, -0.01, 0.03, -0.02])}) == 1
    noise = torch.tensor([0.05, -0.05, 0.05, -0.05])
    assert choose_degree({1: base, 2: base + 0.3, 3: base + 0.31 + noise}) == 2
    assert choose_degree({1: base, 2: base + 0.3, 3: base + 0.4 + noise}) == 3


# -- the fallback --------------------------------------------------------------------------------

def failing_slopes(monkeypatch, failure):
    """statsmodels' MixedLM with a random slope fails by ``failure`` ("raise" or "warn")."""
    from statsmodels.regression.mixed_linear_model import MixedLM
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    original = MixedLM.fit

    def fit(self, *args, **kwargs):
        if self.k_re > 1 and failure == "raise":
            raise numpy.linalg.LinAlgError("Singular matrix")
        result = original(self, *args, **kwargs)
        if self.k_re > 1:
            warnings.warn("The Hessian matrix at the estimated parameter values is not positive definite.",
                          ConvergenceWarning, stacklevel=2)
        return result

    monkeypatch.setattr(MixedLM, "fit", fit)


@pytest.mark.parametrize("failure, reason", [("raise", "Singular matrix"), ("warn", "not positive definite")])
def test_a_failing_random_slope_falls_back_to_a_random_intercept_with_a_note(monkeypatch, capsys, failure, reason):
    failing_slopes(monkeypatch, failure)
    tasks = family(hierarchy(1.0))
    fitted = linear_baselines(tasks, shots=(0, 2), degree=2)  # warnings are errors in pytest: none escapes
    mixed = fitted.details["mixed_model"]
    assert mixed["formula"] == "yield ~ (dose + I(dose^2)) * m + (1 | g)"
    assert [f["random"] for f in mixed["random_slope_fallback"]] == ["(1 + dose + I(dose^2) | g)", "(1 + dose | g)"]
    assert all(reason in f["failure"] for f in mixed["random_slope_fallback"])
    note = next(note for note in fitted.notes if note.startswith("mixed model: fitted with the random part (1 | g)"))
    assert "(1 + dose | g)" in note and reason in note
    assert "mixed_model" in fitted.predictors and mixed["random_effects"]["terms"] == ["(Intercept)"]
    assert capsys.readouterr().err == ""


def test_data_without_slope_spread_fall_back_or_fit_a_slope_variance_near_zero():
    """No random slope (v = 0): statsmodels fails (the fallback, noted) or finds a variance near 0
    (which of the two can depend on the BLAS threads' rounding)."""
    fitted = linear_baselines(family(hierarchy(0.0, slope_sd=0.0)), shots=(0,), degree=1)
    mixed = fitted.details["mixed_model"]
    if mixed["random_slope_fallback"]:
        assert mixed["formula"].endswith("(1 | g)") and any("(1 + dose | g)" in n for n in fitted.notes)
    else:  # (yield per dose)²; a slope sd of 0.5 per unit x would be 6.25
        assert mixed["random_effects"]["covariance"][1][1] < 0.5


def test_every_fit_failing_skips_the_mixed_model_with_the_reasons(monkeypatch):
    from statsmodels.regression.mixed_linear_model import MixedLM

    def fit(self, *args, **kwargs):
        raise ValueError("no luck")

    monkeypatch.setattr(MixedLM, "fit", fit)
    fitted = linear_baselines(family(hierarchy(0.0)), shots=(0,), degree="auto")
    assert "mixed_model" not in fitted.predictors and "pooled" in fitted.predictors
    assert fitted.skipped["mixed_model"].startswith("every fit failed: (1 + dose | g): no luck")
    assert fitted.details["pooled"]["degree"] == 1


# -- the estimates -------------------------------------------------------------------------------

def test_fixed_effects_and_their_standard_errors_match_statsmodels_on_the_users_columns():
    """statsmodels' own fit of the formula on the user's columns (near standardized ones, where its
    optimizer finds the same optimum; far from them it may stop at a worse one)."""
    import statsmodels.formula.api as smf

    frame = hierarchy(1.0, curvature_sd=0.3, units=(0.2, 1.1, 1.0, 2.0))
    tasks = family(frame, metadata=["kind"])
    fit = fit_mixed_model(PolynomialDesign(tasks.schema, degree=2), tasks.all_tasks(0, split="train"))
    assert fit.formula == "yield ~ (dose + I(dose^2)) * kind + (1 + dose + I(dose^2) | g)"
    table = fixed_effects_table(fit)
    assert table["scale"].startswith("the data's units")
    train = frame[frame["g"].isin(tasks.groups("train"))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # statsmodels' boundary warning
        theirs = smf.mixedlm("Q('yield') ~ (dose + I(dose**2)) * kind", train, groups=train["g"],
                             re_formula="~dose + I(dose**2)").fit(reml=True, method=["lbfgs", "bfgs"])
    names = {"(Intercept)": "Intercept", "dose": "dose", "I(dose^2)": "I(dose ** 2)", "kind=b": "kind[T.b]",
             "dose:kind=b": "dose:kind[T.b]", "I(dose^2):kind=b": "I(dose ** 2):kind[T.b]"}
    assert [e["term"] for e in table["fixed_effects"]] == list(names)
    for entry in table["fixed_effects"]:
        name = names[entry["term"]]
        assert math.isclose(entry["estimate"], theirs.fe_params[name], rel_tol=2e-3, abs_tol=2e-3), entry
        assert math.isclose(entry["std_error"], theirs.bse_fe[name], rel_tol=2e-2), entry
    covariance = torch.tensor(table["random_effects"]["covariance"], dtype=torch.float64)
    assert torch.allclose(covariance, torch.tensor(theirs.cov_re.values), rtol=2e-2, atol=1e-2)
    assert math.isclose(table["residual_variance"], theirs.scale, rel_tol=1e-3)
    # the true curvature: 2 yield per x², x = (dose - 0.2) / 1.1
    assert abs(table["fixed_effects"][2]["estimate"] - 2 / 1.1 ** 2) < 3 * table["fixed_effects"][2]["std_error"]


# -- bad input -----------------------------------------------------------------------------------

BAD_DEGREES = [
    # id, degree, outcome, expected (the degree, or a fragment of the error)
    ("auto", "auto", "handled", "auto"),
    ("text 2", "2", "handled", 2),
    ("int 3", 3, "handled", 3),
    ("spaces", " 1 ", "handled", 1),
    ("zero", 0, "error", "'auto' or 1 to 3, got 0"),
    ("four", "4", "error", "got '4'"),
    ("a word", "two", "error", "got 'two'"),
    ("a fraction", 2.5, "error", "got 2.5"),
    ("a bool", True, "error", "got True"),
    ("none", None, "error", "got None"),
]


@pytest.mark.parametrize("case_id, degree, outcome, expected", BAD_DEGREES, ids=[c[0] for c in BAD_DEGREES])
def test_bad_degrees(case_id, degree, outcome, expected):
    if outcome == "handled":
        assert check_degree(degree) == expected
    else:
        with pytest.raises(ValueError, match=r"the baselines' degree must be") as error:
            check_degree(degree)
        assert expected in str(error.value)


def test_a_bad_degree_stops_run_fit_and_the_command_before_training(tmp_path, capsys):
    tasks = family(hierarchy(0.0))
    config = ModelConfig(x_dim=tasks.x_dim, y_dim=tasks.y_dim, metadata_dim=tasks.metadata_dim, hidden=8, latent_dim=2)
    with pytest.raises(ValueError, match="got 5"):
        run_fit(tasks, config, TrainConfig(steps=2), str(tmp_path / "run"), baseline_degree=5, log=None)
    assert not (tmp_path / "run" / "model.pt").exists()
    with pytest.raises(SystemExit):
        main(["fit", "--tasks", "sleepstudy", "--baseline-degree", "quadratic", "--out", str(tmp_path / "cli")])
    assert "got 'quadratic'" in capsys.readouterr().err


def test_data_the_linear_baselines_cannot_take_are_skipped_with_the_reason():
    frame = hierarchy(0.0)
    frame["other"] = frame["yield"] * 2
    two_y = linear_baselines(family(frame, y=["yield", "other"]))
    assert two_y.predictors == {} and "take one y column, the data have 2" in two_y.skipped["mixed_model"]
    categorical = linear_baselines(family(frame, x=["kind"]), shots=(0,))
    assert categorical.skipped == {"mixed_model": "no numeric x column to give a random slope"}
    assert categorical.details["pooled"]["formula"] == "yield ~ m + kind"
