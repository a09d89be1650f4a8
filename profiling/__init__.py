"""MAML versus evolution strategies: runtime and peak memory as inner steps, depth and width grow.

The public API (the study: docs/profiling.md):

- :func:`build_mlp` ``(layers, hidden)``: the sinusoid MLP 1 → hidden × layers → 1 (ReLU);
- :func:`sample_sinusoid_tasks`: a batch of tasks as tensors [tasks, points, 1];
- :func:`meta_gradient` ``(method, params, batch, *, inner_steps=5, inner_lr=1e-2,
  impl="batched", ...)``: one meta-gradient of MAML, first-order MAML, ES or
  checkpointed MAML (MAML's gradient in memory ~√L, :mod:`profiling.algorithms.maml_checkpointed`).

``python -m profiling.scale`` runs the study; ``python -m profiling.benchmark`` times one
outer step of every method and implementation side by side.
"""

from .algorithms import DEFAULT_IMPL, IMPLEMENTATIONS, METHODS, meta_gradient
from .mlp import build_mlp
from .tasks import SinusoidBatch, sample_sinusoid_tasks

__all__ = [
    "build_mlp",
    "sample_sinusoid_tasks",
    "meta_gradient",
    "SinusoidBatch",
    "METHODS",
    "IMPLEMENTATIONS",
    "DEFAULT_IMPL",
]
