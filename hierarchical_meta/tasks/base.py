"""The task interface: a batch of tasks split into support and query points.

Every task family (sinusoid, basis functions, real grouped data, the memorization
scenarios) returns a :class:`TaskBatch`, so models, evaluation and probes never need
to know where the tasks came from.

Vocabulary: *tasks* are split at the task level into ``"train"``, ``"val"`` and
``"test"`` tasks; inside a task, points are split into ``support`` (the labelled
points a learner adapts to) and ``query`` (the points it is scored on).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from .schema import TabularSchema

__all__ = ["TaskBatch", "TaskFamily", "SPLITS", "split_generator"]

SPLITS = ("train", "val", "test")
_SEEDS_PER_SPLIT = 2 ** 32 // len(SPLITS)  # seeds 3 b + i stay below 2^32


def split_generator(split: str, generator: torch.Generator | None = None) -> torch.Generator:
    """A generator for ``split`` alone, seeded from ``generator`` (torch's global RNG if None).

    One draw b in [0, 2^32 / 3) from ``generator`` seeds the new stream with 3 b + i, i the
    index of ``split`` in :data:`SPLITS`. The seeds are below 2^32 (torch's CPU generator
    keeps only a seed's low 32 bits) and those of different splits differ modulo 3, so no
    choice of the caller's seeds can give a training and a test stream the same seed.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    base = int(torch.randint(_SEEDS_PER_SPLIT, (1,), generator=generator))
    return torch.Generator().manual_seed(len(SPLITS) * base + SPLITS.index(split))


@dataclasses.dataclass
class TaskBatch:
    """A batch of ``T`` tasks, padded to a common number of points and masked.

    Shapes (``K`` support and ``Q`` query slots per task)::

        x_support:    [T, K, Dx]     y_support:    [T, K, Dy]    support_mask: [T, K] bool
        x_query:      [T, Q, Dx]     y_query:      [T, Q, Dy]    query_mask:   [T, Q] bool
        metadata:     [T, Dm]

    ``params`` holds a family's true task parameters (name -> [T, ...]) where it has
    them, for oracles and plots. Padded slots (mask False) hold finite dummy values.
    Metadata entries may be NaN: that entry is missing (the networks read it so).
    """

    x_support: torch.Tensor
    y_support: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor
    metadata: torch.Tensor
    support_mask: torch.Tensor | None = None
    query_mask: torch.Tensor | None = None
    params: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.support_mask is None:
            self.support_mask = torch.ones(self.x_support.shape[:2], dtype=torch.bool,
                                           device=self.x_support.device)
        if self.query_mask is None:
            self.query_mask = torch.ones(self.x_query.shape[:2], dtype=torch.bool,
                                         device=self.x_query.device)
        self.validate()

    @property
    def num_tasks(self) -> int:
        return self.x_support.shape[0]

    def validate(self) -> None:
        """Check shapes and values; raise ``ValueError`` naming the problem."""
        self._validate_shapes()
        for name in ("x_support", "y_support", "x_query", "y_query"):
            if not torch.isfinite(getattr(self, name)).all():
                raise ValueError(f"TaskBatch.{name} contains NaN or infinite values; "
                                 "drop or impute those points before building the batch")
        if torch.isinf(self.metadata).any():
            raise ValueError("TaskBatch.metadata contains infinite values; "
                             "use NaN for a missing entry")

    def _validate_shapes(self) -> None:
        T = self.x_support.shape[0]
        for name in ("x_support", "y_support", "x_query", "y_query"):
            t = getattr(self, name)
            if t.dim() != 3 or t.shape[0] != T:
                raise ValueError(f"TaskBatch.{name} must have shape [tasks={T}, points, dim], "
                                 f"got {tuple(t.shape)}")
        if self.x_support.shape[:2] != self.y_support.shape[:2]:
            raise ValueError(f"x_support {tuple(self.x_support.shape)} and y_support "
                             f"{tuple(self.y_support.shape)} disagree on [tasks, points]")
        if self.x_query.shape[:2] != self.y_query.shape[:2]:
            raise ValueError(f"x_query {tuple(self.x_query.shape)} and y_query "
                             f"{tuple(self.y_query.shape)} disagree on [tasks, points]")
        if self.x_support.shape[2] != self.x_query.shape[2] or \
                self.y_support.shape[2] != self.y_query.shape[2]:
            raise ValueError("support and query points must have the same x and y dimensions")
        if self.metadata.dim() != 2 or self.metadata.shape[0] != T:
            raise ValueError(f"TaskBatch.metadata must have shape [tasks={T}, Dm], "
                             f"got {tuple(self.metadata.shape)}")
        if self.support_mask.shape != self.x_support.shape[:2] or \
                self.query_mask.shape != self.x_query.shape[:2]:
            raise ValueError("support_mask/query_mask must have shape [tasks, points]")

    def to(self, device) -> TaskBatch:
        moved = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        moved = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in moved.items()}
        moved["params"] = {k: v.to(device) for k, v in self.params.items()}
        return TaskBatch(**moved)

    def subset(self, index: slice | Sequence[int] | torch.Tensor) -> TaskBatch:
        """The tasks picked by ``index`` (a slice, indices or a bool mask over tasks), in its order."""
        if not isinstance(index, slice):
            index = torch.as_tensor(index)
            if index.dim() != 1:
                raise ValueError(f"subset takes a slice, a list of task indices or a bool mask [T], "
                                 f"got an index of shape {tuple(index.shape)}; write [t] for one task")
            if index.dtype != torch.bool:
                index = index.long()
        picked = {f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self) if f.name != "params"}
        return TaskBatch(**picked, params={k: v[index] for k, v in self.params.items()})

    def with_metadata(self, metadata: torch.Tensor) -> TaskBatch:
        """The same tasks with other metadata (ablations: zeroed or shuffled m)."""
        return dataclasses.replace(self, metadata=metadata)

    def with_support_size(self, k: int) -> TaskBatch:
        """Keep only the first ``k`` support slots (``k = 0`` is zero-shot)."""
        return dataclasses.replace(self, x_support=self.x_support[:, :k],
                                   y_support=self.y_support[:, :k],
                                   support_mask=self.support_mask[:, :k])


class TaskFamily:
    """A distribution over tasks with observable metadata.

    Subclasses set ``x_dim``, ``y_dim``, ``metadata_dim`` and implement :meth:`sample`.
    ``split`` selects train, validation or test tasks: synthetic families draw each
    split from its own stream (:func:`split_generator`), fixed data sets hold out whole
    tasks, so training and test tasks never coincide.

    Optional capabilities, declared here with their defaults and overridden by the
    families that have them:

    - ``num_classes``: C for a classification family (y holds class indices), else None;
    - ``noise_std``: the known observation noise σ, else None;
    - ``fixed_dataset``: True for a finite set of tasks (the groups of a data set, with
      ``split_indices`` and ``group_sizes``), scored on every test task by :meth:`all_tasks`
      instead of tasks drawn by :meth:`sample`, and reported beside its ``baselines``;
    - :meth:`true_mean`: the noise-free function of each task, else None;
    - :meth:`exact_predictive`: the exact posterior predictive, else None;
    - ``schema``: the columns of its task files and the user's units
      (:class:`~hierarchical_meta.tasks.schema.TabularSchema`); by default the identity
      schema of its dimensions (columns x, y, m1, ... taken as they are);
    - ``baselines``: the baselines ``run_fit`` scores beside the model on a fixed data set's
      test groups (``"no_metadata"``: the model with m withheld; ``"mixed_model"``,
      ``"pooled"``: :func:`hierarchical_meta.baselines.linear_baselines`), none by default;
    - ``notes``: remarks on the data for the user (rows dropped, levels unseen), none by default;
    - ``split_options``: how a data set's groups were split (seed, fractions or column), stored
      with a checkpoint so that a resume names the option that differs; none by default.
    """

    name: str = "family"
    x_dim: int = 1
    y_dim: int = 1
    metadata_dim: int = 1
    num_classes: int | None = None
    noise_std: float | None = None
    fixed_dataset: bool = False
    baselines: tuple[str, ...] = ()
    notes: Sequence[str] = ()
    split_options: dict | None = None

    @property
    def schema(self) -> TabularSchema:
        """The identity schema of the family's dimensions (a data set overrides it)."""
        return TabularSchema.identity(self.x_dim, self.y_dim, self.metadata_dim)

    def sample(self, num_tasks: int, num_support: int, num_query: int, *,
               split: str = "train", generator: torch.Generator | None = None) -> TaskBatch:
        raise NotImplementedError

    def all_tasks(self, num_support: int, *, split: str = "test",
                  generator: torch.Generator | None = None) -> TaskBatch:
        """Every task of ``split`` with more than ``num_support`` points (fixed data sets)."""
        raise NotImplementedError(f"task family {self.name!r} is not a fixed data set; use sample()")

    def true_mean(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor | None:
        """Noise-free f_t(x) of each task from ``batch.params``: x [T, Q, Dx] -> [T, Q, Dy], or None."""
        return None

    def exact_predictive(self, batch: TaskBatch):
        """The exact p(y_query | support, m) as a predictive distribution, or None."""
        return None

    def noise_floor_log_prob(self, batch: TaskBatch) -> torch.Tensor | None:
        """log N(y; f_t(x), σ²) at the query points, [T, Q]: knowing the task exactly; or None."""
        f = self.true_mean(batch.params, batch.x_query)
        if f is None or self.noise_std is None:
            return None
        return torch.distributions.Normal(f, self.noise_std).log_prob(batch.y_query).sum(-1)

    @staticmethod
    def check_sizes(num_tasks: int, num_support: int, num_query: int, split: str) -> None:
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        if num_support < 0 or num_query < 0:
            raise ValueError(f"num_support and num_query must be >= 0, got "
                             f"{num_support} and {num_query}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
