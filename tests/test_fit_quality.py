"""Fit quality at a small budget: a regression check of training and prediction together.

The model is trained for 400 SVI steps (the demo takes 8000) on sinusoid tasks with the
default TrainConfig otherwise, and scored with the evaluation protocol on 40 held-out tasks
(256 importance samples) at every K against exact Bayes. At this budget the model is far
from converged (its intervals are still too wide from K = 2 on), so the bounds are loose, but
set from values measured with this code (seeds 0-2, default metadata swap 3%) with a margin:

    K                 0            1            2            5            10
    gap, measured     0.25-0.31    0.91-0.96    1.22-1.26    1.36-1.46    1.36-1.44
    gap, bound        <= 0.45      <= 1.3       <= 1.7       <= 1.9       <= 1.9
    coverage90        0.92-0.96    0.95-0.98    0.98-0.99    0.98-0.99    0.99
    bound             >= 0.8       >= 0.8       >= 0.85      >= 0.85      >= 0.85, all <= 0.998

An untrained model is several nats away at every K; a step in the wrong direction, a guide
that ignores the data, collapsed noise (overconfident intervals) or a broken predictive
fails at least one bound. About 15 s on an idle core.
"""

import pytest
import torch

from hierarchical_meta import HierarchicalMetaModel, ModelConfig, SinusoidTasks, TrainConfig, fit
from hierarchical_meta.evaluate import EvalConfig
from hierarchical_meta.pipeline import evaluate_model

GAP_BOUNDS = {"0": 0.45, "1": 1.3, "2": 1.7, "5": 1.9, "10": 1.9}
COVERAGE_BOUNDS = {"0": (0.8, 0.998), "1": (0.8, 0.998), "2": (0.85, 0.998), "5": (0.85, 0.998),
                   "10": (0.85, 0.998)}


def _gaps_and_coverage(model, family, seed=0):
    torch.manual_seed(seed)
    result = evaluate_model(model, family, EvalConfig(shots=(0, 1, 2, 5, 10), num_tasks=40, shuffled_metadata=False),
                            num_samples=256)
    return ({k: e["oracle_loglik"] - e["loglik"] for k, e in result["shots"].items()},
            {k: e["coverage90"] for k, e in result["shots"].items()})


@pytest.fixture(scope="module")
def trained():
    family = SinusoidTasks()
    torch.manual_seed(0)
    model = HierarchicalMetaModel(ModelConfig())
    untrained = _gaps_and_coverage(model, family)
    fit(model, family, TrainConfig(steps=400, anneal_steps=200, eval_every=400, eval_tasks=16), progress=False)
    return untrained, _gaps_and_coverage(model, family)


def test_gap_to_exact_bayes_and_coverage_after_a_short_fit(trained):
    _, (gaps, coverage) = trained
    for k, bound in GAP_BOUNDS.items():
        assert gaps[k] <= bound, (k, gaps)
    for k, (low, high) in COVERAGE_BOUNDS.items():
        assert low <= coverage[k] <= high, (k, coverage)


def test_the_bounds_have_teeth(trained):
    """The untrained model misses the gap bounds (so they measure training, not luck)."""
    (gaps, _), _ = trained
    assert all(gaps[k] > bound for k, bound in GAP_BOUNDS.items()), gaps
