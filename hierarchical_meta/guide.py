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

With ``components`` = J > 1, q(φ2 | X, Y) is a mixture of J such Gaussians, which can
hold more than one mode (with one point of a sinusoid the phase has two). Component j has
its own prior factor and per-point factors, and its weight grows with the points' scores::

    (r_nj, log v_nj, a_nj, u_nj)_j, (s_nj)_j = enc([x_n, y_n])
    q(φ2 | X, Y) = Σ_j π_j N(Λ_j⁻¹ η_j, Λ_j⁻¹),   log π_j = ℓ0_j + Σ_n mask_n s_nj + const

(ℓ0 learned, or a function of m when ``sees_metadata``). A mixture has no reparameterized
draw; :class:`GaussianMixture` keeps its components so that the bound can be taken over
them exactly (:mod:`hierarchical_meta.bound`).

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

__all__ = ["AmortizedGuide", "GaussianMixture", "covariance_cholesky"]


def covariance_cholesky(precision: torch.Tensor) -> torch.Tensor:
    """The lower Cholesky factor S of Λ⁻¹ (S Sᵀ = Λ⁻¹) from a precision Λ [..., D, D], without
    inverting Λ: the factor ``MultivariateNormal(precision_matrix=Λ)`` computes (so its draws agree)."""
    inverse = torch.linalg.cholesky(precision.flip(-2, -1)).flip(-2, -1).mT  # lower, Λ = inverseᵀ inverse
    eye = torch.eye(precision.shape[-1], dtype=precision.dtype, device=precision.device)
    return torch.linalg.solve_triangular(inverse, eye, upper=False)


class GaussianMixture(dist.TorchDistribution):
    """Σ_j π_j N(μ_j, S_j S_jᵀ): log_weights [..., J] (normalized here), loc [..., J, D], scale_tril
    [..., J, D, D]; batch shape [...], event [D]. ``components`` is the Gaussians as one
    ``MultivariateNormal`` with batch [..., J]; ``log_weights`` the log π_j."""

    arg_constraints = {}
    support = dist.constraints.real_vector
    has_rsample = False

    def __init__(self, log_weights: torch.Tensor, loc: torch.Tensor, scale_tril: torch.Tensor,
                 validate_args=None):
        self.log_weights = log_weights - log_weights.logsumexp(-1, keepdim=True)
        self.components = dist.MultivariateNormal(loc, scale_tril=scale_tril)
        super().__init__(log_weights.shape[:-1], loc.shape[-1:], validate_args=validate_args)

    def sample(self, sample_shape=()) -> torch.Tensor:
        """Draw a component, then from it: [*sample_shape, *batch, D] (not differentiable)."""
        with torch.no_grad():
            index = dist.Categorical(logits=self.log_weights).sample(sample_shape)  # [*sample, *batch]
            draws = self.components.sample(sample_shape)  # [*sample, *batch, J, D]
            return draws.gather(-2, index[..., None, None].expand(*index.shape, 1, draws.shape[-1]))[..., 0, :]

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log Σ_j π_j N(value; μ_j, Σ_j): value [..., *batch, D] -> [..., *batch]."""
        return (self.log_weights + self.components.log_prob(value[..., None, :])).logsumexp(-1)


class AmortizedGuide(nn.Module):
    def __init__(self, x_dim: int = 1, y_dim: int = 1, metadata_dim: int = 2, latent_dim: int = 4,
                 hidden: int = 64, layers: int = 2, sees_metadata: bool = False,
                 num_classes: int | None = None, components: int = 1):
        super().__init__()
        if isinstance(components, bool) or not isinstance(components, int) or components < 1:
            raise ValueError(f"components must be an integer >= 1 (1: one Gaussian), got {components!r}")
        D, M, J = latent_dim, 2 * metadata_dim, components
        self.latent_dim, self.sees_metadata, self.num_classes = latent_dim, sees_metadata, num_classes
        self.components = components
        scores = J if J > 1 else 0  # s_nj and ℓ0_j: a single Gaussian has no weights
        y_features = y_dim if num_classes is None else num_classes  # one-hot class
        self.point_encoder = MLP(x_dim + y_features, J * (3 * D + 1) + scores, hidden, layers)  # r, log v, a, u (, s)
        if sees_metadata:
            self.aggregation_prior = MLP(M, J * 2 * D + scores, hidden, layers)
        else:
            self.aggregation_prior_params = nn.Parameter(torch.zeros(J * 2 * D + scores))
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

    def phi2_posterior_params(self, x: torch.Tensor, y: torch.Tensor, metadata: torch.Tensor,
                              mask: torch.Tensor | None = None):
        """The parameters of q(φ2 | X, Y[, m]) (same arguments as :meth:`phi2_posterior`):
        ``(logits, mean, scale_tril)``, the unnormalized log π_j [T, J] (None for J = 1), the means
        Λ_j⁻¹ η_j [T, J, D] and the lower factors S_j of Λ_j⁻¹ = S_j S_jᵀ [T, J, D, D]."""
        D, J = self.latent_dim, self.components
        T = x.shape[0]
        if self.sees_metadata:
            prior = self.aggregation_prior(metadata_features(metadata))  # [T, J 2D (+ J)]
        else:
            prior = self.aggregation_prior_params.expand(T, -1)
        prior, logits = prior[:, :J * 2 * D].unflatten(-1, (J, 2 * D)), prior[:, J * 2 * D:]  # [T, J, 2D], [T, J or 0]
        mu0, var0 = prior[..., :D], positive(prior[..., D:]) ** 2  # [T, J, D]
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        keep = mask[..., None, None].to(x.dtype)  # [T, N, 1, 1]
        points = torch.cat([x, self.encode_y(y, mask)], -1)  # [T, N, Dx + Dy or C]
        points = torch.where(mask[..., None], points, 0.0)  # padded slots may hold anything
        encoded = self.point_encoder(points)  # [T, N, J (3D + 1) (+ J)]
        factors, scores = encoded[..., :J * (3 * D + 1)].unflatten(-1, (J, 3 * D + 1)), encoded[..., J * (3 * D + 1):]
        r, v, a, u = factors.split([D, D, D, 1], -1)  # [T, N, J, *]
        inv_v = keep / positive(v) ** 2  # [T, N, J, D]
        a = (a * keep).transpose(1, 2)  # [T, J, N, D]
        precision = torch.diag_embed(1.0 / var0 + inv_v.sum(1)) + a.mT @ a  # [T, J, D, D]
        eta = mu0 / var0 + (inv_v * r).sum(1) + (a * u.transpose(1, 2)).sum(2)  # [T, J, D]
        scale_tril = covariance_cholesky(precision)  # Λ⁻¹ = S Sᵀ
        mean = (scale_tril @ (scale_tril.mT @ eta[..., None]))[..., 0]  # Λ⁻¹ η
        if J == 1:
            return None, mean, scale_tril
        return logits + (scores * mask[..., None]).sum(1), mean, scale_tril  # [T, J]

    def phi2_posterior(self, x: torch.Tensor, y: torch.Tensor, metadata: torch.Tensor,
                       mask: torch.Tensor | None = None) -> dist.Distribution:
        """q(φ2 | X, Y[, m]): x [T, N, Dx], y [T, N, Dy], metadata [T, Dm] -> batch [T, 1], event [D].

        A ``MultivariateNormal`` (one component) or a :class:`GaussianMixture` (J > 1).
        """
        logits, mean, scale_tril = self.phi2_posterior_params(x, y, metadata, mask)
        if logits is None:
            return dist.MultivariateNormal(mean, scale_tril=scale_tril)  # batch [T, 1]
        return GaussianMixture(logits[:, None], mean[:, None], scale_tril[:, None])  # batch [T, 1]

    def phi1_posterior_params(self, phi2: torch.Tensor, metadata: torch.Tensor):
        """The mean a_ψ(φ2, m) and scale b_ψ(φ2, m) of q(φ1 | φ2, m) (same arguments as
        :meth:`phi1_posterior`), each [..., T, 1, D]."""
        loc, raw = self.phi1_encoder(cat_broadcast([phi2, metadata_features(metadata)])).split(self.latent_dim, -1)
        return loc, positive(raw)

    def phi1_posterior(self, phi2: torch.Tensor, metadata: torch.Tensor) -> dist.Distribution:
        """q(φ1 | φ2, m): phi2 [..., T, 1, D], metadata [T, 1, Dm] -> event [D]."""
        return dist.Normal(*self.phi1_posterior_params(phi2, metadata)).to_event(1)

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
