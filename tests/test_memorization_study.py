"""The memorization study (examples/memorization): scenario families and their split streams,
the oracles each scenario names, the trained learners through the probe, and the driver."""

import csv
import dataclasses
import math

import pytest
import torch

from examples.memorization import (
    SCENARIOS,
    BayesianModelPredictor,
    ConditionalNeuralProcess,
    DiseaseTasks,
    GraspTasks,
    MAMLRegressor,
    PooledNetwork,
    TaskIdBasisTasks,
    fit_episodic,
    fit_maml,
    make_scenario,
)
from examples.memorization.__main__ import main
from hierarchical_meta.memorization import probe
from hierarchical_meta.meta_model import HierarchicalMetaModel
from hierarchical_meta.predictive import CategoricalMixturePredictive, MixturePredictive
from hierarchical_meta.tasks.basis import BasisFunctionTasks

SEEDS = range(4)

#: The scenarios on the study's own families, each with the parameter that identifies a
#: task. The "basis" scenario uses the library's BasisFunctionTasks, whose split streams
#: are tested with the task families.
TASK_KEY = {"disease-shared": "disease_mean", "disease-disjoint": "disease_mean",
            "mutually-exclusive": "disease_mean", "grasp": "goal", "basis-task-id": "weights"}


def _rows(t):
    """A task parameter as one row per task: [T] or [T, B] -> [T, B]."""
    return t.reshape(t.shape[0], -1)


def test_every_scenario_of_the_study_is_checked_for_disjoint_splits():
    assert set(TASK_KEY) == set(SCENARIOS) - {"basis"}
    assert isinstance(SCENARIOS["basis"].make_family(), BasisFunctionTasks)


# ---------------------------------------------------------------- scenario families

@pytest.mark.parametrize("name", sorted(TASK_KEY))
def test_train_and_test_tasks_are_disjoint_for_any_seeds(name):
    """For every family seed and sampling seed (equal ones included), no meta-test task has
    the parameter of a meta-training task, and each split draws its own points."""
    scenario, key = SCENARIOS[name], TASK_KEY[name]
    K, Q = scenario.num_support, scenario.num_query
    for family_seed in SEEDS:
        family = scenario.make_family(seed=family_seed)
        for seed in SEEDS:
            batches = {split: family.sample(64, K, Q, split=split, generator=torch.Generator().manual_seed(seed))
                       for split in ("train", "val", "test")}
            train, test = _rows(batches["train"].params[key]), _rows(batches["test"].params[key])
            val = _rows(batches["val"].params[key])
            same_task = (test[:, None] == train[None]).all(-1)  # [T_test, T_train]
            assert not same_task.any(), (name, family_seed, seed)
            assert not (test[:, None] == val[None]).all(-1).any()
            for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
                assert not torch.equal(batches[a].x_support, batches[b].x_support), (a, b)
            again = family.sample(64, K, Q, split="test", generator=torch.Generator().manual_seed(seed))
            assert torch.equal(again.x_query, batches["test"].x_query)  # seeded: reproducible


def test_finite_training_tasks_are_fixed_and_held_out_tasks_new():
    """val tasks are the training tasks (fresh points); test tasks come from the family's
    held-out set (disease) or are drawn fresh (grasp goals, basis weights)."""
    g = torch.Generator().manual_seed(0)
    grasp = GraspTasks(seed=1)
    train, val = grasp.sample(32, 5, 20, generator=g), grasp.sample(32, 5, 20, split="val", generator=g)
    test = grasp.sample(32, 5, 20, split="test", generator=g)
    assert torch.isin(train.params["goal"], grasp.train_goals).all()
    assert torch.isin(val.params["goal"], grasp.train_goals).all()
    assert not torch.isin(test.params["goal"], grasp.train_goals).any()
    ident = TaskIdBasisTasks(seed=1)
    train = ident.sample(32, 10, 10, generator=g)
    assert (train.params["weights"] == ident.train_weights[train.params["identifier"]]).all()
    for disease in (DiseaseTasks(shared_signature=True), DiseaseTasks(shared_signature=False)):
        assert not (disease.test_means[:, None] == disease.train_means[None]).all(-1).any()


def test_scenario_structure():
    g = torch.Generator().manual_seed(0)
    grasp = GraspTasks()
    train, test = grasp.sample(6, 5, 20, generator=g), grasp.sample(6, 5, 20, split="test", generator=g)
    assert (train.x_query[..., 1:].abs().sum(-1) > 0).all() and (test.x_query[..., 1:] == 0).all()
    ident = TaskIdBasisTasks()
    test = ident.sample(6, 10, 10, split="test", generator=g)
    nearest = torch.cdist(test.params["weights"], ident.train_weights).argmin(-1)
    assert (test.x_query[:, 0, 1:].argmax(-1) == nearest).all()
    disjoint = DiseaseTasks(shared_signature=False)
    assert (disjoint.train_means @ disjoint.test_means.T).abs().max() == 0  # no shared direction
    shared = DiseaseTasks(shared_signature=True)
    assert (shared.test_means[:, 0] > 0).all() and (shared.train_means[:, 0] > 0).all()
    mutex = DiseaseTasks(shuffle_labels=True).sample(64, 10, 10, generator=g)
    assert 0 < mutex.params["flip"].sum() < 64


def test_declared_capabilities():
    """Classification families declare num_classes; regression ones a noise level and a
    true mean that is the noise-free y (the noise is the only difference, within 6 σ)."""
    for name in ("disease-shared", "disease-disjoint", "mutually-exclusive"):
        family = make_scenario(name).make_family()
        assert family.num_classes == 2 and family.true_mean({}, torch.zeros(1, 1, family.x_dim)) is None
    for name in ("grasp", "basis-task-id"):
        family = make_scenario(name).make_family()
        assert family.num_classes is None and family.noise_std > 0
        for split in ("train", "test"):
            batch = family.sample(32, 5, 20, split=split, generator=torch.Generator().manual_seed(0))
            f = family.true_mean(batch.params, batch.x_query)
            assert f.shape == batch.y_query.shape
            assert (f - batch.y_query).abs().max() < 6 * family.noise_std
            assert family.noise_floor_log_prob(batch).shape == batch.query_mask.shape
    with pytest.raises(ValueError, match="unknown memorization scenario"):
        make_scenario("nope")


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_each_scenarios_oracle_adapts(name):
    """The oracle a scenario names follows its support on meta-train and meta-test tasks
    (32 tasks, seeded; thresholds well below the measured follow scores, 0.5-1.0)."""
    scenario = SCENARIOS[name]
    family = scenario.make_family()
    reports = probe(scenario.make_oracle(family), family, num_support=scenario.num_support,
                    num_query=scenario.num_query, num_tasks=32)
    for r in reports.values():
        assert r.follow > (0.3 if family.num_classes else 0.8), r
        assert r.gain_vs_none > 0.1, r


# ---------------------------------------------------------------- trained learners

@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_tiny_run_of_each_scenario(name):
    """Train the pooled network and a CNP for a few steps and probe both (smoke test)."""
    scenario = SCENARIOS[name]
    family = scenario.make_family()
    torch.manual_seed(0)
    for learner in (PooledNetwork(family.x_dim, num_classes=family.num_classes),
                    ConditionalNeuralProcess(family.x_dim, num_classes=family.num_classes, bottleneck=True, beta=0.1)):
        losses = fit_episodic(learner, family, num_support=scenario.num_support,
                              num_query=scenario.num_query, steps=5, tasks_per_step=8)
        assert len(losses) == 5 and all(math.isfinite(v) for v in losses)
        reports = probe(learner, family, num_support=scenario.num_support, num_query=scenario.num_query,
                        num_tasks=8, num_derangements=2)
        assert set(reports) == {"meta-train", "meta-test"}
        for r in reports.values():
            assert all(math.isfinite(v) for v in dataclasses.asdict(r).values() if isinstance(v, float))
        if isinstance(learner, PooledNetwork):
            assert all(r.follow == 0.0 and r.gain_vs_swapped == 0.0 for r in reports.values())


def test_cnp_penalty_is_beta_times_kl():
    """β·KL(q(z | x_q) ‖ N(0, I)) after a training-mode call; zero without the bottleneck."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4)
    y = torch.randn(2, 3, 1)
    cnp = ConditionalNeuralProcess(4, bottleneck=True, beta=0.5)
    cnp.train()
    cnp(x, y, x)
    loc, raw = cnp.query_encoder(x).chunk(2, -1)
    q = torch.distributions.Normal(loc, torch.nn.functional.softplus(raw) + 1e-4)
    kl = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(-1).mean()
    torch.testing.assert_close(cnp.penalty(), 0.5 * kl)
    assert ConditionalNeuralProcess(4).penalty() == 0 and PooledNetwork(4).penalty() == 0


def test_maml_meta_gradient_matches_profiling_reference():
    """For 1-D inputs the MAML meta-gradient is profiling's batched MAML, to float32
    round-off (rtol 1e-4: the same operations, possibly in another order)."""
    from profiling import SinusoidBatch, meta_gradient

    torch.manual_seed(0)
    batch = BasisFunctionTasks(num_observed_weights=0).sample(4, 10, 10, generator=torch.Generator().manual_seed(0))
    maml = MAMLRegressor(1, hidden=16, inner_steps=3, inner_lr=0.05)
    loss, grads = maml.meta_gradient(batch.x_support, batch.y_support, batch.x_query, batch.y_query)
    zeros = torch.zeros(4)
    ref_batch = SinusoidBatch(batch.x_support, batch.y_support, batch.x_query, batch.y_query, zeros, zeros, zeros)
    ref_loss, ref_grads = meta_gradient("maml", maml.params(), ref_batch, inner_steps=3, inner_lr=0.05)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-6)
    assert set(grads) == set(ref_grads)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-6)


def test_wrapped_learners_run_through_the_probe():
    family = TaskIdBasisTasks()
    torch.manual_seed(0)
    maml = MAMLRegressor(family.x_dim, hidden=16)
    losses = fit_maml(maml, family, num_support=10, num_query=10, steps=3, tasks_per_step=4)
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses) and float(maml.noise_std) > 0
    model = HierarchicalMetaModel(x_dim=family.x_dim, y_dim=1, metadata_dim=1, hidden=16)
    with_m, without_m = BayesianModelPredictor(model, 32), BayesianModelPredictor(model, 32, withhold_metadata=True)
    batch = family.sample(4, 10, 10, generator=torch.Generator().manual_seed(0))
    assert isinstance(with_m(batch.x_support, batch.y_support, batch.x_query, metadata=batch.metadata),
                      MixturePredictive)
    for learner in (maml, with_m, without_m):
        for r in probe(learner, family, num_support=10, num_query=10, num_tasks=4, num_derangements=1).values():
            assert math.isfinite(r.follow) and math.isfinite(r.loss)
    with pytest.raises(ValueError, match="classification"):
        fit_maml(maml, DiseaseTasks(), num_support=4, num_query=4, steps=1)
    with pytest.raises(ValueError, match="full supports"):
        maml(batch.x_support, batch.y_support, batch.x_query, support_mask=torch.zeros(4, 10, dtype=torch.bool))


def test_bayesian_classifier_runs_through_the_probe():
    """The categorical model's predictive (Σ_s w_s softmax f) is accepted by the probe as is."""
    family = DiseaseTasks()
    torch.manual_seed(0)
    model = HierarchicalMetaModel(x_dim=family.x_dim, y_dim=1, metadata_dim=1, hidden=16,
                                  likelihood="categorical", num_classes=family.num_classes)
    predict = BayesianModelPredictor(model, 32)
    batch = family.sample(4, 10, 10, generator=torch.Generator().manual_seed(0))
    out = predict(batch.x_support, batch.y_support, batch.x_query, metadata=batch.metadata)
    assert isinstance(out, CategoricalMixturePredictive) and out.probs.shape == (4, 10, 2)
    for r in probe(predict, family, num_support=10, num_query=10, num_tasks=4, num_derangements=1).values():
        assert r.metric_name == "accuracy" and math.isfinite(r.follow) and math.isfinite(r.loss)


# ---------------------------------------------------------------- the driver

def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_update_replaces_only_this_runs_rows(tmp_path):
    """--update keeps the other learners' rows and lists both commands; rows are reproducible."""
    base = ["--tiny", "--scenario", "grasp", "--out", str(tmp_path)]
    first = main(base + ["--learner", "oracle", "--learner", "pooled"])
    assert [(r["learner"], r["split"]) for r in first] == [
        ("oracle", "meta-train"), ("oracle", "meta-test"), ("pooled", "meta-train"), ("pooled", "meta-test")]
    rows = main(base + ["--learner", "pooled", "--update"])  # merged: in the order of LEARNERS
    assert [(r["learner"], r["split"]) for r in rows] == [
        ("pooled", "meta-train"), ("pooled", "meta-test"), ("oracle", "meta-train"), ("oracle", "meta-test")]
    assert [r["learner"] for r in _read(tmp_path / "results.csv")] == [r["learner"] for r in rows]
    assert [r["loss"] for r in rows[:2]] == [r["loss"] for r in first[2:]]  # seeded: the same pooled rows
    text = (tmp_path / "results.md").read_text()
    assert "Command: `python -m examples.memorization --tiny" in text and "--update`" in text.split("Then: ")[1]


@pytest.mark.parametrize("argv, match", [
    (["--probe-tasks", "1"], "probe_tasks must be >= 2"),
    (["--steps", "0"], "steps must be >= 1"),
    (["--update"], "needs an existing"),
])
def test_bad_flags_exit_with_a_message(argv, match, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "new")] + argv)
    assert match in capsys.readouterr().err
