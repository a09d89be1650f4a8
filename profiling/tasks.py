"""Vectorized sinusoid regression tasks for the MAML-versus-ES study.

Each task t is the function y = A_t sin(x + phase_t) + b_t with

    A_t ~ U(0.5, 1),  phase_t ~ U(0, 2π),  b_t ~ U(-0.3, 0.3),  x ~ U(0, 2π),

observed without noise at ``num_support`` support points (the inner loop adapts on them)
and ``num_query`` query points (the meta-objective is the query loss after adaptation).
A batch of tasks is a handful of tensors with a leading ``tasks`` dimension, so the
vectorized algorithms never loop over tasks in Python (the same spirit as the task
generators of Gordon et al., "Convolutional Conditional Neural Processes", ICLR 2020).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

__all__ = ["SinusoidBatch", "sample_sinusoid_tasks"]

AMPLITUDE = (0.5, 1.0)
PHASE = (0.0, 2.0 * math.pi)
OFFSET = (-0.3, 0.3)
X_RANGE = (0.0, 2.0 * math.pi)


@dataclass(frozen=True)
class SinusoidBatch:
    """A batch of sinusoid tasks; fields are readable as attributes or as keys.

    Shapes: ``x_support``, ``y_support``: [tasks, support, 1];
    ``x_query``, ``y_query``: [tasks, query, 1];
    ``amplitude``, ``phase``, ``offset``: [tasks].
    """

    x_support: torch.Tensor
    y_support: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor
    amplitude: torch.Tensor
    phase: torch.Tensor
    offset: torch.Tensor

    def __post_init__(self):
        tasks = self.x_support.shape[0]
        for name, width in (("support", self.x_support.shape[1]), ("query", self.x_query.shape[1])):
            for kind in ("x", "y"):
                tensor = getattr(self, f"{kind}_{name}")
                if tensor.shape != (tasks, width, 1):
                    raise ValueError(
                        f"{kind}_{name} has shape {tuple(tensor.shape)}; expected "
                        f"[tasks, {name}, 1] = {(tasks, width, 1)}"
                    )
                if not bool(torch.isfinite(tensor).all()):
                    raise ValueError(f"{kind}_{name} holds NaN or infinite values: the meta-gradient would be NaN; "
                                     "drop or impute those points")

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self.keys():
            raise KeyError(f"{key!r} is not a field of SinusoidBatch; fields: {self.keys()}")
        return getattr(self, key)

    @staticmethod
    def keys() -> tuple[str, ...]:
        return tuple(f.name for f in fields(SinusoidBatch))

    @property
    def num_tasks(self) -> int:
        return self.x_support.shape[0]

    def to(self, device=None, dtype=None) -> SinusoidBatch:
        """The same tasks with every tensor moved to ``device`` and/or cast to ``dtype``."""
        return SinusoidBatch(**{k: getattr(self, k).to(device=device, dtype=dtype) for k in self.keys()})

    def task(self, index: int) -> SinusoidBatch:
        """Task ``index`` alone, as a batch of one (e.g. for a per-task reference in a test)."""
        return SinusoidBatch(**{k: getattr(self, k)[index : index + 1] for k in self.keys()})


def _uniform(low: float, high: float, shape, generator, device, dtype) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, device=device, dtype=dtype)


def sample_sinusoid_tasks(
    num_tasks: int,
    num_support: int = 10,
    num_query: int = 100,
    generator: torch.Generator | None = None,
    device=None,
    dtype: torch.dtype | None = None,
) -> SinusoidBatch:
    """Sample ``num_tasks`` sinusoid tasks at once.

    The random draws are made on the generator's device (CPU when ``generator`` is None)
    and the batch is then moved to ``device``, so a seeded generator gives the same tasks
    on every device. Returns a :class:`SinusoidBatch` with ``x_support``/``y_support`` of
    shape [tasks, support, 1] and ``x_query``/``y_query`` of shape [tasks, query, 1].
    """
    for name, value in (("num_tasks", num_tasks), ("num_support", num_support), ("num_query", num_query)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: it must be a positive integer (e.g. {name}=10)")
    draw_device = generator.device if generator is not None else torch.device("cpu")
    dtype = dtype or torch.get_default_dtype()
    amplitude = _uniform(*AMPLITUDE, (num_tasks,), generator, draw_device, dtype)  # [tasks]
    phase = _uniform(*PHASE, (num_tasks,), generator, draw_device, dtype)  # [tasks]
    offset = _uniform(*OFFSET, (num_tasks,), generator, draw_device, dtype)  # [tasks]
    x = _uniform(*X_RANGE, (num_tasks, num_support + num_query, 1), generator, draw_device, dtype)
    y = amplitude[:, None, None] * torch.sin(x + phase[:, None, None]) + offset[:, None, None]
    batch = SinusoidBatch(
        x_support=x[:, :num_support],  # [tasks, support, 1]
        y_support=y[:, :num_support],
        x_query=x[:, num_support:],  # [tasks, query, 1]
        y_query=y[:, num_support:],
        amplitude=amplitude,
        phase=phase,
        offset=offset,
    )
    return batch.to(device=device) if device is not None else batch
