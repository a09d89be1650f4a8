"""Evolution strategies: the antithetic finite-difference estimate of the meta-gradient.

Salimans et al., "Evolution Strategies as a Scalable Alternative to Reinforcement
Learning", 2017 (antithetic sampling); for MAML's objective, Song et al., "ES-MAML:
Simple Hessian-Free Meta Learning", ICLR 2020. With P pairs of noise ε_i ~ N(0, I) and
scale σ, the estimator of ∇J_σ(θ), the gradient of the Gaussian-smoothed meta-objective
J_σ(θ) = E_ε J(θ + σε), is

    ĝ = (1/P) Σ_i (J_i(θ + σε_i) − J_i(θ − σε_i)) / (2σ) · ε_i,

where J_i is the post-adaptation query loss on the tasks assigned to pair i. Pairs and
tasks are matched as *units* u = 0 … max(T, P) − 1: unit u evaluates pair u mod P on task
u mod T (so with P = T, pair i is evaluated on task i; with the default T = 32, P = 16 each
pair sees two tasks), and J_i is the mean over pair i's units. For a quadratic J the
antithetic difference is exact, ĝ = (1/P) Σ_i ε_i ε_iᵀ ∇J_i(θ), and E ĝ = ∇J = ∇J_σ.

Each population member adapts with L first-order SGD steps and keeps no autograd graph
across steps (nor, in ``batched``, at all): memory does not grow with L. The noise is
drawn once per call with ``generator``, outside any vmap, so every implementation sees
the same ε. The returned meta-loss is the mean over units of (J_u(θ+σε) + J_u(θ−σε))/2,
which is J(θ) + O(σ²).

Implementations (one signature, ``(params, batch, *, inner_steps, inner_lr, pairs,
noise_std, generator)`` → ``(meta_loss, grads)``):

- ``batched`` (default): the 2·units members as one batch of networks, hand-written
  backpropagation for the inner gradients (:func:`profiling.mlp.mse_and_grad`), no autograd.
- ``vmap``: ``torch.func.vmap(torch.func.grad(...))`` over the population.
- ``loop``: the reference, one member at a time with ``torch.autograd.grad``.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch.func import vmap

from ..mlp import mse
from ..tasks import SinusoidBatch
from .common import adapt, adapted_query_loss, first_order_grad, func_grad, handwritten_grad

DEFAULT_PAIRS = 16
DEFAULT_NOISE_STD = 1e-3


def check_options(pairs, noise_std, generator) -> None:
    if isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 1:
        raise ValueError(f"pairs={pairs!r}: it must be a positive integer (e.g. pairs=16)")
    if not isinstance(noise_std, (int, float)) or not math.isfinite(noise_std) or noise_std <= 0:
        raise ValueError(f"noise_std={noise_std!r}: it must be a positive finite number (e.g. noise_std=1e-3)")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator={generator!r}: pass a torch.Generator or None")


def draw_noise(params: dict[str, torch.Tensor], pairs: int, generator: torch.Generator | None):
    """ε: name → [pairs, *shape], drawn on the generator's device, then moved to θ's."""
    out = {}
    for k, v in params.items():
        device = generator.device if generator is not None else v.device
        out[k] = torch.randn((pairs, *v.shape), generator=generator, device=device, dtype=v.dtype).to(v.device)
    return out


def units(num_tasks: int, pairs: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(task index, pair index, weight) per unit: [units] each; Σ_u weight_u ε_pair(u) = (1/P) Σ_i mean_u∈i ε_i."""
    n = max(num_tasks, pairs)
    u = torch.arange(n, device=device)
    task, pair = u % num_tasks, u % pairs
    count = torch.bincount(pair, minlength=pairs)  # units per pair: [pairs]
    weight = 1.0 / (pairs * count[pair].double())  # [units]
    return task, pair, weight


def combine(loss_plus, loss_minus, pair, weight, eps, noise_std):
    """ĝ from the member losses: loss_±: [units] → name → [*shape]; and the meta-loss."""
    coef_units = weight.to(loss_plus.dtype) * (loss_plus - loss_minus) / (2.0 * noise_std)  # [units]
    pairs = next(iter(eps.values())).shape[0]
    coef = torch.zeros(pairs, dtype=loss_plus.dtype, device=loss_plus.device).index_add_(0, pair, coef_units)
    grads = {k: torch.tensordot(coef, e, dims=1) for k, e in eps.items()}  # Σ_i c_i ε_i
    return 0.5 * (loss_plus + loss_minus).mean(), grads


def _setup(params, batch: SinusoidBatch, pairs: int, generator):
    """θ (detached), ε: name → [pairs, *shape], and (task, pair, weight) of every unit."""
    theta = {k: v.detach() for k, v in params.items()}
    eps = draw_noise(theta, pairs, generator)
    return theta, eps, units(batch.num_tasks, pairs, batch.x_support.device)


def loop(params, batch: SinusoidBatch, *, inner_steps, inner_lr, pairs=DEFAULT_PAIRS,
         noise_std=DEFAULT_NOISE_STD, generator=None):
    theta, eps, (task, pair, weight) = _setup(params, batch, pairs, generator)
    losses = {+1: [], -1: []}
    for u in range(task.shape[0]):
        t, i = int(task[u]), int(pair[u])
        for sign in (+1, -1):
            member = {k: theta[k] + sign * noise_std * eps[k][i] for k in theta}  # θ ± σ ε_i
            fast = adapt(member, batch.x_support[t], batch.y_support[t], inner_steps=inner_steps,
                         inner_lr=inner_lr, gradient=first_order_grad)
            with torch.no_grad():
                losses[sign].append(mse(fast, batch.x_query[t], batch.y_query[t]))
    return combine(torch.stack(losses[+1]), torch.stack(losses[-1]), pair, weight, eps, noise_std)


def _vectorized(params, batch: SinusoidBatch, member_query_losses, pairs, noise_std, generator):
    """The estimate with every member at once; ``member_query_losses`` adapts and scores them."""
    theta, eps, (task, pair, weight) = _setup(params, batch, pairs, generator)
    two_task = torch.cat([task, task])  # the task of each member, plus members first: [2 * units]
    with torch.no_grad():
        members = {k: torch.cat([theta[k] + noise_std * eps[k][pair], theta[k] - noise_std * eps[k][pair]])
                   for k in theta}  # θ ± σ ε_pair(u): name → [2 * units, *shape]
        query = member_query_losses(
            members, batch.x_support[two_task], batch.y_support[two_task],  # [2 * units, support, 1]
            batch.x_query[two_task], batch.y_query[two_task],  # [2 * units, query, 1]
        )  # [2 * units]
    n = task.shape[0]
    return combine(query[:n], query[n:], pair, weight, eps, noise_std)


def batched(params, batch: SinusoidBatch, *, inner_steps, inner_lr, pairs=DEFAULT_PAIRS,
            noise_std=DEFAULT_NOISE_STD, generator=None):
    losses = partial(adapted_query_loss, inner_steps=inner_steps, inner_lr=inner_lr, gradient=handwritten_grad)
    return _vectorized(params, batch, losses, pairs, noise_std, generator)


def vmapped(params, batch: SinusoidBatch, *, inner_steps, inner_lr, pairs=DEFAULT_PAIRS,
            noise_std=DEFAULT_NOISE_STD, generator=None):
    losses = vmap(partial(adapted_query_loss, inner_steps=inner_steps, inner_lr=inner_lr, gradient=func_grad))
    return _vectorized(params, batch, losses, pairs, noise_std, generator)


IMPLEMENTATIONS = {"batched": batched, "vmap": vmapped, "loop": loop}
