"""Basis-function regression with task metadata.

A finite set of linearly independent basis functions on [0, 1] (Gaussian bumps)::

    w ~ N(0, weight_std² I_B),   x ~ U[0, 1],   y = Σ_i w_i φ_i(x) + ε,   ε ~ N(0, noise_std²)

Metadata is a noisy view of the first ``num_observed_weights`` weights::

    m = w_{1:M} + ε_m,   ε_m ~ N(0, metadata_noise² I_M)

Everything is linear-Gaussian, so the exact posterior predictive is Bayesian linear
regression (:mod:`hierarchical_meta.linear_gaussian`), with the metadata as measurements of
the first weights; a NaN (missing) metadata entry is left out. Each split draws its tasks
from its own stream (:func:`~hierarchical_meta.tasks.base.split_generator`).
"""

from __future__ import annotations

import torch

from .. import linear_gaussian
from ..predictive import MixturePredictive
from .base import TaskBatch, TaskFamily, split_generator

__all__ = ["BasisFunctionTasks"]


class BasisFunctionTasks(TaskFamily):
    name = "basis"
    x_dim = 1
    y_dim = 1

    def __init__(self, num_basis: int = 5, num_observed_weights: int = 2, weight_std: float = 1.0,
                 noise_std: float = 0.1, metadata_noise: float = 0.2, width: float | None = None):
        if num_basis < 1:
            raise ValueError(f"num_basis must be >= 1, got {num_basis}")
        if not 0 <= num_observed_weights <= num_basis:
            raise ValueError(f"num_observed_weights must be in [0, num_basis={num_basis}], "
                             f"got {num_observed_weights}")
        if weight_std <= 0 or noise_std <= 0 or metadata_noise <= 0:
            raise ValueError("weight_std, noise_std and metadata_noise must be > 0")
        self.num_basis = num_basis
        self.metadata_dim = num_observed_weights
        self.weight_std = float(weight_std)
        self.noise_std = float(noise_std)
        self.metadata_noise = float(metadata_noise)
        self.centers = torch.linspace(0.0, 1.0, num_basis)
        self.width = float(width) if width is not None else 1.0 / num_basis

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Basis functions φ(x): x [..., 1] -> [..., B]."""
        return torch.exp(-0.5 * ((x - self.centers.to(x)) / self.width) ** 2)

    def true_mean(self, params, x):
        """f_w(x) = φ(x)ᵀ w: x [T, Q, 1] -> [T, Q, 1]."""
        return self.features(x) @ params["weights"][:, :, None]

    def exact_predictive(self, batch: TaskBatch) -> MixturePredictive:
        """Bayesian linear regression (:meth:`posterior_predictive`) as a one-component mixture."""
        mean, std = self.posterior_predictive(batch)
        return MixturePredictive(torch.zeros(batch.num_tasks, 1), mean[:, None], std[:, None])

    def sample(self, num_tasks: int, num_support: int, num_query: int, *,
               split: str = "train", generator: torch.Generator | None = None) -> TaskBatch:
        self.check_sizes(num_tasks, num_support, num_query, split)
        g = split_generator(split, generator)
        T, N, M = num_tasks, num_support + num_query, self.metadata_dim
        w = self.weight_std * torch.randn(T, self.num_basis, generator=g)
        x = torch.rand(T, N, 1, generator=g)
        y = (self.features(x) @ w[:, :, None]) + self.noise_std * torch.randn(T, N, 1, generator=g)
        metadata = w[:, :M] + self.metadata_noise * torch.randn(T, M, generator=g)
        return TaskBatch(x_support=x[:, :num_support], y_support=y[:, :num_support],
                         x_query=x[:, num_support:], y_query=y[:, num_support:],
                         metadata=metadata, params={"weights": w})

    def weight_posterior(self, batch: TaskBatch):
        """Exact p(w | support, m): mean [T, B] and covariance [T, B, B].

        The measurements are the unmasked support points (y = φ(x)ᵀ w + ε, variance σ²)
        and the observed metadata (m_j = w_j + ε_m, variance τ², NaN entries left out).
        """
        B, M = self.num_basis, self.metadata_dim
        F = self.features(batch.x_support)  # [T, K, B]
        E = torch.eye(B, dtype=F.dtype, device=F.device)[:M].expand(batch.num_tasks, M, B)  # m = E w + ε_m
        features = torch.cat([E, F], 1)  # [T, M + K, B]
        targets = torch.cat([batch.metadata, batch.y_support[..., 0]], 1)  # [T, M + K]
        mask = torch.cat([~torch.isnan(batch.metadata), batch.support_mask], 1)
        noise_var = torch.cat([F.new_full((M,), self.metadata_noise ** 2),
                               F.new_full((F.shape[1],), self.noise_std ** 2)])  # [M + K]
        prior_cov = self.weight_std ** 2 * torch.eye(B, dtype=F.dtype, device=F.device)
        return linear_gaussian.posterior(prior_cov, features, targets, noise_var, mask)

    def posterior_predictive(self, batch: TaskBatch):
        """Exact predictive mean and standard deviation at the query points, each [T, Q, 1]."""
        mean_w, cov_w = self.weight_posterior(batch)
        mean, var = linear_gaussian.predictive(self.features(batch.x_query), mean_w, cov_w,
                                               self.noise_std ** 2)
        return mean[..., None], var.sqrt()[..., None]
