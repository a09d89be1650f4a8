"""Baselines that predict on the same tasks as the model, returning a ``MixturePredictive``.

statsmodels (the optional ``examples`` extra) is imported only when a mixed model is fitted.
"""

from .design import MAX_DEGREE, PolynomialDesign, linear_features
from .linear import DEGREES, LINEAR_BASELINES, LinearBaselines, check_degree, linear_baselines
from .mixed_model import MixedModel, MixedModelParameters, random_effects_posterior
from .pooled import PooledRegression

__all__ = ["MixedModel", "MixedModelParameters", "PooledRegression", "random_effects_posterior",
           "LINEAR_BASELINES", "DEGREES", "MAX_DEGREE", "LinearBaselines", "PolynomialDesign", "check_degree",
           "linear_baselines", "linear_features"]
