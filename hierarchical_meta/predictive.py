"""Predictive distributions as mixtures over posterior draws, and the metrics computed from them.

Every regression predictor in the package (the model's importance-weighted posterior,
the exact-Bayes grid, a linear mixed model) predicts, per task, a mixture over ``S``
components shared by all of that task's query points::

    p(y_q | support, m) = Σ_s w_s N(y_q; μ_sq, σ_sq²),   Σ_s w_s = 1

Shapes: ``log_weights`` [T, S] (normalized or not), ``mean`` and ``std`` [T, S, Q, Dy].
Metrics are per query point (``y`` [T, Q, Dy], ``mask`` [T, Q]); a point's density is
the product over its Dy output dimensions.

Classification (the model's categorical likelihood) mixes categorical distributions
instead, :class:`CategoricalMixturePredictive`::

    p(y_q = c | support, m) = Σ_s w_s softmax(f_sq)_c

with ``logits`` f [T, S, Q, C] and y a class index stored as a float, [T, Q, 1].
"""

from __future__ import annotations

import dataclasses
import math

import torch

__all__ = ["MixturePredictive", "CategoricalMixturePredictive", "point_metrics"]


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

    def __post_init__(self):
        T, S = self.log_weights.shape
        if self.mean.dim() != 4 or self.mean.shape[:2] != (T, S) or self.std.shape != self.mean.shape:
            raise ValueError(f"mean/std must be [T={T}, S={S}, Q, Dy], got {tuple(self.mean.shape)} "
                             f"and {tuple(self.std.shape)}")
        self.log_weights = self.log_weights - self.log_weights.logsumexp(-1, keepdim=True)

    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        """log p(y_q | support, m) per query point: y [T, Q, Dy] -> [T, Q]."""
        comp = torch.distributions.Normal(self.mean, self.std).log_prob(y[:, None]).sum(-1)  # [T, S, Q]
        return (self.log_weights[..., None] + comp).logsumexp(1)

    def predictive_mean(self) -> torch.Tensor:
        """E[y_q]: [T, Q, Dy]."""
        return (self.weights[..., None, None] * self.mean).sum(1)

    def cdf(self, y: torch.Tensor) -> torch.Tensor:
        """Marginal CDF of each output dimension at y: [T, Q, Dy] -> [T, Q, Dy]."""
        comp = torch.distributions.Normal(self.mean, self.std).cdf(y[:, None])  # [T, S, Q, Dy]
        return (self.weights[..., None, None] * comp).sum(1)

    def quantile(self, level: float, iterations: int = 40, tol: float | None = None) -> torch.Tensor:
        """The ``level`` quantile of each marginal: [T, Q, Dy].

        Newton's method on each point's mixture CDF F, safeguarded by bisection: the
        smallest and the largest ``level`` quantile of the components bracket the mixture's
        (F is a weighted mean of the components' CDFs); it starts at the quantile of the
        moment-matched normal, and a Newton step that leaves the bracket is replaced by the
        bracket's midpoint. A point stops when its step is below ``tol`` times the mixture's
        standard deviation (default: the square root of the dtype's machine epsilon), or a
        few units of rounding, or after ``iterations``; its quantile is then within that
        step of the root (far closer after a Newton step, which converges quadratically).
        Only the points still moving are computed on.
        """
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {level}")
        T, S, Q, D = self.mean.shape
        mean = self.mean.permute(0, 2, 3, 1).reshape(-1, S)  # [P, S], one row per point (t, q, d)
        std = self.std.permute(0, 2, 3, 1).reshape(-1, S)
        task = torch.arange(T, device=mean.device).repeat_interleave(Q * D)  # [P]
        weights = self.weights
        z = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(level, dtype=torch.float64)))
        components = mean + std * z
        low, high = components.amin(-1), components.amax(-1)  # [P] each
        center = (weights[task] * mean).sum(-1)
        sd = ((weights[task] * (std ** 2 + mean ** 2)).sum(-1) - center ** 2).clamp_min(0).sqrt()
        x = torch.minimum(torch.maximum(center + sd * z, low), high)
        eps = torch.finfo(x.dtype).eps
        tolerance = torch.maximum((eps ** 0.5 if tol is None else tol) * sd, 4 * eps * x.abs())
        active = torch.arange(len(x), device=x.device)
        for _ in range(iterations):
            if len(active) == 0:
                break
            w, s, xa = weights[task[active]], std[active], x[active]
            u = (xa[:, None] - mean[active]) / s  # [A, S]
            F = (w * torch.special.ndtr(u)).sum(-1)
            density = (w * torch.exp(-0.5 * u ** 2) / s).sum(-1) / math.sqrt(2 * math.pi)
            below = F < level
            lo, hi = torch.where(below, xa, low[active]), torch.where(below, high[active], xa)
            step = xa - (F - level) / density
            step = torch.where((step > lo) & (step < hi), step, (lo + hi) / 2)
            low[active], high[active], x[active] = lo, hi, step
            active = active[(step - xa).abs() > tolerance[active]]
        return x.reshape(T, Q, D)


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
                  level: float = 0.9) -> dict:
    """Per-query-point metrics averaged over the unmasked points of all tasks.

    - ``loglik``: mean of log p(y_q | support, m) (nats per point);

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
    if isinstance(predictive, CategoricalMixturePredictive):
        y = torch.where(mask[..., None], y, 0.0)  # padded slots may hold anything
        logp = torch.where(mask, predictive.log_prob(y), 0.0)
        correct = (predictive.predicted_class() == y[..., 0].long()) & mask
        return {"loglik": float(logp.sum() / n), "accuracy": float(correct.sum() / n)}
    y = torch.where(mask[..., None], y, predictive.predictive_mean())  # padded slots may hold anything
    logp = torch.where(mask, predictive.log_prob(y), 0.0)
    sq = torch.where(mask, ((predictive.predictive_mean() - y) ** 2).mean(-1), 0.0)
    u = predictive.cdf(y)
    tail = (1 - level) / 2
    inside = ((u >= tail) & (u <= 1 - tail)).all(-1)
    key = f"coverage{int(round(level * 100))}"
    return {"loglik": float(logp.sum() / n), "mse": float(sq.sum() / n),
            key: float((inside & mask).sum() / n)}
