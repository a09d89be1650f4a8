"""Input checks and small helpers shared by the meta-gradient algorithms.

Vocabulary (one throughout ``profiling/``): θ the meta-parameters (the initialization),
``support`` the points the inner loop adapts on, ``query`` the points the adapted network
is scored on, L the number of inner SGD steps, α the inner learning rate. The
meta-objective of a batch of T tasks is

    J(θ) = (1/T) Σ_t ℓ_query,t(φ_L,t),   φ_0,t = θ,   φ_k+1,t = φ_k,t − α ∇ℓ_support,t(φ_k,t).
"""

from __future__ import annotations

import math

import torch

from ..mlp import layer_names
from ..tasks import SinusoidBatch


def check_inner_loop(inner_steps, inner_lr) -> None:
    if isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or inner_steps < 1:
        raise ValueError(f"inner_steps={inner_steps!r}: it must be a positive integer (e.g. inner_steps=5)")
    if not isinstance(inner_lr, (int, float)) or not math.isfinite(inner_lr) or inner_lr <= 0:
        raise ValueError(f"inner_lr={inner_lr!r}: it must be a positive finite number (e.g. inner_lr=1e-2)")


def check_params_and_batch(params: dict[str, torch.Tensor], batch: SinusoidBatch) -> None:
    if not isinstance(params, dict) or not params:
        raise ValueError(
            f"params is {type(params).__name__}: pass a dict name → tensor, "
            "e.g. dict(build_mlp(2, 128).named_parameters())"
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
