"""First-order MAML: the query gradient at the adapted weights, applied to θ.

Finn et al., ICML 2017, §5.2 ("first-order approximation"); Nichol et al., "On
First-Order Meta-Learning Algorithms", 2018. Dropping the Hessian terms of MAML gives

    g = (1/T) Σ_t ∇ℓ_query,t(φ_L,t),

so the inner loop needs first-order gradients only and keeps no graph across steps;
memory is that of one forward/backward at the adapted weights, whatever L is.
Written as φ_L = θ + stopgrad(φ_L − θ), so autograd returns g directly.

Implementations ``batched`` (default), ``vmap`` and ``loop`` as in :mod:`.maml`.
"""

from __future__ import annotations

import torch
from torch.func import grad, grad_and_value, vmap

from ..mlp import mse, mse_and_grad
from ..tasks import SinusoidBatch
from .common import expand_params, leaf_params, sgd_step


def loop(params, batch: SinusoidBatch, *, inner_steps: int, inner_lr: float):
    theta = leaf_params(params)
    names = list(theta)
    meta_loss = 0.0
    grads = {k: torch.zeros_like(v) for k, v in theta.items()}
    for t in range(batch.num_tasks):
        fast = {k: v.detach().requires_grad_(True) for k, v in theta.items()}
        for _ in range(inner_steps):
            loss = mse(fast, batch.x_support[t], batch.y_support[t])
            g = torch.autograd.grad(loss, [fast[k] for k in names])
            fast = {k: (fast[k] - inner_lr * gk).detach().requires_grad_(True) for k, gk in zip(names, g, strict=True)}
        query = mse(fast, batch.x_query[t], batch.y_query[t])
        g = torch.autograd.grad(query, [fast[k] for k in names])
        for k, gk in zip(names, g, strict=True):
            grads[k] += gk / batch.num_tasks
        meta_loss = meta_loss + query.detach() / batch.num_tasks
    return meta_loss, grads


def batched(params, batch: SinusoidBatch, *, inner_steps: int, inner_lr: float):
    theta = leaf_params(params)
    with torch.no_grad():
        fast = expand_params(theta, batch.num_tasks)  # [tasks, ...]
        for _ in range(inner_steps):
            _, g = mse_and_grad(fast, batch.x_support, batch.y_support)
            fast = sgd_step(fast, g, inner_lr)
    shift = {k: fast[k] - theta[k].detach() for k in theta}  # φ_L − θ, no graph: [tasks, ...]
    adapted = {k: theta[k] + shift[k] for k in theta}  # φ_L with ∂φ_L/∂θ = I
    meta_loss = mse(adapted, batch.x_query, batch.y_query).mean()
    grads = torch.autograd.grad(meta_loss, list(theta.values()))
    return meta_loss.detach(), dict(zip(theta, grads, strict=True))


def _adapt(theta, x_support, y_support, inner_steps, inner_lr):
    fast = theta
    for _ in range(inner_steps):
        fast = sgd_step(fast, grad(mse)(fast, x_support, y_support), inner_lr)
    return fast


def _query_loss_and_grad(fast, x_query, y_query):
    g, loss = grad_and_value(mse)(fast, x_query, y_query)
    return loss, g


def vmapped(params, batch: SinusoidBatch, *, inner_steps: int, inner_lr: float):
    theta = {k: v.detach() for k, v in params.items()}
    with torch.no_grad():
        fast = vmap(_adapt, in_dims=(None, 0, 0, None, None))(
            theta, batch.x_support, batch.y_support, inner_steps, inner_lr
        )  # [tasks, ...]
        loss, g = vmap(_query_loss_and_grad)(fast, batch.x_query, batch.y_query)  # [tasks], [tasks, ...]
    return loss.mean(), {k: v.mean(dim=0) for k, v in g.items()}


IMPLEMENTATIONS = {"batched": batched, "vmap": vmapped, "loop": loop}
