"""Predictive distributions, their metrics, the importance-weighted posterior predictive and
the exact-Bayes reference, each against a closed form or a slow reference.

- MixturePredictive: log_prob / cdf / quantile / predictive mean of a single Gaussian in
  closed form, and of a two-component mixture by numerical integration of its density;
- point_metrics: masked points do not count, coverage90 is the documented fraction;
- evaluate's worst group: the lowest mean loglik per point of one group (pooled over draws)
  or one task of one draw, against a direct computation;
- posterior_predictive (importance sampling with a defensive prior mixture) on the
  linear-Gaussian instance (prior "linear", decoder "features"), where p(y_q | support, m)
  and p(Y_s | X_s, m) are Gaussian in closed form: it converges to them, within the
  Monte Carlo error it reports;
- the sinusoid family's exact predictive (grid over (A, phase), b integrated analytically)
  against a brute-force Monte Carlo over prior draws of (A, phase, b), its calibration, the
  noise floor lying above it, and missing (NaN) metadata read as uninformative.
"""

import math

import pytest
import torch

from hierarchical_meta.evaluate import EvalConfig, evaluate, heldout_tasks
from hierarchical_meta.meta_model import HierarchicalMetaModel, ModelConfig
from hierarchical_meta.networks import metadata_features, positive
from hierarchical_meta.predict import posterior_predictive
from hierarchical_meta.predictive import MixturePredictive, point_metrics
from hierarchical_meta.tasks import BasisFunctionTasks, SinusoidTasks, TaskBatch, TaskFamily

Z95 = 1.6448536269514722  # standard normal 0.95 quantile


# -- MixturePredictive against closed forms -----------------------------------------------------

def _single(T=2, Q=3, Dy=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(T, 1, Q, Dy, generator=g, dtype=torch.float64)
    std = 0.5 + torch.rand(T, 1, Q, Dy, generator=g, dtype=torch.float64)
    return MixturePredictive(torch.zeros(T, 1, dtype=torch.float64), mean, std)


def test_single_gaussian_matches_closed_forms():
    """One component: the mixture is N(μ, σ²) per output dim (float64, so 1e-10 / bisection 1e-9)."""
    p = _single()
    normal = torch.distributions.Normal(p.mean[:, 0], p.std[:, 0])
    y = torch.randn(2, 3, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(p.log_prob(y), normal.log_prob(y).sum(-1), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(p.cdf(y), normal.cdf(y), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(p.predictive_mean(), p.mean[:, 0], rtol=0, atol=1e-12)
    for level, z in ((0.05, -Z95), (0.5, 0.0), (0.95, Z95)):
        # one component: the starting point (the moment-matched normal's quantile) is exact
        torch.testing.assert_close(p.quantile(level), p.mean[:, 0] + z * p.std[:, 0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(p.effective_sample_size(), torch.ones(2, dtype=torch.float64))


def test_two_component_mixture_against_numerical_integration():
    """Density on a fine grid (trapezoid, h = 1e-3 over ±12σ): integrates to 1, its running
    integral is the cdf, its first moment the predictive mean, and the quantile inverts the
    numerical cdf. The trapezoid error is O(h² max|p''|) ~ 1e-6, hence atol 1e-5.
    Unnormalized and -inf (padding) log weights are allowed.
    """
    log_w = torch.tensor([[math.log(3.0), math.log(1.0), -math.inf]], dtype=torch.float64)  # 0.75 / 0.25 / 0
    mean = torch.tensor([-1.0, 2.0, 100.0], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.5, 1.2, 1.0], dtype=torch.float64).view(1, 3, 1, 1)
    p = MixturePredictive(log_w, mean, std)
    torch.testing.assert_close(p.weights, torch.tensor([[0.75, 0.25, 0.0]], dtype=torch.float64))
    grid = torch.linspace(-16.0, 16.0, 32001, dtype=torch.float64)
    dens = p.log_prob(grid.view(1, 1, -1, 1).expand(1, 1, -1, 1).reshape(1, -1, 1)).exp()[0]  # [G]
    # the same points as query points of one task
    h = float(grid[1] - grid[0])
    assert abs(float(torch.trapezoid(dens, dx=h)) - 1.0) < 1e-5
    running = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumulative_trapezoid(dens, dx=h)])
    probe = torch.arange(0, 32001, 2000)
    cdf = p.cdf(grid[probe].view(1, -1, 1))[0, :, 0]
    torch.testing.assert_close(cdf, running[probe], rtol=0, atol=1e-5)
    mix_mean = p.predictive_mean()[0, 0, 0]
    assert abs(float(torch.trapezoid(grid * dens, dx=h)) - 0.75 * -1.0 - 0.25 * 2.0) < 1e-5
    assert abs(float(mix_mean) - (0.75 * -1.0 + 0.25 * 2.0)) < 1e-12
    for level in (0.05, 0.5, 0.9, 0.95):
        q = float(p.quantile(level)[0, 0, 0])
        numerical = float(grid[torch.searchsorted(running, torch.tensor(level, dtype=torch.float64))])
        assert abs(q - numerical) < 2e-3  # grid step 1e-3, plus the cdf's 1e-5 / density (> 0.02)
    # ESS of weights (0.75, 0.25): 1 / (0.5625 + 0.0625) = 1.6
    torch.testing.assert_close(p.effective_sample_size(), torch.tensor([1.6], dtype=torch.float64))


def bisection_quantile(p: MixturePredictive, level: float, iterations: int = 200) -> torch.Tensor:
    """The slow reference: bisection of the full mixture's cdf on a bracket of ±10 σ_max."""
    spread = 10 * p.std.amax(1)
    low, high = p.mean.amin(1) - spread, p.mean.amax(1) + spread
    for _ in range(iterations):
        mid = (low + high) / 2
        below = p.cdf(mid) < level
        low, high = torch.where(below, mid, low), torch.where(below, high, mid)
    return (low + high) / 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_newton_quantile_matches_bisection_on_many_component_mixtures(seed):
    """Skewed, multimodal mixtures of 300 components with very unequal weights (float64):
    the safeguarded Newton quantile equals 200 bisection steps to its stopping tolerance,
    sqrt(eps) = 1.5e-8 of the mixture's sd (float64)."""
    g = torch.Generator().manual_seed(seed)
    f64 = dict(dtype=torch.float64, generator=g)
    T, S, Q, D = 3, 300, 7, 2
    p = MixturePredictive(4 * torch.randn(T, S, **f64), 3 * torch.randn(T, S, Q, D, **f64),
                          0.05 + torch.rand(T, S, Q, D, **f64))
    sd = ((p.weights[..., None, None] * (p.std ** 2 + p.mean ** 2)).sum(1) - p.predictive_mean() ** 2).sqrt()
    for level in (0.01, 0.05, 0.5, 0.95, 0.99):
        fast, slow = p.quantile(level), bisection_quantile(p, level)
        assert ((fast - slow).abs() / sd).max() < 1.5e-8, level
        torch.testing.assert_close(p.cdf(fast), torch.full_like(fast, level), rtol=0, atol=1e-8)
    with pytest.raises(ValueError, match="level"):
        p.quantile(1.0)


def test_mixture_rejects_bad_shapes():
    with pytest.raises(ValueError, match="mean/std"):
        MixturePredictive(torch.zeros(2, 3), torch.zeros(2, 3, 4), torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match="mean/std"):
        MixturePredictive(torch.zeros(2, 3), torch.zeros(2, 3, 4, 1), torch.ones(2, 3, 5, 1))


# -- point_metrics -------------------------------------------------------------------------

def test_point_metrics_closed_form_and_coverage():
    """Unit Gaussians at 0: y = 0, 1, 1.6, 1.7, -3 -> loglik, mse exact; 3 of 5 inside ±1.645."""
    p = MixturePredictive(torch.zeros(1, 1), torch.zeros(1, 1, 5, 1), torch.ones(1, 1, 5, 1))
    y = torch.tensor([0.0, 1.0, 1.6, 1.7, -3.0]).view(1, 5, 1)
    metrics = point_metrics(p, y)
    expected_ll = float(torch.distributions.Normal(0.0, 1.0).log_prob(y).mean())
    assert metrics["loglik"] == pytest.approx(expected_ll, abs=1e-6)
    assert metrics["mse"] == pytest.approx(float((y ** 2).mean()), abs=1e-6)
    assert metrics["coverage90"] == pytest.approx(3 / 5)
    assert set(point_metrics(p, y, level=0.5)) == {"loglik", "mse", "coverage50"}


def test_point_metrics_coverage_needs_every_output_dimension_inside():
    p = MixturePredictive(torch.zeros(1, 1), torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2))
    y = torch.tensor([[[0.0, 0.0], [0.0, 2.5]]])
    assert point_metrics(p, y)["coverage90"] == pytest.approx(0.5)


def test_point_metrics_ignores_masked_points():
    """Masked query points with off-scale finite values: same metrics as dropping them."""
    g = torch.Generator().manual_seed(0)
    T, S, Q = 3, 4, 6
    p = MixturePredictive(torch.randn(T, S, generator=g), torch.randn(T, S, Q, 1, generator=g),
                          0.5 + torch.rand(T, S, Q, 1, generator=g))
    y = torch.randn(T, Q, 1, generator=g)
    mask = torch.ones(T, Q, dtype=torch.bool)
    mask[0, 4:] = False
    mask[2, 1:] = False
    y_garbage = torch.where(mask[..., None], y, torch.full_like(y, 1e4))
    metrics = point_metrics(p, y_garbage, mask)
    # slow reference: each task's kept points scored alone, pooled by point counts
    logp, sq, inside = [], [], []
    for t in range(T):
        keep = mask[t]
        sub = MixturePredictive(p.log_weights[t:t + 1], p.mean[t:t + 1, :, keep], p.std[t:t + 1, :, keep])
        m = point_metrics(sub, y[t:t + 1, keep])
        n = int(keep.sum())
        logp.append(m["loglik"] * n)
        sq.append(m["mse"] * n)
        inside.append(m["coverage90"] * n)
    n = int(mask.sum())
    assert metrics["loglik"] == pytest.approx(sum(logp) / n, abs=1e-5)
    assert metrics["mse"] == pytest.approx(sum(sq) / n, abs=1e-5)
    assert metrics["coverage90"] == pytest.approx(sum(inside) / n, abs=1e-6)
    with pytest.raises(ValueError, match="no unmasked query points"):
        point_metrics(p, y, torch.zeros(T, Q, dtype=torch.bool))


def test_point_metrics_masked_points_may_hold_any_finite_value():
    """TaskBatch allows any finite dummy value in padded slots; 1e20 squared overflows float32
    to inf, and inf * 0 = NaN: masking must select, not multiply (torch.where)."""
    p = MixturePredictive(torch.zeros(1, 1), torch.zeros(1, 1, 2, 1), torch.ones(1, 1, 2, 1))
    y = torch.tensor([[[0.5], [1e20]]])
    metrics = point_metrics(p, y, torch.tensor([[True, False]]))
    assert metrics["mse"] == pytest.approx(0.25)
    assert metrics["loglik"] == pytest.approx(float(torch.distributions.Normal(0.0, 1.0).log_prob(torch.tensor(0.5))))


# -- importance-weighted predictive on the linear-Gaussian instance ------------------------

def _linear_gaussian(seed=0):
    """Untrained linear-prior / features-decoder model (fixed noise 0.5), tasks with K = 3, Q = 4."""
    torch.manual_seed(seed)
    meta = HierarchicalMetaModel(ModelConfig(latent_dim=2, hidden=8, layers=1, prior="linear",
                                             decoder="features", guide_sees_metadata=False, noise_std=0.5))
    batch = SinusoidTasks().sample(3, 3, 4, generator=torch.Generator().manual_seed(seed + 1))
    return meta, batch


@torch.no_grad()
def _linear_gaussian_pieces(model, metadata):
    """g(m) [T, D], L [D, D], σ(m) [T, D] and s² of the linear prior, float64."""
    mf = metadata_features(metadata)
    return (model.prior_mean(mf).double(), model.phi1_to_phi2.weight.double(),
            positive(model.prior_scale(mf)).double(), float(model.noise_std()) ** 2)


@torch.no_grad()
def _exact_linear_gaussian(model, x_s, y_s, metadata, x_q, y_q, mask=None):
    """Closed form (float64): φ2 | m ~ N(g(m), L Lᵀ + diag σ(m)²); y = h(x)ᵀ φ2 + c(x) + ε.

    Returns per-task log p(Y_s | X_s, m) [T] and per-query-point log p(y_q | Y_s, X_s, m) [T, Q]
    (each query point conditioned on the support alone, as the mixture scores it).
    """
    g, L, sigma, s2 = _linear_gaussian_pieces(model, metadata)
    log_ev, log_pred = [], []
    for t in range(x_s.shape[0]):
        keep = slice(None) if mask is None else mask[t]
        cov_phi = L @ L.T + torch.diag(sigma[t] ** 2)
        H_s, c_s = model.features(x_s[t, keep]).double(), model.offset(x_s[t, keep]).double()[:, 0]  # [K, D], [K]
        H_q, c_q = model.features(x_q[t]).double(), model.offset(x_q[t]).double()[:, 0]
        mean_q = H_q @ g[t] + c_q
        var_q = ((H_q @ cov_phi) * H_q).sum(-1) + s2
        if len(H_s):
            cov_ss = H_s @ cov_phi @ H_s.T + s2 * torch.eye(len(H_s), dtype=torch.float64)
            mu_s = H_s @ g[t] + c_s
            ys = y_s[t, keep, 0].double()
            log_ev.append(torch.distributions.MultivariateNormal(mu_s, cov_ss).log_prob(ys))
            cov_qs = H_q @ cov_phi @ H_s.T
            gain = torch.linalg.solve(cov_ss, cov_qs.T).T
            mean_q = mean_q + gain @ (ys - mu_s)
            var_q = var_q - (gain * cov_qs).sum(-1)
        else:
            log_ev.append(torch.zeros((), dtype=torch.float64))
        log_pred.append(torch.distributions.Normal(mean_q, var_q.sqrt()).log_prob(y_q[t, :, 0].double()))
    return torch.stack(log_ev), torch.stack(log_pred)


class NearlyExactGuide:
    """A proposal close to, but not equal to, the exact posterior of the linear-Gaussian model.

    q(φ2 | X, Y) = N(μ_post + shift, inflate² Σ_post) and q(φ1 | φ2, m) = the exact conditional
    N(Lᵀ C⁻¹ (φ2 - g), I - Lᵀ C⁻¹ L) (C = L Lᵀ + diag σ²) with its std inflated. Being close, it
    keeps the effective sample size high, so the Monte Carlo error is small and the test has
    power; being wrong, it makes the importance weights matter. Same interface as the
    amortized guide (posterior_predictive takes any such object).
    """

    def __init__(self, model, inflate=1.3, shift=0.2):
        self.model, self.inflate, self.shift = model, inflate, shift

    @torch.no_grad()
    def phi2_posterior(self, x, y, metadata, mask=None):
        g, L, sigma, s2 = _linear_gaussian_pieces(self.model, metadata)
        C = L @ L.T + torch.diag_embed(sigma ** 2)  # [T, D, D]
        H = self.model.features(x).double()  # [T, K, D]
        if mask is not None:
            H = H * mask[..., None]
        resid = (y[..., 0].double() - self.model.offset(x).double()[..., 0])  # [T, K]
        if mask is not None:
            resid = resid * mask
        precision = torch.linalg.inv(C) + H.transpose(1, 2) @ H / s2
        cov = torch.linalg.inv(precision)
        mean = (cov @ (torch.linalg.solve(C, g[..., None]) + H.transpose(1, 2) @ resid[..., None] / s2))[..., 0]
        cov = self.inflate ** 2 * cov
        return torch.distributions.MultivariateNormal((mean + self.shift)[:, None].float(),
                                                      covariance_matrix=cov[:, None].float())

    @torch.no_grad()
    def phi1_posterior(self, phi2, m):
        g, L, sigma, _ = _linear_gaussian_pieces(self.model, m[:, 0])
        C = L @ L.T + torch.diag_embed(sigma ** 2)  # [T, D, D]
        gain = L.T @ torch.linalg.inv(C)  # [T, D, D]
        loc = (gain[:, None] @ (phi2.double() - g[:, None])[..., None])[..., 0]  # [..., T, 1, D]
        cov = torch.eye(L.shape[0], dtype=torch.float64) - gain @ L  # [T, D, D]
        cov = self.inflate ** 2 * (cov + cov.transpose(1, 2)) / 2
        return torch.distributions.MultivariateNormal(loc.float(), covariance_matrix=cov[:, None].float())


def _mc_check(predictive, log_evidence_hat, y_q, exact_ev, exact_pred):
    """Errors of the importance estimates and their Monte Carlo standard errors (densities).

    Predictive density p̂ = Σ w̃_s p_s (self-normalized): delta-method se = sqrt(Σ w̃_s² (p_s - p̂)²).
    Evidence Ẑ = mean of the unnormalized weights: se = std(w)/sqrt(S) -- here from the same
    normalized weights, Ẑ * sqrt(S Σ w̃² - 1) / sqrt(S).
    """
    w = predictive.weights.double()  # [T, S]
    comp = torch.distributions.Normal(predictive.mean, predictive.std).log_prob(y_q[:, None]).sum(-1).double().exp()
    p_hat = (w[..., None] * comp).sum(1)  # [T, Q]
    se_pred = ((w[..., None] ** 2) * (comp - p_hat[:, None]) ** 2).sum(1).sqrt()
    S = w.shape[1]
    z_hat = log_evidence_hat.double().exp()
    se_ev = z_hat * ((S * (w ** 2).sum(1) - 1).clamp_min(0) / S).sqrt()
    return (p_hat - exact_pred.exp()).abs(), se_pred, (z_hat - exact_ev.exp()).abs(), se_ev, p_hat


def test_nearly_exact_guide_is_a_valid_reference():
    """Sanity of the test's own proposal: with inflate = 1, shift = 0 it is the exact posterior,
    so every importance weight equals p(Y_s | X_s, m) (to float32 round-off, 1e-3 relative)."""
    meta, batch = _linear_gaussian()
    exact_ev, _ = _exact_linear_gaussian(meta.model, batch.x_support, batch.y_support,
                                         batch.metadata, batch.x_query, batch.y_query)
    torch.manual_seed(0)
    predictive, log_ev = posterior_predictive(meta.model, NearlyExactGuide(meta.model, 1.0, 0.0),
                                              batch.x_support, batch.y_support, batch.metadata,
                                              batch.support_mask, batch.x_query, num_samples=64, defensive=0.0)
    torch.testing.assert_close(predictive.weights, torch.full((3, 64), 1 / 64), rtol=1e-3, atol=0)
    torch.testing.assert_close(log_ev.double(), exact_ev, rtol=0, atol=1e-3)


@pytest.mark.parametrize("zero_shot", [False, True])
def test_importance_predictive_converges_to_the_linear_gaussian_closed_form(zero_shot):
    """As num_samples grows, p̂(y_q | support, m) and Ẑ = p̂(Y_s | X_s, m) approach the closed form.

    Proposal: NearlyExactGuide mixed with the prior (defensive 0.1, the default). Tolerance
    from the MC error: with S = 2^14 draws, |estimate - exact| < 5 se for every query point
    and task (se is the estimator's own delta-method standard error; 5 se makes a false
    alarm ~1e-6 per check; the SNIS bias is O(1/S), far below se), and the relative se is
    < 5% (the far-tail points are the hardest), so the check has power. Convergence: the mean
    relative error over points drops
    from S = 64 to S = 2^14 (expected ~16x, required 3x).
    """
    meta, batch = _linear_gaussian()
    if zero_shot:
        batch = batch.with_support_size(0)
    exact_ev, exact_pred = _exact_linear_gaussian(meta.model, batch.x_support, batch.y_support,
                                                  batch.metadata, batch.x_query, batch.y_query)
    guide = NearlyExactGuide(meta.model)
    rel_err = {}
    for S in (64, 2 ** 14):
        torch.manual_seed(3)
        predictive, log_ev = posterior_predictive(meta.model, guide, batch.x_support, batch.y_support,
                                                  batch.metadata, batch.support_mask, batch.x_query,
                                                  num_samples=S)
        assert predictive.log_weights.shape == (3, S) and predictive.mean.shape == (3, S, 4, 1)
        err_p, se_p, err_z, se_z, p_hat = _mc_check(predictive, log_ev, batch.y_query, exact_ev, exact_pred)
        rel_err[S] = float((err_p / exact_pred.exp()).mean())
    assert (se_p < 0.05 * p_hat).all(), se_p / p_hat
    assert (err_p < 5 * se_p).all(), (err_p, se_p)
    assert (se_z < 0.02 * exact_ev.exp()).all(), se_z
    assert (err_z < 5 * se_z + 1e-6).all(), (err_z, se_z)
    assert rel_err[2 ** 14] < rel_err[64] / 3, rel_err


def test_amortized_guide_predictive_is_consistent_with_the_closed_form():
    """The same estimator with the (untrained) amortized guide as proposal: a poor proposal,
    so only a weak check -- finite, normalized, and within 1.5 nats of the exact
    log predictive at every point with S = 4096 (the defensive prior component bounds the
    weights by p(Y_s | φ2)/0.1, which keeps the estimate from collapsing)."""
    meta, batch = _linear_gaussian()
    _, exact_pred = _exact_linear_gaussian(meta.model, batch.x_support, batch.y_support,
                                           batch.metadata, batch.x_query, batch.y_query)
    torch.manual_seed(3)
    predictive, log_ev = meta.predict(batch, num_samples=4096)
    assert torch.isfinite(log_ev).all()
    torch.testing.assert_close(predictive.weights.sum(-1), torch.ones(3))
    assert ((predictive.log_prob(batch.y_query).double() - exact_pred).abs() < 1.5).all()


def test_importance_predictive_ignores_masked_support_points():
    """A padded, masked support point changes nothing (same seed, same draws)."""
    meta, batch = _linear_gaussian()
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[:, 3] = False
    padded = TaskBatch(torch.cat([batch.x_support, torch.full((3, 1, 1), 3.0)], 1),
                       torch.cat([batch.y_support, torch.full((3, 1, 1), -40.0)], 1),
                       batch.x_query, batch.y_query, batch.metadata, mask, batch.query_mask)
    results = []
    for b in (batch, padded):
        torch.manual_seed(4)
        predictive, log_ev = meta.predict(b, num_samples=128)
        results.append((predictive.log_prob(batch.y_query), log_ev))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-5, atol=1e-5)


def test_posterior_predictive_argument_checks():
    meta, batch = _linear_gaussian()
    with pytest.raises(ValueError, match="defensive"):
        posterior_predictive(meta.model, meta.guide, batch.x_support, batch.y_support, batch.metadata,
                             batch.support_mask, batch.x_query, num_samples=8, defensive=1.0)
    with pytest.raises(ValueError, match="num_samples"):
        meta.predict(batch, num_samples=0)
    wrong = TaskBatch(batch.x_support, batch.y_support, batch.x_query, batch.y_query, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="metadata has dimension 3"):
        meta.predict(wrong)


# -- the exact-Bayes reference --------------------------------------------------------------

@pytest.mark.parametrize("K", [0, 2])
def test_sinusoid_oracle_matches_brute_force_monte_carlo(K):
    """Grid over (A, phase) with b integrated analytically vs plain Monte Carlo over the prior.

    Draw (A, phase, b) from the prior (S = 4e5, float64), weight by p(m | A, b) p(Y_s | A, phase, b),
    average N(y_q; A sin(x_q + phase) + b, σ²). Noise 0.5 and metadata noise (1, 0.5) keep the
    prior a usable proposal. Tolerance: 5 delta-method standard errors of the MC estimate
    (seeded), plus 0.5% relative for the 100 x 128 midpoint grid (its error is O(h²) on a
    posterior much wider than the steps 0.05 and 0.025); the se itself must be < 2%.
    """
    family = SinusoidTasks(noise_std=0.5, metadata_noise=(1.0, 0.5))
    batch = family.sample(1, K, 5, generator=torch.Generator().manual_seed(21))
    oracle = family.exact_predictive(batch).log_prob(batch.y_query)[0].double().exp()  # [Q]

    g = torch.Generator().manual_seed(22)
    S = 400_000
    A = family.amplitude_range[0] + (family.amplitude_range[1] - family.amplitude_range[0]) * torch.rand(
        S, generator=g, dtype=torch.float64)
    P = family.phase_range[0] + (family.phase_range[1] - family.phase_range[0]) * torch.rand(
        S, generator=g, dtype=torch.float64)
    b = family.offset_std * torch.randn(S, generator=g, dtype=torch.float64)
    m = batch.metadata[0].double()
    Normal = torch.distributions.Normal
    log_w = Normal(A, family.metadata_noise[0]).log_prob(m[0]) + Normal(b, family.metadata_noise[1]).log_prob(m[1])
    if K:
        xs, ys = batch.x_support[0, :, 0].double(), batch.y_support[0, :, 0].double()
        f_s = A[:, None] * torch.sin(xs + P[:, None]) + b[:, None]
        log_w = log_w + Normal(f_s, family.noise_std).log_prob(ys).sum(-1)
    w = (log_w - log_w.logsumexp(0)).exp()
    xq, yq = batch.x_query[0, :, 0].double(), batch.y_query[0, :, 0].double()
    p_s = Normal(A[:, None] * torch.sin(xq + P[:, None]) + b[:, None], family.noise_std).log_prob(yq).exp()  # [S, Q]
    p_hat = w @ p_s
    se = ((w[:, None] ** 2) * (p_s - p_hat) ** 2).sum(0).sqrt()
    assert (se < 0.02 * p_hat).all(), se / p_hat
    assert ((oracle - p_hat).abs() < 5 * se + 0.005 * p_hat).all(), (oracle, p_hat, se)


def test_sinusoid_oracle_is_calibrated_and_below_the_noise_floor():
    """Tasks drawn from the family itself: the exact predictive's 90% intervals cover 90% of
    query points (150 tasks x 20 points, seeded; within-task correlation makes the se about
    0.01-0.02, so ±0.04), and the noise floor (the true function with the known noise) lies
    above the oracle's mean log-likelihood: E log p(y | task) >= E log p(y | support, m)
    (Jensen; the gap is the expected information still missing about the task, >> MC noise
    at K <= 2). A coarse 40 x 48 grid keeps this fast; its pruned mixture is still exact
    up to the grid error.
    """
    family = SinusoidTasks()
    batch = family.sample(150, 2, 20, generator=torch.Generator().manual_seed(0))
    floor = float(family.noise_floor_log_prob(batch).mean())
    previous = -math.inf
    for k in (0, 2):
        metrics = point_metrics(family.exact_predictive(batch.with_support_size(k),
                                                        grid_amplitude=40, grid_phase=48), batch.y_query)
        assert abs(metrics["coverage90"] - 0.9) < 0.04, (k, metrics)
        assert metrics["loglik"] < floor - 0.3, (k, metrics["loglik"], floor)
        assert metrics["loglik"] > previous  # more support, better prediction (on average)
        previous = metrics["loglik"]


@pytest.mark.parametrize("entry", [0, 1], ids=["amplitude", "offset"])
def test_sinusoid_nan_metadata_is_an_uninformative_observation(entry):
    """A NaN metadata entry predicts as that entry observed with noise 1e6, which carries
    no information about A (range 5) or b (std 0.5): the log weights move by < 1e-10 nats,
    so the log densities agree to float32 round-off (1e-5). The observed entry matters."""
    batch = SinusoidTasks().sample(3, 2, 4, generator=torch.Generator().manual_seed(4))
    noise = [0.3, 0.1]
    noise[entry] = 1e6
    vague = SinusoidTasks(metadata_noise=tuple(noise))
    metadata = batch.metadata.clone()
    metadata[:, entry] = float("nan")
    grid = dict(grid_amplitude=40, grid_phase=48)
    missing = vague.exact_predictive(batch.with_metadata(metadata), **grid).log_prob(batch.y_query)
    reference = vague.exact_predictive(batch, **grid).log_prob(batch.y_query)
    torch.testing.assert_close(missing, reference, rtol=1e-5, atol=1e-5)
    observed = SinusoidTasks().exact_predictive(batch, **grid).log_prob(batch.y_query)
    assert (missing - observed).abs().max() > 0.01


def test_basis_oracle_is_the_exact_gaussian_and_below_the_noise_floor():
    family = BasisFunctionTasks()
    batch = family.sample(100, 3, 10, generator=torch.Generator().manual_seed(1))
    pred = family.exact_predictive(batch)
    mean, std = family.posterior_predictive(batch)
    torch.testing.assert_close(pred.log_prob(batch.y_query),
                               torch.distributions.Normal(mean, std).log_prob(batch.y_query)[..., 0])
    assert point_metrics(pred, batch.y_query)["loglik"] < float(family.noise_floor_log_prob(batch).mean())


def test_a_family_declares_no_oracle_by_default():
    """TaskFamily's defaults: no true function, no exact predictive, hence no noise floor."""
    class Other(TaskFamily):
        name = "other"
    batch = SinusoidTasks().sample(2, 1, 3, generator=torch.Generator().manual_seed(0))
    family = Other()
    assert family.true_mean(batch.params, batch.x_query) is None
    assert family.exact_predictive(batch) is None
    assert family.noise_floor_log_prob(batch) is None
    assert family.num_classes is None and family.noise_std is None and not family.fixed_dataset
    with pytest.raises(NotImplementedError, match="not a fixed data set"):
        family.all_tasks(1)


@pytest.mark.parametrize("spread", [0.3, 3.0, 30.0], ids=["overlapping", "bimodal", "far-apart"])
def test_newton_quantile_matches_bisection(spread):
    """Random mixtures (float64; 64 components, weights from a heavy-tailed draw, means spread
    out so that far-apart components leave flat stretches of the CDF): the safeguarded Newton
    quantile equals 200 bisections (exact to round-off) within 1e-9 of the mixture's scale."""
    g = torch.Generator().manual_seed(0)
    T, S, Q, Dy = 5, 64, 7, 2
    log_w = 3 * torch.randn(T, S, generator=g, dtype=torch.float64)
    mean = spread * torch.randn(T, S, Q, Dy, generator=g, dtype=torch.float64)
    std = 0.1 + torch.rand(T, S, Q, Dy, generator=g, dtype=torch.float64)
    p = MixturePredictive(log_w, mean, std)
    for level in (0.05, 0.5, 0.95):
        torch.testing.assert_close(p.quantile(level), bisection_quantile(p, level), rtol=0, atol=1e-9 * spread)


def test_heaviest_drops_only_components_below_the_lost_weight():
    """Weights 0.6, 0.4 - 2e-9, 1e-9, 1e-9: dropping at most 3e-9 keeps two components (renormalized);
    at most 1e-10 keeps all four; the quantile of the pruned mixture moves by less than the lost weight."""
    log_w = torch.tensor([[0.6, 0.4 - 2e-9, 1e-9, 1e-9]], dtype=torch.float64).log()
    mean = torch.tensor([0.0, 1.0, 50.0, -50.0], dtype=torch.float64).view(1, 4, 1, 1)
    p = MixturePredictive(log_w, mean, torch.ones(1, 4, 1, 1, dtype=torch.float64))
    pruned = p.heaviest(3e-9)
    assert pruned.mean.flatten().tolist() == [0.0, 1.0]
    torch.testing.assert_close(pruned.weights, torch.tensor([[0.6, 0.4 - 2e-9]], dtype=torch.float64) / (1 - 2e-9))
    assert p.heaviest(1e-10) is p
    assert float((bisection_quantile(p, 0.5) - bisection_quantile(pruned, 0.5)).abs()) < 1e-8


# -- the worst group of evaluate -------------------------------------------------------------

def _unit_normal(batch: TaskBatch) -> MixturePredictive:
    """N(0, 1) at every query point: a predictor whose per-point score is log N(y; 0, 1)."""
    T, Q = batch.query_mask.shape
    return MixturePredictive(torch.zeros(T, 1), torch.zeros(T, 1, Q, 1), torch.ones(T, 1, Q, 1))


def test_worst_group_of_a_data_set_is_its_lowest_mean_loglik_over_its_rows():
    """K = 0: every row of a test group is a query point in each draw, so a group's mean loglik
    pooled over draws is the mean of log N(y; 0, 1) over its rows, computed here from the rows."""
    pytest.importorskip("pandas")
    from hierarchical_meta.tasks import TabularTasks
    from hierarchical_meta.tasks.synthetic import grouped_frame

    family = TabularTasks.from_frame(grouped_frame(30, seed=3), group="site", x="dose", y="response")
    entry = evaluate(_unit_normal, family, EvalConfig(shots=(0,), draws=2, chunk=4))["shots"]["0"]
    means = {}
    for g in family.split_indices["test"].tolist():
        rows = family.y[family.offsets[g]:family.offsets[g + 1], 0]
        means[str(family.group_ids[g])] = float(torch.distributions.Normal(0.0, 1.0).log_prob(rows).mean())
    worst = min(means, key=means.get)
    assert len(means) > 2 and max(means.values()) - means[worst] > 0.1  # a real choice
    assert entry["worst_group"] == worst
    assert entry["worst_group_loglik"] == pytest.approx(means[worst], rel=1e-5)
    assert entry["worst_group_loglik"] < entry["loglik"]


def test_worst_task_of_a_sampled_family_names_its_draw():
    """Fresh tasks per draw: the worst is one (draw, task), found here by a loop over them."""
    family = BasisFunctionTasks()
    config = EvalConfig(shots=(2,), num_tasks=5, num_query=6, draws=2, chunk=2, shuffled_metadata=False)
    entry = evaluate(_unit_normal, family, config)["shots"]["2"]
    means = {}
    for draw in range(2):
        batch = heldout_tasks(family, config, 2, draw)
        logp = torch.distributions.Normal(0.0, 1.0).log_prob(batch.y_query[..., 0])  # [T, Q]
        for task in range(5):
            means[f"task {task} of draw {draw}"] = float(logp[task][batch.query_mask[task]].mean())
    worst = min(means, key=means.get)
    assert entry["worst_group"] == worst
    assert entry["worst_group_loglik"] == pytest.approx(means[worst], rel=1e-5)
    assert "oracle_worst_group" in entry  # the exact-Bayes reference's worst task too
