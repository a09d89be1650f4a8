"""Gaussian conditioning of linear-Gaussian models: Bayesian linear regression in one place.

A weight vector w with a Gaussian prior is observed through noisy linear measurements::

    w ~ N(μ0, Σ0),    y_n = h_nᵀ w + ε_n,    ε_n ~ N(0, v_n),    n = 1..N

With A = Σ_n h_n h_nᵀ / v_n and r_n = y_n - h_nᵀ μ0, the posterior is Gaussian::

    Cov[w | y] = (Σ0⁻¹ + A)⁻¹ = (I + Σ0 A)⁻¹ Σ0
    E[w | y]   = μ0 + Cov[w | y] Σ_n h_n r_n / v_n

computed in the second form, which never inverts Σ0 (a singular prior covariance, such
as a mixed model's on the boundary, is fine; N = 0 gives the prior). A new measurement
h_q has the predictive::

    y_q | y ~ N(h_qᵀ E[w | y],  h_qᵀ Cov[w | y] h_q + v_q)

The evidence, the marginal density of the measurements, is
y ~ N(H μ0, H Σ0 Hᵀ + diag v). With Σ0 = L Lᵀ and M = I + Lᵀ A L (the matrix
determinant lemma and Woodbury's identity, again without inverting Σ0)::

    log p(y) = -½ [N log 2π + Σ_n log v_n + log|M| + Σ_n r_n² / v_n - bᵀ L M⁻¹ Lᵀ b],
    b = Σ_n h_n r_n / v_n

Users: the basis-function family's exact posterior (its metadata are measurements of
the first weights), the memorization probe's Bayesian-linear-regression learner, and the
mixed-model baseline's random effects.
"""

from __future__ import annotations

import math

import torch

__all__ = ["log_evidence", "posterior", "predictive"]

Variance = float | torch.Tensor


def _measurements(prior: torch.Tensor, prior_name: str, features: torch.Tensor, targets: torch.Tensor,
                  noise_var: Variance, mask: torch.Tensor | None, prior_mean: torch.Tensor | None):
    """The checked arguments of :func:`posterior` and :func:`log_evidence`: noise_var as a tensor,
    the mask [..., N], μ0 [..., B], H (features with masked rows 0) [..., N, B] and the residual
    y - H μ0 (0 where masked) [..., N]."""
    B = features.shape[-1]
    if targets.shape != features.shape[:-1]:
        raise ValueError(f"targets {tuple(targets.shape)} must be features {tuple(features.shape)} "
                         "without the last dimension")
    if prior.shape[-2:] != (B, B):
        raise ValueError(f"{prior_name} must be [..., {B}, {B}] for {B} features, got {tuple(prior.shape)}")
    noise_var = torch.as_tensor(noise_var, dtype=features.dtype, device=features.device)
    if not (noise_var > 0).all():
        raise ValueError("noise_var must be > 0")
    if mask is None:
        mask = torch.ones(targets.shape, dtype=torch.bool, device=targets.device)
    if prior_mean is None:
        prior_mean = features.new_zeros(B)
    H = torch.where(mask[..., None], features, 0.0)
    residual = torch.where(mask, targets - (H @ prior_mean[..., None])[..., 0], 0.0)
    return noise_var, mask, prior_mean, H, residual


def posterior(prior_cov: torch.Tensor, features: torch.Tensor, targets: torch.Tensor,
              noise_var: Variance, mask: torch.Tensor | None = None,
              prior_mean: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The posterior of w given the unmasked measurements (see the module docstring).

    Args:
        prior_cov: Σ0, [B, B] or [..., B, B] (positive semi-definite).
        features: h_n as rows, [..., N, B].
        targets: y_n, [..., N].
        noise_var: v_n > 0, a float or a tensor broadcasting to [..., N].
        mask: which measurements are observed, bool [..., N] (default all). Masked
            entries may hold anything, NaN included: they are selected away, not multiplied.
        prior_mean: μ0, [B] or [..., B] (default 0).

    Returns:
        mean [..., B] and covariance [..., B, B].
    """
    noise_var, mask, prior_mean, H, residual = _measurements(prior_cov, "prior_cov", features, targets,
                                                              noise_var, mask, prior_mean)
    B = features.shape[-1]
    H_scaled = H / noise_var.expand(targets.shape)[..., None]  # rows h_n / v_n
    A = H_scaled.transpose(-1, -2) @ H  # [..., B, B]
    eye = torch.eye(B, dtype=features.dtype, device=features.device)
    cov = torch.linalg.solve(eye + prior_cov @ A, prior_cov.expand(A.shape))  # [..., B, B]
    cov = (cov + cov.transpose(-1, -2)) / 2
    mean = prior_mean + (cov @ (H_scaled.transpose(-1, -2) @ residual[..., None]))[..., 0]
    return mean, cov


def predictive(features: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor,
               noise_var: Variance) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictive mean and variance of y_q = h_qᵀ w + ε_q for w ~ N(mean, cov).

    Args:
        features: h_q as rows, [..., Q, B]; mean [..., B]; cov [..., B, B];
        noise_var: v_q, a float or a tensor broadcasting to [..., Q].

    Returns:
        mean [..., Q] and variance [..., Q].
    """
    y_mean = (features @ mean[..., None])[..., 0]
    y_var = ((features @ cov) * features).sum(-1) + noise_var
    return y_mean, y_var


def log_evidence(prior_factor: torch.Tensor, features: torch.Tensor, targets: torch.Tensor,
                 noise_var: Variance, mask: torch.Tensor | None = None,
                 prior_mean: torch.Tensor | None = None) -> torch.Tensor:
    """log p(y) of the unmasked measurements, w integrated out (see the module docstring).

    Args:
        prior_factor: L with Σ0 = L Lᵀ, [B, B] or [..., B, B] (any square factor; a
            singular one gives a singular Σ0).
        features, targets, noise_var, mask, prior_mean: as in :func:`posterior`.

    Returns:
        log p(y) [...] (0 where no measurement is observed); differentiable.
    """
    noise_var, mask, prior_mean, H, residual = _measurements(prior_factor, "prior_factor", features, targets,
                                                              noise_var, mask, prior_mean)
    B = features.shape[-1]
    v = torch.where(mask, noise_var.expand(targets.shape), 1.0)  # [..., N]
    H_scaled = H / v[..., None]
    HL = H @ prior_factor  # rows Lᵀ h_n, [..., N, B]
    M = torch.eye(B, dtype=features.dtype, device=features.device) + \
        (H_scaled @ prior_factor).transpose(-1, -2) @ HL  # I + Lᵀ A L
    chol = torch.linalg.cholesky(M)
    Lb = (HL.transpose(-1, -2) @ (residual / v)[..., None])  # Lᵀ b, [..., B, 1]
    half_solve = torch.linalg.solve_triangular(chol, Lb, upper=False)[..., 0]  # chol⁻¹ Lᵀ b
    quadratic = (residual ** 2 / v).sum(-1) - (half_solve ** 2).sum(-1)
    log_det = torch.where(mask, v.log(), 0.0).sum(-1) + 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    n = mask.sum(-1).to(features.dtype)
    return -0.5 * (n * math.log(2 * math.pi) + log_det + quadratic)
