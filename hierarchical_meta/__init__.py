"""Bayesian black-box meta-learning with observable task metadata."""

from .tasks import BasisFunctionTasks, SinusoidTasks, TaskBatch, TaskFamily, make_family

__all__ = ["TaskBatch", "TaskFamily", "SinusoidTasks", "BasisFunctionTasks", "make_family"]
