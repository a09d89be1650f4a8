"""Memorization in meta-learning (Yin et al., "Meta-Learning without Memorization", ICLR 2020).

- :mod:`.probe`: the probe (support gain vs swapped and absent supports; the follow score);
- :mod:`.oracles`: closed-form learners that adapt by construction, the probe's references.

The study that uses them (scenarios, trained meta-learners, the driver) lives in
``examples/memorization`` (docs/memorization.md).
"""

from .oracles import BayesianLinearRegression, GaussianClassMeans, GoalGridPosterior, basis_posterior_predictor
from .probe import ProbeReport, derangement, predict_batch, probe, probe_batch, true_mean

__all__ = ["probe", "probe_batch", "ProbeReport", "derangement", "predict_batch", "true_mean",
           "BayesianLinearRegression", "basis_posterior_predictor", "GaussianClassMeans", "GoalGridPosterior"]
