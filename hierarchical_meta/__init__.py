"""Bayesian black-box meta-learning with observable task metadata.

Two latents per task, φ1 → φ2, with φ2 ~ p(φ2 | φ1, m) and y ~ p(y | φ2, x); an amortized
guide q(φ2 | X, Y) q(φ1 | φ2, m); training by the ELBO with Pyro; prediction on new tasks
from a few labelled points plus metadata by importance sampling the whole posterior.
"""

from .evaluate import EvalConfig, evaluate
from .fitted import FittedModel
from .meta_model import HierarchicalMetaModel, ModelConfig, load_checkpoint
from .pipeline import evaluate_model, run_demo, run_fit, run_predict
from .predictive import CategoricalMixturePredictive, MixturePredictive, point_metrics
from .render import plate_diagram, render_diagram
from .tasks import BasisFunctionTasks, SinusoidTasks, TabularTasks, TaskBatch, TaskFamily, make_family
from .train import TrainConfig, fit

__all__ = ["HierarchicalMetaModel", "ModelConfig", "TrainConfig", "EvalConfig", "fit", "evaluate",
           "evaluate_model", "run_fit", "run_demo", "run_predict", "load_checkpoint", "FittedModel",
           "MixturePredictive", "CategoricalMixturePredictive", "point_metrics", "plate_diagram", "render_diagram",
           "TaskBatch", "TaskFamily", "SinusoidTasks", "BasisFunctionTasks", "TabularTasks", "make_family"]
