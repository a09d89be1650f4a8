"""Exact MAML whose memory grows like √L: the unrolled inner loop, checkpointed in segments.

Plain MAML (:mod:`.maml`) keeps every inner step for the outer backward, a ≈ 2.8 MB per
step on the 2 × 128 MLP with 32 tasks, of which about 2.1 MB are the adapted weights φ_k
themselves (32 tasks × 17 k parameters). Here the L steps are cut into segments of s
steps. The forward keeps only each segment's input φ (a *checkpoint*, c ≈ 2.1 MB) and
drops the rest; the backward recomputes one segment at a time from its checkpoint and
backpropagates through it (Chen et al., "Training Deep Nets with Sublinear Memory Cost",
2016). The peak is then about

    ⌈L / s⌉ · c + s · a,   least at s = √(L c / a) ≈ 0.87 √L,

so the default is √L segments of nearly equal length, s = ⌈L / ⌈√L⌉⌉ (2, 6, 8 and 11
steps for L = 5, 32, 64, 128). The gradient is MAML's: the recomputation repeats the same
operations on the same inputs. The price is one more forward pass of the inner loop.

A segment is a ``torch.autograd.Function`` that saves its input with ``save_for_backward``
and recomputes in plain autograd inside its backward, so
:func:`profiling.measure.saved_tensor_peak_bytes` sees the checkpoints and every
recomputed tensor. (``torch.utils.checkpoint`` does not fit: the non-reentrant variant
keeps what it recomputes behind its own saved-tensor hooks, hidden from that measurement,
and the reentrant variant refuses ``torch.autograd.grad``.) The returned meta-gradient
cannot itself be differentiated again (the segment's backward builds no graph).

Implementations, one signature ``(params, batch, *, inner_steps, inner_lr,
segment_steps=None)`` → ``(meta_loss, grads)``, checkpointing the inner step of the
matching :mod:`.maml` implementation: ``batched`` (hand-written MLP backward over all
tasks), ``vmap`` (``torch.func.vmap(torch.func.grad(...))`` over tasks) and ``loop`` (one
task at a time with ``torch.autograd.grad(..., create_graph=True)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.func import grad, vmap

from ..mlp import mse, mse_and_grad
from ..tasks import SinusoidBatch
from .common import expand_params, leaf_params, sgd_step

__all__ = ["OPTIONS", "check_options", "default_segment_steps", "checkpointed_unroll", "IMPLEMENTATIONS"]

OPTIONS = ("segment_steps",)

Step = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def check_options(segment_steps) -> None:
    if segment_steps is not None and (
        isinstance(segment_steps, bool) or not isinstance(segment_steps, int) or segment_steps < 1
    ):
        raise ValueError(
            f"segment_steps={segment_steps!r}: it must be a positive integer or None (the default, ≈ √inner_steps)"
        )


def default_segment_steps(inner_steps: int) -> int:
    """s = ⌈L / ⌈√L⌉⌉: ⌈√L⌉ segments of nearly equal length."""
    return math.ceil(inner_steps / math.ceil(math.sqrt(inner_steps)))


def _unroll(step: Step, names: list[str], n: int, phi: tuple[torch.Tensor, ...]):
    """From fresh leaves equal to ``phi``, n calls of ``step``: (leaves, φ after n steps)."""
    leaves = tuple(p.detach().requires_grad_(True) for p in phi)
    fast = dict(zip(names, leaves, strict=True))
    for _ in range(n):
        fast = step(fast)
    return leaves, tuple(fast[k] for k in names)


class _Segment(torch.autograd.Function):
    """n inner steps that keep only their input φ; the backward recomputes them from it."""

    @staticmethod
    def forward(ctx, step, names, n, *phi):
        ctx.step, ctx.names, ctx.n = step, names, n
        ctx.save_for_backward(*phi)
        with torch.enable_grad():  # the loop's step takes torch.autograd.grad of the support loss
            _, out = _unroll(step, names, n, phi)
        return tuple(o.detach() for o in out)

    @staticmethod
    def backward(ctx, *grad_out):
        with torch.enable_grad():
            leaves, out = _unroll(ctx.step, ctx.names, ctx.n, ctx.saved_tensors)
            grad_in = torch.autograd.grad(out, leaves, grad_out)
        return (None, None, None, *grad_in)


def checkpointed_unroll(step: Step, fast: dict[str, torch.Tensor], inner_steps: int,
                        segment_steps: int | None = None) -> dict[str, torch.Tensor]:
    """φ_L from φ_0 = ``fast`` by ``inner_steps`` calls of ``step``, differentiable, in segments.

    Only the input of each segment of ``segment_steps`` steps (default
    :func:`default_segment_steps`) is kept for the backward, which recomputes the segment.
    """
    s = segment_steps or default_segment_steps(inner_steps)
    names = list(fast)
    phi = tuple(fast.values())
    for start in range(0, inner_steps, s):
        phi = _Segment.apply(step, names, min(s, inner_steps - start), *phi)
    return dict(zip(names, phi, strict=True))


def _meta_loss_and_grads(theta, fast, batch: SinusoidBatch):
    meta_loss = mse(fast, batch.x_query, batch.y_query).mean()  # mean over tasks of [tasks]
    grads = torch.autograd.grad(meta_loss, list(theta.values()))
    return meta_loss.detach(), dict(zip(theta, grads, strict=True))


def batched(params, batch: SinusoidBatch, *, inner_steps: int, inner_lr: float, segment_steps: int | None = None):
    def step(fast):  # W: [tasks, out, in], b: [tasks, out]
        _, g = mse_and_grad(fast, batch.x_support, batch.y_support)
        return sgd_step(fast, g, inner_lr)

    theta = leaf_params(params)
    fast = checkpointed_unroll(step, expand_params(theta, batch.num_tasks), inner_steps, segment_steps)
    return _meta_loss_and_grads(theta, fast, batch)


def vmapped(params, batch: SinusoidBatch, *, inner_steps: int, inner_lr: float, segment_steps: int | None = None):
    def step(fast):
        return sgd_step(fast, vmap(grad(mse))(fast, batch.x_support, batch.y_support), inner_lr)

    theta = leaf_params(params)
    fast = checkpointed_unroll(step, expand_params(theta, batch.num_tasks), inner_steps, segment_steps)
    return _meta_loss_and_grads(theta, fast, batch)


def loop(params, batch: SinusoidBatch, *, inner_steps: int, inner_lr: float, segment_steps: int | None = None):
    theta = leaf_params(params)
    names = list(theta)
    meta_loss = 0.0
    for t in range(batch.num_tasks):
        def step(fast, t=t):  # one task: W: [out, in], b: [out]
            loss = mse(fast, batch.x_support[t], batch.y_support[t])  # scalar
            g = torch.autograd.grad(loss, [fast[k] for k in names], create_graph=True)
            return sgd_step(fast, dict(zip(names, g, strict=True)), inner_lr)

        fast = checkpointed_unroll(step, dict(theta), inner_steps, segment_steps)
        meta_loss = meta_loss + mse(fast, batch.x_query[t], batch.y_query[t]) / batch.num_tasks
    grads = torch.autograd.grad(meta_loss, [theta[k] for k in names])
    return meta_loss.detach(), dict(zip(names, grads, strict=True))


IMPLEMENTATIONS = {"batched": batched, "vmap": vmapped, "loop": loop}
