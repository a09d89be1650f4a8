"""The generative model p_θ(φ1, φ2, Y | X, m) as a Pyro model.

Per task t (plate ``tasks``) and point n (plate ``points``, nested)::

    φ1_t ~ N(0, I_D)
    φ2_t ~ p_θ(φ2 | φ1_t, m_t) = N(μ_θ(φ1_t, m_t), diag σ_θ(φ1_t, m_t)²)
    y_tn ~ p_θ(y | φ2_t, x_tn) = N(f_θ(x_tn, φ2_t), diag s²)      (likelihood "normal")
    y_tn ~ p_θ(y | φ2_t, x_tn) = Cat(softmax f_θ(x_tn, φ2_t))      (likelihood "categorical")

Likelihood (``likelihood``): ``"normal"`` (regression, f has Dy outputs, learned or fixed
noise s; with ``noise="heteroscedastic"`` the noise depends on the input and the task,
s(x, φ2) = softplus(⟨h_s(x), φ2⟩ + c_s(x)) + 10⁻³ per output dim, starting at 0.3
everywhere) or ``"categorical"`` (classification into ``num_classes`` = C classes, f gives C
logits). Categorical y is stored like a regression target, a float tensor [T, N, 1]
holding the class index (as the memorization scenarios store labels), so every caller
passes y the same way; ``Categorical.log_prob`` reads it as an index. Padded slots of a
categorical y must hold some class index (any), since the distribution checks its support.

Prior of φ2 (``prior``):

- ``"linear"``: μ = g(m) + L φ1, σ = σ(m). φ1 is a non-centred task residual and
  p(φ2 | m) = N(g(m), L Lᵀ + diag σ(m)²) in closed form.
- ``"mlp"``: μ = L φ1 + MLP(φ1, m), σ = σ(φ1, m): a neural conditional Gaussian whose
  marginal p(φ2 | m) can be non-Gaussian (rings, mixtures).

Decoder f_θ (``decoder``), with Dout = Dy (normal) or C (categorical) outputs:

- ``"features"``: f(x, φ2) = ⟨h_θ(x), φ2⟩ + c_θ(x), Bayesian linear regression on learned
  features (y is linear in φ2, so with the linear prior and a normal likelihood the
  evidence is closed form; categorical: multinomial logistic regression on the features);
- ``"mlp"``: f(x, φ2) = MLP([x, φ2]).

Observed m and x are sample sites with a flat (improper) density so that
``pyro.render_model`` draws them; their log-density is zero and leaves the ELBO
unchanged. Latents are shaped [tasks, 1, D] (event dim 1); metadata entries that are
NaN count as missing (:func:`~hierarchical_meta.networks.metadata_features`).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import nn

from .networks import MLP, cat_broadcast, metadata_features, positive

__all__ = ["GenerativeModel", "check_likelihood", "NOISES"]

PRIORS = ("linear", "mlp")
DECODERS = ("features", "mlp")
LIKELIHOODS = ("normal", "categorical")
NOISES = ("constant", "heteroscedastic")
INITIAL_NOISE = 0.3  # s at initialization, learned from there


def check_likelihood(likelihood: str, num_classes: int | None, y_dim: int,
                     noise_std: float | None = None, noise: str = "constant") -> None:
    """Raise ``ValueError`` unless the likelihood options fit together (shared by the config)."""
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    if noise not in NOISES:
        raise ValueError(f"noise must be one of {NOISES}, got {noise!r}")
    if noise == "heteroscedastic" and (likelihood != "normal" or noise_std is not None):
        raise ValueError("noise='heteroscedastic' learns s(x, φ2) of likelihood='normal': it takes no fixed "
                         f"noise_std (got {noise_std}) and no categorical likelihood (got {likelihood!r})")
    if likelihood == "normal":
        if num_classes is not None:
            raise ValueError(f"num_classes={num_classes} needs likelihood='categorical' "
                             "(the normal likelihood has no classes)")
        return
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"likelihood='categorical' needs num_classes >= 2, got {num_classes!r}")
    if y_dim != 1:
        raise ValueError(f"likelihood='categorical' observes one class index per point (y_dim=1), "
                         f"got y_dim={y_dim}")
    if noise_std is not None:
        raise ValueError(f"noise_std={noise_std} applies to likelihood='normal' only; leave it None")


class GenerativeModel(nn.Module):
    def __init__(self, x_dim: int = 1, y_dim: int = 1, metadata_dim: int = 2, latent_dim: int = 4,
                 hidden: int = 64, layers: int = 2, prior: str = "mlp", decoder: str = "features",
                 noise_std: float | None = None, likelihood: str = "normal",
                 num_classes: int | None = None, noise: str = "constant"):
        super().__init__()
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}")
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        check_likelihood(likelihood, num_classes, y_dim, noise_std, noise)
        self.x_dim, self.y_dim, self.metadata_dim, self.latent_dim = x_dim, y_dim, metadata_dim, latent_dim
        self.prior, self.decoder, self.noise = prior, decoder, noise
        self.likelihood_name, self.num_classes = likelihood, num_classes
        D, M = latent_dim, 2 * metadata_dim  # metadata features carry missing flags
        out = y_dim if likelihood == "normal" else num_classes  # Dout: outputs of f
        self.phi1_to_phi2 = nn.Linear(D, D, bias=False)  # L
        if prior == "linear":
            self.prior_mean = MLP(M, D, hidden, layers)  # g(m)
            self.prior_scale = MLP(M, D, hidden, layers)  # σ(m)
        else:
            self.prior_mean = MLP(D + M, D, hidden, layers)
            self.prior_scale = MLP(D + M, D, hidden, layers)
        if decoder == "features":
            self.features = MLP(x_dim, out * D, hidden, layers)  # h(x)
            self.offset = MLP(x_dim, out, hidden, layers)  # c(x)
        else:
            self.net = MLP(x_dim + D, out, hidden, layers)
        if likelihood == "categorical":
            return  # no observation noise
        raw_initial = math.log(math.expm1(INITIAL_NOISE))
        if noise == "heteroscedastic":  # h_s(x) [Dy D] and c_s(x) [Dy], starting at s = 0.3 everywhere
            self.noise_features = MLP(x_dim, y_dim * (D + 1), hidden, layers)
            last = self.noise_features[-1]
            nn.init.zeros_(last.weight)
            nn.init.constant_(last.bias, 0.0)
            last.bias.data[y_dim * D:] = raw_initial
        elif noise_std is None:  # learned observation noise s, one per output dim
            self.raw_noise = nn.Parameter(torch.full((y_dim,), raw_initial))
        else:
            if noise_std <= 0:
                raise ValueError(f"noise_std must be > 0 (or None to learn it), got {noise_std}")
            self.register_buffer("fixed_noise", torch.full((y_dim,), float(noise_std)))

    # -- conditional distributions (broadcast over leading dims) ------------------------
    def noise_std(self) -> torch.Tensor:
        """s [Dy] of the normal likelihood with constant noise."""
        if self.likelihood_name != "normal" or self.noise != "constant":
            raise ValueError(f"noise_std is the constant noise of likelihood='normal'; this model has "
                             f"likelihood={self.likelihood_name!r}, noise={self.noise!r} (use scale(phi2, x))")
        return positive(self.raw_noise) if hasattr(self, "raw_noise") else self.fixed_noise

    def scale(self, phi2: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """s(x, φ2) of the normal likelihood: phi2 [..., T, 1, D], x [T, N, Dx] -> [..., T, N, Dy]."""
        if self.noise == "constant":
            shape = torch.broadcast_shapes(phi2.shape[:-1], x.shape[:-1])  # [..., T, N]
            return self.noise_std().expand(*shape, self.y_dim)
        h, c = self.noise_features(x).split([self.y_dim * self.latent_dim, self.y_dim], -1)
        h = h.unflatten(-1, (self.y_dim, self.latent_dim))  # [T, N, Dy, D]
        return positive((h * phi2[..., None, :]).sum(-1) + c)

    def phi1_prior(self, shape) -> dist.Distribution:
        """p(φ1) = N(0, I_D) with batch shape ``shape``."""
        zeros = torch.zeros(*shape, self.latent_dim, device=self.phi1_to_phi2.weight.device)
        return dist.Normal(zeros, 1.0).to_event(1)

    def phi2_prior_params(self, phi1: torch.Tensor, metadata: torch.Tensor):
        """The mean μ_θ(φ1, m) and scale σ_θ(φ1, m) of p(φ2 | φ1, m) (same arguments as
        :meth:`phi2_prior`), each [..., T, 1, D]."""
        m = metadata_features(metadata)
        if self.prior == "linear":
            mean = self.prior_mean(m) + self.phi1_to_phi2(phi1)
            return mean, positive(self.prior_scale(m)).expand(mean.shape)
        h = cat_broadcast([phi1, m])
        return self.phi1_to_phi2(phi1) + self.prior_mean(h), positive(self.prior_scale(h))

    def phi2_prior(self, phi1: torch.Tensor, metadata: torch.Tensor) -> dist.Distribution:
        """p(φ2 | φ1, m): phi1 [..., T, 1, D], metadata [T, 1, Dm] -> event [D]."""
        return dist.Normal(*self.phi2_prior_params(phi1, metadata)).to_event(1)

    def decode(self, phi2: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """f(x, φ2): phi2 [..., T, 1, D], x [T, N, Dx] -> [..., T, N, Dout] (mean or logits)."""
        if self.decoder == "features":
            h = self.features(x).unflatten(-1, (-1, self.latent_dim))  # [T, N, Dout, D]
            return (h * phi2[..., None, :]).sum(-1) + self.offset(x)  # ⟨h(x), φ2⟩
        return self.net(cat_broadcast([x, phi2]))

    def predictive_mean(self, phi2: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """E[y | φ2, x] = f(x, φ2) of the normal likelihood: [..., T, N, Dy]."""
        if self.likelihood_name != "normal":
            raise ValueError("predictive_mean is the normal likelihood's mean; with likelihood="
                             f"{self.likelihood_name!r}, decode(phi2, x) gives the class logits")
        return self.decode(phi2, x)

    def likelihood(self, phi2: torch.Tensor, x: torch.Tensor) -> dist.Distribution:
        """p(y | φ2, x) with batch shape [..., T, N] and event [Dy] (categorical: [1], the index)."""
        f = self.decode(phi2, x)
        if self.likelihood_name == "categorical":
            return dist.Categorical(logits=f[..., None, :]).to_event(1)  # logits [..., T, N, 1, C]
        return dist.Normal(f, self.scale(phi2, x).expand(f.shape)).to_event(1)

    # -- the Pyro model -------------------------------------------------------------------
    def forward(self, x: torch.Tensor, metadata: torch.Tensor, y: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, latent_scale: float = 1.0):
        """x [T, N, Dx], metadata [T, Dm], y [T, N, Dy] (categorical: class indices, Dy = 1)
        or None, mask [T, N] bool.

        ``latent_scale`` multiplies the log-densities of φ1 and φ2 (KL annealing; the
        guide scales its own sites by the same factor).
        """
        pyro.module("model", self)
        T, N = x.shape[:2]
        with pyro.plate("tasks", T, dim=-2):
            m = pyro.sample("m", dist.ImproperUniform(constraints.real, (), (self.metadata_dim,)),
                            obs=metadata[:, None, :])  # m: [T, 1, Dm]
            with pyro.poutine.scale(scale=latent_scale):
                phi1 = pyro.sample("phi1", self.phi1_prior((T, 1)))  # phi1: [T, 1, D]
                phi2 = pyro.sample("phi2", self.phi2_prior(phi1, m))  # phi2: [T, 1, D]
            with pyro.plate("points", N, dim=-1):
                x = pyro.sample("x", dist.ImproperUniform(constraints.real, (), (self.x_dim,)), obs=x)
                with pyro.poutine.mask(mask=True if mask is None else mask):
                    return pyro.sample("y", self.likelihood(phi2, x), obs=y)  # y: [T, N, Dy]
