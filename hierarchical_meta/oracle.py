"""Exact-Bayes posterior predictives: the best any model can do on a synthetic family.

Sinusoid (:class:`~hierarchical_meta.tasks.SinusoidTasks`): the offset b is Gaussian
and enters y and m linearly, so given (A, phase) it integrates in closed form; the
uniform (A, phase) prior is integrated on a midpoint grid. For observations
z_i = b + e_i, e_i ~ N(0, v_i), b ~ N(0, s0²) (here m_b and the residuals
y_n - A sin(x_n + phase))::

    λ = 1/s0² + Σ_i 1/v_i,   S = Σ_i z_i / v_i
    log p(z) = -½ log(s0² λ) - ½ Σ_i log(2π v_i) - ½ Σ_i z_i²/v_i + ½ S²/λ
    b | z ~ N(S/λ, 1/λ)

so each grid point g contributes weight ∝ N(m_A; A_g, τ_A²) p(z | A_g, phase_g) and the
predictive component N(A_g sin(x + phase_g) + S/λ, 1/λ + σ²).

Basis functions: Bayesian linear regression, exact (``BasisFunctionTasks.posterior_predictive``).
"""

from __future__ import annotations

import math

import torch

from .predictive import MixturePredictive
from .tasks import BasisFunctionTasks, SinusoidTasks, TaskBatch

__all__ = ["exact_predictive", "sinusoid_predictive", "noise_floor_log_prob", "has_oracle"]


def has_oracle(family) -> bool:
    return isinstance(family, (SinusoidTasks, BasisFunctionTasks))


@torch.no_grad()
def sinusoid_predictive(family: SinusoidTasks, batch: TaskBatch, grid_amplitude: int = 100,
                        grid_phase: int = 128, prune: float = 30.0) -> MixturePredictive:
    """Exact p(y_query | support, m) as a mixture over grid points (pruned below e^-prune of the max)."""
    dtype = torch.float64
    def midpoints(lo, hi, n):
        return lo + (hi - lo) * (torch.arange(n, dtype=dtype) + 0.5) / n
    A, P = torch.meshgrid(midpoints(*family.amplitude_range, grid_amplitude),
                          midpoints(*family.phase_range, grid_phase), indexing="ij")
    A, P = A.reshape(-1), P.reshape(-1)  # [G]
    s0, (tau_a, tau_b), sigma = family.offset_std, family.metadata_noise, family.noise_std
    log_w_all, means, stds = [], [], []
    for t in range(batch.num_tasks):
        keep = batch.support_mask[t]
        xs, ys = batch.x_support[t, keep, 0].to(dtype), batch.y_support[t, keep, 0].to(dtype)  # [K]
        m_a, m_b = batch.metadata[t].to(dtype)
        z = torch.cat([m_b.expand(A.shape[0], 1), ys - A[:, None] * torch.sin(xs + P[:, None])], 1)  # [G, 1+K]
        v = torch.tensor([tau_b ** 2] + [sigma ** 2] * len(xs), dtype=dtype)  # [1+K]
        lam = 1 / s0 ** 2 + (1 / v).sum()
        S = (z / v).sum(1)  # [G]
        log_pz = (-0.5 * math.log(s0 ** 2 * lam) - 0.5 * torch.log(2 * math.pi * v).sum()
                  - 0.5 * (z ** 2 / v).sum(1) + 0.5 * S ** 2 / lam)
        log_w = log_pz - 0.5 * ((m_a - A) / tau_a) ** 2
        kept = log_w > log_w.max() - prune
        xq = batch.x_query[t, :, 0].to(dtype)  # [Q]
        log_w_all.append(log_w[kept])
        means.append(A[kept, None] * torch.sin(xq + P[kept, None]) + (S[kept] / lam)[:, None])  # [G', Q]
        stds.append(torch.full_like(means[-1], math.sqrt(1 / lam + sigma ** 2)))
    S_max = max(w.shape[0] for w in log_w_all)

    def pad(tensors, value):
        return torch.stack([torch.cat([x, x.new_full((S_max - x.shape[0],) + x.shape[1:], value)]) for x in tensors])
    out_dtype = batch.y_query.dtype
    return MixturePredictive(pad(log_w_all, -math.inf).to(out_dtype), pad(means, 0.0)[..., None].to(out_dtype),
                             pad(stds, 1.0)[..., None].to(out_dtype))


def exact_predictive(family, batch: TaskBatch) -> MixturePredictive:
    """The exact posterior predictive at ``batch.x_query`` for a family that has one."""
    if isinstance(family, SinusoidTasks):
        return sinusoid_predictive(family, batch)
    if isinstance(family, BasisFunctionTasks):
        mean, std = family.posterior_predictive(batch)
        return MixturePredictive(torch.zeros(batch.num_tasks, 1), mean[:, None], std[:, None])
    raise ValueError(f"no exact posterior for task family {getattr(family, 'name', family)!r}")


def noise_floor_log_prob(family, batch: TaskBatch) -> torch.Tensor:
    """log N(y; f_true(x), σ²) at the query points, [T, Q]: knowing the task exactly."""
    if isinstance(family, SinusoidTasks):
        p = batch.params
        f = family.function(batch.x_query, p["amplitude"], p["phase"], p["offset"])
    elif isinstance(family, BasisFunctionTasks):
        f = family.features(batch.x_query) @ batch.params["weights"][:, :, None]
    else:
        raise ValueError(f"no known true function for task family {getattr(family, 'name', family)!r}")
    return torch.distributions.Normal(f, family.noise_std).log_prob(batch.y_query).sum(-1)
