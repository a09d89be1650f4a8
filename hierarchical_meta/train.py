"""Fitting the model by stochastic variational inference on the bound of Pyro's ``Trace_ELBO``.

``Trace_ELBO`` estimates the bound of :mod:`hierarchical_meta.bound` with the guide's
own dependency (φ1 drawn given φ2); ``TraceMeanField_ELBO`` would replace the φ2 terms
by KL(q(φ2) || p(φ2 | φ1, m)), which is biased here (docs/derivation.md).

Two ways to take a step (``TrainConfig.elbo``, :func:`make_svi`): ``"pyro"`` runs Pyro's
``SVI`` on ``Trace_ELBO`` with ``ClippedAdam`` (one optimizer per parameter); ``"fast"``
differentiates the hand-written bound (:func:`hierarchical_meta.bound.fast_elbo`, every term
Monte Carlo), which is ``Trace_ELBO`` on the same draws with the same gradients
(tests/test_bound.py, tests/test_fast_svi.py), and updates all parameters with one Adam (elementwise clipping,
the same geometric decay), without Pyro's tracing. The Pyro model and guide stay the
definition of the model.

Each step draws a fresh batch of training tasks with a random number of points each
(``min_points`` to ``max_points``, by masking) so the set encoder sees every size, and corrupts the
metadata of a fraction of tasks (dropped: NaN, read as missing; or swapped with another
task's) so the model learns how far to trust m. The KL terms are annealed (both latent
sites scaled by β rising from ``initial_kl_weight`` to 1) against posterior collapse.

:func:`fit` is a :class:`Training`: seed, resume (:meth:`Training.resume`), then per step a
batch and an update (:meth:`Training.take_step`), the history and the divergence checks
(:meth:`Training.record`) and every ``checkpoint_every`` steps the checkpoint
``out_dir/model.pt`` (:class:`~hierarchical_meta.checkpoint.Checkpoint`, written atomically).
Calling :func:`fit` again on the same folder resumes from it when the model configuration,
the task family, the training options and ``checkpoint_extra`` are the checkpoint's, and
stops naming each difference otherwise (:func:`resume_conflicts`); ``extend=True`` lets a
resume raise ``steps`` (the learning rate goes on decaying at the first run's rate, which
the optimizer's state keeps). See docs/reliability.md.
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

from .bound import elbo_terms, fast_elbo
from .checkpoint import REFIT, SCALARS, Checkpoint
from .evaluate import user_metrics
from .meta_model import HierarchicalMetaModel, load_checkpoint
from .predict import predict_in_chunks
from .tasks import TaskBatch, TaskFamily
from .tasks.schema import TabularSchema

__all__ = ["TrainConfig", "ELBOS", "MAX_SEED", "fit", "Training", "make_svi", "lr_factor", "resume_conflicts",
           "option_conflicts", "extra_conflicts", "corrupt_metadata", "ragged_mask", "check_seed",
           "heldout_collapse", "DIVERGED_ELBO_DROP", "NOT_COMPARED", "OTHER_DATA", "Diverged",
           "data_sized", "SIZED", "SAMPLED_SCHEDULE", "DATA_EPOCHS", "DATA_MAX_STEPS", "EVALUATIONS", "ANNEAL_SHARE",
           "PATIENCE", "validation_tasks", "validation_loglik", "VAL_SHOTS", "VAL_SAMPLES", "untrained_warnings",
           "kept_evaluation"]

ELBOS = ("fast", "pyro")
#: The largest seed: torch's seeds are 64-bit, and fit draws its held-out batch with seed + 1.
MAX_SEED = 2 ** 64 - 2
#: TrainConfig fields that do not change what is trained: a resume may change them.
NOT_COMPARED = ("checkpoint_every",)


@dataclasses.dataclass
class TrainConfig:
    """Every setting of :func:`fit`, with its default (the CLI's defaults are these).

    Adam (Pyro's ``ClippedAdam``) starts at ``lr`` and decays geometrically to
    ``lr / lr_decay`` over ``steps``; each gradient entry is clipped to [-clip_norm, clip_norm].
    ``elbo`` selects how a step is computed (:func:`make_svi`). ``lr`` and ``batch_tasks`` come
    from a sweep at the demo's 8000 steps (docs/quality/README.md): 64 tasks per fast step
    cost less time than 32 per Pyro step did. ``metadata_swap`` trades calibration for
    robustness: the model learns that a task's m is someone else's that often, so its prior
    given m widens (10% left the intervals too wide at K = 1 and 2; 3% keeps shuffled m at
    K = 10 close to withheld m). These defaults are for runs of the demo's length: over 150 000
    steps they diverged, and lr 3e-3 with 10% swaps did not (docs/model.md).

    The schedule (:data:`SIZED`: ``steps``, ``eval_every``, ``checkpoint_every``,
    ``anneal_steps``, ``patience``) left None is sized to the task family by :func:`data_sized`,
    which :func:`fit` and ``run_fit`` call: a sampled family gets the demo's
    (:data:`SAMPLED_SCHEDULE`), a fixed data set one sized to its training groups.
    ``patience`` > 0 scores the validation tasks at each evaluation, keeps the best step's
    weights and stops after ``patience`` evaluations without improvement; 0 keeps the last step.
    """

    steps: int | None = None
    batch_tasks: int = 64
    max_points: int = 20
    min_points: int = 0
    lr: float = 6e-3
    lr_decay: float = 10.0
    clip_norm: float = 10.0
    num_particles: int = 2
    anneal_steps: int | None = None
    initial_kl_weight: float = 0.1
    metadata_dropout: float = 0.1
    metadata_swap: float = 0.03
    eval_every: int | None = None
    eval_tasks: int = 128
    checkpoint_every: int | None = None
    seed: int = 0
    elbo: str = "fast"
    patience: int | None = None

    def __post_init__(self):
        for name in ("lr", "lr_decay", "clip_norm", "initial_kl_weight", "metadata_dropout", "metadata_swap"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        for name in ("steps", "batch_tasks", "max_points", "num_particles", "eval_every",
                     "eval_tasks", "checkpoint_every"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.patience is not None and self.patience < 0:
            raise ValueError(f"patience must be >= 0 (0: no early stopping, the last step is kept), "
                             f"got {self.patience}")
        check_seed(self.seed)
        self._check_ranges()

    def _check_ranges(self) -> None:
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
        if self.elbo not in ELBOS:
            raise ValueError(f"elbo must be one of {ELBOS}, got {self.elbo!r}")

    @property
    def unsized(self) -> list[str]:
        """The :data:`SIZED` options still None (:func:`data_sized` fills them)."""
        return [name for name in SIZED if getattr(self, name) is None]

    def kl_weight(self, step: int) -> float:
        """β at ``step``: linear from ``initial_kl_weight`` to 1 over ``anneal_steps``."""
        if self.anneal_steps <= 0:
            return 1.0
        return min(1.0, self.initial_kl_weight + (1 - self.initial_kl_weight) * step / self.anneal_steps)


#: The schedule of a sampled task family (sinusoid, basis): the demo's, tuned at its 8000 steps.
SAMPLED_SCHEDULE = {"steps": 8000, "eval_every": 250, "checkpoint_every": 250, "anneal_steps": 1000, "patience": 0}
#: The options :func:`data_sized` fills when they are None.
SIZED = tuple(SAMPLED_SCHEDULE)
#: A fixed data set's schedule: DATA_EPOCHS passes over its training groups (so at least
#: DATA_EPOCHS steps), at most DATA_MAX_STEPS; EVALUATIONS evaluations (each with a checkpoint);
#: the KL annealed over ANNEAL_SHARE of the steps (the demo's 1000 of 8000); early stopping after
#: PATIENCE evaluations without a better validation score. On bodyweight, co2, sleepstudy and
#: chickweight the validation score peaked after 150 to 1500 of these steps, and a patience of 10
#: kept the same steps as 5, or later and worse ones.
DATA_EPOCHS = 1500
DATA_MAX_STEPS = 8000
EVALUATIONS = 20
ANNEAL_SHARE = 1 / 8
PATIENCE = 5


def data_sized(config: TrainConfig, family: TaskFamily) -> tuple[TrainConfig, list[str]]:
    """``config`` with its schedule (:data:`SIZED`) left None sized to ``family``, and notes for the user.

    A sampled family gets :data:`SAMPLED_SCHEDULE`. A fixed data set of G training groups
    draws B = min(``batch_tasks``, G) groups per step (a note says so when that caps it). Its
    data-sized run is
    S = min(DATA_EPOCHS · G / B rounded up, DATA_MAX_STEPS) steps; it is evaluated and
    checkpointed every max(1, S // EVALUATIONS) steps, annealed over S · ANNEAL_SHARE steps and
    stopped early with ``patience`` PATIENCE. The schedule follows S, not ``steps``, so a run
    given more ``steps`` (``extend``) keeps it. A sized config is returned unchanged.
    """
    if not family.fixed_dataset:
        return dataclasses.replace(config, **{name: SAMPLED_SCHEDULE[name] for name in config.unsized}), []
    groups = len(family.split_indices["train"])
    batch = min(config.batch_tasks, groups)
    notes = [f"{config.batch_tasks} groups per step capped at the {groups} training groups"] \
        if batch < config.batch_tasks else []
    steps = min(math.ceil(DATA_EPOCHS * groups / batch), DATA_MAX_STEPS)
    every = max(1, steps // EVALUATIONS)
    schedule = {"steps": steps, "eval_every": every, "checkpoint_every": every,
                "anneal_steps": round(steps * ANNEAL_SHARE), "patience": PATIENCE}
    sized = dataclasses.replace(config, batch_tasks=batch, **{name: schedule[name] for name in config.unsized})
    if config.unsized:
        chosen = ", ".join(f"{name} {getattr(sized, name)}" for name in config.unsized)
        notes.append(f"training schedule sized to the {groups} training groups: {chosen}")
    return sized, notes


def check_seed(seed) -> int:
    """``seed`` if it is an integer in [0, MAX_SEED]; ValueError otherwise."""
    if type(seed) is not int or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an integer from 0 to {MAX_SEED} (torch's seeds are 64-bit), got {seed!r}")
    return seed


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


class PyroSVI:
    """A step of Pyro's ``SVI`` on ``Trace_ELBO`` with ``ClippedAdam`` (``TrainConfig.elbo="pyro"``)."""

    def __init__(self, meta_model: HierarchicalMetaModel, config: TrainConfig):
        self.meta_model = meta_model
        self.optimizer = pyro.optim.ClippedAdam({"lr": config.lr, "clip_norm": config.clip_norm,
                                                 "lrd": lr_factor(config)})
        self.svi = SVI(meta_model.model, meta_model.guide, self.optimizer,
                       Trace_ELBO(num_particles=config.num_particles, vectorize_particles=True,
                                  max_plate_nesting=2))

    def step(self, x, metadata, y, mask, latent_scale: float) -> float:
        """One gradient step; returns the loss (the negated annealed bound, summed over tasks)."""
        return self.svi.step(x, metadata, y, mask, latent_scale=latent_scale)

    def get_state(self):
        return self.optimizer.get_state()

    def set_state(self, state) -> None:
        """Resume from :meth:`get_state`'s ``state``; ValueError if it does not fit the model's parameters."""
        parameters = dict(self.meta_model.named_parameters())  # Pyro names them "model$$$..." and "guide$$$..."
        try:
            for name, optim in state.items():
                parameter = parameters.get(name.replace("$$$", "."))
                if parameter is None:
                    raise ValueError(f"it holds the state of an unknown parameter {name!r}")
                for moments in optim["state"].values():
                    check_moments(name, moments, parameter)
        except (AttributeError, KeyError, TypeError) as error:
            raise ValueError(f"it is not a ClippedAdam state of this model's parameters ({error!r})") from None
        self.optimizer.set_state(state)


class FastSVI:
    """A step on the hand-written bound with one Adam over all parameters (``TrainConfig.elbo="fast"``).

    The loss is −:func:`~hierarchical_meta.bound.fast_elbo` (every term Monte Carlo, β-annealed),
    Pyro's ``Trace_ELBO`` on the same draws. The update is ``ClippedAdam``'s, computed by torch's
    fused Adam: gradient entries clamped to ±``clip_norm``, the learning rate multiplied by
    ``lrd`` = :func:`lr_factor` before every step (kept in the optimizer's state, as ClippedAdam
    keeps it, so a resumed run decays at the rate of the run that started it), and ClippedAdam's
    ε (added before the bias correction of the second moment) passed to torch as
    ε / √(1 − β2^t) at step t.
    """

    EPS = 1e-8  # ClippedAdam's default

    def __init__(self, meta_model: HierarchicalMetaModel, config: TrainConfig):
        self.meta_model, self.config = meta_model, config
        self.params = list(meta_model.parameters())
        self.optimizer = torch.optim.Adam(self.params, lr=config.lr, fused=True)
        self.optimizer.param_groups[0]["lrd"] = lr_factor(config)

    def step(self, x, metadata, y, mask, latent_scale: float) -> float:
        """One gradient step; returns the loss (the negated annealed bound, summed over tasks)."""
        group = self.optimizer.param_groups[0]
        state = self.optimizer.state.get(self.params[0], {})
        t = int(state["step"]) + 1 if "step" in state else 1  # this step's number
        group["lr"] *= group["lrd"]
        group["eps"] = self.EPS / math.sqrt(1.0 - group["betas"][1] ** t)
        with pyro.validation_enabled(False):  # a non-finite loss still stops fit
            loss = -fast_elbo(self.meta_model.model, self.meta_model.guide, x, y, metadata, mask,
                              self.config.num_particles, latent_scale=latent_scale)
        grads = torch.autograd.grad(loss, self.params)  # fresh tensors: nothing to zero or accumulate into
        for p, grad in zip(self.params, grads, strict=True):
            p.grad = grad
        torch.nn.utils.clip_grad_value_(self.params, self.config.clip_norm, foreach=True)
        self.optimizer.step()
        return float(loss.detach())

    def get_state(self):
        return self.optimizer.state_dict()

    def set_state(self, state) -> None:
        """Resume from :meth:`get_state`'s ``state``; ValueError if it does not fit the model's parameters."""
        try:
            self.optimizer.load_state_dict(state)
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"it is not an Adam state of this model's parameters ({error!r})") from None
        names = [name for name, _ in self.meta_model.named_parameters()]
        for name, parameter in zip(names, self.params, strict=True):
            check_moments(name, self.optimizer.state.get(parameter, {}), parameter)


def lr_factor(config: TrainConfig) -> float:
    """The factor (1/``lr_decay``)^(1/``steps``) applied to the learning rate before every step."""
    return (1.0 / config.lr_decay) ** (1.0 / config.steps)


def check_moments(name: str, state: dict, parameter: torch.Tensor) -> None:
    """ValueError unless Adam's moments in ``state`` (if any) have the shape of ``parameter``."""
    for key in ("exp_avg", "exp_avg_sq"):
        moment = state.get(key, parameter)
        if not isinstance(moment, torch.Tensor) or moment.shape != parameter.shape:
            found = list(moment.shape) if isinstance(moment, torch.Tensor) else type(moment).__name__
            raise ValueError(f"its {key} of parameter {name!r} is {found}, the parameter has shape "
                             f"{list(parameter.shape)}")


def make_svi(meta_model: HierarchicalMetaModel, config: TrainConfig):
    """The stepper that ``config.elbo`` names: :class:`FastSVI` or :class:`PyroSVI`.

    Both have ``step(x, metadata, y, mask, latent_scale) -> loss`` and ``get_state``/``set_state``
    of their optimizer (what a checkpoint stores). ``config.steps``, which sets the learning
    rate's decay, must be given or sized (:func:`data_sized`).
    """
    if config.steps is None:
        raise ValueError("steps is None: give it, or size the options to the task family with "
                         "data_sized(config, family)")
    return FastSVI(meta_model, config) if config.elbo == "fast" else PyroSVI(meta_model, config)


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


#: The validation score: the predictive log-likelihood per query point of the validation tasks
#: at each K of VAL_SHOTS (their mean), with VAL_SAMPLES importance samples per task.
VAL_SHOTS = (0, 5)
VAL_SAMPLES = 256


def validation_tasks(family: TaskFamily, config: TrainConfig) -> list[TaskBatch]:
    """The tasks :func:`validation_loglik` scores at every evaluation: one batch per K of VAL_SHOTS.

    A fixed data set: every validation group with more than K rows, K of them the support and
    the others the query (a K that no group can serve is left out); a sampled family:
    ``eval_tasks`` validation tasks with K support and ``max_points`` query points. The rows
    come from a generator seeded with ``seed + 1``: the same tasks at every evaluation.
    """
    batches = []
    for k in VAL_SHOTS:
        generator = torch.Generator().manual_seed(config.seed + 1)
        if not family.fixed_dataset:
            batches.append(family.sample(config.eval_tasks, k, config.max_points, split="val", generator=generator))
        elif bool((family.group_sizes[family.split_indices["val"]] > k).any()):
            batches.append(family.all_tasks(k, split="val", generator=generator))
    return batches


@torch.no_grad()
def validation_loglik(meta_model: HierarchicalMetaModel, batches: list[TaskBatch], schema: TabularSchema,
                      seed: int) -> float:
    """The mean over ``batches`` (one per K) of the predictive log-likelihood per query point, in the
    units of ``schema`` (nats per point of the user's y). The importance samples (VAL_SAMPLES per
    task) come from torch's RNG seeded with ``seed`` in a fork: every evaluation draws the same
    way, and the training's own draws are left as they were."""
    scores = user_metrics(schema)
    per_k = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for batch in batches:
            total, points = 0.0, 0
            for tasks, predictive in predict_in_chunks(lambda b: meta_model.predict(b, VAL_SAMPLES)[0], batch):
                part = batch.subset(tasks)
                n = int(part.query_mask.sum())
                total += scores(predictive, part.y_query, part.query_mask)["loglik"] * n if n else 0.0
                points += n
            per_k.append(total / points)
    return sum(per_k) / len(per_k)


def resume_conflicts(checkpoint: Checkpoint, meta_model: HierarchicalMetaModel, family: TaskFamily,
                     config: TrainConfig, extend: bool = False, extra: dict | None = None) -> list[str]:
    """Why ``checkpoint`` cannot be resumed by this run: one entry per difference ([] if none).

    The model configuration, the task family, every training option (``config`` sized to the
    family, :func:`data_sized`) but :data:`NOT_COMPARED` and the entries of ``extra`` (fit's
    ``checkpoint_extra``) must be the checkpoint's; ``steps`` may be raised with ``extend``.
    ValueError for training options of another version.
    """
    config, _ = data_sized(config, family)
    saved_model, now_model = checkpoint.model_config, dataclasses.asdict(meta_model.config)
    conflicts = [f"model {key} {saved_model[key]!r} (now {now_model[key]!r})"
                 for key in now_model if saved_model[key] != now_model[key]]
    if checkpoint.family is not None and checkpoint.family != family.name:
        conflicts.append(f"task family {checkpoint.family!r} (now {family.name!r})")
    if checkpoint.train_config is not None:
        conflicts += option_conflicts(checkpoint.train_config, checkpoint.step, config, extend)
    return conflicts + extra_conflicts(checkpoint.extra, extra or {})


def option_conflicts(saved: dict, trained: int, config: TrainConfig, extend: bool) -> list[str]:
    """The training options that differ from the checkpoint's ``saved`` ones (``trained`` steps done)."""
    now = dataclasses.asdict(config)
    if set(saved) != set(now):
        raise ValueError(f"the checkpoint is from another version of hierarchical_meta: training option(s) "
                         f"{sorted(set(saved) ^ set(now))} differ; use a new output folder")
    conflicts = [f"{key} {saved[key]!r} (now {now[key]!r})" for key in now
                 if key not in NOT_COMPARED and key != "steps" and saved[key] != now[key]]
    if config.steps < trained:
        conflicts.append(f"steps {saved['steps']} (now {config.steps}, fewer than the {trained} already trained)")
    elif config.steps != saved["steps"] and not extend:
        conflicts.append(f"steps {saved['steps']} (now {config.steps}; pass --extend (extend=True) to train "
                         f"it on to {config.steps} steps)")
    return conflicts


#: Why an entry of ``checkpoint_extra`` (a grouped data set's schema) differs.
OTHER_DATA = "another data set: another file, other columns, or another split of its groups"


def extra_conflicts(saved: dict, now: dict) -> list[str]:
    """The entries of ``now`` (fit's ``checkpoint_extra``) that differ from the checkpoint's ``saved`` ones.

    In a dict entry each differing key is named: with both values when both are numbers,
    strings or None (``split_seed 0 (now 1)``), else as part of the entry (``schema x, y (...)``).
    """
    conflicts = []
    for key, value in now.items():
        old = saved.get(key)
        if old == value:
            continue
        if not (isinstance(old, dict) and isinstance(value, dict)):
            conflicts.append(f"{key} ({OTHER_DATA})")
            continue
        differ = [name for name in value if old.get(name) != value[name]]
        scalar = [name for name in differ if type(old.get(name)) in SCALARS and type(value[name]) in SCALARS]
        conflicts += [f"{name} {old.get(name)!r} (now {value[name]!r})" for name in scalar]
        other = [name for name in differ if name not in scalar]
        if other:
            conflicts.append(f"{key} {', '.join(other)} ({OTHER_DATA})")
    return conflicts


#: Held-out ELBO (nats per point) that a run may lose against its best evaluation after the KL
#: annealing, on two evaluations in a row, before :func:`fit` calls it diverged. Training noise
#: moves it by tenths; a run that lost its way (lr too high for a long run) falls by tens.
DIVERGED_ELBO_DROP = 2.0


def heldout_collapse(evals: list[tuple[int, float]], after_step: int) -> str | None:
    """Why the held-out ELBO history ``evals`` = [(step, elbo per point), ...] shows a diverged
    run, or None: its last two evaluations after ``after_step`` are both more than
    DIVERGED_ELBO_DROP below the best one before them."""
    if len(evals) < 3 or evals[-2][0] <= after_step:
        return None
    best_step, best = max(evals[:-2], key=lambda e: e[1])
    if max(evals[-2][1], evals[-1][1]) < best - DIVERGED_ELBO_DROP:
        return (f"the held-out ELBO fell from {best:.3f} nats per point at step {best_step} to "
                f"{evals[-2][1]:.3f} and {evals[-1][1]:.3f}")
    return None


class Diverged(FloatingPointError):
    """The run diverged at step ``step``: ``what`` happened (a non-finite loss, or :func:`heldout_collapse`)."""

    def __init__(self, step: int, config: TrainConfig, what: str):
        self.step, self.what = step, what
        super().__init__(f"the training diverged at step {step} ({what}); in a new --out folder, lower --lr (now "
                         f"{config.lr:g}; long runs: docs/model.md), or check the task data for extreme values")


def from_non_finite(error: Exception, meta_model: HierarchicalMetaModel) -> bool:
    """Whether ``error``, raised by a step or an evaluation, comes from NaN or infinite parameters.

    A distribution built from them fails its constraint check ("invalid values") or its Cholesky.
    """
    finite = all(bool(torch.isfinite(p).all()) for p in meta_model.parameters())
    return not finite or isinstance(error, torch.linalg.LinAlgError) or "invalid values" in str(error)


def untrained_warnings(history: dict, config: TrainConfig) -> list[str]:
    """Why the model that ``history`` keeps is clearly untrained ([] if it is not): its training
    ended before the KL annealing was over, or the validation score of its kept step is no
    better than the untrained model's (``history["initial_val_loglik"]``)."""
    warnings, last, initial = [], history["step"][-1], history["initial_val_loglik"]
    if last < config.anneal_steps:
        warnings.append(f"the training ended at step {last}, before the KL annealing's {config.anneal_steps} "
                        "steps were over: the model is barely trained; give more --steps")
    kept = kept_evaluation(history).get("val_loglik")
    if initial is not None and kept is not None and kept <= initial:
        warnings.append(f"the kept step {history['kept_step']} scores {kept:.3f} nats per point on the validation "
                        f"groups, no better than the untrained model's {initial:.3f}: training did not help; try a "
                        "lower --lr")
    return warnings


def kept_evaluation(history: dict) -> dict:
    """The held-out metrics of the evaluation of the kept step (``history["kept_step"]``)."""
    return history["eval"][history["eval_step"].index(history["kept_step"])]


def check_dimensions(meta_model: HierarchicalMetaModel, family: TaskFamily) -> None:
    """ValueError unless the family's (x, y, metadata) dimensions are the model's."""
    c = meta_model.config
    if (family.x_dim, family.y_dim, family.metadata_dim) != (c.x_dim, c.y_dim, c.metadata_dim):
        raise ValueError(f"task family {family.name!r} has (x, y, metadata) dims "
                         f"{(family.x_dim, family.y_dim, family.metadata_dim)} but the model was built for "
                         f"{(c.x_dim, c.y_dim, c.metadata_dim)}")


def fit(meta_model: HierarchicalMetaModel, family: TaskFamily, config: TrainConfig,
        out_dir: str | None = None, progress: bool = True,
        callback: Callable[[int, dict], None] | None = None, extend: bool = False,
        checkpoint_extra: dict | None = None) -> dict:
    """Train ``meta_model`` on tasks from ``family``; returns the history dict.

    ``config`` is first sized to the family (:func:`data_sized`). With ``out_dir`` (created if
    missing), resumes from ``out_dir/model.pt`` if present (:func:`resume_conflicts` must find
    none, else ValueError listing them) and writes it every ``checkpoint_every`` steps and at the
    end, with the plain data ``checkpoint_extra`` (a grouped data set's ``{"schema": ...}``;
    ``Checkpoint.extra``). ``history["trained_steps"]`` counts the steps this call trained.
    ``callback(step, metrics)`` follows every held-out evaluation.

    With ``patience`` > 0 every evaluation also scores the validation tasks
    (:func:`validation_loglik`, ``metrics["val_loglik"]``); the best step's weights are kept
    (``history["kept_step"]``) and are ``meta_model``'s when fit returns, and the run stops
    (``history["stopped"]`` says why) after ``patience`` evaluations without a better score, or
    when it diverges: a non-finite loss or parameters, or a held-out ELBO that collapses
    (:func:`heldout_collapse`). With ``patience`` 0 the last step is kept and a diverged run
    raises FloatingPointError. A stopped run does not train on when resumed, even with ``extend``.
    """
    config, _ = data_sized(config, family)
    check_dimensions(meta_model, family)
    path = None
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, "model.pt")
    training = Training(meta_model, family, config, path, checkpoint_extra or {})
    training.resume(extend)
    if training.step < config.steps and training.history["stopped"] is None:
        training.run(progress, callback)
    training.keep()
    return training.history


class Training:
    """One call of :func:`fit`: the model, the batch generator, the history and the checkpoint's path.

    Created, it has seeded the generator and torch's RNG with ``config.seed`` (a sized config);
    :meth:`resume` continues from the checkpoint at ``path`` (if any), :meth:`run` trains the
    remaining steps, :meth:`keep` gives the model the kept weights. ``kept_weights`` is a copy
    of the best step's weights while ``patience`` selects them (None otherwise).
    """

    def __init__(self, meta_model: HierarchicalMetaModel, family: TaskFamily, config: TrainConfig,
                 path: str | None, extra: dict):
        self.meta_model, self.family, self.config, self.path, self.extra = meta_model, family, config, path, extra
        self.generator = torch.Generator().manual_seed(config.seed)
        torch.manual_seed(config.seed)
        self.history = {"step": [], "loss": [], "eval_step": [], "eval": [], "seconds": 0.0, "kept_step": 0,
                        "stopped": None, "initial_val_loglik": None}
        self.step, self.optimizer_state, self.kept_weights = 0, None, None

    def resume(self, extend: bool) -> None:
        """Take over the weights, RNG states, history and optimizer state of the checkpoint, if there is one."""
        if self.path and os.path.exists(self.path):
            _, checkpoint = load_checkpoint(self.path)
            try:
                conflicts = resume_conflicts(checkpoint, self.meta_model, self.family, self.config, extend, self.extra)
            except ValueError as error:
                raise ValueError(f"{self.path}: {error}") from None
            if conflicts:
                raise ValueError(f"{self.path} was trained with other options than this run's: {'; '.join(conflicts)}. "
                                 "Rerun with the checkpoint's options to resume it, or use a new --out folder")
            if not checkpoint.resumable:
                raise ValueError(f"{self.path} holds a model but not the training state to resume from; "
                                 "use a new --out folder")
            self.take_over(checkpoint)
        self.history["trained_steps"] = 0

    def take_over(self, checkpoint: Checkpoint) -> None:
        """The state of a training checkpoint: a stopped run's kept weights, else the last step's."""
        self.step, self.optimizer_state, self.history = checkpoint.step, checkpoint.optimizer, checkpoint.history
        self.meta_model.load_state_dict(checkpoint.weights if checkpoint.stopped else checkpoint.last_weights)
        if self.config.patience and not checkpoint.stopped and self.history["kept_step"] in self.history["eval_step"]:
            self.kept_weights = checkpoint.weights
        self.generator.set_state(checkpoint.batch_rng)
        torch.set_rng_state(checkpoint.torch_rng)

    def run(self, progress: bool, callback: Callable[[int, dict], None] | None) -> None:
        """Train from ``self.step`` to ``config.steps`` or a stop, evaluating and saving on the way."""
        config = self.config
        svi = self.stepper()
        eval_batch = self.family.sample(config.eval_tasks, config.max_points, 0, split="val",
                                        generator=torch.Generator().manual_seed(config.seed + 1))
        val_tasks = validation_tasks(self.family, config) if config.patience else None
        if val_tasks and self.step == 0:  # the untrained model's score: what training must beat
            self.history["initial_val_loglik"] = validation_loglik(self.meta_model, val_tasks, self.family.schema,
                                                                   config.seed)
        evaluation = (eval_batch, val_tasks)
        tic = time.perf_counter()
        with tqdm(range(self.step, config.steps), initial=self.step, total=config.steps, disable=not progress,
                  desc="fit", unit="step") as bar:
            for step in bar:
                evaluate = (step + 1) % config.eval_every == 0 or step + 1 == config.steps
                metrics = self.advance(svi, step, evaluation if evaluate else None)
                if metrics is not None:
                    bar.set_postfix(elbo=f"{metrics['elbo_per_point']:.3f}", kl1=f"{metrics['kl_phi1_per_task']:.2f}",
                                    kl2=f"{metrics['kl_phi2_per_task']:.2f}")
                    if callback:
                        callback(step + 1, metrics)
                if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps or self.stopped:
                    self.history["seconds"] += time.perf_counter() - tic
                    tic = time.perf_counter()
                    self.save(svi)
                if self.stopped:
                    break

    def advance(self, svi, step: int, evaluation: tuple | None) -> dict | None:
        """Take and record step ``step`` (from 0): its held-out metrics, or None. A diverged step stops
        a run that has kept a step (``history["stopped"]``) and raises :class:`Diverged` otherwise."""
        metrics = None
        try:
            loss_per_point, metrics = self.take_step(svi, step, evaluation)
            self.record(step + 1, loss_per_point, metrics)
        except Diverged as error:
            if not self.selected:
                raise
            self.history["stopped"] = f"diverged at step {error.step} ({error.what})"
        return metrics

    @property
    def stopped(self) -> bool:
        """Whether the run has stopped before ``config.steps`` (early stopping, or diverged)."""
        return self.history["stopped"] is not None

    @property
    def selected(self) -> bool:
        """Whether ``patience`` has kept an evaluated step (whose weights are ``kept_weights``)."""
        return self.kept_weights is not None

    def stepper(self):
        """A fresh :func:`make_svi` stepper (Pyro's parameter store cleared), with the checkpoint's optimizer state."""
        pyro.clear_param_store()
        svi = make_svi(self.meta_model, self.config)
        if self.optimizer_state is not None:
            try:
                svi.set_state(self.optimizer_state)
            except ValueError as error:
                raise ValueError(f"checkpoint {self.path!r}: field 'optimizer' does not fit the model: {error}; "
                                 f"{REFIT}") from None
        return svi

    def take_step(self, svi, step: int, evaluation: tuple | None) -> tuple[float, dict | None]:
        """Step ``step`` (from 0) on a fresh batch: (loss per point, held-out metrics or None).

        ``evaluation`` = (held-out batch, validation tasks or None): the held-out ELBO and KLs
        (:func:`heldout_elbo`) and, with validation tasks, ``val_loglik`` (:func:`validation_loglik`).
        """
        config = self.config
        batch = self.family.sample(config.batch_tasks, config.max_points, 0, split="train", generator=self.generator)
        mask = ragged_mask(batch.support_mask, self.generator, config.min_points)
        metadata = corrupt_metadata(self.meta_model.model_metadata(batch.metadata), config.metadata_dropout,
                                    config.metadata_swap, self.generator)
        metrics = None
        try:
            loss = svi.step(batch.x_support, metadata, batch.y_support, mask, latent_scale=config.kl_weight(step))
            if evaluation is not None:
                eval_batch, val_tasks = evaluation
                metrics = heldout_elbo(self.meta_model, eval_batch)
                if val_tasks is not None:
                    metrics["val_loglik"] = validation_loglik(self.meta_model, val_tasks, self.family.schema,
                                                              config.seed)
        except (ValueError, torch.linalg.LinAlgError) as error:
            if not from_non_finite(error, self.meta_model):
                raise
            raise Diverged(step + 1, config, "a distribution's parameters became NaN or infinite") from error
        loss_per_point = loss / max(int(mask.sum()), 1)
        if not math.isfinite(loss_per_point):
            raise Diverged(step + 1, config, f"the loss became {loss_per_point}")
        return loss_per_point, metrics

    def record(self, step: int, loss_per_point: float, metrics: dict | None) -> None:
        """Append step ``step`` (from 1) to the history and keep or stop (:meth:`select`);
        FloatingPointError if the held-out ELBO collapsed."""
        history = self.history
        history["step"].append(step)
        history["loss"].append(loss_per_point)
        history["trained_steps"] += 1
        if not self.selected:
            history["kept_step"] = step
        if metrics is None:
            return
        history["eval_step"].append(step)
        history["eval"].append(metrics)
        if self.config.patience:
            self.select(step, metrics["val_loglik"])
        collapse = heldout_collapse([(s, e["elbo_per_point"]) for s, e in zip(history["eval_step"],
                                                                               history["eval"], strict=True)],
                                    after_step=self.config.anneal_steps)
        if collapse:
            raise Diverged(step, self.config, collapse)

    def select(self, step: int, score: float) -> None:
        """Keep this step's weights if ``score`` beats the kept one; stop after ``patience`` evaluations that do not."""
        history = self.history
        scores = dict(zip(history["eval_step"], (e["val_loglik"] for e in history["eval"]), strict=True))
        if not self.selected or score > scores[history["kept_step"]]:
            history["kept_step"] = step
            self.kept_weights = {name: value.clone() for name, value in self.meta_model.state_dict().items()}
        elif step < self.config.steps and sum(s > history["kept_step"] for s in history["eval_step"]) >= \
                self.config.patience:
            history["stopped"] = (f"early stopping: no better validation score in {self.config.patience} "
                                  f"evaluations after step {history['kept_step']}")

    def keep(self) -> None:
        """Give the model the kept weights (the last step's unless ``patience`` selected others)."""
        if self.kept_weights is not None:
            self.meta_model.load_state_dict(self.kept_weights)

    def save(self, svi) -> None:
        """Write the checkpoint of the last step recorded (when fit has an ``out_dir``): the kept weights,
        and the last step's weights and optimizer state to resume from, which a stopped run drops."""
        if not self.path:
            return
        last = self.meta_model.state_dict()
        resume = {} if self.stopped else {"last_weights": last, "optimizer": svi.get_state()}
        Checkpoint(model_config=dataclasses.asdict(self.meta_model.config),
                   weights=self.kept_weights if self.selected else last, step=self.history["step"][-1],
                   batch_rng=self.generator.get_state(), torch_rng=torch.get_rng_state(), history=self.history,
                   train_config=dataclasses.asdict(self.config), family=self.family.name, extra=self.extra,
                   **resume).write(self.path)
