"""Fitting the model by stochastic variational inference on Pyro's ``Trace_ELBO``.

``Trace_ELBO`` estimates the bound of :mod:`hierarchical_meta.bound` with the guide's
own dependency (φ1 drawn given φ2); ``TraceMeanField_ELBO`` would replace the φ2 terms
by KL(q(φ2) || p(φ2 | φ1, m)), which is biased here (docs/derivation.md).

Each step draws a fresh batch of training tasks with a random number of points each
(``min_points`` to ``max_points``, by masking) so the set encoder sees every size, and corrupts the
metadata of a fraction of tasks (dropped: NaN, read as missing; or swapped with another
task's) so the model learns how far to trust m. The KL terms are annealed (both latent
sites scaled by β rising from ``initial_kl_weight`` to 1) against posterior collapse.

The checkpoint ``out_dir/model.pt`` is written atomically every ``checkpoint_every``
steps; calling :func:`fit` again on the same folder resumes from it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from tqdm.auto import tqdm

from .bound import elbo_terms
from .meta_model import HierarchicalMetaModel, load_checkpoint
from .tasks import TaskBatch, TaskFamily

__all__ = ["TrainConfig", "fit", "corrupt_metadata", "ragged_mask"]


@dataclasses.dataclass
class TrainConfig:
    """Every setting of :func:`fit`, with its default (the CLI's defaults are these).

    Adam (Pyro's ``ClippedAdam``) starts at ``lr`` and decays geometrically to
    ``lr / lr_decay`` over ``steps``; each gradient is clipped to norm ``clip_norm``.
    """

    steps: int = 8000
    batch_tasks: int = 32
    max_points: int = 20
    min_points: int = 0
    lr: float = 3e-3
    lr_decay: float = 10.0
    clip_norm: float = 10.0
    num_particles: int = 2
    anneal_steps: int = 1000
    initial_kl_weight: float = 0.1
    metadata_dropout: float = 0.1
    metadata_swap: float = 0.1
    eval_every: int = 250
    eval_tasks: int = 128
    checkpoint_every: int = 250
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_tasks", "max_points", "num_particles", "eval_every",
                     "eval_tasks", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if not 0 <= self.min_points <= self.max_points:
            raise ValueError(f"min_points must be in [0, max_points={self.max_points}], got {self.min_points}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.lr_decay < 1:
            raise ValueError(f"lr_decay must be >= 1 (1 keeps lr constant), got {self.lr_decay}")
        if self.clip_norm <= 0:
            raise ValueError(f"clip_norm must be > 0, got {self.clip_norm}")
        for name in ("metadata_dropout", "metadata_swap", "initial_kl_weight"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.metadata_dropout + self.metadata_swap > 1.0:
            raise ValueError("metadata_dropout + metadata_swap must be <= 1")

    def kl_weight(self, step: int) -> float:
        """β at ``step``: linear from ``initial_kl_weight`` to 1 over ``anneal_steps``."""
        if self.anneal_steps <= 0:
            return 1.0
        return min(1.0, self.initial_kl_weight + (1 - self.initial_kl_weight) * step / self.anneal_steps)


def ragged_mask(mask: torch.Tensor, generator: torch.Generator, minimum: int = 0) -> torch.Tensor:
    """Keep a uniformly random number ``minimum``..N of each task's points: [T, N] -> [T, N]."""
    T, N = mask.shape
    keep = torch.randint(minimum, N + 1, (T, 1), generator=generator)
    return mask & (torch.arange(N) < keep)


def corrupt_metadata(metadata: torch.Tensor, dropout: float, swap: float,
                     generator: torch.Generator) -> torch.Tensor:
    """Drop (NaN) a fraction ``dropout`` of tasks' metadata, swap a fraction ``swap`` with another task's."""
    T = metadata.shape[0]
    u = torch.rand(T, generator=generator)
    swapped = metadata.roll(1, 0)
    out = torch.where((u < swap)[:, None], swapped, metadata)
    return torch.where(((u >= swap) & (u < swap + dropout))[:, None], torch.full_like(out, float("nan")), out)


@torch.no_grad()
def heldout_elbo(meta_model: HierarchicalMetaModel, batch: TaskBatch, num_particles: int = 16) -> dict:
    """Per-point ELBO and each latent's KL on held-out tasks (all their points observed)."""
    x = torch.cat([batch.x_support, batch.x_query], 1)
    y = torch.cat([batch.y_support, batch.y_query], 1)
    mask = torch.cat([batch.support_mask, batch.query_mask], 1)
    terms = elbo_terms(meta_model.model, meta_model.guide, x, y, meta_model.model_metadata(batch.metadata),
                       mask, num_particles=num_particles)
    points = mask.sum()
    return {"elbo_per_point": float(terms["elbo"].sum() / points),
            "kl_phi1_per_task": float(terms["kl_phi1"].mean()),
            "kl_phi2_per_task": float(terms["kl_phi2"].mean())}


def fit(meta_model: HierarchicalMetaModel, family: TaskFamily, config: TrainConfig,
        out_dir: str | None = None, progress: bool = True,
        callback: Callable[[int, dict], None] | None = None, checkpoint_extra: dict | None = None) -> dict:
    """Train ``meta_model`` on tasks from ``family``; returns the history dict.

    With ``out_dir`` (created if missing), resumes from ``out_dir/model.pt`` if present (same
    model config required) and writes it every ``checkpoint_every`` steps and at the end,
    with the plain-data entries of ``checkpoint_extra`` (a grouped data set's schema).
    """
    c = meta_model.config
    if (family.x_dim, family.y_dim, family.metadata_dim) != (c.x_dim, c.y_dim, c.metadata_dim):
        raise ValueError(f"task family {family.name!r} has (x, y, metadata) dims "
                         f"{(family.x_dim, family.y_dim, family.metadata_dim)} but the model was built for "
                         f"{(c.x_dim, c.y_dim, c.metadata_dim)}")
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    history = {"step": [], "loss": [], "eval_step": [], "eval": [], "seconds": 0.0}
    start_step, optim_state = 0, None
    path = os.path.join(out_dir, "model.pt") if out_dir else None
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    if path and os.path.exists(path):
        saved, state = load_checkpoint(path)
        if saved.config != meta_model.config:
            raise ValueError(f"{path} was trained with another model configuration "
                             f"({saved.config}); use a new --out folder or the same options")
        meta_model.load_state_dict(saved.state_dict())
        start_step, optim_state, history = state["step"], state["optimizer"], state["history"]
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
    if start_step >= config.steps:
        return history

    pyro.clear_param_store()
    optimizer = pyro.optim.ClippedAdam({"lr": config.lr, "clip_norm": config.clip_norm,
                                        "lrd": (1.0 / config.lr_decay) ** (1.0 / config.steps)})
    if optim_state is not None:
        optimizer.set_state(optim_state)
    svi = SVI(meta_model.model, meta_model.guide, optimizer,
              Trace_ELBO(num_particles=config.num_particles, vectorize_particles=True, max_plate_nesting=2))
    eval_batch = family.sample(config.eval_tasks, config.max_points, 0, split="val",
                               generator=torch.Generator().manual_seed(config.seed + 1))

    def save(step):
        if path:
            meta_model.save(path, step=step, optimizer=optimizer.get_state(), history=history,
                            generator=generator.get_state(), torch_rng=torch.get_rng_state(),
                            train_config=dataclasses.asdict(config), **(checkpoint_extra or {}))

    bar = tqdm(range(start_step, config.steps), initial=start_step, total=config.steps,
               disable=not progress, desc="fit", unit="step")
    tic = time.perf_counter()
    for step in bar:
        batch = family.sample(config.batch_tasks, config.max_points, 0, split="train", generator=generator)
        mask = ragged_mask(batch.support_mask, generator, config.min_points)
        metadata = corrupt_metadata(meta_model.model_metadata(batch.metadata), config.metadata_dropout,
                                    config.metadata_swap, generator)
        loss = svi.step(batch.x_support, metadata, batch.y_support, mask,
                        latent_scale=config.kl_weight(step))
        loss_per_point = loss / max(int(mask.sum()), 1)
        if not math.isfinite(loss_per_point):
            raise FloatingPointError(f"the loss became {loss_per_point} at step {step}; "
                                     "lower --lr or check the task data for extreme values")
        history["step"].append(step + 1)
        history["loss"].append(loss_per_point)
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            metrics = heldout_elbo(meta_model, eval_batch)
            history["eval_step"].append(step + 1)
            history["eval"].append(metrics)
            bar.set_postfix(elbo=f"{metrics['elbo_per_point']:.3f}", kl1=f"{metrics['kl_phi1_per_task']:.2f}",
                            kl2=f"{metrics['kl_phi2_per_task']:.2f}")
            if callback:
                callback(step + 1, metrics)
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
            history["seconds"] += time.perf_counter() - tic
            tic = time.perf_counter()
            save(step + 1)
    return history
