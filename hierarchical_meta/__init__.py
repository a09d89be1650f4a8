"""Bayesian black-box meta-learning with observable task metadata.

Two latents per task, φ1 → φ2, with φ2 ~ p(φ2 | φ1, m) and y ~ p(y | φ2, x); an amortized
guide q(φ2 | X, Y) q(φ1 | φ2, m); training by the ELBO with Pyro; prediction on new tasks
from a few labelled points plus metadata by importance sampling the whole posterior (in
closed form where the model is linear-Gaussian).

The public names are imported on first use (PEP 562), so ``import hierarchical_meta.runfiles``
or ``hierarchical_meta.errors`` stays cheap and loads neither torch nor Pyro.
"""

import importlib
import sys
import types

#: Each public name and the submodule that defines it; a new public name is one line here.
_EXPORTS = {
    "HierarchicalMetaModel": "meta_model",
    "ModelConfig": "meta_model",
    "TrainConfig": "train",
    "EvalConfig": "evaluate",
    "fit": "train",
    "evaluate": "evaluate",
    "evaluate_model": "pipeline",
    "run_fit": "pipeline",
    "run_demo": "pipeline",
    "run_predict": "pipeline",
    "run_compare": "compare",
    "load_checkpoint": "meta_model",
    "Checkpoint": "checkpoint",
    "FittedModel": "fitted",
    "MixturePredictive": "predictive",
    "CategoricalMixturePredictive": "predictive",
    "point_metrics": "predictive",
    "plate_diagram": "render",
    "render_diagram": "render",
    "TaskBatch": "tasks",
    "TaskFamily": "tasks",
    "SinusoidTasks": "tasks",
    "BasisFunctionTasks": "tasks",
    "TabularTasks": "tasks",
    "make_family": "tasks",
}

__all__ = list(_EXPORTS)


class _Package(types.ModuleType):
    """This package's module type: importing the submodule ``evaluate`` keeps the public function ``evaluate``.

    (The import system sets a submodule as an attribute of its package, which would hide a public
    name spelled like its submodule.)
    """

    def __setattr__(self, name, value):
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    """Import the submodule that defines the public ``name`` on first access, and cache the name."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
