"""The amortized guide q_ψ(φ2 | X, Y) q_ψ(φ1 | φ2, m). It samples φ2 before φ1.

q(φ2 | X, Y) multiplies per-point Gaussian factors in natural parameters, so the
posterior narrows as the number of points N grows (Bayesian context aggregation,
Volpp et al., "Bayesian Context Aggregation for Neural Processes", ICLR 2021, extended
with a rank-one term per point). Each point n gives a diagonal factor (an observation
r_n of φ2 with variances v_n) and a rank-one factor (a direction a_n with observation
u_n, the form of a point's exact update in a model linear in φ2)::

    (r_n, log v_n, a_n, u_n) = enc([x_n, y_n])
    Λ = diag(1/σ0²) + Σ_n mask_n (diag(1/v_n) + a_n a_nᵀ)
    η = μ0/σ0²     + Σ_n mask_n (r_n/v_n + a_n u_n)
    q(φ2 | X, Y) = N(Λ⁻¹ η, Λ⁻¹)

N = 0 (zero-shot) returns the aggregation prior N(μ0, diag σ0²), learned, or a function
of m when ``sees_metadata`` (the variant q(φ2 | X, Y, m)). The sums are permutation
invariant and masked, so tasks with different N share one batch. For a decoder linear
in φ2 (y = ⟨h(x), φ2⟩ + c(x) + N(0, s²)) the exact posterior is in this family
(a_n = h(x_n)/s, u_n = (y_n - c(x_n))/s, v_n → ∞).

q(φ1 | φ2, m) = N(a_ψ(φ2, m), diag b_ψ(φ2, m)²).

For classification (``num_classes`` = C, the model's categorical likelihood) y holds a
class index and the point encoder reads its one-hot vector: enc([x_n, onehot(y_n)]).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from .networks import MLP, cat_broadcast, metadata_features, positive

__all__ = ["AmortizedGuide", "covariance_cholesky"]


def covariance_cholesky(precision: torch.Tensor) -> torch.Tensor:
    """The lower Cholesky factor S of Λ⁻¹ (S Sᵀ = Λ⁻¹) from a precision Λ [..., D, D], without
    inverting Λ: the factor ``MultivariateNormal(precision_matrix=Λ)`` computes (so its draws agree)."""
    inverse = torch.linalg.cholesky(precision.flip(-2, -1)).flip(-2, -1).mT  # lower, Λ = inverseᵀ inverse
    eye = torch.eye(precision.shape[-1], dtype=precision.dtype, device=precision.device)
    return torch.linalg.solve_triangular(inverse, eye, upper=False)


class AmortizedGuide(nn.Module):
    def __init__(self, x_dim: int = 1, y_dim: int = 1, metadata_dim: int = 2, latent_dim: int = 4,
                 hidden: int = 64, layers: int = 2, sees_metadata: bool = False,
                 num_classes: int | None = None):
        super().__init__()
        D, M = latent_dim, 2 * metadata_dim
        self.latent_dim, self.sees_metadata, self.num_classes = latent_dim, sees_metadata, num_classes
        y_features = y_dim if num_classes is None else num_classes  # one-hot class
        self.point_encoder = MLP(x_dim + y_features, 3 * D + 1, hidden, layers)  # r, log v, a, u
        if sees_metadata:
            self.aggregation_prior = MLP(M, 2 * D, hidden, layers)
        else:
            self.aggregation_prior_params = nn.Parameter(torch.zeros(2 * D))
        self.phi1_encoder = MLP(D + M, 2 * D, hidden, layers)

    def encode_y(self, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """What the point encoder reads of y: y [T, N, Dy], or onehot(y) [T, N, C] for classes."""
        if self.num_classes is None:
            return y
        labels = torch.where(mask, y[..., 0], 0.0)  # padded slots may hold anything
        if not ((labels == labels.round()) & (labels >= 0) & (labels < self.num_classes)).all():
            raise ValueError(f"y must hold class indices 0..{self.num_classes - 1} (as floats, [T, N, 1]); "
                             f"got values in [{float(labels.min())}, {float(labels.max())}]")
        return nn.functional.one_hot(labels.long(), self.num_classes).to(y)

    def phi2_posterior(self, x: torch.Tensor, y: torch.Tensor, metadata: torch.Tensor,
                       mask: torch.Tensor | None = None) -> dist.Distribution:
        """q(φ2 | X, Y[, m]): x [T, N, Dx], y [T, N, Dy], metadata [T, Dm] -> batch [T, 1], event [D]."""
        D = self.latent_dim
        if self.sees_metadata:
            prior = self.aggregation_prior(metadata_features(metadata))  # [T, 2D]
        else:
            prior = self.aggregation_prior_params.expand(x.shape[0], 2 * D)
        mu0, var0 = prior[:, :D], positive(prior[:, D:]) ** 2  # [T, D]
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        keep = mask[..., None].to(x.dtype)  # [T, N, 1]
        points = torch.cat([x, self.encode_y(y, mask)], -1)  # [T, N, Dx + Dy or C]
        points = torch.where(mask[..., None], points, 0.0)  # padded slots may hold anything
        r, v, a, u = self.point_encoder(points).split([D, D, D, 1], -1)  # [T, N, *]
        inv_v = keep / positive(v) ** 2  # [T, N, D]
        a = a * keep
        precision = torch.diag_embed(1.0 / var0 + inv_v.sum(1)) + a.transpose(1, 2) @ a  # [T, D, D]
        eta = mu0 / var0 + (inv_v * r).sum(1) + (a * u).sum(1)  # [T, D]
        scale_tril = covariance_cholesky(precision)  # Λ⁻¹ = S Sᵀ
        mean = (scale_tril @ (scale_tril.mT @ eta[..., None]))[..., 0]  # Λ⁻¹ η
        return dist.MultivariateNormal(mean[:, None], scale_tril=scale_tril[:, None])

    def phi1_posterior(self, phi2: torch.Tensor, metadata: torch.Tensor) -> dist.Distribution:
        """q(φ1 | φ2, m): phi2 [..., T, 1, D], metadata [T, 1, Dm] -> event [D]."""
        loc, raw = self.phi1_encoder(cat_broadcast([phi2, metadata_features(metadata)])).split(self.latent_dim, -1)
        return dist.Normal(loc, positive(raw)).to_event(1)

    def forward(self, x: torch.Tensor, metadata: torch.Tensor, y: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, latent_scale: float = 1.0):
        """The Pyro guide; same arguments as :class:`~hierarchical_meta.model.GenerativeModel`."""
        pyro.module("guide", self)
        T = x.shape[0]
        if y is None:
            raise ValueError("the guide needs observed y (use K = 0 support points for zero-shot)")
        with pyro.plate("tasks", T, dim=-2), pyro.poutine.scale(scale=latent_scale):
            phi2 = pyro.sample("phi2", self.phi2_posterior(x, y, metadata, mask))  # [T, 1, D]
            pyro.sample("phi1", self.phi1_posterior(phi2, metadata[:, None, :]))  # [T, 1, D]
