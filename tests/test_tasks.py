"""The task interface (TaskBatch) and the synthetic families behind it.

- TaskBatch refuses bad shapes and non-finite values with a ValueError naming the field,
  except NaN metadata, which means "missing";
- ``with_support_size`` keeps the first k support slots (k = 0 is zero-shot); ``subset``
  picks tasks by slice, indices or bool mask, params included;
- SinusoidTasks / BasisFunctionTasks sample the documented shapes, reproducibly per seed,
  and each split from its own stream: no caller seeds make train, val and test tasks meet;
- the basis family's exact posterior predictive (fast path: linear_gaussian with the
  metadata as measurements) matches two slow references: direct Gaussian conditioning of
  the joint (w, m, Y_support, y_query), and a brute-force Monte Carlo over prior weight
  draws; a NaN metadata entry is exactly an unobserved one.
"""

import math

import pytest
import torch

from hierarchical_meta.tasks import (
    FAMILIES,
    SPLITS,
    BasisFunctionTasks,
    SinusoidTasks,
    TaskBatch,
    make_family,
    split_generator,
)


def _batch(T=3, K=4, Q=5, Dx=1, Dy=1, Dm=2, **overrides):
    g = torch.Generator().manual_seed(0)
    fields = dict(x_support=torch.randn(T, K, Dx, generator=g), y_support=torch.randn(T, K, Dy, generator=g),
                  x_query=torch.randn(T, Q, Dx, generator=g), y_query=torch.randn(T, Q, Dy, generator=g),
                  metadata=torch.randn(T, Dm, generator=g))
    fields.update(overrides)
    return TaskBatch(**fields)


# -- TaskBatch validation ---------------------------------------------------------------------

def test_default_masks_are_all_true():
    batch = _batch()
    assert batch.support_mask.dtype == torch.bool and batch.support_mask.shape == (3, 4)
    assert batch.query_mask.shape == (3, 5) and batch.query_mask.all() and batch.support_mask.all()
    assert batch.num_tasks == 3


@pytest.mark.parametrize("field, bad, match", [
    ("x_support", torch.zeros(3, 4), "x_support"),  # missing the dim axis
    ("y_query", torch.zeros(2, 5, 1), "y_query"),  # wrong number of tasks
    ("y_support", torch.zeros(3, 3, 1), "y_support"),  # x/y disagree on points
    ("x_query", torch.zeros(3, 5, 2), "same x and y dimensions"),  # support/query x dims differ
    ("metadata", torch.zeros(3), "metadata"),
    ("metadata", torch.zeros(4, 2), "metadata"),
    ("support_mask", torch.ones(3, 2, dtype=torch.bool), "mask"),
    ("query_mask", torch.ones(3, 5, 1, dtype=torch.bool), "mask"),
])
def test_bad_shapes_raise_naming_the_field(field, bad, match):
    with pytest.raises(ValueError, match=match):
        _batch(**{field: bad})


@pytest.mark.parametrize("field", ["x_support", "y_support", "x_query", "y_query"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_values_raise_naming_the_field(field, value):
    good = _batch()
    tensor = getattr(good, field).clone()
    tensor.view(-1)[1] = value
    with pytest.raises(ValueError, match=rf"TaskBatch\.{field} contains NaN or infinite"):
        _batch(**{field: tensor})


@pytest.mark.parametrize("value", [float("inf"), -float("inf")])
def test_infinite_metadata_raises_and_nan_metadata_is_missing(value):
    metadata = _batch().metadata.clone()
    metadata[1, 0] = value
    with pytest.raises(ValueError, match=r"TaskBatch\.metadata contains infinite values; use NaN"):
        _batch(metadata=metadata)
    metadata[1, 0] = float("nan")
    assert torch.isnan(_batch(metadata=metadata).metadata[1, 0])


def test_with_support_size_keeps_the_first_k_slots():
    batch = _batch(K=4)
    for k in (0, 1, 4):
        sub = batch.with_support_size(k)
        assert sub.x_support.shape == (3, k, 1) and sub.y_support.shape == (3, k, 1)
        assert sub.support_mask.shape == (3, k)
        torch.testing.assert_close(sub.x_support, batch.x_support[:, :k], rtol=0, atol=0)
        torch.testing.assert_close(sub.y_support, batch.y_support[:, :k], rtol=0, atol=0)
        # query set and metadata untouched
        assert sub.x_query is batch.x_query and sub.metadata is batch.metadata


def test_with_metadata_revalidates():
    batch = _batch()
    with pytest.raises(ValueError, match="metadata"):
        batch.with_metadata(torch.full((3, 2), float("inf")))
    with pytest.raises(ValueError, match="metadata"):
        batch.with_metadata(torch.zeros(2, 2))
    assert batch.with_metadata(torch.zeros(3, 2)).metadata.abs().sum() == 0
    assert torch.isnan(batch.with_metadata(torch.full((3, 2), float("nan"))).metadata).all()


@pytest.mark.parametrize("index, picked", [
    (slice(1, 3), [1, 2]),
    ([3, 0], [3, 0]),  # indices keep their order
    (torch.tensor([2]), [2]),
    (torch.tensor([True, False, False, True]), [0, 3]),
    ([False, True, False, False], [1]),
])
def test_subset_picks_tasks_with_every_field_and_param(index, picked):
    mask = torch.ones(4, 3, dtype=torch.bool)
    mask[2, 1:] = False
    batch = _batch(T=4, K=3, support_mask=mask)
    batch.params = {"weights": torch.arange(8.0).view(4, 2)}
    sub = batch.subset(index)
    rows = torch.tensor(picked)
    assert sub.num_tasks == len(picked)
    for name in ("x_support", "y_support", "x_query", "y_query", "metadata", "support_mask", "query_mask"):
        assert torch.equal(getattr(sub, name), getattr(batch, name)[rows]), name
    assert torch.equal(sub.params["weights"], batch.params["weights"][rows])


def test_subset_refuses_a_scalar_index():
    with pytest.raises(ValueError, match=r"write \[t\] for one task"):
        _batch().subset(1)


# -- families ---------------------------------------------------------------------------------

def test_registry_and_unknown_family():
    assert {"sinusoid", "basis"} <= set(FAMILIES)
    assert isinstance(make_family("basis", num_basis=3), BasisFunctionTasks)
    with pytest.raises(ValueError, match="unknown task family 'nope'"):
        make_family("nope")


@pytest.mark.parametrize("family", [SinusoidTasks(), BasisFunctionTasks(num_basis=4, num_observed_weights=2)],
                         ids=["sinusoid", "basis"])
def test_sample_shapes_and_seeding(family):
    T, K, Q = 5, 3, 7
    a = family.sample(T, K, Q, generator=torch.Generator().manual_seed(11))
    b = family.sample(T, K, Q, generator=torch.Generator().manual_seed(11))
    c = family.sample(T, K, Q, generator=torch.Generator().manual_seed(12))
    assert a.x_support.shape == (T, K, family.x_dim) and a.y_support.shape == (T, K, family.y_dim)
    assert a.x_query.shape == (T, Q, family.x_dim) and a.y_query.shape == (T, Q, family.y_dim)
    assert a.metadata.shape == (T, family.metadata_dim)
    assert a.support_mask.all() and a.query_mask.all()
    for name in ("x_support", "y_support", "x_query", "y_query", "metadata"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0)  # same seed: identical
        assert not torch.equal(getattr(a, name), getattr(c, name))  # another seed: other tasks
    for key, value in a.params.items():
        torch.testing.assert_close(value, b.params[key], rtol=0, atol=0)
    zero_shot = family.sample(T, 0, Q, generator=torch.Generator().manual_seed(11))
    assert zero_shot.x_support.shape == (T, 0, family.x_dim)


def test_sample_size_checks():
    family = SinusoidTasks()
    with pytest.raises(ValueError, match="num_tasks"):
        family.sample(0, 1, 1)
    with pytest.raises(ValueError, match="num_support"):
        family.sample(1, -1, 1)
    with pytest.raises(ValueError, match="split"):
        family.sample(1, 1, 1, split="training")


def test_sinusoid_data_follow_the_documented_generative_process():
    """y - f_true(x) has the noise std, and m is a noisy (A, b) with the documented noise.

    With 400 tasks x 50 points the residual std's relative MC error is ~1/sqrt(2*20000) = 0.5%;
    the metadata noise estimates from 400 tasks have relative error ~1/sqrt(800) = 3.5%, so
    15% is > 4 standard errors.
    """
    family = SinusoidTasks()
    batch = family.sample(400, 10, 40, generator=torch.Generator().manual_seed(3))
    p = batch.params
    assert ((p["amplitude"] >= 0.1) & (p["amplitude"] <= 5.0)).all()
    assert ((p["phase"] >= 0) & (p["phase"] <= math.pi)).all()
    assert ((batch.x_query >= -5) & (batch.x_query <= 5)).all()
    x = torch.cat([batch.x_support, batch.x_query], 1)
    y = torch.cat([batch.y_support, batch.y_query], 1)
    residual = y - family.function(x, p["amplitude"], p["phase"], p["offset"])
    assert abs(float(residual.std()) / family.noise_std - 1) < 0.03
    assert abs(float((batch.metadata[:, 0] - p["amplitude"]).std()) / 0.3 - 1) < 0.15
    assert abs(float((batch.metadata[:, 1] - p["offset"]).std()) / 0.1 - 1) < 0.15


def test_family_constructor_checks():
    with pytest.raises(ValueError, match="low < high"):
        SinusoidTasks(amplitude_range=(5.0, 0.1))
    with pytest.raises(ValueError, match="noise_std"):
        SinusoidTasks(noise_std=0.0)
    with pytest.raises(ValueError, match="num_observed_weights"):
        BasisFunctionTasks(num_basis=3, num_observed_weights=4)
    with pytest.raises(ValueError, match="num_basis"):
        BasisFunctionTasks(num_basis=0)


# -- the basis family's exact posterior predictive ------------------------------------------

def _conditioned_predictive(family, batch):
    """Slow reference: build the joint Gaussian of (m, Y_support, y_query) per task, condition.

    z = A w + noise with w ~ N(0, s_w² I): Cov(z) = s_w² A Aᵀ + diag(noise variances).
    Only the unmasked support points enter. Returns mean and std [T, Q] (float64).
    """
    B, M = family.num_basis, family.metadata_dim
    means, stds = [], []
    for t in range(batch.num_tasks):
        keep = batch.support_mask[t]
        Fs = family.features(batch.x_support[t, keep].double())  # [K', B]
        Fq = family.features(batch.x_query[t].double())  # [Q, B]
        Am = torch.eye(B, dtype=torch.float64)[:M]  # m = w[:M] + noise
        A_obs = torch.cat([Am, Fs])  # [M + K', B]
        obs = torch.cat([batch.metadata[t].double(), batch.y_support[t, keep, 0].double()])
        obs_var = torch.cat([torch.full((M,), family.metadata_noise ** 2),
                             torch.full((int(keep.sum()),), family.noise_std ** 2)]).double()
        s2 = family.weight_std ** 2
        cov_oo = s2 * A_obs @ A_obs.T + torch.diag(obs_var)
        cov_qo = s2 * Fq @ A_obs.T
        cov_qq = s2 * Fq @ Fq.T + family.noise_std ** 2 * torch.eye(len(Fq), dtype=torch.float64)
        gain = torch.linalg.solve(cov_oo, cov_qo.T).T  # [Q, M + K']
        means.append(gain @ obs)
        stds.append(torch.diagonal(cov_qq - gain @ cov_qo.T).sqrt())
    return torch.stack(means), torch.stack(stds)


@pytest.mark.parametrize("num_observed", [0, 2])
def test_basis_posterior_predictive_equals_gaussian_conditioning(num_observed):
    """Precision form (fast) vs covariance-form conditioning (slow): same Gaussian.

    Both are exact; they differ by float32 round-off in the fast path (matrices of size
    B = 5 with condition number < 1e4 here), hence rtol/atol 1e-4. Includes K = 0 and a
    ragged mask (masked support points must not count).
    """
    family = BasisFunctionTasks(num_basis=5, num_observed_weights=num_observed)
    batch = family.sample(4, 6, 8, generator=torch.Generator().manual_seed(5))
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[1, 3:] = False
    mask[2, :] = False
    ragged = TaskBatch(batch.x_support, batch.y_support + 100.0 * (~mask)[..., None],  # garbage in masked slots
                       batch.x_query, batch.y_query, batch.metadata, mask, batch.query_mask, batch.params)
    for b in (ragged, batch.with_support_size(0)):
        mean, std = family.posterior_predictive(b)
        ref_mean, ref_std = _conditioned_predictive(family, b)
        assert mean.shape == std.shape == (4, 8, 1)
        torch.testing.assert_close(mean[..., 0].double(), ref_mean, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(std[..., 0].double(), ref_std, rtol=1e-4, atol=1e-4)


def test_basis_posterior_predictive_matches_monte_carlo_over_weight_prior():
    """Brute force: draw w from the prior, weight by p(m | w) p(Y_s | w), average N(y_q; f_w(x_q), σ²).

    One task, K = 2 support points and larger noise (0.5) so the prior is a usable
    proposal. The self-normalized estimate of the predictive density has a delta-method
    standard error se = sqrt(Σ w̃_s² (p_s - p̂)²); we require |p̂ - p_exact| < 5 se per query
    point (seeded; the SNIS bias is O(1/ESS), far below se), and that se itself is small
    (< 3% of p̂), so the comparison has power.
    """
    family = BasisFunctionTasks(num_basis=4, num_observed_weights=1, noise_std=0.5, metadata_noise=0.5)
    batch = family.sample(1, 2, 5, generator=torch.Generator().manual_seed(7))
    mean, std = family.posterior_predictive(batch)
    exact = torch.distributions.Normal(mean[0, :, 0].double(), std[0, :, 0].double()).log_prob(
        batch.y_query[0, :, 0].double()).exp()  # [Q]

    g = torch.Generator().manual_seed(8)
    S = 200_000
    w = family.weight_std * torch.randn(S, family.num_basis, generator=g, dtype=torch.float64)
    Fs = family.features(batch.x_support[0].double())  # [K, B]
    Fq = family.features(batch.x_query[0].double())  # [Q, B]
    Normal = torch.distributions.Normal
    log_w = (Normal(w[:, :1], family.metadata_noise).log_prob(batch.metadata[0].double()).sum(-1)
             + Normal(w @ Fs.T, family.noise_std).log_prob(batch.y_support[0, :, 0].double()).sum(-1))
    weights = (log_w - log_w.logsumexp(0)).exp()  # [S]
    p_s = Normal(w @ Fq.T, family.noise_std).log_prob(batch.y_query[0, :, 0].double()).exp()  # [S, Q]
    p_hat = weights @ p_s
    se = ((weights[:, None] ** 2) * (p_s - p_hat) ** 2).sum(0).sqrt()
    assert (se < 0.03 * p_hat).all(), (se, p_hat)
    assert ((p_hat - exact).abs() < 5 * se).all(), (p_hat, exact, se)


# -- split streams ------------------------------------------------------------------------------

SYNTHETIC = [SinusoidTasks(), BasisFunctionTasks(num_basis=4, num_observed_weights=2)]


def test_split_generator_gives_each_split_its_own_seed():
    """For any caller seed, split i's stream has a seed ≡ i (mod 3) below 2^32: torch's CPU
    generator keeps only a seed's low 32 bits, so a larger seed could alias another split's."""
    for seed in range(300):
        seeds = [split_generator(split, torch.Generator().manual_seed(seed)).initial_seed()
                 for split in SPLITS]
        assert all(s < 2 ** 32 and s % 3 == i for i, s in enumerate(seeds)), (seed, seeds)
    with pytest.raises(ValueError, match="split must be one of"):
        split_generator("training")


@pytest.mark.parametrize("family", SYNTHETIC, ids=["sinusoid", "basis"])
def test_splits_never_share_a_task_whatever_the_seeds(family):
    """Train tasks drawn with caller seed s and val/test tasks drawn with s' (every pair on a
    grid, s = s' included) never coincide: a task is the tuple of all its parameters. The
    same split and seed give the same tasks again, so the comparison can detect sharing."""
    def tasks(split, seed):
        batch = family.sample(16, 2, 3, split=split, generator=torch.Generator().manual_seed(seed))
        params = torch.cat([v.reshape(batch.num_tasks, -1) for v in batch.params.values()], 1)
        return {tuple(row) for row in params.tolist()}

    seeds = range(12)
    drawn = {(split, seed): tasks(split, seed) for split in SPLITS for seed in seeds}
    assert drawn[("test", 3)] == tasks("test", 3)
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            for s in seeds:
                for s2 in seeds:
                    assert drawn[(a, s)].isdisjoint(drawn[(b, s2)]), (a, s, b, s2)


def test_sample_takes_one_draw_from_the_caller_and_the_rest_from_the_split_stream():
    """The caller's generator advances by exactly one draw (the split stream's seed); the
    task parameters are the family's first draws from split_generator(split, caller)."""
    family = SinusoidTasks()
    caller, expected = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    batch = family.sample(5, 2, 3, split="val", generator=caller)
    stream = split_generator("val", expected)
    assert torch.equal(torch.rand(3, generator=caller), torch.rand(3, generator=expected))
    low, high = family.amplitude_range
    torch.testing.assert_close(batch.params["amplitude"], low + (high - low) * torch.rand(5, generator=stream),
                               rtol=0, atol=0)


def test_basis_nan_metadata_is_exactly_an_unobserved_weight():
    """m = (m1, NaN) predicts as a family observing only w1, m = (NaN, NaN) as one observing
    no weight: the same Gaussian conditioning with fewer measurements (float32, 1e-5)."""
    families = {M: BasisFunctionTasks(num_basis=5, num_observed_weights=M) for M in (0, 1, 2)}
    batch = families[2].sample(4, 3, 6, generator=torch.Generator().manual_seed(2))
    nan = float("nan")
    for keep in (0, 1):
        metadata = batch.metadata.clone()
        metadata[:, keep:] = nan
        mean, std = families[2].posterior_predictive(batch.with_metadata(metadata))
        fewer = TaskBatch(batch.x_support, batch.y_support, batch.x_query, batch.y_query,
                          batch.metadata[:, :keep])
        ref_mean, ref_std = families[keep].posterior_predictive(fewer)
        torch.testing.assert_close(mean, ref_mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(std, ref_std, rtol=1e-5, atol=1e-5)
    observed, _ = families[2].posterior_predictive(batch)
    assert not torch.allclose(observed, ref_mean, atol=1e-2)  # the metadata do matter here
