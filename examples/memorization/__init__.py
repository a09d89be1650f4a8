"""The memorization study (Yin et al., "Meta-Learning without Memorization", ICLR 2020).

The library keeps the probe and its closed-form reference learners
(:mod:`hierarchical_meta.memorization`); this package is the study built on them:

- :mod:`.scenarios`: the textbook scenarios as task families, each with its oracle;
- :mod:`.networks`: a support-ignoring pooled network and a conditional neural process;
- :mod:`.maml`: MAML on ``profiling``'s MLP functions;
- :mod:`.bayes`: the hierarchical Bayesian model as a predict function;
- :mod:`.study`: train every learner on a scenario and probe it; the β experiment;
- :mod:`.results`: the CSV and Markdown tables;
- ``python -m examples.memorization --out DIR``: the driver (:mod:`.__main__`).

See docs/memorization.md.
"""

from .bayes import BayesianModelPredictor
from .maml import MAMLRegressor, fit_maml
from .networks import ConditionalNeuralProcess, PooledNetwork, fit_episodic, mlp
from .scenarios import SCENARIOS, DiseaseTasks, GraspTasks, Scenario, TaskIdBasisTasks, make_scenario
from .study import LEARNERS, Study, StudyConfig

__all__ = ["SCENARIOS", "Scenario", "make_scenario", "DiseaseTasks", "GraspTasks", "TaskIdBasisTasks",
           "mlp", "PooledNetwork", "ConditionalNeuralProcess", "fit_episodic", "MAMLRegressor", "fit_maml",
           "BayesianModelPredictor", "LEARNERS", "Study", "StudyConfig"]
