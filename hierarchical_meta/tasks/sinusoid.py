"""Sinusoid regression with task metadata.

Task parameters and data::

    A ~ U[amplitude_range],  phase ~ U[phase_range],  b ~ N(0, offset_std²)
    x ~ U[x_range],          y = A sin(x + phase) + b + ε,   ε ~ N(0, noise_std²)

Metadata is informative but incomplete: a noisy view of amplitude and offset, no phase::

    m = (A + ε_A, b + ε_b),   ε_A ~ N(0, metadata_noise[0]²),  ε_b ~ N(0, metadata_noise[1]²)

Each split draws its tasks from its own stream
(:func:`~hierarchical_meta.tasks.base.split_generator`), so train, val and test tasks differ
whatever the caller's seeds.

The exact posterior predictive (:meth:`SinusoidTasks.exact_predictive`): the offset b is
Gaussian and enters y and m linearly, so given (A, phase) it integrates in closed form;
the uniform (A, phase) prior is integrated on a midpoint grid. For observations
z_i = b + e_i, e_i ~ N(0, v_i), b ~ N(0, s0²) (here m_b and the residuals
y_n - A sin(x_n + phase))::

    λ = 1/s0² + Σ_i 1/v_i,   S = Σ_i z_i / v_i
    log p(z) = -½ log(s0² λ) - ½ Σ_i log(2π v_i) - ½ Σ_i z_i²/v_i + ½ S²/λ
    b | z ~ N(S/λ, 1/λ)

so each grid point g contributes weight ∝ N(m_A; A_g, τ_A²) p(z | A_g, phase_g) and the
predictive component N(A_g sin(x + phase_g) + S/λ, 1/λ + σ²). A missing (NaN) m_A drops
its factor, a missing m_b its observation.
"""

from __future__ import annotations

import math

import torch

from ..predictive import MixturePredictive
from .base import TaskBatch, TaskFamily, split_generator

__all__ = ["SinusoidTasks"]


class SinusoidTasks(TaskFamily):
    name = "sinusoid"
    x_dim = 1
    y_dim = 1
    metadata_dim = 2

    def __init__(self, amplitude_range: tuple[float, float] = (0.1, 5.0),
                 phase_range: tuple[float, float] = (0.0, math.pi),
                 offset_std: float = 0.5,
                 x_range: tuple[float, float] = (-5.0, 5.0),
                 noise_std: float = 0.1,
                 metadata_noise: tuple[float, float] = (0.3, 0.1)):
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
        """A sin(x + phase) + b: x [T, Q, 1] -> [T, Q, 1]."""
        return self.function(x, params["amplitude"], params["phase"], params["offset"])

    @torch.no_grad()
    def exact_predictive(self, batch: TaskBatch, grid_amplitude: int = 100, grid_phase: int = 128,
                         prune: float = 30.0) -> MixturePredictive:
        """Exact p(y_query | support, m) as a mixture over a grid_amplitude x grid_phase grid.

        See the module docstring; components with log weight below the task's maximum
        minus ``prune`` are dropped. Computed in float64, returned in ``batch.y_query``'s dtype.
        """
        dtype = torch.float64

        def midpoints(lo, hi, n):
            return lo + (hi - lo) * (torch.arange(n, dtype=dtype) + 0.5) / n
        A, P = torch.meshgrid(midpoints(*self.amplitude_range, grid_amplitude),
                              midpoints(*self.phase_range, grid_phase), indexing="ij")
        A, P = A.reshape(-1), P.reshape(-1)  # [G]
        s0, (tau_a, tau_b), sigma = self.offset_std, self.metadata_noise, self.noise_std
        log_w_all, means, stds = [], [], []
        for t in range(batch.num_tasks):
            keep = batch.support_mask[t]
            xs, ys = batch.x_support[t, keep, 0].to(dtype), batch.y_support[t, keep, 0].to(dtype)  # [K]
            m_a, m_b = batch.metadata[t].to(dtype)
            z = ys - A[:, None] * torch.sin(xs + P[:, None])  # [G, K]
            v = torch.full((len(xs),), sigma ** 2, dtype=dtype)  # [K]
            if not torch.isnan(m_b):
                z = torch.cat([m_b.expand(A.shape[0], 1), z], 1)  # [G, 1+K]
                v = torch.cat([v.new_full((1,), tau_b ** 2), v])
            lam = 1 / s0 ** 2 + (1 / v).sum()
            S = (z / v).sum(1)  # [G]
            log_w = (-0.5 * math.log(s0 ** 2 * lam) - 0.5 * torch.log(2 * math.pi * v).sum()
                     - 0.5 * (z ** 2 / v).sum(1) + 0.5 * S ** 2 / lam)
            if not torch.isnan(m_a):
                log_w = log_w - 0.5 * ((m_a - A) / tau_a) ** 2
            kept = log_w > log_w.max() - prune
            xq = batch.x_query[t, :, 0].to(dtype)  # [Q]
            log_w_all.append(log_w[kept])
            means.append(A[kept, None] * torch.sin(xq + P[kept, None]) + (S[kept] / lam)[:, None])  # [G', Q]
            stds.append(torch.full_like(means[-1], math.sqrt(1 / lam + sigma ** 2)))
        width = max(w.shape[0] for w in log_w_all)

        def pad(tensors, value):  # [G', ...] per task -> [T, width, ...]
            return torch.stack([torch.cat([x, x.new_full((width - x.shape[0],) + x.shape[1:], value)])
                                for x in tensors])
        out = batch.y_query.dtype
        return MixturePredictive(pad(log_w_all, -math.inf).to(out), pad(means, 0.0)[..., None].to(out),
                                 pad(stds, 1.0)[..., None].to(out))

    def sample(self, num_tasks: int, num_support: int, num_query: int, *,
               split: str = "train", generator: torch.Generator | None = None) -> TaskBatch:
        self.check_sizes(num_tasks, num_support, num_query, split)
        g = split_generator(split, generator)

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
