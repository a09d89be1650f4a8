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

import torch
from torch.func import grad, vmap

from ..mlp import mse, mse_and_grad
from ..tasks import SinusoidBatch
from .common import sgd_step

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


def loop(params, batch: SinusoidBatch, *, inner_steps, inner_lr, pairs=DEFAULT_PAIRS,
         noise_std=DEFAULT_NOISE_STD, generator=None):
    theta = {k: v.detach() for k, v in params.items()}
    names = list(theta)
    eps = draw_noise(theta, pairs, generator)
    task, pair, weight = units(batch.num_tasks, pairs, next(iter(theta.values())).device)
    losses = {+1: [], -1: []}
    for u in range(task.shape[0]):
        t, i = int(task[u]), int(pair[u])
        for sign in (+1, -1):
            fast = {k: (theta[k] + sign * noise_std * eps[k][i]).requires_grad_(True) for k in names}
            for _ in range(inner_steps):
                loss = mse(fast, batch.x_support[t], batch.y_support[t])
                g = torch.autograd.grad(loss, [fast[k] for k in names])
                fast = {k: (fast[k] - inner_lr * gk).detach().requires_grad_(True)
                        for k, gk in zip(names, g, strict=True)}
            with torch.no_grad():
                losses[sign].append(mse(fast, batch.x_query[t], batch.y_query[t]))
    return combine(torch.stack(losses[+1]), torch.stack(losses[-1]), pair, weight, eps, noise_std)


def _members(theta, eps, pair, noise_std):
    # θ ± σ ε_pair(u) for every unit: name → [2 * units, *shape] (plus members first)
    return {k: torch.cat([theta[k] + noise_std * eps[k][pair], theta[k] - noise_std * eps[k][pair]]) for k in theta}


def batched(params, batch: SinusoidBatch, *, inner_steps, inner_lr, pairs=DEFAULT_PAIRS,
            noise_std=DEFAULT_NOISE_STD, generator=None):
    theta = {k: v.detach() for k, v in params.items()}
    eps = draw_noise(theta, pairs, generator)
    task, pair, weight = units(batch.num_tasks, pairs, next(iter(theta.values())).device)
    two_task = torch.cat([task, task])  # [2 * units]
    with torch.no_grad():
        fast = _members(theta, eps, pair, noise_std)
        x_support, y_support = batch.x_support[two_task], batch.y_support[two_task]  # [2 * units, support, 1]
        for _ in range(inner_steps):
            _, g = mse_and_grad(fast, x_support, y_support)
            fast = sgd_step(fast, g, inner_lr)
        query = mse(fast, batch.x_query[two_task], batch.y_query[two_task])  # [2 * units]
    n = task.shape[0]
    return combine(query[:n], query[n:], pair, weight, eps, noise_std)


def _adapted_query_loss(fast, x_support, y_support, x_query, y_query, inner_steps, inner_lr):
    for _ in range(inner_steps):
        fast = sgd_step(fast, grad(mse)(fast, x_support, y_support), inner_lr)
    return mse(fast, x_query, y_query)


def vmapped(params, batch: SinusoidBatch, *, inner_steps, inner_lr, pairs=DEFAULT_PAIRS,
            noise_std=DEFAULT_NOISE_STD, generator=None):
    theta = {k: v.detach() for k, v in params.items()}
    eps = draw_noise(theta, pairs, generator)
    task, pair, weight = units(batch.num_tasks, pairs, next(iter(theta.values())).device)
    two_task = torch.cat([task, task])
    with torch.no_grad():
        fast = _members(theta, eps, pair, noise_std)
        query = vmap(_adapted_query_loss, in_dims=(0, 0, 0, 0, 0, None, None))(
            fast, batch.x_support[two_task], batch.y_support[two_task],
            batch.x_query[two_task], batch.y_query[two_task], inner_steps, inner_lr,
        )  # [2 * units]
    n = task.shape[0]
    return combine(query[:n], query[n:], pair, weight, eps, noise_std)


IMPLEMENTATIONS = {"batched": batched, "vmap": vmapped, "loop": loop}
