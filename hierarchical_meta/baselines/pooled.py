"""Pooled linear regression: one line for every task, ignoring which task a point is in.

The baseline a model of grouped data has to beat: with features h = [1, x] (and the task's
metadata m with ``use_metadata``, and chosen products x_i m_j,
:func:`~hierarchical_meta.baselines.design.linear_features`) for every training point, pooled
over tasks::

    y_n = h_nᵀ w + ε_n,    w ~ N(0, τ² I),    ε_n ~ N(0, σ²)

σ² is the residual mean square Σ_n (y_n - h_nᵀ ŵ)² / (N - P) of the posterior mean ŵ under
a unit noise variance (P features; with the broad prior, ŵ is the least-squares fit), and
w | data is then the Gaussian posterior of :mod:`hierarchical_meta.linear_gaussian`. A
query point's predictive is N(h_qᵀ E[w], h_qᵀ Cov[w] h_q + σ²) whatever the task's support
points: the support is ignored, so every K scores the same (it is the K-free reference).
Metadata must be observed (a NaN entry raises ``ValueError``), as for the mixed model.
"""

from __future__ import annotations

import torch

from .. import linear_gaussian
from ..predictive import MixturePredictive
from ..tasks.base import TaskBatch
from .design import linear_features

__all__ = ["PooledRegression"]


class PooledRegression:
    """Bayesian linear regression on [1, x(, m, x_i m_j)] over all points of all training tasks.

    Args:
        use_metadata: add the task metadata to the features.
        interactions: pairs (i, j) adding the feature x_i · m_j (with ``use_metadata``).
        prior_std: τ, the prior standard deviation of each weight (on standardized data the
            default 10 is broad: the fit is least squares with a tiny ridge).
    """

    def __init__(self, use_metadata: bool = True, prior_std: float = 10.0, interactions=()):
        if not prior_std > 0:
            raise ValueError(f"prior_std must be > 0, got {prior_std}")
        self.interactions = [(int(i), int(j)) for i, j in interactions]
        if self.interactions and not use_metadata:
            raise ValueError(f"interactions {self.interactions} with the metadata need use_metadata=True")
        self.use_metadata = bool(use_metadata)
        self.prior_std = float(prior_std)
        self.mean: torch.Tensor | None = None  # E[w | data], [P]
        self.cov: torch.Tensor | None = None  # Cov[w | data], [P, P]
        self.residual_var: float | None = None  # σ²

    def features(self, x: torch.Tensor, metadata: torch.Tensor) -> torch.Tensor:
        """h(x, m): x [T, N, Dx], metadata [T, Dm] -> [T, N, P] (float64)."""
        if not self.use_metadata:
            return linear_features(x, metadata[:, :0], ()).double()
        missing = torch.isnan(metadata).any(-1).nonzero()[:, 0].tolist()
        if missing:
            raise ValueError(f"the pooled regression with metadata needs observed metadata, but "
                             f"task(s) {missing[:10]} have missing (NaN) entries; impute them, leave "
                             "those tasks out or use use_metadata=False")
        return linear_features(x, metadata, self.interactions).double()

    def fit(self, batch: TaskBatch) -> PooledRegression:
        """Fit on every point, support and query, of the batch's tasks (``y_dim = 1``)."""
        if batch.y_support.shape[-1] != 1:
            raise ValueError(f"PooledRegression handles y_dim = 1, got {batch.y_support.shape[-1]}")
        x = torch.cat([batch.x_support, batch.x_query], 1)  # [T, N, Dx]
        y = torch.cat([batch.y_support, batch.y_query], 1).double()[..., 0]  # [T, N]
        mask = torch.cat([batch.support_mask, batch.query_mask], 1)  # [T, N]
        h = self.features(x, batch.metadata)[mask]  # [n, P]
        y = y[mask]  # [n]
        n, P = h.shape
        if n <= P:
            raise ValueError(f"the pooled regression has {P} features and needs more than {P} points, "
                             f"got {n}")
        prior_cov = self.prior_std ** 2 * torch.eye(P, dtype=torch.float64)
        mean, _ = linear_gaussian.posterior(prior_cov, h, y, 1.0)
        self.residual_var = float(((y - h @ mean) ** 2).sum() / (n - P))
        if not self.residual_var > 0:
            raise ValueError("the pooled regression fits the training points exactly (zero residual "
                             "variance); there is nothing to predict with")
        self.mean, self.cov = linear_gaussian.posterior(prior_cov, h, y, self.residual_var)
        return self

    def _require_fit(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        if self.mean is None:
            raise RuntimeError("call fit(batch) before predicting")
        return self.mean, self.cov, self.residual_var

    def predict(self, batch: TaskBatch) -> MixturePredictive:
        """N(h_qᵀ E[w], h_qᵀ Cov[w] h_q + σ²) at ``batch.x_query``: one component, support ignored."""
        mean, cov, residual_var = self._require_fit()
        h = self.features(batch.x_query, batch.metadata)  # [T, Q, P]
        if h.shape[-1] != len(mean):
            raise ValueError(f"the batch gives {h.shape[-1]} features but the regression was fitted on "
                             f"{len(mean)}; x_dim or metadata_dim differ from the training data")
        y_mean, y_var = linear_gaussian.predictive(h, mean, cov, residual_var)  # [T, Q] each
        dtype = batch.x_query.dtype
        return MixturePredictive(log_weights=torch.zeros(batch.num_tasks, 1, dtype=dtype),
                                 mean=y_mean[:, None, :, None].to(dtype),  # [T, 1, Q, 1]
                                 std=y_var.sqrt()[:, None, :, None].to(dtype))
