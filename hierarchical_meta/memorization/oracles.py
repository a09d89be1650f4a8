"""Closed-form meta-learners that adapt by construction: the probe's reference points.

- :class:`BayesianLinearRegression`: the exact posterior predictive of y = w·φ(x) + ε,
  w ~ N(0, σ_w² I), ε ~ N(0, σ²), given the support (no metadata)::

      Λ = I/σ_w² + Φ_sᵀΦ_s/σ²,   μ_w = Λ⁻¹ Φ_sᵀ y_s / σ²,
      p(y_q | D) = N(φ(x_q)ᵀ μ_w, φ(x_q)ᵀ Λ⁻¹ φ(x_q) + σ²)

  (:mod:`hierarchical_meta.linear_gaussian` computes it).
- :func:`basis_posterior_predictor`: the same with the basis family's metadata term,
  delegating to :meth:`BasisFunctionTasks.posterior_predictive`.
- :class:`GaussianClassMeans`: Bayes classification with isotropic Gaussian classes,
  x | y=c ~ N(μ_c, s² I), unknown class means μ_c ~ N(0, τ² I) learnt from the support.
- :class:`GoalGridPosterior`: the grasp scenario's exact posterior over the goal on a
  grid, returned as a :class:`~hierarchical_meta.predictive.MixturePredictive`.

All are predict functions in the probe's convention.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .. import linear_gaussian
from ..predictive import MixturePredictive
from ..tasks.base import TaskBatch
from ..tasks.basis import BasisFunctionTasks

__all__ = ["BayesianLinearRegression", "basis_posterior_predictor", "GaussianClassMeans",
           "GoalGridPosterior"]


def _mask(x_support: torch.Tensor, support_mask: torch.Tensor | None) -> torch.Tensor:
    if support_mask is None:
        return torch.ones(x_support.shape[:2], dtype=x_support.dtype)
    return support_mask.to(x_support.dtype)


class BayesianLinearRegression:
    """Exact Bayesian linear regression on features φ(x) ([..., Dx] -> [..., B])."""

    def __init__(self, features: Callable[[torch.Tensor], torch.Tensor], weight_std: float,
                 noise_std: float):
        if weight_std <= 0 or noise_std <= 0:
            raise ValueError(f"weight_std and noise_std must be > 0, got {weight_std}, {noise_std}")
        self.features, self.weight_std, self.noise_std = features, float(weight_std), float(noise_std)

    def weight_posterior(self, x_support, y_support, support_mask=None):
        """Posterior mean [T, B] and covariance [T, B, B] of the weights."""
        F = self.features(x_support)  # [T, K, B]
        prior_cov = self.weight_std ** 2 * torch.eye(F.shape[-1], dtype=F.dtype, device=F.device)
        return linear_gaussian.posterior(prior_cov, F, y_support[..., 0], self.noise_std ** 2,
                                         support_mask)

    def __call__(self, x_support, y_support, x_query, support_mask=None):
        mean_w, cov_w = self.weight_posterior(x_support, y_support, support_mask)
        mean, var = linear_gaussian.predictive(self.features(x_query), mean_w, cov_w,
                                               self.noise_std ** 2)  # [T, Q] each
        return torch.distributions.Normal(mean[..., None], var.sqrt()[..., None])


def basis_posterior_predictor(family: BasisFunctionTasks):
    """Exact p(y_q | support, m) on the basis family (metadata included; None = missing)."""

    def predict(x_support, y_support, x_query, support_mask=None, metadata=None):
        T, Q = x_query.shape[:2]
        if metadata is None:
            metadata = torch.full((T, family.metadata_dim), float("nan"))
        batch = TaskBatch(x_support=x_support, y_support=y_support, x_query=x_query,
                          y_query=torch.zeros(T, Q, 1), metadata=metadata, support_mask=support_mask)
        mean, std = family.posterior_predictive(batch)
        return torch.distributions.Normal(mean, std)

    return predict


class GaussianClassMeans:
    """Bayes classifier with x | y=c ~ N(μ_c, s² I) and μ_c ~ N(0, τ² I) a priori.

    From the n_c support points of class c (mean x̄_c)::

        v_c = 1 / (1/τ² + n_c/s²),   m_c = v_c n_c x̄_c / s²,
        p(y=c | x, D) ∝ (n_c + 1) N(x; m_c, (s² + v_c) I)

    With no support every class is alike and the prediction is uniform.
    """

    def __init__(self, num_classes: int = 2, prior_std: float = 3.0, noise_std: float = 1.0):
        if num_classes < 2 or prior_std <= 0 or noise_std <= 0:
            raise ValueError("need num_classes >= 2, prior_std > 0 and noise_std > 0")
        self.num_classes, self.prior_std, self.noise_std = num_classes, float(prior_std), float(noise_std)

    def __call__(self, x_support, y_support, x_query, support_mask=None):
        m = _mask(x_support, support_mask)  # [T, K]
        onehot = torch.nn.functional.one_hot(y_support[..., 0].round().long().clamp(0, self.num_classes - 1),
                                             self.num_classes).to(x_support) * m[..., None]  # [T, K, C]
        counts = onehot.sum(1)  # [T, C]
        sums = onehot.transpose(1, 2) @ x_support  # [T, C, Dx]
        s2 = self.noise_std ** 2
        v = 1.0 / (1.0 / self.prior_std ** 2 + counts / s2)  # [T, C]
        means = v[..., None] * sums / s2  # [T, C, Dx]
        var = s2 + v  # [T, C]
        D = x_query.shape[-1]
        sq = ((x_query[:, :, None, :] - means[:, None]) ** 2).sum(-1)  # [T, Q, C]
        logits = (counts + 1).log()[:, None] - 0.5 * sq / var[:, None] - 0.5 * D * var.log()[:, None]
        return torch.distributions.Categorical(logits=logits)


class GoalGridPosterior:
    """Exact posterior predictive of the grasp scenario's reward, on a grid of goals.

    p(g | D) ∝ Π_k N(r_k; reward(a_k, g), σ²) over a uniform grid on the goal range;
    the predictive is the mixture Σ_g p(g | D) N(r; reward(a_q, g), σ²). It reads only
    the action channel, never the monitor.
    """

    def __init__(self, reward: Callable, goal_range=(0.1, 0.9), noise_std: float = 0.05,
                 grid_size: int = 161):
        self.reward, self.noise_std = reward, float(noise_std)
        self.grid = torch.linspace(goal_range[0], goal_range[1], grid_size)  # [S]

    def __call__(self, x_support, y_support, x_query, support_mask=None):
        m = _mask(x_support, support_mask)  # [T, K]
        T, S = x_query.shape[0], len(self.grid)
        goals = self.grid.expand(T, S)  # [T, S]

        def curve(action):  # [T, N, 1] -> [T, S, N, 1]
            return self.reward(action[:, None].expand(T, S, -1, 1).reshape(T * S, -1, 1),
                               goals.reshape(-1)).reshape(T, S, -1, 1)

        r_s = curve(x_support[..., :1])
        loglik = torch.distributions.Normal(r_s, self.noise_std).log_prob(y_support[:, None, :, :1])
        log_weights = (loglik[..., 0] * m[:, None]).sum(-1)  # [T, S]
        mean = curve(x_query[..., :1])  # [T, S, Q, 1]
        return MixturePredictive(log_weights, mean, torch.full_like(mean, self.noise_std))
