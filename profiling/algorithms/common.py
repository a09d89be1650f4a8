"""Input checks and the inner loop shared by the meta-gradient algorithms.

Vocabulary (one throughout ``profiling/``): θ the meta-parameters (the initialization),
``support`` the points the inner loop adapts on, ``query`` the points the adapted network
is scored on, L the number of inner SGD steps, α the inner learning rate. The
meta-objective of a batch of T tasks is

    J(θ) = (1/T) Σ_t ℓ_query,t(φ_L,t),   φ_0,t = θ,   φ_k+1,t = φ_k,t − α ∇ℓ_support,t(φ_k,t).

The inner loop (:func:`adapt`) is written once; what differs between the three
implementations is only how ∇ℓ_support is taken, one ``gradient(φ, x, y) → grads``
function each:

- :func:`handwritten_grad` (``batched``): the explicit backpropagation of
  :func:`profiling.mlp.mse_and_grad`, batched over tasks or ES members, and itself
  differentiable (MAML differentiates through it, the first-order methods run it under
  ``torch.no_grad``);
- :data:`func_grad` (``vmap``): ``torch.func.grad`` of the MSE of one network;
- :func:`second_order_grad` and :func:`first_order_grad` (``loop``): ``torch.autograd.grad``
  on one task, keeping the graph of the step (MAML) or none (first-order MAML, ES).
"""

from __future__ import annotations

import math

import torch
from torch.func import grad

from ..mlp import layer_names, mse, mse_and_grad
from ..tasks import SinusoidBatch


def check_inner_loop(inner_steps, inner_lr) -> None:
    if isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or inner_steps < 1:
        raise ValueError(f"inner_steps={inner_steps!r}: it must be a positive integer (e.g. inner_steps=5)")
    if not isinstance(inner_lr, (int, float)) or not math.isfinite(inner_lr) or inner_lr <= 0:
        raise ValueError(f"inner_lr={inner_lr!r}: it must be a positive finite number (e.g. inner_lr=1e-2)")


def check_params_and_batch(params: dict[str, torch.Tensor], batch: SinusoidBatch) -> None:
    if not isinstance(params, dict) or not params:
        raise ValueError(
            f"params is {type(params).__name__}: pass a dict name → tensor, e.g. dict(build_mlp(2, 128).named_parameters())"
        )
    layer_names(params)
    if not isinstance(batch, SinusoidBatch):  # its constructor checks the [tasks, points, 1] shapes
        raise ValueError(
            f"batch is {type(batch).__name__}: pass a SinusoidBatch, e.g. profiling.sample_sinusoid_tasks(32)"
        )
    first = next(iter(params.values()))
    if batch.x_support.dtype != first.dtype or batch.x_support.device != first.device:
        raise ValueError(
            f"batch is {batch.x_support.dtype} on {batch.x_support.device} but params are {first.dtype} on "
            f"{first.device}: move one of them, e.g. batch.to(device=..., dtype=...)"
        )


def leaf_params(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached leaves that require grad, so the caller's tensors are never modified."""
    return {k: v.detach().requires_grad_(True) for k, v in params.items()}


def expand_params(params: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """θ broadcast to n copies without copying memory: [*shape] → [n, *shape]."""
    return {k: v.unsqueeze(0).expand(n, *v.shape) for k, v in params.items()}


def sgd_step(params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], lr: float) -> dict[str, torch.Tensor]:
    """φ ← φ − α g, out of place (so autograd can differentiate through it)."""
    return {k: params[k] - lr * grads[k] for k in params}


def handwritten_grad(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """∇ MSE by explicit backpropagation: x, y: [B, points, 1], params W: [B, out, in] → grads like params."""
    return mse_and_grad(params, x, y)[1]


func_grad = grad(mse)
"""∇ MSE of one network by ``torch.func.grad``: x, y: [points, 1] → grads like params (under vmap)."""


def second_order_grad(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """∇ MSE of one task by ``torch.autograd.grad(create_graph=True)``: the step stays differentiable."""
    g = torch.autograd.grad(mse(params, x, y), list(params.values()), create_graph=True)
    return dict(zip(params, g))


def first_order_grad(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """∇ MSE of one task by ``torch.autograd.grad`` at a detached copy of φ: no graph is kept."""
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    g = torch.autograd.grad(mse(leaves, x, y), list(leaves.values()))
    return dict(zip(leaves, g))


def adapt(fast: dict[str, torch.Tensor], x_support: torch.Tensor, y_support: torch.Tensor, *,
          inner_steps: int, inner_lr: float, gradient) -> dict[str, torch.Tensor]:
    """φ_L from φ_0 = ``fast``: L steps φ ← φ − α ``gradient``(φ, x_support, y_support)."""
    for _ in range(inner_steps):
        fast = sgd_step(fast, gradient(fast, x_support, y_support), inner_lr)
    return fast


def adapted_query_loss(fast, x_support, y_support, x_query, y_query, *, inner_steps, inner_lr, gradient):
    """ℓ_query(φ_L): the query MSE after :func:`adapt`, per leading batch index ([...] ; a scalar for one task)."""
    fast = adapt(fast, x_support, y_support, inner_steps=inner_steps, inner_lr=inner_lr, gradient=gradient)
    return mse(fast, x_query, y_query)
