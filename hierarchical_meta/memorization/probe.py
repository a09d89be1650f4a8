"""The memorization probe: does a meta-learner adapt to its support set or ignore it?

Yin et al., "Meta-Learning without Memorization", ICLR 2020: when the task can be read
off the query input alone, a meta-learner can solve every meta-training task while
ignoring the support set ("complete memorization"), and then fails to adapt to new
tasks. This module turns that into a measurement on any meta-learner given as a
*predict function*::

    predict(x_support [T, K, Dx], y_support [T, K, Dy], x_query [T, Q, Dx]
            [, support_mask [T, K]] [, metadata [T, Dm]]) -> predictive at x_query

returning ``torch.distributions.Normal`` (``mean`` [T, Q, Dy]) or ``Independent`` of
one, or the package's :class:`~hierarchical_meta.predictive.MixturePredictive` for
regression, and ``Categorical`` (``probs`` [T, Q, C]) or the package's
:class:`~hierarchical_meta.predictive.CategoricalMixturePredictive` for classification
(``Bernoulli`` with ``probs`` [T, Q] or [T, Q, 1] for two classes). The optional arguments
are passed when the function's signature names them; anything else raises ``ValueError``.

For each task split (meta-train tasks, meta-test tasks) the probe reports

- the query loss L (negative log-likelihood, nats per query point) with the task's own
  support, with supports swapped across tasks by a derangement π of the batch
  (task t gets task π(t)'s support; several derangements), and with no support;
- ``gain_vs_swapped`` = L(swapped) − L(own) and ``gain_vs_none`` = L(none) − L(own):
  how much the task's own support helps;
- ``follow``, the primary signal. Regression: the least-squares coefficient of the
  prediction's change on the truth's change under a swapped support::

      follow = Σ Δŷ · Δf / Σ Δf²,   Δŷ = E[y | D_π(t), x_q] − E[y | D_t, x_q],
                                     Δf = f_π(t)(x_q) − f_t(x_q)

  (1 for a learner that moves fully to the other task's truth, 0 for one that ignores
  the support). Classification: the support is relabelled by a derangement σ of the
  classes, and with p the predicted class probabilities and e_c the one-hot vectors::

      follow = Σ ⟨p_relabelled − p_own, e_σ(y) − e_y⟩ / Σ |e_σ(y) − e_y|²

  (the same least-squares coefficient, with the one-hot truth as "f").

Both follow scores are linear in the predictive mean (probabilities), so a support-
ignoring predictor scores exactly 0 and a convex mixture α·oracle + (1 − α)·memorizer
scores exactly α times the oracle's follow. A learner confused by an unfamiliar support
can show a large swapped-support "gain" with a follow near 0: sensitivity is not
adaptation.

Metadata stays with the query's task by default (it is an observation of the task, like
the query input); ``swap_metadata=True`` moves it with the support instead.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping

import torch

from ..predictive import CategoricalMixturePredictive, MixturePredictive
from ..tasks.base import TaskBatch, TaskFamily

__all__ = ["ProbeReport", "probe", "probe_batch", "derangement", "true_mean", "predict_batch"]


# --------------------------------------------------------------------------- helpers

def derangement(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniformly random permutation of ``range(n)`` with no fixed point (rejection)."""
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 tasks, got {n}; sample more tasks")
    while True:
        perm = torch.randperm(n, generator=generator)
        if (perm != torch.arange(n)).all():
            return perm


def true_mean(family: TaskFamily, params: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Noise-free regression function f_t(x) of each task: x [T, Q, Dx] -> [T, Q, Dy].

    ``family.true_mean(params, x)``; ``ValueError`` when the family has none.
    """
    f = family.true_mean(params, x)
    if f is None:
        raise ValueError(f"the regression follow score needs each task's noise-free function, but "
                         f"task family {family.name!r} ({type(family).__name__}) has no true_mean; "
                         "override TaskFamily.true_mean(params, x)")
    return f


def _accepts(fn: Callable, name: str) -> bool:
    if isinstance(fn, torch.nn.Module):  # Module.__call__ takes **kwargs; its forward tells
        fn = fn.forward
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    return name in sig.parameters or any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())


def predict_batch(predict: Callable, batch: TaskBatch):
    """Call a predict function on a :class:`TaskBatch` (passing mask/metadata if it takes them)."""
    kwargs = {}
    if _accepts(predict, "support_mask"):
        kwargs["support_mask"] = batch.support_mask
    if _accepts(predict, "metadata"):
        kwargs["metadata"] = batch.metadata
    return predict(batch.x_support, batch.y_support, batch.x_query, **kwargs)


def _regression_view(out, T: int, Q: int, Dy: int):
    """(log_prob function y -> [T, Q], predictive mean [T, Q, Dy]) of a regression predictive."""
    if isinstance(out, MixturePredictive):
        if out.mean.shape[0] != T or out.mean.shape[2:] != (Q, Dy):
            raise ValueError(f"predict returned a MixturePredictive with mean {tuple(out.mean.shape)}; "
                             f"expected [T={T}, S, Q={Q}, Dy={Dy}]")
        return out.log_prob, out.predictive_mean()
    base = out.base_dist if isinstance(out, torch.distributions.Independent) else out
    if not isinstance(base, torch.distributions.Normal):
        raise ValueError(f"predict returned {type(out).__name__}; a regression predict function must "
                         "return torch.distributions.Normal (or Independent(Normal)) with mean "
                         f"[T={T}, Q={Q}, Dy={Dy}], or a MixturePredictive")
    if tuple(base.mean.shape) != (T, Q, Dy):
        raise ValueError(f"predict returned a Normal with mean {tuple(base.mean.shape)}; expected "
                         f"[T={T}, Q={Q}, Dy={Dy}] (one Normal per query point and output)")
    return (lambda y: base.log_prob(y).sum(-1)), base.mean


def _class_probs(out, T: int, Q: int, C: int) -> torch.Tensor:
    """Class probabilities [T, Q, C] of a classification predictive."""
    if isinstance(out, torch.distributions.Bernoulli) and C == 2:
        p1 = out.probs[..., 0] if out.probs.dim() == 3 and out.probs.shape[-1] == 1 else out.probs
        if tuple(p1.shape) != (T, Q):
            raise ValueError(f"predict returned a Bernoulli with probs {tuple(out.probs.shape)}; "
                             f"expected [T={T}, Q={Q}] or [T, Q, 1]")
        return torch.stack([1 - p1, p1], -1)
    if not isinstance(out, (torch.distributions.Categorical, CategoricalMixturePredictive)):
        raise ValueError(f"predict returned {type(out).__name__}; a classification predict function "
                         f"must return torch.distributions.Categorical (or a CategoricalMixturePredictive) "
                         f"with probs [T={T}, Q={Q}, C={C}]")
    if tuple(out.probs.shape) != (T, Q, C):
        raise ValueError(f"predict returned a {type(out).__name__} with probs {tuple(out.probs.shape)}; "
                         f"expected [T={T}, Q={Q}, C={C}]")
    return out.probs


def _swap_support(batch: TaskBatch, perm: torch.Tensor, swap_metadata: bool) -> TaskBatch:
    return dataclasses.replace(batch, x_support=batch.x_support[perm], y_support=batch.y_support[perm],
                               support_mask=batch.support_mask[perm],
                               metadata=batch.metadata[perm] if swap_metadata else batch.metadata)


def _ratio_se(num: torch.Tensor, den: torch.Tensor) -> tuple:
    """Σnum/Σden over tasks and its delta-method standard error (per-task terms [T])."""
    ratio = num.sum() / den.sum()
    se = ((num - ratio * den) ** 2).sum().sqrt() / den.sum()
    return float(ratio), float(se)


def _mean_se(values: torch.Tensor) -> tuple:
    n = values.numel()
    se = values.std() / math.sqrt(n) if n > 1 else torch.tensor(float("nan"))
    return float(values.mean()), float(se)


# --------------------------------------------------------------------------- report

@dataclasses.dataclass
class ProbeReport:
    """Probe scores on one split of tasks. Losses are nats per query point; ``_se`` fields are
    standard errors across tasks; ``metric`` is MSE (regression) or accuracy (classification)."""

    split: str
    num_tasks: int
    loss: float  # L(own support)
    loss_swapped: float  # L(swapped support), mean over derangements
    loss_none: float  # L(no support)
    gain_vs_swapped: float
    gain_vs_swapped_se: float
    gain_vs_none: float
    gain_vs_none_se: float
    follow: float
    follow_se: float
    metric_name: str  # "mse" or "accuracy"
    metric: float  # with the own support
    metric_none: float  # with no support
    chance_loss: float  # constant predictor fitted to this split's query labels
    chance_metric: float

    def as_row(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def _regression_scores(predict: Callable, batch: TaskBatch, family: TaskFamily | None, perms, per_task,
                       swap_metadata: bool) -> tuple:
    """:func:`probe_batch`'s per-task losses, follow sums and metric for regression."""
    if family is None:
        raise ValueError("regression probing needs the task family (for the follow score)")
    T, Q, Dy = batch.y_query.shape
    qmask = batch.query_mask.to(batch.y_query.dtype)  # [T, Q]
    f_own = true_mean(family, batch.params, batch.x_query)  # [T, Q, Dy]

    def run(b):
        return _regression_view(predict_batch(predict, b), T, Q, Dy)

    logp_own, mean_own = run(batch)
    logp_none, mean_none = run(batch.with_support_size(0))
    loss_own, loss_none = per_task(-logp_own(batch.y_query)), per_task(-logp_none(batch.y_query))
    swapped, num, den = [], 0.0, 0.0
    for perm in perms:
        logp_sw, mean_sw = run(_swap_support(batch, perm, swap_metadata))
        swapped.append(per_task(-logp_sw(batch.y_query)))
        params_perm = {k: v[perm] for k, v in batch.params.items()}
        d_truth = true_mean(family, params_perm, batch.x_query) - f_own  # [T, Q, Dy]
        d_pred = mean_sw - mean_own
        num = num + ((d_pred * d_truth).sum(-1) * qmask).sum(-1)  # [T]
        den = den + ((d_truth ** 2).sum(-1) * qmask).sum(-1)
    sq = lambda m: per_task(((m - batch.y_query) ** 2).mean(-1))  # noqa: E731
    y = batch.y_query[batch.query_mask]  # [n, Dy]
    var = y.var(0, unbiased=False).clamp_min(1e-12)
    chance_loss = float(0.5 * torch.log(2 * math.pi * math.e * var).sum())
    return (loss_own, loss_none, swapped, num, den, "mse", sq(mean_own), sq(mean_none), chance_loss,
            float(var.mean()))


def _classification_scores(predict: Callable, batch: TaskBatch, num_classes: int, perms, per_task,
                           swap_metadata: bool, num_derangements: int, generator) -> tuple:
    """:func:`probe_batch`'s per-task losses, follow sums and metric for classification."""
    T, Q, _ = batch.y_query.shape
    C = int(num_classes)
    qmask = batch.query_mask.to(batch.y_query.dtype)  # [T, Q]
    labels = batch.y_query[..., 0].round().long()  # [T, Q]
    if labels.min() < 0 or labels.max() >= C:
        raise ValueError(f"query labels must be class indices in [0, {C}), got range "
                         f"[{int(labels.min())}, {int(labels.max())}]")

    def run(b):
        return _class_probs(predict_batch(predict, b), T, Q, C)

    def nll(p):
        return -p.gather(-1, labels[..., None])[..., 0].clamp_min(1e-12).log()

    def acc(p):
        return (p.argmax(-1) == labels).to(qmask.dtype)

    p_own, p_none = run(batch), run(batch.with_support_size(0))
    loss_own, loss_none = per_task(nll(p_own)), per_task(nll(p_none))
    swapped = [per_task(nll(run(_swap_support(batch, perm, swap_metadata)))) for perm in perms]
    # follow: relabel the support by derangements of the classes
    num, den = 0.0, 0.0
    onehot = torch.nn.functional.one_hot(labels, C).to(p_own)  # [T, Q, C]
    for _ in range(num_derangements if C > 2 else 1):
        sigma = derangement(C, generator)
        y_rel = sigma[batch.y_support[..., 0].round().long().clamp(0, C - 1)]
        relabelled = dataclasses.replace(batch, y_support=y_rel[..., None].to(batch.y_support))
        d_pred = run(relabelled) - p_own
        d_truth = torch.nn.functional.one_hot(sigma[labels], C).to(p_own) - onehot
        num = num + ((d_pred * d_truth).sum(-1) * qmask).sum(-1)
        den = den + ((d_truth ** 2).sum(-1) * qmask).sum(-1)
    freq = torch.bincount(labels[batch.query_mask], minlength=C).to(p_own)
    freq = freq / freq.sum()
    chance_loss = float(-(freq[freq > 0] * freq[freq > 0].log()).sum())
    return (loss_own, loss_none, swapped, num, den, "accuracy", per_task(acc(p_own)), per_task(acc(p_none)),
            chance_loss, float(freq.max()))


def probe_batch(predict: Callable, batch: TaskBatch, *, family: TaskFamily | None = None,
                num_classes: int | None = None, num_derangements: int = 4,
                swap_metadata: bool = False, split: str = "",
                generator: torch.Generator | None = None) -> ProbeReport:
    """Probe ``predict`` on one batch of tasks (see the module docstring).

    Regression (``num_classes=None``) needs ``family`` for the tasks' noise-free functions
    (:func:`true_mean`); classification stores class indices in ``y`` ([T, N, 1]).
    """
    T = batch.y_query.shape[0]
    if T < 2:
        raise ValueError(f"the probe swaps supports across tasks and needs >= 2 tasks, got {T}")
    if num_derangements < 1:
        raise ValueError(f"num_derangements must be >= 1, got {num_derangements}")
    qmask = batch.query_mask.to(batch.y_query.dtype)  # [T, Q]
    n_query = qmask.sum(-1)  # [T]
    if (n_query == 0).any():
        raise ValueError("every task needs at least one unmasked query point")
    perms = [derangement(T, generator) for _ in range(num_derangements)]

    def per_task(v):  # [T, Q] -> mean over unmasked query points [T]
        return (v * qmask).sum(-1) / n_query

    with torch.no_grad():
        if num_classes is None:
            scores = _regression_scores(predict, batch, family, perms, per_task, swap_metadata)
        else:
            scores = _classification_scores(predict, batch, num_classes, perms, per_task, swap_metadata,
                                            num_derangements, generator)
    loss_own, loss_none, swapped, num, den, metric_name, metric, metric_none, chance_loss, chance_metric = scores
    loss_swapped = torch.stack(swapped).mean(0)  # [T]
    gs, gs_se = _mean_se(loss_swapped - loss_own)
    gn, gn_se = _mean_se(loss_none - loss_own)
    follow, follow_se = _ratio_se(num, den)
    return ProbeReport(split=split, num_tasks=T, loss=float(loss_own.mean()),
                       loss_swapped=float(loss_swapped.mean()), loss_none=float(loss_none.mean()),
                       gain_vs_swapped=gs, gain_vs_swapped_se=gs_se,
                       gain_vs_none=gn, gain_vs_none_se=gn_se,
                       follow=follow, follow_se=follow_se, metric_name=metric_name,
                       metric=float(metric.mean()), metric_none=float(metric_none.mean()),
                       chance_loss=chance_loss, chance_metric=chance_metric)


def probe(predict: Callable, family: TaskFamily, *, num_support: int, num_query: int,
          num_tasks: int = 64, num_derangements: int = 4,
          splits: Mapping[str, str] | None = None, swap_metadata: bool = False,
          seed: int = 1234) -> dict[str, ProbeReport]:
    """Probe ``predict`` on fresh tasks of ``family``, one report per entry of ``splits``.

    ``splits`` maps a report name to the family's task split; the default
    ``{"meta-train": "train", "meta-test": "test"}`` draws new tasks from the meta-training
    distribution and from the held-out (meta-test) distribution. ``family.num_classes``
    (None for regression) selects classification. The draws use their own seed, so they
    are fresh tasks and points, not the ones a learner was trained on.
    """
    splits = {"meta-train": "train", "meta-test": "test"} if splits is None else dict(splits)
    if not splits:
        raise ValueError("splits must name at least one task split")
    reports = {}
    for i, (name, split) in enumerate(splits.items()):
        generator = torch.Generator().manual_seed(seed + 7919 * i)
        try:
            batch = family.sample(num_tasks, num_support, num_query, split=split, generator=generator)
        except (NotImplementedError, KeyError) as err:
            raise ValueError(f"task family {type(family).__name__} cannot sample {split!r} tasks "
                             f"({err!r}); the probe needs held-out tasks for {name!r}") from err
        if batch.num_tasks == 0:
            raise ValueError(f"task family {type(family).__name__} has no {split!r} tasks; the probe "
                             f"needs held-out tasks for {name!r}")
        reports[name] = probe_batch(predict, batch, family=family, num_classes=family.num_classes,
                                    num_derangements=num_derangements, swap_metadata=swap_metadata,
                                    split=name, generator=generator)
    return reports
