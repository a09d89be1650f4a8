"""Memorization in meta-learning (Yin et al., "Meta-Learning without Memorization", ICLR 2020).

- :mod:`.probe`: the probe (support gain vs swapped and absent supports; the follow score);
- :mod:`.scenarios`: the textbook scenarios as task families;
- :mod:`.oracles`: closed-form learners that adapt by construction;
- :mod:`.neural`: a support-ignoring pooled network and a conditional neural process;
- :mod:`.wrappers`: the hierarchical Bayesian model and MAML as predict functions.
"""

from .neural import ConditionalNeuralProcess, PooledNetwork, fit_episodic
from .oracles import BayesianLinearRegression, GaussianClassMeans, GoalGridPosterior, basis_posterior_predictor
from .wrappers import BayesianModelPredictor, MAMLRegressor, fit_maml
from .probe import ProbeReport, derangement, predict_batch, probe, probe_batch, true_mean
from .scenarios import SCENARIOS, DiseaseTasks, GraspTasks, Scenario, TaskIdBasisTasks, make_scenario

__all__ = ["probe", "probe_batch", "ProbeReport", "derangement", "predict_batch", "true_mean",
           "SCENARIOS", "Scenario", "make_scenario", "DiseaseTasks", "GraspTasks", "TaskIdBasisTasks",
           "BayesianLinearRegression", "basis_posterior_predictor", "GaussianClassMeans",
           "GoalGridPosterior", "PooledNetwork", "ConditionalNeuralProcess", "fit_episodic",
           "BayesianModelPredictor", "MAMLRegressor", "fit_maml"]
