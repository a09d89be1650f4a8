"""A fitted model for Python users: load a run, predict new groups in the user's units.

::

    fitted = FittedModel.load("runs/sites")          # a run folder, or its model.pt
    predictions = fitted.predict(new_sites)           # a data frame, as `predict` writes it

``new_sites`` is a task file as a data frame (:mod:`hierarchical_meta.taskfile`): the
training data's own x, y and metadata columns (a built-in family's x, y, m1, ...) plus
``task`` and ``role``. The result has one row per query row: ``task``, the x columns,
``<y>_mean``, ``<y>_q05``, ``<y>_q95`` (and ``<y>``, ``loglik`` where y was given), in the
user's units; its ``attrs["notes"]`` hold remarks (levels training never saw). The command
line's ``predict`` runs the same code on a CSV file, a chunk of tasks at a time.

A checkpoint stores the schema of a data set and its split options beside the weights
(:func:`checkpoint_extra`);
a built-in family's identity schema is implied by the model's dimensions
(:func:`stored_schema`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch

from .checkpoint import Checkpoint
from .meta_model import HierarchicalMetaModel, load_checkpoint
from .predict import NUM_SAMPLES, PREDICT_CHUNK, predict_in_chunks
from .taskfile import PredictionTasks, prediction_frame, tasks_from_frame
from .tasks.frames import import_pandas
from .tasks.schema import TabularSchema

__all__ = ["FittedModel", "stored_schema", "checkpoint_extra"]


def checkpoint_extra(family) -> dict:
    """The checkpoint entries that record a family's data: its schema and split options; none
    for an identity schema, which the model's dimensions imply (a built-in family's checkpoint
    is what it always was). A resume names each option that differs (``split_seed 0 (now 1)``)."""
    if family.schema.is_identity():
        return {}
    split = {"split": family.split_options} if family.split_options else {}
    return {**split, "schema": family.schema.to_dict()}  # a split's options first: they explain a new schema


def stored_schema(checkpoint: Checkpoint, meta_model: HierarchicalMetaModel) -> TabularSchema:
    """The schema of a checkpoint (:func:`~hierarchical_meta.meta_model.load_checkpoint`):
    its stored one, else the identity schema of the model's dimensions."""
    if "schema" in checkpoint.extra:
        return TabularSchema.from_dict(checkpoint.extra["schema"])
    c = meta_model.config
    return TabularSchema.identity(c.x_dim, c.y_dim, c.metadata_dim)


class FittedModel:
    """A trained regression model with its schema; see the module docstring.

    Args:
        meta_model: a trained model with the normal likelihood.
        schema: the columns and units of its tasks (its family's ``schema``).
        num_samples: importance samples per task of each prediction.
    """

    def __init__(self, meta_model: HierarchicalMetaModel, schema: TabularSchema, num_samples: int = NUM_SAMPLES):
        c = meta_model.config
        if c.likelihood != "normal":
            raise ValueError(f"predictions are the mean and 90% interval of a regression model; this model is a "
                             f"classifier (likelihood={c.likelihood!r})")
        dims = (schema.x_dim, schema.y_dim, schema.metadata_dim)
        if dims != (c.x_dim, c.y_dim, c.metadata_dim):
            raise ValueError(f"the schema encodes (x, y, metadata) dims {dims} but the model takes "
                             f"{(c.x_dim, c.y_dim, c.metadata_dim)}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples}")
        self.meta_model, self.schema, self.num_samples = meta_model, schema, num_samples

    @classmethod
    def load(cls, path: str, num_samples: int = NUM_SAMPLES) -> FittedModel:
        """The model of a run folder (its ``model.pt``) or of a checkpoint file, with its schema."""
        if os.path.isdir(path):
            path = os.path.join(path, "model.pt")
        meta_model, checkpoint = load_checkpoint(path)
        return cls(meta_model, stored_schema(checkpoint, meta_model), num_samples)

    def predict(self, data, seed: int | None = 0, chunk: int = PREDICT_CHUNK, progress: bool = False):
        """Predictions for the query rows of the tasks in the data frame ``data`` (module docstring).

        Seeds torch's global RNG with ``seed`` first (None: leaves it as it is); ``chunk``
        tasks are predicted at a time. ValueError names what ``data`` lacks or holds wrongly.
        """
        tasks = tasks_from_frame(data, self.schema)
        frames = list(self.prediction_frames(tasks, seed, chunk, progress))
        frame = import_pandas().concat(frames) if len(frames) > 1 else frames[0]
        frame.attrs["notes"] = list(tasks.notes)
        return frame

    def prediction_frames(self, tasks: PredictionTasks, seed: int | None = 0, chunk: int = PREDICT_CHUNK,
                          progress: bool = False) -> Iterator:
        """The predictions of ``tasks`` (read by :mod:`hierarchical_meta.taskfile`), ``chunk``
        tasks at a time, as data frames in the tasks' order (memory stays bounded)."""
        self.meta_model.check_batch(tasks.batch)
        if seed is not None:
            torch.manual_seed(seed)
        for part, predictive in predict_in_chunks(self._predictive, tasks.batch, chunk, progress):
            yield prediction_frame(self.schema, tasks.subset(part), predictive)

    def _predictive(self, batch):
        return self.meta_model.predict(batch, num_samples=self.num_samples)[0]
