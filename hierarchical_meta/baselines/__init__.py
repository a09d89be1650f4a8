"""Baselines that predict on the same tasks as the model, returning a ``MixturePredictive``.

statsmodels (the optional ``examples`` extra) is imported only when a mixed model is fitted.
"""

from .linear import LINEAR_BASELINES, linear_baselines
from .mixed_model import MixedModel, MixedModelParameters, random_effects_posterior
from .pooled import PooledRegression

__all__ = ["MixedModel", "MixedModelParameters", "PooledRegression", "random_effects_posterior",
           "LINEAR_BASELINES", "linear_baselines"]
