"""Gaussian conditioning (hierarchical_meta.linear_gaussian) against dense joint conditioning.

The slow reference builds the joint Gaussian of (w, y) from the model
w ~ N(μ0, Σ0), y = H w + ε, ε ~ N(0, diag v) over the observed measurements only, and
conditions it in covariance form:

    K = Σ0 Hᵀ (H Σ0 Hᵀ + V)⁻¹,   E[w | y] = μ0 + K (y - H μ0),   Cov[w | y] = Σ0 - K H Σ0

one task at a time in float64. Both are exact, so the tolerance is float64 round-off on
matrices of size <= 8 with condition number < 1e6: 1e-9.
"""

import pytest
import torch

from hierarchical_meta import linear_gaussian

TOL = dict(rtol=1e-9, atol=1e-9)


def _reference(prior_mean, prior_cov, H, y, v, mask):
    """Dense conditioning of one task: prior [B], [B, B]; H [N, B], y [N], v [N], mask [N]."""
    H, y, v = H[mask], y[mask], v[mask]
    if len(y) == 0:
        return prior_mean, prior_cov
    gain = prior_cov @ H.T @ torch.linalg.inv(H @ prior_cov @ H.T + torch.diag(v))  # [B, N']
    return prior_mean + gain @ (y - H @ prior_mean), prior_cov - gain @ H @ prior_cov


def _problem(T=5, N=7, B=4, rank=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    L = torch.randn(B, rank or B, generator=g, dtype=torch.float64)
    prior_cov = L @ L.T + (0 if rank else 0.1) * torch.eye(B, dtype=torch.float64)
    prior_mean = torch.randn(B, generator=g, dtype=torch.float64)
    H = torch.randn(T, N, B, generator=g, dtype=torch.float64)
    y = torch.randn(T, N, generator=g, dtype=torch.float64)
    v = 0.05 + torch.rand(N, generator=g, dtype=torch.float64)
    mask = torch.rand(T, N, generator=g) < 0.7
    mask[0] = False  # a task with no measurement: the prior
    mask[1] = True
    return prior_mean, prior_cov, H, y, v, mask


@pytest.mark.parametrize("rank", [None, 2], ids=["full-rank", "singular-prior"])
def test_posterior_equals_dense_conditioning(rank):
    prior_mean, prior_cov, H, y, v, mask = _problem(rank=rank)
    # masked entries may be garbage, NaN included: they must be selected away
    y = torch.where(mask, y, torch.nan)
    H = torch.where(mask[..., None], H, torch.nan)
    mean, cov = linear_gaussian.posterior(prior_cov, H, y, v, mask, prior_mean)
    assert mean.shape == (5, 4) and cov.shape == (5, 4, 4)
    for t in range(5):
        ref_mean, ref_cov = _reference(prior_mean, prior_cov, H[t], y[t], v, mask[t])
        torch.testing.assert_close(mean[t], ref_mean, **TOL)
        torch.testing.assert_close(cov[t], ref_cov, **TOL)
    torch.testing.assert_close(mean[0], prior_mean, **TOL)
    torch.testing.assert_close(cov[0], prior_cov, **TOL)


def test_defaults_are_zero_prior_mean_and_all_observed():
    _, prior_cov, H, y, v, _ = _problem(seed=1)
    mean, cov = linear_gaussian.posterior(prior_cov, H, y, 0.3)
    for t in range(5):
        ref_mean, ref_cov = _reference(torch.zeros(4, dtype=torch.float64), prior_cov, H[t], y[t],
                                       torch.full((7,), 0.3, dtype=torch.float64),
                                       torch.ones(7, dtype=torch.bool))
        torch.testing.assert_close(mean[t], ref_mean, **TOL)
        torch.testing.assert_close(cov[t], ref_cov, **TOL)


def test_predictive_equals_the_joint_gaussian_of_a_new_measurement():
    """y_q = H_q w + ε_q: mean H_q m, variance diag(H_q C H_qᵀ) + v_q, for w ~ N(m, C)."""
    prior_mean, prior_cov, H, y, v, mask = _problem(seed=2)
    mean_w, cov_w = linear_gaussian.posterior(prior_cov, H, y, v, mask, prior_mean)
    Hq = torch.randn(5, 3, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    mean, var = linear_gaussian.predictive(Hq, mean_w, cov_w, 0.2)
    assert mean.shape == var.shape == (5, 3)
    for t in range(5):
        torch.testing.assert_close(mean[t], Hq[t] @ mean_w[t], **TOL)
        torch.testing.assert_close(var[t], torch.diagonal(Hq[t] @ cov_w[t] @ Hq[t].T) + 0.2, **TOL)


@pytest.mark.parametrize("rank", [None, 2], ids=["full-rank", "singular-prior"])
def test_log_evidence_equals_the_dense_multivariate_normal_density(rank):
    """log N(y; H μ0, H L Lᵀ Hᵀ + diag v) per task, v varying per point, NaN in masked slots."""
    prior_mean, _, H, y, _, mask = _problem(rank=rank, seed=4)
    g = torch.Generator().manual_seed(5)
    L = torch.randn(4, 4, generator=g, dtype=torch.float64)
    if rank:
        L[:, rank:] = 0.0  # Σ0 = L Lᵀ of rank 2
    v = 0.05 + torch.rand(5, 7, generator=g, dtype=torch.float64)  # per task and point
    y = torch.where(mask, y, torch.nan)
    log_p = linear_gaussian.log_evidence(L, H, y, v, mask, prior_mean)
    assert log_p.shape == (5,) and log_p[0] == 0.0  # no measurement: log 1
    for t in range(1, 5):
        h, v_t = H[t][mask[t]], v[t][mask[t]]
        dense = torch.distributions.MultivariateNormal(h @ prior_mean, h @ L @ L.T @ h.T + torch.diag(v_t))
        torch.testing.assert_close(log_p[t], dense.log_prob(y[t][mask[t]]), **TOL)


def test_bad_arguments_raise():
    prior_mean, prior_cov, H, y, v, mask = _problem()
    with pytest.raises(ValueError, match="targets"):
        linear_gaussian.posterior(prior_cov, H, y[:, :3], v)
    with pytest.raises(ValueError, match="prior_cov"):
        linear_gaussian.posterior(prior_cov[:3, :3], H, y, v)
    with pytest.raises(ValueError, match="noise_var must be > 0"):
        linear_gaussian.posterior(prior_cov, H, y, 0.0)
    with pytest.raises(ValueError, match="prior_factor"):
        linear_gaussian.log_evidence(prior_cov[:3, :3], H, y, v)
    with pytest.raises(ValueError, match="noise_var must be > 0"):
        linear_gaussian.log_evidence(prior_cov, H, y, -v)
