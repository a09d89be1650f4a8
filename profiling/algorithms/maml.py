"""MAML: the exact (second-order) meta-gradient through all L unrolled inner SGD steps.

Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
Networks", ICML 2017. The meta-gradient is

    ∇_θ J = (1/T) Σ_t (∏_{k=L-1..0} (I − α H_support,t(φ_k,t)))ᵀ ∇ℓ_query,t(φ_L,t),

obtained by reverse-mode differentiation through the inner loop, so every inner step's
activations, masks and adapted weights stay alive until the outer backward: memory grows
linearly in L.

Three implementations with one signature ``(params, batch, *, inner_steps, inner_lr)``
returning ``(meta_loss, grads)``:

- ``batched`` (the default): all T tasks at once with batched matrix products; the
  inner gradient is the hand-written backpropagation of :func:`profiling.mlp.mse_and_grad`,
  and autograd differentiates through it (one backward, second order).
- ``vmap``: ``torch.func.vmap`` over tasks of an inner loop that uses
  ``torch.func.grad``; ordinary autograd then differentiates the vmapped meta-loss.
- ``loop``: the plain reference, one task at a time with
  ``torch.autograd.grad(..., create_graph=True)``, as ``higher`` or learn2learn do.
"""

from __future__ import annotations

import torch
from torch.func import grad, vmap

from ..mlp import mse, mse_and_grad
from ..tasks import SinusoidBatch
from .common import expand_params, leaf_params, sgd_step


def loop(params, batch: SinusoidBatch, *, inner_steps: int, inner_lr: float):
    theta = leaf_params(params)
    names = list(theta)
    meta_loss = 0.0
    for t in range(batch.num_tasks):
        fast = dict(theta)
        for _ in range(inner_steps):
            loss = mse(fast, batch.x_support[t], batch.y_support[t])  # scalar
            g = torch.autograd.grad(loss, [fast[k] for k in names], create_graph=True)
            fast = sgd_step(fast, dict(zip(names, g, strict=True)), inner_lr)
        meta_loss = meta_loss + mse(fast, batch.x_query[t], batch.y_query[t]) / batch.num_tasks
    grads = torch.autograd.grad(meta_loss, [theta[k] for k in names])
    return meta_loss.detach(), dict(zip(names, grads, strict=True))


def batched(params, batch: SinusoidBatch, *, inner_steps: int, inner_lr: float):
    theta = leaf_params(params)
    fast = expand_params(theta, batch.num_tasks)  # W: [tasks, out, in], b: [tasks, out]
    for _ in range(inner_steps):
        _, g = mse_and_grad(fast, batch.x_support, batch.y_support)  # g like fast
        fast = sgd_step(fast, g, inner_lr)
    meta_loss = mse(fast, batch.x_query, batch.y_query).mean()  # mean over tasks of [tasks]
    grads = torch.autograd.grad(meta_loss, list(theta.values()))
    return meta_loss.detach(), dict(zip(theta, grads, strict=True))


def _adapted_query_loss(theta, x_support, y_support, x_query, y_query, inner_steps, inner_lr):
    # one task: x_support: [support, 1], x_query: [query, 1] -> scalar
    fast = theta
    for _ in range(inner_steps):
        fast = sgd_step(fast, grad(mse)(fast, x_support, y_support), inner_lr)
    return mse(fast, x_query, y_query)


def vmapped(params, batch: SinusoidBatch, *, inner_steps: int, inner_lr: float):
    theta = leaf_params(params)
    per_task = vmap(_adapted_query_loss, in_dims=(None, 0, 0, 0, 0, None, None))(
        theta, batch.x_support, batch.y_support, batch.x_query, batch.y_query, inner_steps, inner_lr
    )  # [tasks]
    meta_loss = per_task.mean()
    grads = torch.autograd.grad(meta_loss, list(theta.values()))
    return meta_loss.detach(), dict(zip(theta, grads, strict=True))


IMPLEMENTATIONS = {"batched": batched, "vmap": vmapped, "loop": loop}
