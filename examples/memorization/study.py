"""The memorization study: train each learner on a scenario and probe it.

For a :class:`~examples.memorization.scenarios.Scenario`, :meth:`Study.run_scenario` trains

- ``pooled``: a network of the query input alone on the pooled meta-training points
  (support-ignoring by construction);
- ``cnp``: a conditional neural process (black-box meta-learner);
- ``maml``: MAML on profiling/'s MLP functions (regression scenarios only);
- ``bayes`` / ``bayes-no-m``: the hierarchical Bayesian model, with its metadata and
  with metadata withheld (normal likelihood for regression, categorical for
  classification);
- ``oracle``: the scenario's closed-form adapting learner (no training),

and probes each on fresh meta-train and meta-test tasks
(:func:`hierarchical_meta.memorization.probe`), one row per learner and split.
:meth:`Study.beta_experiment` sweeps the information bottleneck β on ``basis-task-id``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import torch

from hierarchical_meta.memorization import probe
from hierarchical_meta.meta_model import HierarchicalMetaModel
from hierarchical_meta.tasks.base import TaskFamily
from hierarchical_meta.train import TrainConfig, fit

from .bayes import BayesianModelPredictor
from .maml import MAMLRegressor, fit_maml
from .networks import ConditionalNeuralProcess, PooledNetwork, fit_episodic
from .scenarios import Scenario, make_scenario

__all__ = ["LEARNERS", "BETAS", "BAYES_LR", "StudyConfig", "TINY", "BetaTrainConfig", "Study"]

LEARNERS = ("pooled", "cnp", "maml", "bayes", "bayes-no-m", "oracle")
BETAS = (0.0, 0.01, 0.1, 1.0, 10.0)
BAYES_LR = 3e-3  # the Bayesian model's SVI learning rate in the committed results (pinned)


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """Sizes of the study: training steps, network width, probe tasks and samples."""

    steps: int = 3000  # training steps of the pooled network, the CNP and the Bayesian model
    maml_steps: int = 1500  # MAML meta-training steps
    hidden: int = 64  # hidden units of every network
    probe_tasks: int = 256  # tasks per split in the probe
    derangements: int = 4  # support derangements in the probe
    num_samples: int = 256  # importance samples of the Bayesian model's predictive
    seed: int = 0

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if f.name != "seed" and getattr(self, f.name) < 1:
                raise ValueError(f"StudyConfig.{f.name} must be >= 1, got {getattr(self, f.name)}")
        if self.probe_tasks < 2:
            raise ValueError(f"probe_tasks must be >= 2 (the probe swaps supports across tasks), "
                             f"got {self.probe_tasks}")


#: Tiny sizes that run the whole study in seconds (tests, smoke runs).
TINY = dict(steps=5, maml_steps=3, hidden=16, probe_tasks=8, derangements=2, num_samples=16)


@dataclasses.dataclass
class BetaTrainConfig(TrainConfig):
    """The model's training with the KL terms of φ1 and φ2 weighted by ``beta`` once annealed."""

    beta: float = 1.0

    def kl_weight(self, step: int) -> float:
        return self.beta * super().kl_weight(step)


class Study:
    """Trains and probes the learners of :data:`LEARNERS`; one Bayesian model per (scenario, β),
    shared by ``bayes`` and ``bayes-no-m``. ``log`` receives one line per learner probed."""

    def __init__(self, config: StudyConfig, log: Callable[[str], None] = print):
        self.config, self.log = config, log
        self.models: dict[tuple, HierarchicalMetaModel] = {}

    def train_learner(self, name: str, scenario: Scenario, family: TaskFamily, beta: float | None = None):
        """A trained predict function, or None where the learner does not apply (MAML on classes).

        The initial weights are drawn after seeding torch with the study's seed, so each
        row is reproducible whichever scenarios and learners run before it.
        """
        c, classes = self.config, family.num_classes
        K, Q = scenario.num_support, scenario.num_query
        if name == "oracle":
            return scenario.make_oracle(family)
        torch.manual_seed(c.seed)
        if name == "pooled":
            learner = PooledNetwork(family.x_dim, num_classes=classes, hidden=c.hidden)
            fit_episodic(learner, family, num_support=K, num_query=Q, steps=c.steps, seed=c.seed)
            return learner
        if name == "cnp":
            learner = ConditionalNeuralProcess(family.x_dim, num_classes=classes, hidden=c.hidden,
                                               bottleneck=beta is not None, beta=beta or 0.0)
            fit_episodic(learner, family, num_support=K, num_query=Q, steps=c.steps, seed=c.seed)
            return learner
        if name == "maml":
            if classes is not None:
                return None  # MAML's inner loop is the MSE of profiling/: regression only
            learner = MAMLRegressor(family.x_dim, hidden=c.hidden)
            fit_maml(learner, family, num_support=K, num_query=Q, steps=c.maml_steps, seed=c.seed)
            return learner
        if name in ("bayes", "bayes-no-m"):
            key = (scenario.name, beta)
            if key not in self.models:
                classifier = {} if classes is None else dict(likelihood="categorical", num_classes=classes)
                model = HierarchicalMetaModel(x_dim=family.x_dim, y_dim=family.y_dim,
                                              metadata_dim=family.metadata_dim, hidden=c.hidden, **classifier)
                config = BetaTrainConfig(steps=c.steps, max_points=K + Q, seed=c.seed, lr=BAYES_LR,
                                         eval_every=max(c.steps // 4, 1), eval_tasks=32,
                                         beta=1.0 if beta is None else beta)
                fit(model, family, config, progress=False)
                self.models[key] = model
            return BayesianModelPredictor(self.models[key], num_samples=c.num_samples,
                                          withhold_metadata=name == "bayes-no-m")
        raise ValueError(f"unknown learner {name!r}; choose from {LEARNERS}")

    def run_scenario(self, scenario: Scenario, learners=LEARNERS, splits: dict[str, str] | None = None,
                     beta: float | None = None) -> list[dict]:
        """Probe rows (:meth:`ProbeReport.as_row` with scenario, learner, train_seconds[, beta])."""
        c = self.config
        family = scenario.make_family(seed=c.seed)
        rows = []
        for name in learners:
            tic = time.perf_counter()
            predict = self.train_learner(name, scenario, family, beta=beta)
            if predict is None:
                continue
            seconds = time.perf_counter() - tic
            reports = probe(predict, family, num_support=scenario.num_support, num_query=scenario.num_query,
                            num_tasks=c.probe_tasks, num_derangements=c.derangements,
                            splits=splits, seed=c.seed + 1000)
            for report in reports.values():
                row = {"scenario": scenario.name, "learner": name, "train_seconds": round(seconds, 1)}
                if beta is not None:
                    row["beta"] = beta
                row.update(report.as_row())
                rows.append(row)
            self.log(f"{scenario.name:20s} {name:11s} " + "  ".join(
                f"{r.split}: {r.metric_name}={r.metric:.3f} (chance {r.chance_metric:.3f}) follow={r.follow:.2f}"
                for r in reports.values()))
        return rows

    def beta_experiment(self):
        """β on the CNP's per-point latent of x and on the Bayesian model's φ KL terms, task-id variant.

        β is chosen by the follow score on meta-validation tasks (split "val": the training
        identifiers, fresh points and fresh probe draws); meta-test is reported beside it.
        Returns (rows with ``beta`` and ``chosen``, {learner: chosen β}).
        """
        scenario = make_scenario("basis-task-id")
        splits = {"meta-val": "val", "meta-test": "test"}
        rows = []
        for beta in BETAS:  # Pyro's scale must be > 0: the Bayesian model skips β = 0
            learners = ["cnp", "bayes"] if beta > 0 else ["cnp"]
            rows += self.run_scenario(scenario, learners, splits=splits, beta=beta)
        chosen = {}
        for learner in ("cnp", "bayes"):
            val = [r for r in rows if r["learner"] == learner and r["split"] == "meta-val"]
            if val:
                chosen[learner] = max(val, key=lambda r: r["follow"])["beta"]
        for r in rows:
            r["chosen"] = r["beta"] == chosen.get(r["learner"])
        return rows, chosen
