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
from typing import Dict, Optional

import torch

__all__ = ["TaskBatch", "TaskFamily", "SPLITS"]

SPLITS = ("train", "val", "test")


@dataclasses.dataclass
class TaskBatch:
    """A batch of ``T`` tasks, padded to a common number of points and masked.

    Shapes (``K`` support and ``Q`` query slots per task)::

        x_support:    [T, K, Dx]     y_support:    [T, K, Dy]    support_mask: [T, K] bool
        x_query:      [T, Q, Dx]     y_query:      [T, Q, Dy]    query_mask:   [T, Q] bool
        metadata:     [T, Dm]

    ``params`` holds a family's true task parameters (name -> [T, ...]) where it has
    them, for oracles and plots. Padded slots (mask False) hold finite dummy values.
    """

    x_support: torch.Tensor
    y_support: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor
    metadata: torch.Tensor
    support_mask: Optional[torch.Tensor] = None
    query_mask: Optional[torch.Tensor] = None
    params: Dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)

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
        for name in ("x_support", "y_support", "x_query", "y_query", "metadata"):
            if not torch.isfinite(getattr(self, name)).all():
                raise ValueError(f"TaskBatch.{name} contains NaN or infinite values; "
                                 "drop or impute those points before building the batch")

    def to(self, device) -> "TaskBatch":
        moved = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        moved = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in moved.items()}
        moved["params"] = {k: v.to(device) for k, v in self.params.items()}
        return TaskBatch(**moved)

    def with_metadata(self, metadata: torch.Tensor) -> "TaskBatch":
        """The same tasks with other metadata (ablations: zeroed or shuffled m)."""
        return dataclasses.replace(self, metadata=metadata)

    def with_support_size(self, k: int) -> "TaskBatch":
        """Keep only the first ``k`` support slots (``k = 0`` is zero-shot)."""
        return dataclasses.replace(self, x_support=self.x_support[:, :k],
                                   y_support=self.y_support[:, :k],
                                   support_mask=self.support_mask[:, :k])


class TaskFamily:
    """A distribution over regression tasks with observable metadata.

    Subclasses set ``x_dim``, ``y_dim``, ``metadata_dim`` and implement
    :meth:`sample`. ``split`` selects train, validation or test tasks; synthetic
    families draw all three from the same distribution with disjoint seeds, fixed
    data sets hold out whole tasks.
    """

    name: str = "family"
    x_dim: int = 1
    y_dim: int = 1
    metadata_dim: int = 1

    def sample(self, num_tasks: int, num_support: int, num_query: int, *,
               split: str = "train", generator: Optional[torch.Generator] = None) -> TaskBatch:
        raise NotImplementedError

    @staticmethod
    def check_sizes(num_tasks: int, num_support: int, num_query: int, split: str) -> None:
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        if num_support < 0 or num_query < 0:
            raise ValueError(f"num_support and num_query must be >= 0, got "
                             f"{num_support} and {num_query}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
