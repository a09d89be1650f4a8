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
from .meta_model import HierarchicalMetaModel, load_checkpoint
from .tasks import TaskBatch, TaskFamily

__all__ = ["TrainConfig", "ELBOS", "MAX_SEED", "fit", "Training", "make_svi", "lr_factor", "resume_conflicts",
           "option_conflicts", "extra_conflicts", "corrupt_metadata", "ragged_mask", "check_seed",
           "heldout_collapse", "DIVERGED_ELBO_DROP", "NOT_COMPARED", "OTHER_DATA"]

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
    """

    steps: int = 8000
    batch_tasks: int = 64
    max_points: int = 20
    min_points: int = 0
    lr: float = 6e-3
    lr_decay: float = 10.0
    clip_norm: float = 10.0
    num_particles: int = 2
    anneal_steps: int = 1000
    initial_kl_weight: float = 0.1
    metadata_dropout: float = 0.1
    metadata_swap: float = 0.03
    eval_every: int = 250
    eval_tasks: int = 128
    checkpoint_every: int = 250
    seed: int = 0
    elbo: str = "fast"

    def __post_init__(self):
        for name in ("lr", "lr_decay", "clip_norm", "initial_kl_weight", "metadata_dropout", "metadata_swap"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        for name in ("steps", "batch_tasks", "max_points", "num_particles", "eval_every",
                     "eval_tasks", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
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

    def kl_weight(self, step: int) -> float:
        """β at ``step``: linear from ``initial_kl_weight`` to 1 over ``anneal_steps``."""
        if self.anneal_steps <= 0:
            return 1.0
        return min(1.0, self.initial_kl_weight + (1 - self.initial_kl_weight) * step / self.anneal_steps)


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
    of their optimizer (what a checkpoint stores).
    """
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


def resume_conflicts(checkpoint: Checkpoint, meta_model: HierarchicalMetaModel, family: TaskFamily,
                     config: TrainConfig, extend: bool = False, extra: dict | None = None) -> list[str]:
    """Why ``checkpoint`` cannot be resumed by this run: one entry per difference ([] if none).

    The model configuration, the task family, every training option but :data:`NOT_COMPARED`
    and the entries of ``extra`` (fit's ``checkpoint_extra``) must be the checkpoint's;
    ``steps`` may be raised with ``extend``. ValueError for training options of another version.
    """
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


def _diverged(step: int, config: TrainConfig, what: str) -> FloatingPointError:
    return FloatingPointError(f"the training diverged at step {step} ({what}); in a new --out folder, lower --lr "
                              f"(now {config.lr:g}; long runs: docs/model.md), or check the task data for extreme "
                              "values")


def from_non_finite(error: Exception, meta_model: HierarchicalMetaModel) -> bool:
    """Whether ``error``, raised by a step or an evaluation, comes from NaN or infinite parameters.

    A distribution built from them fails its constraint check ("invalid values") or its Cholesky.
    """
    finite = all(bool(torch.isfinite(p).all()) for p in meta_model.parameters())
    return not finite or isinstance(error, torch.linalg.LinAlgError) or "invalid values" in str(error)


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

    With ``out_dir`` (created if missing), resumes from ``out_dir/model.pt`` if present
    (:func:`resume_conflicts` must find none, else ValueError listing them) and writes it every
    ``checkpoint_every`` steps and at the end, with the plain data ``checkpoint_extra``
    (a grouped data set's ``{"schema": ...}``; ``Checkpoint.extra``). ``history["trained_steps"]``
    counts the steps this call trained. ``callback(step, metrics)`` follows every held-out
    evaluation. A run whose loss or parameters become NaN or infinite, or whose held-out ELBO
    collapses (:func:`heldout_collapse`), raises FloatingPointError.
    """
    check_dimensions(meta_model, family)
    path = None
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, "model.pt")
    training = Training(meta_model, family, config, path, checkpoint_extra or {})
    training.resume(extend)
    if training.step < config.steps:
        training.run(progress, callback)
    return training.history


class Training:
    """One call of :func:`fit`: the model, the batch generator, the history and the checkpoint's path.

    Created, it has seeded the generator and torch's RNG with ``config.seed``; :meth:`resume`
    continues from the checkpoint at ``path`` (if any), :meth:`run` trains the remaining steps.
    """

    def __init__(self, meta_model: HierarchicalMetaModel, family: TaskFamily, config: TrainConfig,
                 path: str | None, extra: dict):
        self.meta_model, self.family, self.config, self.path, self.extra = meta_model, family, config, path, extra
        self.generator = torch.Generator().manual_seed(config.seed)
        torch.manual_seed(config.seed)
        self.history = {"step": [], "loss": [], "eval_step": [], "eval": [], "seconds": 0.0}
        self.step, self.optimizer_state = 0, None

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
            self.meta_model.load_state_dict(checkpoint.weights)
            self.step, self.optimizer_state, self.history = checkpoint.step, checkpoint.optimizer, checkpoint.history
            self.generator.set_state(checkpoint.batch_rng)
            torch.set_rng_state(checkpoint.torch_rng)
        self.history["trained_steps"] = 0

    def run(self, progress: bool, callback: Callable[[int, dict], None] | None) -> None:
        """Train from ``self.step`` to ``config.steps``, evaluating and saving on the way."""
        config = self.config
        svi = self.stepper()
        eval_batch = self.family.sample(config.eval_tasks, config.max_points, 0, split="val",
                                        generator=torch.Generator().manual_seed(config.seed + 1))
        bar = tqdm(range(self.step, config.steps), initial=self.step, total=config.steps,
                   disable=not progress, desc="fit", unit="step")
        tic = time.perf_counter()
        for step in bar:
            evaluate = (step + 1) % config.eval_every == 0 or step + 1 == config.steps
            loss_per_point, metrics = self.take_step(svi, step, eval_batch if evaluate else None)
            self.record(step + 1, loss_per_point, metrics)
            if metrics is not None:
                bar.set_postfix(elbo=f"{metrics['elbo_per_point']:.3f}", kl1=f"{metrics['kl_phi1_per_task']:.2f}",
                                kl2=f"{metrics['kl_phi2_per_task']:.2f}")
                if callback:
                    callback(step + 1, metrics)
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
                self.history["seconds"] += time.perf_counter() - tic
                tic = time.perf_counter()
                self.save(svi, step + 1)

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

    def take_step(self, svi, step: int, eval_batch: TaskBatch | None) -> tuple[float, dict | None]:
        """Step ``step`` (from 0) on a fresh batch: (loss per point, held-out metrics on ``eval_batch`` or None)."""
        config = self.config
        batch = self.family.sample(config.batch_tasks, config.max_points, 0, split="train", generator=self.generator)
        mask = ragged_mask(batch.support_mask, self.generator, config.min_points)
        metadata = corrupt_metadata(self.meta_model.model_metadata(batch.metadata), config.metadata_dropout,
                                    config.metadata_swap, self.generator)
        try:
            loss = svi.step(batch.x_support, metadata, batch.y_support, mask, latent_scale=config.kl_weight(step))
            metrics = None if eval_batch is None else heldout_elbo(self.meta_model, eval_batch)
        except (ValueError, torch.linalg.LinAlgError) as error:
            if not from_non_finite(error, self.meta_model):
                raise
            raise _diverged(step + 1, config, "a distribution's parameters became NaN or infinite") from error
        loss_per_point = loss / max(int(mask.sum()), 1)
        if not math.isfinite(loss_per_point):
            raise _diverged(step + 1, config, f"the loss became {loss_per_point}")
        return loss_per_point, metrics

    def record(self, step: int, loss_per_point: float, metrics: dict | None) -> None:
        """Append step ``step`` (from 1) to the history; FloatingPointError if the held-out ELBO collapsed."""
        history = self.history
        history["step"].append(step)
        history["loss"].append(loss_per_point)
        history["trained_steps"] += 1
        if metrics is not None:
            history["eval_step"].append(step)
            history["eval"].append(metrics)
            collapse = heldout_collapse([(s, e["elbo_per_point"]) for s, e in zip(history["eval_step"],
                                                                                   history["eval"], strict=True)],
                                        after_step=self.config.anneal_steps)
            if collapse:
                raise _diverged(step, self.config, collapse)

    def save(self, svi, step: int) -> None:
        """Write the checkpoint of step ``step`` (when fit has an ``out_dir``)."""
        if self.path:
            self.meta_model.to_checkpoint(step=step, optimizer=svi.get_state(), batch_rng=self.generator.get_state(),
                                          torch_rng=torch.get_rng_state(), history=self.history,
                                          train_config=dataclasses.asdict(self.config), family=self.family.name,
                                          extra=self.extra).write(self.path)
