"""Exact checks on the numbers users read from evaluate.py, predict.py and train.py.

Each test pins a number against a reference computed here another way, so that a changed
constant, default, slice or sign in those modules fails it (``make mutation`` runs mutmut
over them with these tests): the K-shot protocol's held-out tasks and pooled metrics, the
reference and noise-floor columns, the shuffled-metadata ablation, the defensive prior
share of the importance sampler, the chunking of predictions, and the training
safeguards. Everything is seeded; comparisons are exact, or to float32 rounding (relative
1e-5) where the same sums are taken in another order.
"""

import dataclasses

import pyro.distributions as dist
import pytest
import torch

from hierarchical_meta.evaluate import EvalConfig, evaluate, heldout_tasks, shuffle_metadata
from hierarchical_meta.meta_model import HierarchicalMetaModel, ModelConfig
from hierarchical_meta.predict import posterior_predictive, predict_in_chunks
from hierarchical_meta.predictive import MixturePredictive, point_metrics
from hierarchical_meta.tasks import BasisFunctionTasks, SinusoidTasks, TabularTasks

ROUNDING = dict(rel=1e-5, abs=1e-6)


# ---- evaluate: the K-shot protocol against a direct computation --------------------------

class HalfMaskedBasis(BasisFunctionTasks):
    """Basis tasks whose odd-numbered tasks keep only their first ``num_query // 2`` query points.

    The dropped slots hold y = 1e6, so counting one of them shows in every metric.
    """

    def sample(self, num_tasks, num_support, num_query, *, split="train", generator=None):
        batch = super().sample(num_tasks, num_support, num_query, split=split, generator=generator)
        keep = torch.ones_like(batch.query_mask)
        keep[1::2, num_query // 2:] = False
        return dataclasses.replace(batch, y_query=torch.where(keep[..., None], batch.y_query, 1e6), query_mask=keep)


def misspecified(family):
    """The exact predictive of a family that trusts the metadata too little: uses support and m."""
    wrong = BasisFunctionTasks(metadata_noise=4 * family.metadata_noise)
    return wrong.exact_predictive


def test_heldout_tasks_are_the_seeded_test_split_with_nested_supports():
    family, config = BasisFunctionTasks(), EvalConfig(shots=(0, 3), num_tasks=5, num_query=4, seed=7)
    for draw in (0, 1):
        full = family.sample(5, 3, 4, split="test", generator=torch.Generator().manual_seed(7 + draw))
        for k in (0, 3):
            tasks = heldout_tasks(family, config, k, draw) if draw else heldout_tasks(family, config, k)
            expected = full.with_support_size(k)
            for name in ("x_support", "y_support", "x_query", "y_query", "metadata"):
                assert torch.equal(getattr(tasks, name), getattr(expected, name)), (draw, k, name)


def pooled_reference(predictor, batches, metrics=point_metrics):
    """Metrics over all query points of ``batches`` (one call per batch), weighted by points."""
    sums, points = {}, 0
    for batch in batches:
        n = int(batch.query_mask.sum())
        for key, value in metrics(predictor(batch), batch.y_query, batch.query_mask).items():
            sums[key] = sums.get(key, 0.0) + value * n
        points += n
    return {key: value / points for key, value in sums.items()}


def test_evaluate_equals_the_protocol_computed_directly():
    """Uneven chunks (3, 3, 1 of 7 tasks), two draws, masked query points, three K."""
    family = HalfMaskedBasis()
    config = EvalConfig(shots=(0, 1, 3), num_tasks=7, num_query=4, seed=5, draws=2, chunk=3)
    predictor = misspecified(family)
    result = evaluate(predictor, family, config)
    full = [family.sample(7, 3, 4, split="test", generator=torch.Generator().manual_seed(5 + d)) for d in (0, 1)]
    for k in (0, 1, 3):
        batches = [b.with_support_size(k) for b in full]
        entry = result["shots"][str(k)]
        expected = pooled_reference(predictor, batches)
        oracle = pooled_reference(family.exact_predictive, batches)
        assert set(entry) == {*expected, *(f"oracle_{key}" for key in oracle), "num_tasks", "num_query_points"}
        for key, value in expected.items():
            assert entry[key] == pytest.approx(value, **ROUNDING), (k, key)
            assert entry[f"oracle_{key}"] == pytest.approx(oracle[key], **ROUNDING), (k, key)
        assert entry["num_tasks"] == 7 and entry["num_query_points"] == 2 * (4 * 4 + 3 * 2)
        shuffled = pooled_reference(predictor, [shuffle_metadata(b) for b in batches])
        assert result["shuffled_metadata"]["shots"][str(k)] == pytest.approx(shuffled, **ROUNDING), k
    floor = [(family.noise_floor_log_prob(b) * b.query_mask).sum() / b.query_mask.sum() for b in full]
    assert result["noise_floor_loglik"] == pytest.approx(float(sum(floor) / 2), **ROUNDING)


def test_evaluate_skips_tasks_without_query_points_and_counts_single_points():
    """One query point per even task, none for odd ones, one task per chunk."""
    family = HalfMaskedBasis()
    config = EvalConfig(shots=(2,), num_tasks=6, num_query=1, chunk=1, shuffled_metadata=False)
    predictor = misspecified(family)
    entry = evaluate(predictor, family, config)["shots"]["2"]
    batch = heldout_tasks(family, config, 2).subset([0, 2, 4])
    for key, value in pooled_reference(predictor, [batch]).items():
        assert entry[key] == pytest.approx(value, **ROUNDING), key
    assert entry["num_query_points"] == 3


def test_evaluate_defaults_to_the_default_protocol():
    family = BasisFunctionTasks()

    def mean_predictor(batch):  # N(support mean, 1): cheap, uses the support
        T, Q, _ = batch.y_query.shape
        k = batch.support_mask.sum(1, keepdim=True).clamp_min(1)
        mean = (batch.y_support[..., 0] * batch.support_mask).sum(1, keepdim=True) / k
        return MixturePredictive(torch.zeros(T, 1), mean[:, None, :, None].expand(T, 1, Q, 1),
                                 torch.ones(T, 1, Q, 1))

    assert evaluate(mean_predictor, family) == evaluate(mean_predictor, family, EvalConfig())


def test_shuffling_two_tasks_swaps_their_metadata():
    batch = SinusoidTasks().sample(2, 1, 1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(shuffle_metadata(batch).metadata, batch.metadata.flip(0))


def grouped_frame(groups=12, rows=6):
    pandas = pytest.importorskip("pandas")
    g = torch.Generator().manual_seed(0)
    return pandas.DataFrame({"group": [f"g{i // rows}" for i in range(groups * rows)],
                             "x": torch.rand(groups * rows, generator=g).tolist(),
                             "y": torch.randn(groups * rows, generator=g).tolist(),
                             "m": [float(i // rows) for i in range(groups * rows)]})


def test_a_fixed_data_set_is_partitioned_by_the_evaluation_seed_alone():
    family = TabularTasks(grouped_frame(), group="group", x="x", y="y", metadata="m", test_fraction=0.5)
    config = EvalConfig(shots=(2,), seed=11)
    runs = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        runs.append(heldout_tasks(family, config, 2, draw=1))
    expected = family.all_tasks(2, split="test", generator=torch.Generator().manual_seed(12))
    for tasks in runs:
        for name in ("x_support", "y_support", "x_query", "y_query", "metadata", "query_mask"):
            assert torch.equal(getattr(tasks, name), getattr(expected, name)), name


# ---- posterior_predictive: the defensive prior share -------------------------------------

class FarGuide:
    """q(φ2) and q(φ1 | φ2): all mass (sd 1e-3) at 30 in every coordinate, far from the prior."""

    def __init__(self, dim):
        self.dim = dim

    def phi2_posterior(self, x, y, metadata, mask=None):
        return dist.Normal(torch.full((x.shape[0], 1, self.dim), 30.0), 1e-3).to_event(1)

    def phi1_posterior(self, phi2, m):
        return dist.Normal(torch.full_like(phi2, 30.0), 1e-3).to_event(1)


@pytest.mark.parametrize("defensive", [0.3, 0.5])
def test_the_prior_draws_a_share_defensive_of_the_samples(defensive):
    """Zero-shot with a proposal far from the prior: the guide's draws weigh nothing, each of
    the round(α S) prior draws weighs p(φ)/(share p(φ)) with share = round(α S)/S, so the
    evidence estimate of p(no data | m) = 1 is exact and the weights are uniform over them."""
    torch.manual_seed(0)
    meta = HierarchicalMetaModel(ModelConfig(latent_dim=2, hidden=8, layers=1, prior="linear",
                                             decoder="features", noise_std=0.5))
    batch = SinusoidTasks().sample(3, 0, 4, split="test", generator=torch.Generator().manual_seed(1))
    S = 64
    predictive, log_evidence = posterior_predictive(meta.model, FarGuide(2), batch.x_support, batch.y_support,
                                                    batch.metadata, batch.support_mask, batch.x_query,
                                                    num_samples=S, defensive=defensive)
    n_prior = round(defensive * S)
    torch.testing.assert_close(log_evidence, torch.zeros(3), rtol=0, atol=1e-5)
    weights = predictive.weights.sort(-1, descending=True).values
    torch.testing.assert_close(weights[:, :n_prior], torch.full((3, n_prior), 1 / n_prior), rtol=1e-5, atol=0)
    assert (weights[:, n_prior:] < 1e-30).all()


# ---- predict_in_chunks: every task once, in order, 25 at a time by default -----------------

def test_predict_in_chunks_covers_every_task_once_in_order():
    batch = SinusoidTasks().sample(30, 2, 3, generator=torch.Generator().manual_seed(0))
    chunks = list(predict_in_chunks(lambda part: part.y_query, batch))
    assert [(tasks.start, tasks.stop) for tasks, _ in chunks] == [(0, 25), (25, 30)]
    ones = list(predict_in_chunks(lambda part: part.y_query, batch, chunk=1))
    assert [(tasks.start, tasks.stop) for tasks, _ in ones] == [(t, t + 1) for t in range(30)]
    for parts in (chunks, ones):
        assert torch.equal(torch.cat([y for _, y in parts]), batch.y_query)
    with pytest.raises(ValueError, match="chunk must be a positive integer, got 0"):
        next(predict_in_chunks(lambda part: part, batch, chunk=0))
