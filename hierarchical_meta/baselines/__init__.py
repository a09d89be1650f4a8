"""Baselines that predict on the same tasks as the model, returning a ``MixturePredictive``.

statsmodels (the optional ``examples`` extra) is imported only when a baseline is fitted.
"""

from .mixed_model import MixedModel, MixedModelParameters, random_effects_posterior

__all__ = ["MixedModel", "MixedModelParameters", "random_effects_posterior"]
