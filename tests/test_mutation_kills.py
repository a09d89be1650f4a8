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

from hierarchical_meta import train
from hierarchical_meta.bound import elbo_terms
from hierarchical_meta.evaluate import EvalConfig, evaluate, heldout_tasks, shuffle_metadata
from hierarchical_meta.meta_model import HierarchicalMetaModel, ModelConfig, load_checkpoint
from hierarchical_meta.predict import PREDICT_CHUNK, posterior_predictive, predict_in_chunks
from hierarchical_meta.predictive import MixturePredictive, point_metrics
from hierarchical_meta.tasks import BasisFunctionTasks, SinusoidTasks, TabularTasks
from hierarchical_meta.train import ELBOS, TrainConfig, corrupt_metadata, fit, heldout_elbo, resume_conflicts

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
        worst = {"worst_group_loglik", "worst_group"}  # checked in tests/test_predict.py
        assert set(entry) == {*expected, *(f"oracle_{key}" for key in {*oracle, *worst}), *worst,
                              "num_tasks", "num_query_points"}
        for key, value in expected.items():
            assert entry[key] == pytest.approx(value, **ROUNDING), (k, key)
            assert entry[f"oracle_{key}"] == pytest.approx(oracle[key], **ROUNDING), (k, key)
        assert entry["num_tasks"] == 7 and entry["num_query_points"] == 2 * (4 * 4 + 3 * 2)
        shuffled = pooled_reference(predictor, [shuffle_metadata(b) for b in batches])
        shuffled_entry = {key: value for key, value in result["shuffled_metadata"]["shots"][str(k)].items()
                          if key not in worst}
        assert shuffled_entry == pytest.approx(shuffled, **ROUNDING), k
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


# ---- predict_in_chunks: every task once, in order, PREDICT_CHUNK (16) at a time by default -----------------

def test_predict_in_chunks_covers_every_task_once_in_order():
    batch = SinusoidTasks().sample(30, 2, 3, generator=torch.Generator().manual_seed(0))
    chunks = list(predict_in_chunks(lambda part: part.y_query, batch))
    assert PREDICT_CHUNK == 16 and [(tasks.start, tasks.stop) for tasks, _ in chunks] == [(0, 16), (16, 30)]
    ones = list(predict_in_chunks(lambda part: part.y_query, batch, chunk=1))
    assert [(tasks.start, tasks.stop) for tasks, _ in ones] == [(t, t + 1) for t in range(30)]
    for parts in (chunks, ones):
        assert torch.equal(torch.cat([y for _, y in parts]), batch.y_query)
    with pytest.raises(ValueError, match="chunk must be a positive integer, got 0"):
        next(predict_in_chunks(lambda part: part, batch, chunk=0))


# ---- fit: what each training step feeds the model, and what it reports --------------------

def tiny_model(seed=0):
    torch.manual_seed(seed)
    return HierarchicalMetaModel(ModelConfig(latent_dim=2, hidden=8, layers=1))


def tiny_config(**options):
    return TrainConfig(**{"steps": 4, "batch_tasks": 8, "max_points": 5, "eval_tasks": 4, "eval_every": 2,
                          "num_particles": 1, **options})


@pytest.mark.parametrize("elbo", ELBOS)
def test_each_training_step_feeds_the_model_the_safeguarded_batch(monkeypatch, elbo):
    """Ragged masks keep min_points..max_points of each task's points (a prefix), a share
    metadata_dropout of tasks lose their metadata (NaN; 5 binomial se), and the latent sites
    are scaled by β = kl_weight(step): what each step hands the stepper, on either ELBO path."""
    meta = tiny_model()
    config = tiny_config(steps=30, min_points=2, metadata_dropout=0.5, metadata_swap=0.0, anneal_steps=20,
                         eval_every=100, elbo=elbo)
    calls = []
    make_stepper = train.make_svi

    def recording_stepper(meta_model, train_config):
        stepper = make_stepper(meta_model, train_config)
        step = stepper.step

        def recording(x, metadata, y, mask, latent_scale):
            calls.append((x.shape, metadata.clone(), mask.clone(), latent_scale))
            return step(x, metadata, y, mask, latent_scale=latent_scale)

        stepper.step = recording
        return stepper

    monkeypatch.setattr(train, "make_svi", recording_stepper)
    fit(meta, SinusoidTasks(), config, progress=False)
    assert len(calls) == 30
    kept = torch.stack([mask.sum(1) for _, _, mask, _ in calls])  # [steps, tasks]
    assert all(shape == (8, 5, 1) for shape, _, _, _ in calls)
    assert int(kept.min()) == 2 and int(kept.max()) == 5  # every count from min_points to max_points
    assert all(torch.equal(mask, torch.arange(5) < mask.sum(1, keepdim=True)) for _, _, mask, _ in calls)
    dropped = sum(int(metadata.isnan().all(1).sum()) for _, metadata, _, _ in calls)
    assert abs(dropped / 240 - 0.5) <= 5 * (0.25 / 240) ** 0.5, dropped
    assert [scale for _, _, _, scale in calls] == [config.kl_weight(step) for step in range(30)]


def learning_rates(checkpoint) -> list[float]:
    """The learning rate of every parameter group in a checkpoint's optimizer state (either stepper)."""
    optimizers = [checkpoint.optimizer] if "param_groups" in checkpoint.optimizer else checkpoint.optimizer.values()
    return [group["lr"] for optim in optimizers for group in optim["param_groups"]]


@pytest.mark.parametrize("elbo", ELBOS)
def test_the_learning_rate_decays_to_lr_over_lr_decay_with_clipping(tmp_path, elbo):
    config = tiny_config(steps=5, lr=0.01, lr_decay=4.0, clip_norm=3.0, elbo=elbo)
    fit(tiny_model(), SinusoidTasks(), config, out_dir=str(tmp_path), progress=False)
    _, checkpoint = load_checkpoint(str(tmp_path / "model.pt"))
    assert learning_rates(checkpoint) and all(lr == pytest.approx(0.01 / 4.0, rel=1e-9)
                                              for lr in learning_rates(checkpoint))
    if elbo == "pyro":  # ClippedAdam keeps clip_norm in its state; FastSVI takes it from the config
        groups = [group for optim in checkpoint.optimizer.values() for group in optim["param_groups"]]
        assert all(group["clip_norm"] == 3.0 for group in groups)


@pytest.mark.parametrize("elbo", ELBOS)
def test_an_extended_run_decays_the_learning_rate_at_the_first_runs_rate(tmp_path, elbo):
    """4 steps decaying lr 0.01 to 0.01 / 4, extended to 6: lr 0.01 * 4^(-6/4) (docs/reliability.md),
    not 0.01 / 4 (a decay over the new 6 steps) nor 0.01 / 4 * 4^(-2/6) (the new rate from step 4)."""
    config = tiny_config(steps=4, lr=0.01, lr_decay=4.0, elbo=elbo)
    fit(tiny_model(), SinusoidTasks(), config, out_dir=str(tmp_path), progress=False)
    fit(tiny_model(), SinusoidTasks(), dataclasses.replace(config, steps=6), out_dir=str(tmp_path),
        progress=False, extend=True)
    _, checkpoint = load_checkpoint(str(tmp_path / "model.pt"))
    assert checkpoint.step == 6
    assert all(lr == pytest.approx(0.01 * 4.0 ** (-6 / 4), rel=1e-9) for lr in learning_rates(checkpoint))


def test_the_held_out_elbo_is_reported_every_eval_every_steps_and_at_the_end():
    reported = []
    history = fit(tiny_model(), SinusoidTasks(), tiny_config(steps=5, eval_every=2), progress=False,
                  callback=lambda step, metrics: reported.append(step))
    assert history["eval_step"] == reported == [2, 4, 5] and history["step"] == [1, 2, 3, 4, 5]


def test_more_particles_change_the_loss():
    losses = [fit(tiny_model(), SinusoidTasks(), tiny_config(steps=1, num_particles=n), progress=False)["loss"]
              for n in (1, 4)]
    assert losses[0] != losses[1]


class Interrupted(Exception):
    pass


def test_a_resumed_run_repeats_the_uninterrupted_one_exactly(tmp_path):
    """Stopped by an exception after the step-4 checkpoint, then resumed to step 8: the same
    losses and held-out ELBOs, bit for bit, as one run of 8 steps."""
    config = tiny_config(steps=8, eval_every=3, checkpoint_every=4)
    whole = fit(tiny_model(), SinusoidTasks(), config, out_dir=str(tmp_path / "whole"), progress=False)

    def stop_at_six(step, metrics):
        if step == 6:
            raise Interrupted

    with pytest.raises(Interrupted):
        fit(tiny_model(), SinusoidTasks(), config, out_dir=str(tmp_path / "split"), progress=False,
            callback=stop_at_six)
    resumed = fit(tiny_model(seed=1), SinusoidTasks(), config, out_dir=str(tmp_path / "split"), progress=False)
    assert resumed["trained_steps"] == 4
    for key in ("step", "loss", "eval_step", "eval"):
        assert resumed[key] == whole[key], key


def test_held_out_elbo_is_the_bound_per_observed_point():
    """All support and query points observed but the masked ones; 16 particles by default."""
    meta = tiny_model()
    batch = SinusoidTasks().sample(4, 3, 2, generator=torch.Generator().manual_seed(0))
    query_mask = torch.tensor([[True, True], [True, False], [True, True], [False, True]])
    batch = dataclasses.replace(batch, query_mask=query_mask)
    torch.manual_seed(5)
    reported = heldout_elbo(meta, batch)
    torch.manual_seed(5)
    with torch.no_grad():
        terms = elbo_terms(meta.model, meta.guide, torch.cat([batch.x_support, batch.x_query], 1),
                           torch.cat([batch.y_support, batch.y_query], 1), batch.metadata,
                           torch.cat([batch.support_mask, query_mask], 1), num_particles=16)
    assert reported == {"elbo_per_point": float(terms["elbo"].sum() / 18),
                        "kl_phi1_per_task": float(terms["kl_phi1"].mean()),
                        "kl_phi2_per_task": float(terms["kl_phi2"].mean())}


# ---- resume_conflicts: more steps need extend ---------------------------------------------

def test_raising_steps_is_a_conflict_unless_extended(tmp_path):
    meta, family, config = tiny_model(), SinusoidTasks(), tiny_config()
    fit(meta, family, config, out_dir=str(tmp_path), progress=False)
    _, checkpoint = load_checkpoint(str(tmp_path / "model.pt"))
    longer = dataclasses.replace(config, steps=6)
    assert resume_conflicts(checkpoint, meta, family, config) == []
    assert "--extend" in resume_conflicts(checkpoint, meta, family, longer)[0]
    assert resume_conflicts(checkpoint, meta, family, longer, extend=True) == []


# ---- corrupt_metadata: a swap takes another task's metadata ------------------------------

def test_swapping_two_tasks_exchanges_their_metadata():
    metadata = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    out = corrupt_metadata(metadata, dropout=0.0, swap=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, metadata.flip(0))


# ---- TrainConfig: the accepted ranges, edges included -------------------------------------

def test_train_config_accepts_its_edges_and_rejects_just_beyond():
    ones = dict(steps=1, batch_tasks=1, max_points=1, num_particles=1, eval_every=1, eval_tasks=1, checkpoint_every=1)
    TrainConfig(**ones, min_points=1)  # min_points may equal max_points
    TrainConfig(lr_decay=1.0, clip_norm=0.5, metadata_dropout=0.0, metadata_swap=0.0, initial_kl_weight=0.0)
    TrainConfig(metadata_dropout=1.0, metadata_swap=0.0, initial_kl_weight=1.0)
    TrainConfig(metadata_dropout=0.5, metadata_swap=0.5)
    for bad, match in [(dict(eval_tasks=0), "eval_tasks must be a positive integer, got 0"),
                       (dict(lr=0.0), "lr must be > 0, got 0.0"),
                       (dict(lr_decay=0.99), "lr_decay must be >= 1"),
                       (dict(clip_norm=0.0), "clip_norm must be > 0"),
                       (dict(initial_kl_weight=1.5), r"initial_kl_weight must be in \[0, 1\], got 1.5"),
                       (dict(metadata_dropout=0.6, metadata_swap=0.6),
                        r"metadata_dropout \+ metadata_swap must be <= 1")]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(**bad)


def test_a_resume_refuses_a_checkpoint_trained_on_other_data(tmp_path):
    """What checkpoint_extra stores (a grouped data set's schema) must match on resume."""
    config = tiny_config(steps=2)
    fit(tiny_model(), SinusoidTasks(), config, out_dir=str(tmp_path), progress=False,
        checkpoint_extra={"schema": {"y": ["growth"]}})
    with pytest.raises(ValueError, match="schema y \\(another data set"):
        fit(tiny_model(), SinusoidTasks(), config, out_dir=str(tmp_path), progress=False,
            checkpoint_extra={"schema": {"y": ["yield"]}})
    history = fit(tiny_model(), SinusoidTasks(), config, out_dir=str(tmp_path), progress=False,
                  checkpoint_extra={"schema": {"y": ["growth"]}})
    assert history["trained_steps"] == 0
