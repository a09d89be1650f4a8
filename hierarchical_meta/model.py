"""The generative model p_θ(φ1, φ2, Y | X, m) as a Pyro model.

Per task t (plate ``tasks``) and point n (plate ``points``, nested)::

    φ1_t ~ N(0, I_D)
    φ2_t ~ p_θ(φ2 | φ1_t, m_t) = N(μ_θ(φ1_t, m_t), diag σ_θ(φ1_t, m_t)²)
    y_tn ~ p_θ(y | φ2_t, x_tn) = N(f_θ(x_tn, φ2_t), diag s²)      (likelihood "normal")
    y_tn ~ p_θ(y | φ2_t, x_tn) = t_ν(f_θ(x_tn, φ2_t), diag s²)    (likelihood "student")
    y_tn ~ p_θ(y | φ2_t, x_tn) = Cat(softmax f_θ(x_tn, φ2_t))      (likelihood "categorical")

Likelihood (``likelihood``): ``"normal"`` (regression, f has Dy outputs, learned or fixed
noise s; with ``noise="heteroscedastic"`` the noise depends on the input and the task,
s(x, φ2) = softplus(⟨h_s(x), φ2⟩ + c_s(x)) + 10⁻³ per output dim, starting at 0.3
everywhere), ``"student"`` (the same with Student-t noise of scale s and ν degrees of
freedom, one per output dim: ``student_df``, or learned, ν = 1 + softplus(·) starting at
:data:`INITIAL_DF`; ν > 1 so that the predictive has a mean; its tails fall off as
|y|^-(ν+1), so a point far from f costs about (ν + 1) log|y - f| nats instead of
(y - f)²/2s²) or ``"categorical"`` (classification into ``num_classes`` = C classes, f gives C
logits). Categorical y is stored like a regression target, a float tensor [T, N, 1]
holding the class index (as the memorization scenarios store labels), so every caller
passes y the same way; ``Categorical.log_prob`` reads it as an index. Padded slots of a
categorical y must hold some class index (any), since the distribution checks its support.

Prior of φ2 (``prior``):

- ``"linear"``: μ = g(m) + L φ1, σ = σ(m). φ1 is a non-centred task residual and
  p(φ2 | m) = N(g(m), L Lᵀ + diag σ(m)²) in closed form.
- ``"affine"``: μ = b + W m̃ + r(m̃) + L φ1, σ one learned vector, where m̃ = [m, missing
  flags] (:func:`~hierarchical_meta.networks.metadata_features`) and the residual MLP r
  starts at zero: p(φ2 | m) = N(b + W m̃ + r(m̃), L Lᵀ + diag σ²), a mixed model's random
  effects (fixed effects linear in m, one covariance Ψ = L Lᵀ + diag σ² for all tasks)
  until the data ask for more. The covariance does not depend on m, so a few tasks per
  value of m cannot shrink it.
- ``"mlp"``: μ = L φ1 + MLP(φ1, m), σ = σ(φ1, m): a neural conditional Gaussian whose
  marginal p(φ2 | m) can be non-Gaussian (rings, mixtures).

Decoder f_θ (``decoder``), with Dout = Dy (normal) or C (categorical) outputs:

- ``"features"``: f(x, φ2) = ⟨h_θ(x), φ2⟩ + c_θ(x), Bayesian linear regression on learned
  features (y is linear in φ2, so with the linear prior and a normal likelihood the
  evidence is closed form; categorical: multinomial logistic regression on the features);
- ``"polynomial"``: f(x, φ2) = ⟨P(x) + h_θ(x), φ2⟩ + c_θ(x), with P(x) the polynomial terms
  [1, x, x², ..., x^degree] of every input dim (1 + degree Dx terms, x standardized), output
  o's in the coordinates o P .. (o + 1) P - 1 of φ2, and the learned residual h, c of
  ``"features"`` starting at zero. With the linear or affine prior it starts as a linear
  mixed model in P(x) (random coefficients φ2; the textbook model at degree 1) and learns
  the curve's shape as data allow; it needs D >= Dout P.
- ``"mlp"``: f(x, φ2) = MLP([x, φ2]).

With the decoders linear in φ2 (features, polynomial), the linear or affine prior and a
normal likelihood with constant noise the model is linear-Gaussian (:attr:`GenerativeModel.linear_gaussian`):
its evidence and predictive are Gaussian in closed form (:mod:`hierarchical_meta.predict`).

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

__all__ = ["GenerativeModel", "check_likelihood", "check_polynomial", "polynomial_terms", "LIKELIHOODS", "NOISES"]

PRIORS = ("linear", "mlp", "affine")
DECODERS = ("features", "mlp", "polynomial")
LIKELIHOODS = ("normal", "student", "categorical")
CONTINUOUS = ("normal", "student")  # the likelihoods of a regression, with a noise scale s
NOISES = ("constant", "heteroscedastic")
INITIAL_NOISE = 0.3  # s at initialization, learned from there
INITIAL_DF = 4.0  # a learned ν at initialization


def check_likelihood(likelihood: str, num_classes: int | None, y_dim: int,
                     noise_std: float | None = None, noise: str = "constant", student_df: float | None = None) -> None:
    """Raise ``ValueError`` unless the likelihood options fit together (shared by the config)."""
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    if noise not in NOISES:
        raise ValueError(f"noise must be one of {NOISES}, got {noise!r}")
    if student_df is not None and (likelihood != "student" or not (math.isfinite(student_df) and student_df > 1)):
        raise ValueError(f"student_df={student_df} is the fixed degrees of freedom ν of likelihood='student', a "
                         f"finite number > 1 (None learns ν); the likelihood is {likelihood!r}")
    if noise == "heteroscedastic" and (likelihood not in CONTINUOUS or noise_std is not None):
        raise ValueError("noise='heteroscedastic' learns s(x, φ2) of a normal or student likelihood: it takes no "
                         f"fixed noise_std (got {noise_std}) and no categorical likelihood (got {likelihood!r})")
    if likelihood in CONTINUOUS:
        if num_classes is not None:
            raise ValueError(f"num_classes={num_classes} needs likelihood='categorical' "
                             f"(the {likelihood} likelihood has no classes)")
        return
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"likelihood='categorical' needs num_classes >= 2, got {num_classes!r}")
    if y_dim != 1:
        raise ValueError(f"likelihood='categorical' observes one class index per point (y_dim=1), "
                         f"got y_dim={y_dim}")
    if noise_std is not None:
        raise ValueError(f"noise_std={noise_std} applies to likelihood='normal' only; leave it None")


def polynomial_terms(x: torch.Tensor, degree: int) -> torch.Tensor:
    """[1, x, x², ..., x^degree] of every input dim: x [..., Dx] -> [..., 1 + degree Dx]."""
    return torch.cat([torch.ones_like(x[..., :1])] + [x ** k for k in range(1, degree + 1)], -1)


def check_polynomial(degree: int, x_dim: int, outputs: int, latent_dim: int) -> None:
    """Raise ``ValueError`` unless φ2 (``latent_dim`` D) holds the polynomial coefficients of every output."""
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
        raise ValueError(f"polynomial_degree must be an integer >= 1 (1: straight lines), got {degree!r}")
    needed = outputs * (1 + degree * x_dim)
    if latent_dim < needed:
        raise ValueError(f"decoder='polynomial' of degree {degree} on x_dim={x_dim} with {outputs} output(s) has "
                         f"{needed} coefficients in φ2: latent_dim must be >= {needed}, got {latent_dim} "
                         "(raise --latent-dim or lower the degree)")


def _zero_last_layer(network: nn.Sequential) -> nn.Sequential:
    """``network`` with its last layer's weights and bias zero: it starts as the zero function."""
    nn.init.zeros_(network[-1].weight)
    nn.init.zeros_(network[-1].bias)
    return network


class GenerativeModel(nn.Module):
    def __init__(self, x_dim: int = 1, y_dim: int = 1, metadata_dim: int = 2, latent_dim: int = 4,
                 hidden: int = 64, layers: int = 2, prior: str = "mlp", decoder: str = "features",
                 noise_std: float | None = None, likelihood: str = "normal",
                 num_classes: int | None = None, noise: str = "constant", polynomial_degree: int = 2,
                 student_df: float | None = None):
        super().__init__()
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}")
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        check_likelihood(likelihood, num_classes, y_dim, noise_std, noise, student_df)
        self.x_dim, self.y_dim, self.metadata_dim, self.latent_dim = x_dim, y_dim, metadata_dim, latent_dim
        self.prior, self.decoder, self.noise = prior, decoder, noise
        self.likelihood_name, self.num_classes = likelihood, num_classes
        D, M = latent_dim, 2 * metadata_dim  # metadata features carry missing flags
        out = num_classes if likelihood == "categorical" else y_dim  # Dout: outputs of f
        self.phi1_to_phi2 = nn.Linear(D, D, bias=False)  # L
        self._build_prior(prior, D, M, hidden, layers)
        self._build_decoder(decoder, out, hidden, layers, polynomial_degree)
        if likelihood == "categorical":
            return  # no observation noise
        if likelihood == "student":
            self._build_df(student_df)
        self._build_noise(noise, noise_std, hidden, layers)

    def _build_decoder(self, decoder: str, out: int, hidden: int, layers: int, polynomial_degree: int) -> None:
        """The networks of f(x, φ2) with ``out`` = Dout outputs (the module docstring)."""
        D = self.latent_dim
        if decoder == "polynomial":
            check_polynomial(polynomial_degree, self.x_dim, out, D)
            self.polynomial_degree = polynomial_degree
        if decoder in ("features", "polynomial"):
            self.features = MLP(self.x_dim, out * D, hidden, layers)  # h(x)
            self.offset = MLP(self.x_dim, out, hidden, layers)  # c(x)
            if decoder == "polynomial":  # the residual starts at zero
                _zero_last_layer(self.features)
                _zero_last_layer(self.offset)
        else:
            self.net = MLP(self.x_dim + D, out, hidden, layers)

    def _build_noise(self, noise: str, noise_std: float | None, hidden: int, layers: int) -> None:
        """The observation noise s: learned or fixed per output dim, or s(x, φ2) (the module docstring)."""
        y_dim, D = self.y_dim, self.latent_dim
        raw_initial = math.log(math.expm1(INITIAL_NOISE))
        if noise == "heteroscedastic":  # h_s(x) [Dy D] and c_s(x) [Dy], starting at s = 0.3 everywhere
            self.noise_features = MLP(self.x_dim, y_dim * (D + 1), hidden, layers)
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

    def _build_prior(self, prior: str, D: int, M: int, hidden: int, layers: int) -> None:
        """The networks of p(φ2 | φ1, m) besides L (the module docstring)."""
        if prior == "linear":
            self.prior_mean = MLP(M, D, hidden, layers)  # g(m)
            self.prior_scale = MLP(M, D, hidden, layers)  # σ(m)
        elif prior == "affine":
            self.prior_linear = MLP(M, D, layers=0)  # b + W m̃ (an affine map, also of no metadata)
            self.prior_mean = _zero_last_layer(MLP(M, D, hidden, layers))  # r(m̃), zero at the start
            self.raw_prior_scale = nn.Parameter(torch.zeros(D))  # σ = softplus(raw) + 10⁻³
        else:
            self.prior_mean = MLP(D + M, D, hidden, layers)
            self.prior_scale = MLP(D + M, D, hidden, layers)

    def _build_df(self, student_df: float | None) -> None:
        """ν of the student likelihood, one per output dim: fixed, or learned from :data:`INITIAL_DF`."""
        if student_df is None:
            self.raw_df = nn.Parameter(torch.full((self.y_dim,), math.log(math.expm1(INITIAL_DF - 1))))
        else:
            self.register_buffer("fixed_df", torch.full((self.y_dim,), float(student_df)))

    def df(self) -> torch.Tensor:
        """ν [Dy] of the student likelihood (> 1)."""
        if self.likelihood_name != "student":
            raise ValueError(f"df is the degrees of freedom of likelihood='student', not {self.likelihood_name!r}")
        return 1 + nn.functional.softplus(self.raw_df) if hasattr(self, "raw_df") else self.fixed_df

    @property
    def linear_gaussian(self) -> bool:
        """Whether y is linear in φ2 with Gaussian noise of constant scale and p(φ2 | m) Gaussian:
        then the evidence and the predictive are closed form (the module docstring)."""
        return (self.prior in ("linear", "affine") and self.decoder in ("features", "polynomial")
                and self.likelihood_name == "normal" and self.noise == "constant")

    # -- conditional distributions (broadcast over leading dims) ------------------------
    def noise_std(self) -> torch.Tensor:
        """s [Dy] of the normal (or student) likelihood with constant noise."""
        if self.likelihood_name not in CONTINUOUS or self.noise != "constant":
            raise ValueError(f"noise_std is the constant noise of likelihood='normal' or 'student'; this model has "
                             f"likelihood={self.likelihood_name!r}, noise={self.noise!r} (use scale(phi2, x))")
        return positive(self.raw_noise) if hasattr(self, "raw_noise") else self.fixed_noise

    def scale(self, phi2: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """s(x, φ2) of the normal or student likelihood: phi2 [..., T, 1, D], x [T, N, Dx] -> [..., T, N, Dy]."""
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
        if self.prior == "affine":
            mean = self.prior_linear(m) + self.prior_mean(m) + self.phi1_to_phi2(phi1)
            return mean, positive(self.raw_prior_scale).expand(mean.shape)
        h = cat_broadcast([phi1, m])
        return self.phi1_to_phi2(phi1) + self.prior_mean(h), positive(self.prior_scale(h))

    def phi2_prior(self, phi1: torch.Tensor, metadata: torch.Tensor) -> dist.Distribution:
        """p(φ2 | φ1, m): phi1 [..., T, 1, D], metadata [T, 1, Dm] -> event [D]."""
        return dist.Normal(*self.phi2_prior_params(phi1, metadata)).to_event(1)

    def design(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder linear in φ2 as f(x, φ2) = ⟨H(x), φ2⟩ + c(x): x [T, N, Dx] -> H [T, N, Dout, D]
        (h(x), plus P(x) for ``"polynomial"``) and c [T, N, Dout]."""
        if self.decoder not in ("features", "polynomial"):
            raise ValueError(f"decoder={self.decoder!r} is not linear in φ2 (features and polynomial are)")
        h = self.features(x).unflatten(-1, (-1, self.latent_dim))  # [T, N, Dout, D]
        if self.decoder == "polynomial":
            terms = polynomial_terms(x, self.polynomial_degree)  # [T, N, P]
            out = h.shape[-2]
            blocks = (torch.eye(out, dtype=x.dtype, device=x.device)[:, :, None] * terms[..., None, None, :])
            h = h + nn.functional.pad(blocks.flatten(-2), (0, self.latent_dim - out * terms.shape[-1]))
        return h, self.offset(x)

    def decode(self, phi2: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """f(x, φ2): phi2 [..., T, 1, D], x [T, N, Dx] -> [..., T, N, Dout] (mean or logits)."""
        if self.decoder == "mlp":
            return self.net(cat_broadcast([x, phi2]))
        h, c = self.design(x)
        return (h * phi2[..., None, :]).sum(-1) + c  # ⟨H(x), φ2⟩ + c(x)

    def predictive_mean(self, phi2: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """E[y | φ2, x] = f(x, φ2) of the normal or student likelihood: [..., T, N, Dy]."""
        if self.likelihood_name not in CONTINUOUS:
            raise ValueError("predictive_mean is the normal or student likelihood's mean; with likelihood="
                             f"{self.likelihood_name!r}, decode(phi2, x) gives the class logits")
        return self.decode(phi2, x)

    def likelihood(self, phi2: torch.Tensor, x: torch.Tensor) -> dist.Distribution:
        """p(y | φ2, x) with batch shape [..., T, N] and event [Dy] (categorical: [1], the index)."""
        f = self.decode(phi2, x)
        if self.likelihood_name == "categorical":
            return dist.Categorical(logits=f[..., None, :]).to_event(1)  # logits [..., T, N, 1, C]
        scale = self.scale(phi2, x).expand(f.shape)
        if self.likelihood_name == "student":
            return dist.StudentT(self.df().expand(f.shape), f, scale).to_event(1)
        return dist.Normal(f, scale).to_event(1)

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
