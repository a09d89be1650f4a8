"""Predictive distributions as mixtures over posterior draws, and the metrics computed from them.

Every regression predictor in the package (the model's importance-weighted posterior,
the exact-Bayes grid, a linear mixed model) predicts, per task, a mixture over ``S``
components shared by all of that task's query points::

    p(y_q | support, m) = Σ_s w_s N(y_q; μ_sq, σ_sq²),   Σ_s w_s = 1

Shapes: ``log_weights`` [T, S] (normalized or not), ``mean`` and ``std`` [T, S, Q, Dy].
Metrics are per query point (``y`` [T, Q, Dy], ``mask`` [T, Q]); a point's density is
the product over its Dy output dimensions. With ``df`` = ν [Dy] the components are Student-t
instead, t_ν(y_q; μ_sq, σ_sq²) (the model's student likelihood), whose CDF is the regularized
incomplete beta function (:func:`student_t_cdf`).

Classification (the model's categorical likelihood) mixes categorical distributions
instead, :class:`CategoricalMixturePredictive`::

    p(y_q = c | support, m) = Σ_s w_s softmax(f_sq)_c

with ``logits`` f [T, S, Q, C] and y a class index stored as a float, [T, Q, 1].
"""

from __future__ import annotations

import dataclasses
import math

import torch

__all__ = ["MixturePredictive", "CategoricalMixturePredictive", "point_metrics", "student_t_cdf", "betainc"]


def _compact(t: torch.Tensor) -> torch.Tensor:
    """The smallest tensor that broadcasts to ``t``: its expanded (stride-0) dimensions kept at size 1."""
    return t[tuple(slice(0, 1) if stride == 0 else slice(None) for stride in t.stride())]


def betainc(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor, iterations: int = 300) -> torch.Tensor:
    """The regularized incomplete beta function I_x(a, b) (arguments broadcast; a, b > 0, x in [0, 1]).

    Its continued fraction (Abramowitz and Stegun 26.5.8), evaluated by the modified Lentz method
    in float64, where it converges fast: for x > (a + 1) / (a + b + 2) through
    I_x(a, b) = 1 - I_{1-x}(b, a). It stops when every factor is within 1e-15 of 1.
    """
    a, b, x = (torch.as_tensor(v, dtype=torch.float64) for v in torch.broadcast_tensors(
        torch.as_tensor(a), torch.as_tensor(b), torch.as_tensor(x)))
    flip = x > (a + 1) / (a + b + 2)
    a, b, x = torch.where(flip, b, a), torch.where(flip, a, b), torch.where(flip, 1 - x, x)
    log_front = a * x.log() + b * torch.log1p(-x) + torch.lgamma(a + b) - torch.lgamma(a) - torch.lgamma(b) - a.log()
    tiny = 1e-300

    def guard(v):
        return torch.where(v.abs() < tiny, tiny, v)

    c, d = torch.ones_like(x), 1 / guard(1 - (a + b) * x / (a + 1))
    fraction = d
    for m in range(1, iterations + 1):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 / guard(1 + numerator * d)
            c = guard(1 + numerator / c)
            fraction = fraction * c * d
        if bool(((c * d - 1).abs() < 1e-15).all()):
            break
    value = log_front.exp() * fraction
    return torch.where(flip, 1 - value, value)


def student_t_cdf(z: torch.Tensor, df: torch.Tensor) -> torch.Tensor:
    """P(t ≤ z) of a standard Student-t with ``df`` = ν degrees of freedom (broadcast; the result in z's dtype):
    ½ I_{ν/(ν+z²)}(ν/2, ½) for z < 0, one minus that for z ≥ 0."""
    df = torch.as_tensor(df, dtype=torch.float64)
    half_tail = 0.5 * betainc(df / 2, 0.5, df / (df + z.double() ** 2))
    return torch.where(z < 0, half_tail, 1 - half_tail).to(z.dtype)


class _Weighted:
    """The mixture weights w_s of a predictive with ``log_weights`` [T, S]."""

    @property
    def weights(self) -> torch.Tensor:
        return self.log_weights.exp()

    def effective_sample_size(self) -> torch.Tensor:
        """Kish's ESS of the mixture weights, 1 / Σ w_s²: [T]."""
        return 1.0 / (self.weights ** 2).sum(-1)


@dataclasses.dataclass
class MixturePredictive(_Weighted):
    log_weights: torch.Tensor  # [T, S]
    mean: torch.Tensor  # [T, S, Q, Dy]
    std: torch.Tensor  # [T, S, Q, Dy]
    df: torch.Tensor | None = None  # [Dy]: Student-t components with these degrees of freedom (None: Gaussian)

    def __post_init__(self):
        T, S = self.log_weights.shape
        if self.mean.dim() != 4 or self.mean.shape[:2] != (T, S) or self.std.shape != self.mean.shape:
            raise ValueError(f"mean/std must be [T={T}, S={S}, Q, Dy], got {tuple(self.mean.shape)} "
                             f"and {tuple(self.std.shape)}")
        if self.df is not None and not (self.df.shape == self.mean.shape[-1:] and (self.df > 0).all()):
            raise ValueError(f"df must be [Dy={self.mean.shape[-1]}] degrees of freedom > 0, got {self.df}")
        self.log_weights = self.log_weights - self.log_weights.logsumexp(-1, keepdim=True)

    def components(self) -> torch.distributions.Distribution:
        """The components as one distribution of batch shape [T, S, Q, Dy]: Normal, or StudentT with ``df``."""
        if self.df is None:
            return torch.distributions.Normal(self.mean, self.std)
        return torch.distributions.StudentT(self.df.to(self.mean), self.mean, self.std)

    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        """log p(y_q | support, m) per query point: y [T, Q, Dy] -> [T, Q]."""
        comp = self.components().log_prob(y[:, None]).sum(-1)  # [T, S, Q]
        return (self.log_weights[..., None] + comp).logsumexp(1)

    def predictive_mean(self) -> torch.Tensor:
        """E[y_q]: [T, Q, Dy]."""
        return self._mix(self.mean)

    def _mix(self, values: torch.Tensor) -> torch.Tensor:
        """Σ_s w_s values_s, one batched matrix product: [T, S, Q, Dy] -> [T, Q, Dy]."""
        T, S, Q, Dy = values.shape
        return (self.weights[:, None, :] @ values.reshape(T, S, Q * Dy)).reshape(T, Q, Dy)

    def cdf(self, y: torch.Tensor) -> torch.Tensor:
        """Marginal CDF of each output dimension at y: [T, Q, Dy] -> [T, Q, Dy]."""
        z = (y[:, None] - self.mean) / self.std
        return self._mix(torch.special.ndtr(z) if self.df is None else student_t_cdf(z, self.df))

    def heaviest(self, lost: float) -> MixturePredictive:
        """The mixture of the heaviest components, dropping per task the lightest of total weight <= ``lost``.

        All tasks keep the same number of components (the most any task needs), renormalized;
        the mixture itself when that is more than half of them.
        """
        weights, order = self.weights.sort(-1, descending=True)  # [T, S]
        tail = weights.flip(-1).cumsum(-1).flip(-1)  # tail[s]: weight of component s and all lighter ones
        keep = max(int((tail > lost).sum(-1).max()), 1)
        if keep > weights.shape[-1] // 2:  # copying most of the components would cost more than it saves
            return self
        index = order[:, :keep]
        T, _, Q, Dy = self.mean.shape
        wide = index[:, :, None, None].expand(T, keep, Q, Dy)
        std = self.std[:, :keep] if self.std.stride(1) == 0 else self.std.gather(1, wide)  # shared: a view
        return MixturePredictive(self.log_weights.gather(1, index), self.mean.gather(1, wide), std, self.df)

    def quantile(self, level: float, iterations: int = 60) -> torch.Tensor:
        """The ``level`` quantile of each marginal: [T, Q, Dy].

        Newton's method on the mixture CDF F, x ← x − (F(x) − level) / p(x), from the
        moment-matched Gaussian's quantile, kept inside a bracket [min μ − 10 max σ,
        max μ + 10 max σ] that every step narrows: a Newton step that leaves it is replaced
        by bisection (so it converges wherever bisection does). It stops when every step is
        below eps^(3/4) of the mixture's standard deviation (eps of the dtype), about three
        steps for the mixtures of a trained model. Components lighter than eps in total are
        left out (:meth:`heaviest`): they move the CDF by less than its round-off.
        """
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {level}")
        if self.df is not None:
            return self._student_quantile(level, iterations)
        mix = self.heaviest(torch.finfo(self.mean.dtype).eps)
        mu = mix.mean.contiguous()  # [T, S, Q, Dy], so that the sums over S are plain matrix products
        std = _compact(mix.std)  # σ shared by components (an expanded view) stays small
        spread = 10 * std.amax(1)
        low, high = mu.amin(1) - spread, mu.amax(1) + spread
        mean = mix._mix(mu)
        sd = mix._mix((mu - mean[:, None]) ** 2 + std ** 2).sqrt()
        z_level = torch.special.ndtri(torch.tensor(level, dtype=mean.dtype))
        x = torch.minimum(torch.maximum(mean + z_level * sd, low), high)
        tol = torch.finfo(mean.dtype).eps ** 0.75 * sd
        scale = 1 / (math.sqrt(2) * std)  # u = (μ - x) / (√2 σ): Φ = erfc(u) / 2, φ / σ = exp(-u²) / (√(2π) σ)
        shared = std.shape[1] == 1  # one σ for all components: 1/σ comes out of the sum over them

        def cdf_and_density(at):
            u = (mu - at[:, None]).mul_(scale)  # [T, S, Q, Dy]
            cdf = 0.5 * mix._mix(torch.special.erfc(u))
            bump = u.square_().neg_().exp_()
            return cdf, (mix._mix(bump) / std[:, 0] if shared else mix._mix(bump.div_(std))) / math.sqrt(2 * math.pi)

        return _bracketed_newton(cdf_and_density, level, x, low, high, tol, iterations)

    def _student_quantile(self, level: float, iterations: int) -> torch.Tensor:
        """:meth:`quantile` of Student-t components: the same bracketed Newton steps on the mixture CDF,
        from the bracket [min μ − 10 max σ, max μ + 10 max σ] widened (doubled) until it holds the
        quantile (a t's tails reach further), starting at its midpoint."""
        mix = self.heaviest(torch.finfo(self.mean.dtype).eps)
        spread = 10 * mix.std.amax(1)
        low, high = mix.mean.amin(1) - spread, mix.mean.amax(1) + spread  # [T, Q, Dy]
        for _ in range(64):
            too_high, too_low = mix.cdf(low) > level, mix.cdf(high) < level
            if not bool((too_high | too_low).any()):
                break
            width = high - low
            low, high = torch.where(too_high, low - width, low), torch.where(too_low, high + width, high)
        x, tol = (low + high) / 2, torch.finfo(mix.mean.dtype).eps ** 0.75 * mix.std.amin(1)

        def cdf_and_density(at):
            return mix.cdf(at), mix._mix(mix.components().log_prob(at[:, None]).exp())

        return _bracketed_newton(cdf_and_density, level, x, low, high, tol, iterations)


def _bracketed_newton(cdf_and_density, level: float, x: torch.Tensor, low: torch.Tensor, high: torch.Tensor,
                      tol: torch.Tensor, iterations: int) -> torch.Tensor:
    """The x with F(x) = ``level``: Newton steps x ← x − (F(x) − level) / F'(x) from ``x``, where
    ``cdf_and_density(x)`` gives (F(x), F'(x)). The bracket [low, high] shrinks to the side of x
    that holds the root at every step, and a Newton point outside it is replaced by the bracket's
    midpoint (bisection); it stops when every step is at most ``tol``, or after ``iterations``."""
    for _ in range(iterations):
        cdf, density = cdf_and_density(x)
        below = cdf - level < 0
        low, high = torch.where(below, x, low), torch.where(below, high, x)
        newton = x - (cdf - level) / density
        inside = (newton >= low) & (newton <= high)  # False for NaN (zero density)
        step = torch.where(inside, newton, (low + high) / 2) - x
        x = x + step
        if bool((step.abs() <= tol).all()):
            break
    return x

@dataclasses.dataclass
class CategoricalMixturePredictive(_Weighted):
    """Σ_s w_s Cat(softmax f_s) per query point: log_weights [T, S], logits [T, S, Q, C]."""

    log_weights: torch.Tensor  # [T, S]
    logits: torch.Tensor  # [T, S, Q, C]

    def __post_init__(self):
        T, S = self.log_weights.shape
        if self.logits.dim() != 4 or self.logits.shape[:2] != (T, S):
            raise ValueError(f"logits must be [T={T}, S={S}, Q, C], got {tuple(self.logits.shape)}")
        self.log_weights = self.log_weights - self.log_weights.logsumexp(-1, keepdim=True)

    @property
    def log_probs(self) -> torch.Tensor:
        """log p(y_q = c | support, m): [T, Q, C]."""
        return (self.log_weights[..., None, None] + self.logits.log_softmax(-1)).logsumexp(1)

    @property
    def probs(self) -> torch.Tensor:
        """p(y_q = c | support, m) = Σ_s w_s softmax(f_sq)_c: [T, Q, C], rows sum to one."""
        return self.log_probs.exp()

    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        """log p(y_q | support, m) per query point: y [T, Q, 1] (class indices) -> [T, Q]."""
        return self.log_probs.gather(-1, y.long())[..., 0]

    def predicted_class(self) -> torch.Tensor:
        """The most probable class per query point: [T, Q] (long)."""
        return self.log_probs.argmax(-1)


def point_metrics(predictive, y: torch.Tensor, mask: torch.Tensor | None = None,
                  level: float = 0.9, per_task: bool = False) -> dict:
    """Per-query-point metrics averaged over the unmasked points of all tasks.

    - ``loglik``: mean of log p(y_q | support, m) (nats per point);
    - ``task_loglik`` (with ``per_task``): the same per task, a tensor [T] (NaN for a task
      without unmasked points), from which :func:`~hierarchical_meta.evaluate.evaluate` finds
      the worst task;

    and for a :class:`MixturePredictive` (regression)

    - ``mse``: mean squared error of the predictive mean (averaged over Dy);
    - ``coverage90`` (for ``level=0.9``): fraction of points whose every output
      dimension lies in the central ``level`` interval, i.e. its CDF value lies in
      [(1 - level)/2, (1 + level)/2];

    for a :class:`CategoricalMixturePredictive` (classification)

    - ``accuracy``: fraction of points whose most probable class is the label.
    """
    if mask is None:
        mask = torch.ones(y.shape[:2], dtype=torch.bool, device=y.device)
    n = mask.sum()
    if n == 0:
        raise ValueError("no unmasked query points to score")
    categorical = isinstance(predictive, CategoricalMixturePredictive)
    # padded slots may hold anything
    y = torch.where(mask[..., None], y, 0.0 if categorical else predictive.predictive_mean())
    logp = torch.where(mask, predictive.log_prob(y), 0.0)
    scores = {"loglik": float(logp.sum() / n)}
    if categorical:
        correct = (predictive.predicted_class() == y[..., 0].long()) & mask
        scores["accuracy"] = float(correct.sum() / n)
    else:
        scores.update(_interval_metrics(predictive, y, mask, level))
    if per_task:
        scores["task_loglik"] = logp.sum(-1) / mask.sum(-1)
    return scores


def _interval_metrics(predictive: MixturePredictive, y: torch.Tensor, mask: torch.Tensor, level: float) -> dict:
    """``mse`` and the coverage of the central ``level`` interval (:func:`point_metrics`)."""
    n = mask.sum()
    sq = torch.where(mask, ((predictive.predictive_mean() - y) ** 2).mean(-1), 0.0)
    u = predictive.cdf(y)
    tail = (1 - level) / 2
    inside = ((u >= tail) & (u <= 1 - tail)).all(-1)
    key = f"coverage{int(round(level * 100))}"
    return {"mse": float(sq.sum() / n), key: float((inside & mask).sum() / n)}
