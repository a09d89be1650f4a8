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

from functools import partial

import torch
from torch.func import vmap

from ..tasks import SinusoidBatch
from .common import adapted_query_loss, expand_params, func_grad, handwritten_grad, leaf_params, second_order_grad


def _meta_gradient(theta, meta_loss):
    grads = torch.autograd.grad(meta_loss, list(theta.values()))
    return meta_loss.detach(), dict(zip(theta, grads))


def loop(params, batch: SinusoidBatch, *, inner_steps: int, inner_lr: float):
    theta = leaf_params(params)
    query_loss = partial(adapted_query_loss, inner_steps=inner_steps, inner_lr=inner_lr, gradient=second_order_grad)
    meta_loss = 0.0
    for t in range(batch.num_tasks):
        meta_loss = meta_loss + query_loss(
            theta, batch.x_support[t], batch.y_support[t], batch.x_query[t], batch.y_query[t]
        ) / batch.num_tasks  # scalar
    return _meta_gradient(theta, meta_loss)


def batched(params, batch: SinusoidBatch, *, inner_steps: int, inner_lr: float):
    theta = leaf_params(params)
    per_task = adapted_query_loss(
        expand_params(theta, batch.num_tasks),  # W: [tasks, out, in], b: [tasks, out]
        batch.x_support, batch.y_support, batch.x_query, batch.y_query,
        inner_steps=inner_steps, inner_lr=inner_lr, gradient=handwritten_grad,
    )  # [tasks]
    return _meta_gradient(theta, per_task.mean())


def vmapped(params, batch: SinusoidBatch, *, inner_steps: int, inner_lr: float):
    theta = leaf_params(params)
    query_loss = partial(adapted_query_loss, inner_steps=inner_steps, inner_lr=inner_lr, gradient=func_grad)
    per_task = vmap(query_loss, in_dims=(None, 0, 0, 0, 0))(
        theta, batch.x_support, batch.y_support, batch.x_query, batch.y_query
    )  # [tasks]
    return _meta_gradient(theta, per_task.mean())


IMPLEMENTATIONS = {"batched": batched, "vmap": vmapped, "loop": loop}
