"""Accuracy-matched comparison: meta-training curves, time to a target loss, ES gradient quality.

The study's question is what each method costs for the same meta-test accuracy. The
pieces, each usable from Python:

- :func:`meta_test_loss`: the post-adaptation query MSE on a fixed set of held-out tasks,
  (1/T) Σ_t ℓ_query,t(φ_L,t), the meta-objective J(θ) without any graph;
- :class:`MetaTrainer`: Adam on θ with one method's meta-gradient, every method from the
  same θ_0 and the same stream of task batches; :func:`train_side_by_side` trains several
  in turns (the one that has trained least goes next, so they share the machine's load)
  and yields the meta-test loss against outer steps and training seconds (the clock
  stops while the meta-test loss is evaluated); :func:`meta_train` trains one alone;
- :func:`time_to_target`: the first evaluation at which the meta-test loss is ≤ a target;
- :func:`es_gradient_quality`: cosine and relative error of ES estimates against MAML's
  exact meta-gradient, and :func:`es_error_law`, the relative error the estimator's
  variance predicts, beside the coarse √(D/P).

ES error law. With P antithetic pairs and σ → 0, J is linear over ±σε and ES gives
ĝ = (1/P) Σ_i ε_i ε_iᵀ h_i, where h_i is the mean exact gradient of the tasks pair i sees
(:func:`profiling.algorithms.es.units`). With ε_i ~ N(0, I_D), E ĝ = g and
E|ĝ − g|² = (D + 1)/P² · Σ_i |h_i|², so the relative error is

    r = √((D + 1) Σ_i |h_i|²) / (P |g|)   (= √((D + 1)/P) when every h_i = g),

and the cosine to g is about 1/√(1 + r²). The spread of the task gradients around
their mean g makes r larger than √(D/P) by √(mean_i |h_i|² / |g|²).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from .algorithms import check_method, es, meta_gradient
from .algorithms.common import expand_params, sgd_step
from .mlp import mse, mse_and_grad
from .tasks import SinusoidBatch, sample_sinusoid_tasks

__all__ = [
    "Setting",
    "CurvePoint",
    "MetaTrainer",
    "meta_test_loss",
    "meta_train",
    "train_side_by_side",
    "time_to_target",
    "es_gradient_quality",
    "es_error_law",
    "flatten",
]


@dataclass(frozen=True)
class Setting:
    """One method and its options: ES needs ``pairs`` and ``noise_std``; the others neither."""

    method: str
    pairs: int | None = None
    noise_std: float | None = None

    def __post_init__(self):
        check_method(self.method)
        if (self.method == "es") != (self.pairs is not None and self.noise_std is not None):
            raise ValueError(
                f"{self}: pass pairs and noise_std for method 'es' and for no other method, "
                "e.g. Setting('es', pairs=64, noise_std=1e-2) or Setting('maml')"
            )
        if self.method == "es":
            es.check_options(self.pairs, self.noise_std, None)

    @property
    def label(self) -> str:
        return f"es P={self.pairs}" if self.method == "es" else self.method


@dataclass(frozen=True)
class CurvePoint:
    outer_step: int
    seconds: float  # training wall time up to this step (evaluations excluded)
    meta_test_mse: float


def meta_test_loss(params: dict[str, torch.Tensor], tasks: SinusoidBatch, inner_steps: int, inner_lr: float) -> float:
    """(1/T) Σ_t query MSE after ``inner_steps`` SGD steps from θ on task t's support points."""
    with torch.no_grad():
        fast = expand_params(params, tasks.num_tasks)  # [tasks, ...]
        for _ in range(inner_steps):
            _, g = mse_and_grad(fast, tasks.x_support, tasks.y_support)
            fast = sgd_step(fast, g, inner_lr)
        return float(mse(fast, tasks.x_query, tasks.y_query).mean())


class MetaTrainer:
    """Adam on a copy of θ_0 with one setting's meta-gradient, one timed outer step per :meth:`step`.

    The task batches come from ``torch.Generator().manual_seed(seed)``, so every setting
    with the same seed sees the same tasks; ES draws its noise from a generator seeded
    ``seed + 1``. ``seconds`` counts sampling, meta-gradient and update only.
    """

    def __init__(self, setting: Setting, params: dict[str, torch.Tensor], *, seed: int, outer_lr: float,
                 inner_steps: int, inner_lr: float, num_tasks: int):
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks={num_tasks!r}: it must be a positive integer")
        if not (math.isfinite(outer_lr) and outer_lr > 0):
            raise ValueError(f"outer_lr={outer_lr!r}: it must be a positive finite number (e.g. 1e-3)")
        self.setting, self.inner_steps, self.inner_lr, self.num_tasks = setting, inner_steps, inner_lr, num_tasks
        self.theta = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        self.optimizer = torch.optim.Adam(self.theta.values(), lr=outer_lr)
        first = next(iter(params.values()))
        self.device, self.dtype = first.device, first.dtype
        self.tasks = torch.Generator().manual_seed(seed)
        self.options = {}
        if setting.method == "es":
            self.options = {"pairs": setting.pairs, "noise_std": setting.noise_std,
                            "generator": torch.Generator(device=first.device).manual_seed(seed + 1)}
        self.outer_step, self.seconds = 0, 0.0

    def step(self) -> None:
        start = time.perf_counter()
        batch = sample_sinusoid_tasks(self.num_tasks, generator=self.tasks, device=self.device, dtype=self.dtype)
        _, grads = meta_gradient(self.setting.method, self.theta, batch, inner_steps=self.inner_steps,
                                 inner_lr=self.inner_lr, **self.options)
        for k, v in self.theta.items():
            v.grad = grads[k]
        self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - start
        self.outer_step += 1

    def evaluate(self, test_tasks: SinusoidBatch) -> CurvePoint:
        return CurvePoint(self.outer_step, self.seconds,
                          meta_test_loss(self.theta, test_tasks, self.inner_steps, self.inner_lr))


def train_side_by_side(trainers: list[MetaTrainer], test_tasks: SinusoidBatch, *, eval_seconds: float,
                       max_steps: int | None = None,
                       max_seconds: float | None = None) -> Iterator[tuple[int, CurvePoint, bool]]:
    """Train several settings in turns, always stepping the one that has trained least.

    Every setting then meets the same machine load at the same training time, which keeps
    a change of load on a shared machine from favouring one of them. Each stops after
    ``max_steps`` outer steps or ``max_seconds`` of its own training, whichever comes first
    (at least one must be given). Yields ``(index, point, finished)``: the meta-test loss of
    trainer ``index`` at step 0, then densely at first and sparsely later (after an
    evaluation at training time t, the next comes at the first step after
    t + min(``eval_seconds``, t / 4), so about 25 % apart in time until they are
    ``eval_seconds`` apart), and at its last step (``finished`` True).
    """
    if max_steps is None and max_seconds is None:
        raise ValueError("max_steps and max_seconds are both None: give at least one, e.g. max_seconds=30")
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
        raise ValueError(f"max_steps={max_steps!r}: it must be a positive integer")
    for name, value in (("eval_seconds", eval_seconds), ("max_seconds", max_seconds)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name}={value!r}: it must be a positive finite number")
    next_eval = [0.0] * len(trainers)
    for i, trainer in enumerate(trainers):
        yield i, trainer.evaluate(test_tasks), False
    active = set(range(len(trainers)))
    while active:
        i = min(active, key=lambda j: (trainers[j].seconds, j))
        trainer = trainers[i]
        trainer.step()
        last = ((max_steps is not None and trainer.outer_step >= max_steps)
                or (max_seconds is not None and trainer.seconds >= max_seconds))
        if trainer.seconds >= next_eval[i] or last:
            yield i, trainer.evaluate(test_tasks), last
            next_eval[i] = trainer.seconds + min(eval_seconds, trainer.seconds / 4)
        if last:
            active.discard(i)


def meta_train(setting: Setting, params: dict[str, torch.Tensor], test_tasks: SinusoidBatch, *, seed: int,
               outer_lr: float, inner_steps: int, inner_lr: float, num_tasks: int, eval_seconds: float,
               max_steps: int | None = None, max_seconds: float | None = None) -> Iterator[CurvePoint]:
    """One setting alone: :class:`MetaTrainer` and :func:`train_side_by_side` for a single run."""
    trainer = MetaTrainer(setting, params, seed=seed, outer_lr=outer_lr, inner_steps=inner_steps,
                          inner_lr=inner_lr, num_tasks=num_tasks)
    for _, point, _ in train_side_by_side([trainer], test_tasks, eval_seconds=eval_seconds, max_steps=max_steps,
                                          max_seconds=max_seconds):
        yield point


def time_to_target(points: list[CurvePoint], target: float) -> CurvePoint | None:
    """The first point with ``meta_test_mse ≤ target`` (in outer-step order), or None."""
    return next((p for p in sorted(points, key=lambda p: p.outer_step) if p.meta_test_mse <= target), None)


def flatten(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    """A gradient dict as one vector [D], in the dict's order."""
    return torch.cat([g.reshape(-1) for g in grads.values()])


def es_error_law(params: dict[str, torch.Tensor], batch: SinusoidBatch, pairs: int, *, inner_steps: int,
                 inner_lr: float) -> float:
    """r = √((D + 1) Σ_i |h_i|²) / (P |g|): ES's relative error as σ → 0 (see the module docstring).

    When pairs and tasks do not divide one another, some tasks count twice in E ĝ, and its
    bias |(1/P) Σ_i h_i − g| is added in quadrature.
    """
    per_task = torch.stack([
        flatten(meta_gradient("maml", params, batch.task(t), inner_steps=inner_steps, inner_lr=inner_lr)[1])
        for t in range(batch.num_tasks)
    ])  # [tasks, D]
    g = per_task.mean(dim=0)
    task, pair, _ = es.units(batch.num_tasks, pairs, per_task.device)
    count = torch.bincount(pair, minlength=pairs).to(per_task.dtype)  # units per pair: [pairs]
    h = torch.zeros(pairs, per_task.shape[1], dtype=per_task.dtype).index_add_(0, pair, per_task[task]) / count[:, None]
    bias = h.mean(dim=0) - g  # zero when every task is seen equally often (P a multiple or divisor of T)
    variance = (per_task.shape[1] + 1) * h.pow(2).sum() / pairs**2
    return float(torch.sqrt(bias.pow(2).sum() + variance) / g.norm())


def es_gradient_quality(params: dict[str, torch.Tensor], batch: SinusoidBatch, pairs: int, noise_std: float,
                        draws: Iterable[int], *, inner_steps: int,
                        inner_lr: float) -> Iterator[tuple[int, float, float]]:
    """(draw, cosine, relative error) of ES estimates against MAML's exact meta-gradient g.

    Draw d uses ``torch.Generator().manual_seed(d)``; relative error is |ĝ − g| / |g|.
    """
    exact = flatten(meta_gradient("maml", params, batch, inner_steps=inner_steps, inner_lr=inner_lr)[1])
    for d in draws:
        generator = torch.Generator().manual_seed(d)
        estimate = flatten(meta_gradient("es", params, batch, inner_steps=inner_steps, inner_lr=inner_lr,
                                         pairs=pairs, noise_std=noise_std, generator=generator)[1])
        cosine = float(estimate @ exact / (estimate.norm() * exact.norm()))
        yield d, cosine, float((estimate - exact).norm() / exact.norm())
