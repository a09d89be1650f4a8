"""The Student-t likelihood (``likelihood="student"``) and its predictive, against closed forms.

- ``student_t_cdf`` (the regularized incomplete beta function ``betainc``) equals the closed-form
  CDFs of ν = 1 (Cauchy), 2 and 3 everywhere from the centre to far tails, and scipy's where scipy
  is installed;
- a ``MixturePredictive`` with ``df`` has Student-t components: its log_prob is the weighted
  mixture of torch's ``StudentT`` densities, its CDF and quantiles those of the t distribution
  (closed-form inverse CDF of ν = 2), and the Newton quantile inverts the mixture CDF;
- the model's likelihood is torch's ``StudentT`` with learned (ν = 1 + softplus, from 4) or fixed
  ν; the fast bound equals Pyro's ``Trace_ELBO``; the importance-sampled predictive carries ν;
- the schema's user units keep ν (the log-density shifts by -log s);
- bad inputs (table ``CASES``): each raises one clear ``ValueError`` naming the problem, or is handled.

Float64 where a tolerance is tight; each says why it is enough.
"""

import math

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

from hierarchical_meta import bound
from hierarchical_meta.guide import AmortizedGuide
from hierarchical_meta.meta_model import HierarchicalMetaModel, ModelConfig
from hierarchical_meta.model import INITIAL_DF, GenerativeModel
from hierarchical_meta.predict import posterior_predictive
from hierarchical_meta.predictive import MixturePredictive, betainc, point_metrics, student_t_cdf
from hierarchical_meta.tasks import SinusoidTasks

Z = torch.cat([-torch.logspace(4, -3, 40), torch.zeros(1), torch.logspace(-3, 4, 40)]).double()

CLOSED_FORM_CDF = {  # ν: P(t ≤ z) (Johnson, Kotz and Balakrishnan, ch. 28)
    1.0: lambda z: 0.5 + torch.atan(z) / math.pi,
    2.0: lambda z: 0.5 + z / (2 * torch.sqrt(2 + z ** 2)),
    3.0: lambda z: 0.5 + (z / (math.sqrt(3) * (1 + z ** 2 / 3)) + torch.atan(z / math.sqrt(3))) / math.pi,
}


def t2_quantile(level):
    """The inverse CDF of ν = 2: t = (2α − 1) / sqrt(2 α (1 − α))."""
    return (2 * level - 1) / math.sqrt(2 * level * (1 - level))


# -- the CDF ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("df", sorted(CLOSED_FORM_CDF))
def test_cdf_matches_closed_forms_into_far_tails(df):
    """Absolute error 1e-13 everywhere and relative 1e-9 in the lower tail (down to P ~ 1e-8 at
    |z| = 1e4 for ν = 2): the continued fraction converges to float64 precision; the closed
    forms lose relative precision in the lower tail themselves (0.5 − a number near 0.5), so
    the relative check stops where they do (P > 1e-6)."""
    ours, exact = student_t_cdf(Z, torch.tensor(df, dtype=torch.float64)), CLOSED_FORM_CDF[df](Z)
    torch.testing.assert_close(ours, exact, rtol=0, atol=1e-13)
    lower = exact > 1e-6
    torch.testing.assert_close(ours[lower], exact[lower], rtol=1e-9, atol=0)
    assert ours[0] < 1e-3 and ours[-1] > 1 - 1e-3  # reaches the tails


def test_cdf_and_betainc_match_scipy():
    """Any ν (here 1.2 to 200) and the incomplete beta function at random arguments; 1e-11 (the
    fraction sums about sqrt(ν) terms of size ~1 near z = 0: a few hundred roundings of 1e-16)."""
    scipy = pytest.importorskip("scipy")
    from scipy import special, stats
    del scipy
    g = torch.Generator().manual_seed(0)
    for df in (1.2, 4.0, 30.0, 200.0):
        reference = torch.from_numpy(stats.t.cdf(Z.numpy(), df))
        torch.testing.assert_close(student_t_cdf(Z, torch.tensor(df, dtype=torch.float64)), reference,
                                   rtol=0, atol=1e-11)
    a, b = 0.05 + 30 * torch.rand(500, generator=g, dtype=torch.float64), 0.05 + 30 * torch.rand(500, generator=g,
                                                                                                  dtype=torch.float64)
    x = torch.rand(500, generator=g, dtype=torch.float64)
    torch.testing.assert_close(betainc(a, b, x), torch.from_numpy(special.betainc(a.numpy(), b.numpy(), x.numpy())),
                               rtol=0, atol=1e-11)


def test_betainc_at_the_ends_and_symmetry():
    a, b = torch.tensor([0.5, 2.0, 7.0], dtype=torch.float64), torch.tensor([3.0, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(betainc(a, b, torch.zeros(3, dtype=torch.float64)), torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(betainc(a, b, torch.ones(3, dtype=torch.float64)), torch.ones(3, dtype=torch.float64))
    x = torch.tensor([0.1, 0.5, 0.93], dtype=torch.float64)
    torch.testing.assert_close(betainc(a, b, x) + betainc(b, a, 1 - x), torch.ones(3, dtype=torch.float64),
                               rtol=0, atol=1e-14)
    torch.testing.assert_close(betainc(a[2:], b[2:], x[2:]), x[2:] ** 7, rtol=1e-13, atol=0)  # I_x(a, 1) = xᵃ


# -- the mixture predictive ------------------------------------------------------------------------

def _mixture(df=(3.0,), T=2, S=5, Q=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    f64 = dict(dtype=torch.float64, generator=g)
    Dy = len(df)
    return MixturePredictive(torch.randn(T, S, **f64), torch.randn(T, S, Q, Dy, **f64),
                             0.2 + torch.rand(T, S, Q, Dy, **f64), torch.tensor(df, dtype=torch.float64))


def test_mixture_log_prob_and_cdf_are_the_weighted_student_t_components():
    """Against a loop over components with torch's StudentT and the closed-form CDF of ν = 3 (1e-12)."""
    p = _mixture(df=(3.0, 3.0))
    y = torch.randn(2, 4, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    density, cdf = 0.0, 0.0
    for s in range(5):
        t = torch.distributions.StudentT(3.0, p.mean[:, s], p.std[:, s])
        density = density + p.weights[:, s, None] * t.log_prob(y).sum(-1).exp()
        cdf = cdf + p.weights[:, s, None, None] * CLOSED_FORM_CDF[3.0]((y - p.mean[:, s]) / p.std[:, s])
    torch.testing.assert_close(p.log_prob(y), density.log(), rtol=0, atol=1e-12)
    torch.testing.assert_close(p.cdf(y), cdf, rtol=0, atol=1e-12)


@pytest.mark.parametrize("level", [0.001, 0.05, 0.5, 0.95, 0.999])
def test_quantile_of_one_component_is_the_t_quantile(level):
    """ν = 2 has a closed-form inverse CDF: the 90% interval is μ ± 2.92 σ, not the normal ± 1.64 σ."""
    p = _mixture(df=(2.0,), S=1)
    expected = p.mean[:, 0] + p.std[:, 0] * t2_quantile(level)
    torch.testing.assert_close(p.quantile(level), expected, rtol=1e-9, atol=1e-9)


def test_mixture_quantile_inverts_the_cdf():
    """Newton's quantile of a 5-component mixture, ν = 1.5 (heavy tails): F(q) = level to 1e-9."""
    p = _mixture(df=(1.5,))
    for level in (0.01, 0.05, 0.5, 0.95, 0.99):
        torch.testing.assert_close(p.cdf(p.quantile(level)), torch.full((2, 4, 1), level, dtype=torch.float64),
                                   rtol=0, atol=1e-9)


def test_point_metrics_coverage_uses_the_t_interval():
    """y = μ ± 2.5 σ lies inside the central 90% interval of t_2 (± 2.92 σ), outside the normal one's."""
    mean, std = torch.zeros(1, 1, 2, 1, dtype=torch.float64), torch.ones(1, 1, 2, 1, dtype=torch.float64)
    y = torch.tensor([[[2.5], [-2.5]]], dtype=torch.float64)
    student = MixturePredictive(torch.zeros(1, 1, dtype=torch.float64), mean, std, torch.tensor([2.0]).double())
    normal = MixturePredictive(torch.zeros(1, 1, dtype=torch.float64), mean, std)
    assert point_metrics(student, y)["coverage90"] == 1.0 and point_metrics(normal, y)["coverage90"] == 0.0
    assert point_metrics(student, y)["loglik"] > point_metrics(normal, y)["loglik"]  # heavier tails


def test_user_units_keep_the_degrees_of_freedom():
    pandas = pytest.importorskip("pandas")
    from hierarchical_meta.tasks.schema import Column, TabularSchema
    column = Column.fit("y", "numeric", pandas.Series([0.0, 10.0, 20.0]))
    schema = TabularSchema("g", x=[Column.fit("x", "numeric", pandas.Series([0.0, 1.0]))], y=[column], metadata=[])
    p = _mixture()
    user = schema.predictive_to_user(p)
    assert torch.equal(user.df, p.df)
    y = torch.randn(2, 4, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(user.log_prob(schema.y_to_user(y)), p.log_prob(y) - math.log(column.std),
                               rtol=0, atol=1e-12)


# -- the model --------------------------------------------------------------------------------------

@pytest.mark.usefixtures("float64")
def test_likelihood_is_student_t_with_learned_or_fixed_df():
    torch.manual_seed(0)
    learned = GenerativeModel(latent_dim=3, hidden=8, layers=1, likelihood="student")
    fixed = GenerativeModel(latent_dim=3, hidden=8, layers=1, likelihood="student", student_df=2.5)
    assert float(learned.df().detach()) == pytest.approx(INITIAL_DF) and float(fixed.df()) == 2.5
    assert "raw_df" in dict(learned.named_parameters()) and "fixed_df" in dict(fixed.named_buffers())
    x, y = torch.randn(2, 5, 1), torch.randn(2, 5, 1)
    phi2 = torch.randn(2, 1, 3)
    for model in (learned, fixed):
        expected = torch.distributions.StudentT(model.df(), model.decode(phi2, x), model.noise_std())
        torch.testing.assert_close(model.likelihood(phi2, x).log_prob(y), expected.log_prob(y)[..., 0],
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("noise", ["constant", "heteroscedastic"])
def test_fast_bound_equals_trace_elbo_with_student_noise(noise):
    """Same draws, value and gradients (ν's too); 1e-10 as in tests/test_bound.py."""
    torch.manual_seed(0)
    model = GenerativeModel(1, 1, 2, 3, hidden=8, layers=1, likelihood="student", noise=noise)
    guide = AmortizedGuide(1, 1, 2, 3, hidden=8, layers=1)
    x, y, metadata = torch.randn(3, 4, 1), torch.randn(3, 4, 1), torch.randn(3, 2)
    mask = torch.arange(4) < torch.tensor([[4], [0], [2]])
    torch.manual_seed(1)
    loss = Trace_ELBO(num_particles=5, vectorize_particles=True, max_plate_nesting=2).differentiable_loss(
        model, guide, x, metadata, y, mask)
    torch.manual_seed(1)
    value = bound.fast_elbo(model, guide, x, y, metadata, mask, 5)
    torch.testing.assert_close(value, -loss, rtol=1e-10, atol=1e-10)
    params = list(model.parameters()) + list(guide.parameters())
    for ours, theirs in zip(torch.autograd.grad(value, params), torch.autograd.grad(-loss, params), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    pyro.clear_param_store()


def test_predictive_has_the_models_degrees_of_freedom():
    """The importance-sampled predictive mixes t components with the model's ν and scale, and its
    quantiles invert its CDF; HierarchicalMetaModel.predict takes that path (not the closed form)."""
    torch.manual_seed(0)
    meta = HierarchicalMetaModel(ModelConfig(latent_dim=3, hidden=8, layers=1, prior="affine", decoder="polynomial",
                                             likelihood="student", student_df=3.0))
    batch = SinusoidTasks().sample(2, 3, 4, generator=torch.Generator().manual_seed(1))
    predictive, _ = posterior_predictive(meta.model, meta.guide, batch.x_support, batch.y_support, batch.metadata,
                                         batch.support_mask, batch.x_query, num_samples=32)
    assert torch.equal(predictive.df, torch.tensor([3.0]))
    torch.testing.assert_close(predictive.std, meta.model.noise_std().detach().expand(predictive.std.shape))
    torch.manual_seed(2)
    via_meta, _ = meta.predict(batch, num_samples=32)
    assert via_meta.log_weights.shape == (2, 32) and torch.equal(via_meta.df, predictive.df)
    q = via_meta.quantile(0.9)
    torch.testing.assert_close(via_meta.cdf(q), torch.full_like(q, 0.9), rtol=0, atol=1e-5)


# -- bad inputs ----------------------------------------------------------------------------------

def _config(**kw):
    return lambda: ModelConfig(**kw)


def _predictive(df):
    return lambda: MixturePredictive(torch.zeros(1, 1), torch.zeros(1, 1, 2, 1), torch.ones(1, 1, 2, 1), df)


#: (id, what to run, "error" or "handled", the message fragment or a check of the result)
CASES = [
    ("df-with-normal", _config(student_df=3.0), "error", "student_df=3.0 is the fixed degrees of freedom"),
    ("df-not-above-one", _config(likelihood="student", student_df=1.0), "error", "a finite number > 1"),
    ("df-nan", _config(likelihood="student", student_df=float("nan")), "error", "a finite number > 1"),
    ("df-infinite", _config(likelihood="student", student_df=float("inf")), "error", "a finite number > 1"),
    ("student-with-classes", _config(likelihood="student", num_classes=3), "error",
     "num_classes=3 needs likelihood='categorical'"),
    ("student-heteroscedastic", _config(likelihood="student", noise="heteroscedastic"), "handled",
     lambda c: c.noise == "heteroscedastic"),
    ("student-fixed-noise", _config(likelihood="student", noise_std=0.5, student_df=5.0), "handled",
     lambda c: HierarchicalMetaModel(c).model.noise_std().item() == 0.5),
    ("predictive-df-shape", _predictive(torch.tensor([3.0, 3.0])), "error", "df must be [Dy=1]"),
    ("predictive-df-zero", _predictive(torch.tensor([0.0])), "error", "degrees of freedom > 0"),
    ("normal-model-df", lambda: GenerativeModel().df(), "error",
     "df is the degrees of freedom of likelihood='student'"),
    ("quantile-level", lambda: _mixture().quantile(1.0), "error", "level must be in (0, 1)"),
]


@pytest.mark.parametrize("run, outcome, expected", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input(run, outcome, expected):
    if outcome == "error":
        with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace(")", r"\)")
                           .replace("[", r"\[").replace("]", r"\]")):
            run()
    else:
        assert expected(run())
