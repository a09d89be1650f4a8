"""Sinusoid regression with task metadata (DESIGN.md §3).

Task parameters and data::

    A ~ U[amplitude_range],  phase ~ U[phase_range],  b ~ N(0, offset_std²)
    x ~ U[x_range],          y = A sin(x + phase) + b + ε,   ε ~ N(0, noise_std²)

Metadata is informative but incomplete: a noisy view of amplitude and offset, no phase::

    m = (A + ε_A, b + ε_b),   ε_A ~ N(0, metadata_noise[0]²),  ε_b ~ N(0, metadata_noise[1]²)

The offset is Gaussian so that the exact posterior integrates it in closed form
(:mod:`hierarchical_meta.oracle`); the same sampler serves train, val and test tasks
(the caller's generator keeps them disjoint).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from .base import TaskBatch, TaskFamily

__all__ = ["SinusoidTasks"]


class SinusoidTasks(TaskFamily):
    name = "sinusoid"
    x_dim = 1
    y_dim = 1
    metadata_dim = 2

    def __init__(self, amplitude_range: Tuple[float, float] = (0.1, 5.0),
                 phase_range: Tuple[float, float] = (0.0, math.pi),
                 offset_std: float = 0.5,
                 x_range: Tuple[float, float] = (-5.0, 5.0),
                 noise_std: float = 0.1,
                 metadata_noise: Tuple[float, float] = (0.3, 0.1)):
        if not amplitude_range[0] < amplitude_range[1] or not phase_range[0] < phase_range[1] \
                or not x_range[0] < x_range[1]:
            raise ValueError("ranges must be (low, high) with low < high")
        if noise_std <= 0 or offset_std <= 0 or min(metadata_noise) <= 0:
            raise ValueError("noise_std, offset_std and metadata_noise must be > 0")
        self.amplitude_range = tuple(amplitude_range)
        self.phase_range = tuple(phase_range)
        self.offset_std = float(offset_std)
        self.x_range = tuple(x_range)
        self.noise_std = float(noise_std)
        self.metadata_noise = tuple(float(s) for s in metadata_noise)

    @staticmethod
    def function(x: torch.Tensor, amplitude: torch.Tensor, phase: torch.Tensor,
                 offset: torch.Tensor) -> torch.Tensor:
        """Noise-free y for x [T, N, 1] and parameters [T] -> [T, N, 1]."""
        return amplitude[:, None, None] * torch.sin(x + phase[:, None, None]) + offset[:, None, None]

    def true_mean(self, params, x):
        return self.function(x, params["amplitude"], params["phase"], params["offset"])

    def exact_predictive(self, batch: TaskBatch):
        from ..oracle import sinusoid_predictive
        return sinusoid_predictive(self, batch)

    def sample(self, num_tasks: int, num_support: int, num_query: int, *,
               split: str = "train", generator: Optional[torch.Generator] = None) -> TaskBatch:
        self.check_sizes(num_tasks, num_support, num_query, split)
        g = generator

        def uniform(shape, low, high):
            return low + (high - low) * torch.rand(shape, generator=g)

        T, N = num_tasks, num_support + num_query
        amplitude = uniform(T, *self.amplitude_range)
        phase = uniform(T, *self.phase_range)
        offset = self.offset_std * torch.randn(T, generator=g)
        x = uniform((T, N, 1), *self.x_range)
        y = self.function(x, amplitude, phase, offset) + self.noise_std * torch.randn(T, N, 1, generator=g)
        metadata = torch.stack([amplitude + self.metadata_noise[0] * torch.randn(T, generator=g),
                                offset + self.metadata_noise[1] * torch.randn(T, generator=g)], -1)
        return TaskBatch(x_support=x[:, :num_support], y_support=y[:, :num_support],
                         x_query=x[:, num_support:], y_query=y[:, num_support:],
                         metadata=metadata,
                         params={"amplitude": amplitude, "phase": phase, "offset": offset})
