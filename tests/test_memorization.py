"""The memorization probe against closed forms and its bad-input errors.

The study built on the probe (scenario families and their oracles, trained learners, the
driver) is tested in tests/test_memorization_study.py.
"""

import math

import pytest
import torch

from examples.memorization import DiseaseTasks, PooledNetwork
from hierarchical_meta.memorization import BayesianLinearRegression, derangement, probe, probe_batch, true_mean
from hierarchical_meta.predictive import MixturePredictive
from hierarchical_meta.tasks.base import TaskFamily
from hierarchical_meta.tasks.basis import BasisFunctionTasks


def _basis_batch(T, seed=0, **kwargs):
    family = BasisFunctionTasks(num_observed_weights=0, **kwargs)
    batch = family.sample(T, 10, 10, generator=torch.Generator().manual_seed(seed))
    return family, batch


def _constant_regression(x_support, y_support, x_query, support_mask=None):
    T, Q = x_query.shape[:2]
    return torch.distributions.Normal(torch.full((T, Q, 1), 0.3), torch.ones(T, Q, 1))


# ---------------------------------------------------------------- support-ignoring predictor

def test_support_ignoring_regression_scores_zero_gain_and_follow_exactly():
    family, batch = _basis_batch(16)
    memorizer = PooledNetwork(x_dim=1)  # a function of x_query only
    for predict in (_constant_regression, memorizer):
        r = probe_batch(predict, batch, family=family, generator=torch.Generator().manual_seed(1))
        assert r.gain_vs_swapped == 0.0 and r.gain_vs_none == 0.0 and r.follow == 0.0
        assert r.loss == r.loss_swapped == r.loss_none


def test_support_ignoring_classification_scores_zero_gain_and_follow_exactly():
    family = DiseaseTasks(seed=0)
    batch = family.sample(16, 10, 10, generator=torch.Generator().manual_seed(0))
    r = probe_batch(PooledNetwork(family.x_dim, num_classes=2), batch, num_classes=2,
                    generator=torch.Generator().manual_seed(1))
    assert r.gain_vs_swapped == 0.0 and r.gain_vs_none == 0.0 and r.follow == 0.0
    assert r.chance_metric == 0.5 and r.chance_loss == pytest.approx(math.log(2))


# ---------------------------------------------------------------- Bayesian linear regression

def test_blr_matches_the_basis_family_posterior_predictive():
    """The oracle's own Bayesian linear regression equals the family's (slow) reference."""
    family, batch = _basis_batch(8)
    mean, std = family.posterior_predictive(batch)
    blr = BayesianLinearRegression(family.features, family.weight_std, family.noise_std)
    dist = blr(batch.x_support, batch.y_support, batch.x_query)
    torch.testing.assert_close(dist.mean, mean, rtol=1e-4, atol=1e-5)  # float32 inverse of a 5x5
    torch.testing.assert_close(dist.stddev, std, rtol=1e-4, atol=1e-5)


def test_blr_gain_and_follow_match_their_closed_forms():
    """Given the inputs x, Bayesian linear regression's expected probe scores are closed form.

    With s0² the prior predictive variance, s_t² the posterior predictive variance from task
    t's support inputs (both at t's query inputs) and s = π(t) the swapped-in task:
      E[gain_vs_none]    = 0.5 log(s0² / s_t²)                      (y | D_t ~ N(μ_t, s_t²))
      E[NLL swapped]     = 0.5 log(2π s_s²) + (2 s0² − s_s²) / (2 s_s²)   (Var μ_s = s0² − s_s²)
      E[Δŷ·Δf] = σ_w² tr(F_q (H_s + H_t) F_qᵀ),  E[|Δf|²] = 2 σ_w² tr(F_q F_qᵀ),
    with H = Λ⁻¹ F_sᵀF_s/σ² the posterior mean's shrinkage of the weights.
    Tolerance: 4 of the probe's own standard errors across tasks (Monte Carlo over w and
    noise; seeded), plus 1e-3 for float32 round-off.
    """
    T, D = 2000, 3
    family, batch = _basis_batch(T, seed=3)
    blr = BayesianLinearRegression(family.features, family.weight_std, family.noise_std)
    r = probe_batch(blr, batch, family=family, num_derangements=D, generator=torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    perms = [derangement(T, gen) for _ in range(D)]  # the same draws as inside the probe

    sw2, sn2 = family.weight_std ** 2, family.noise_std ** 2
    Fq = family.features(batch.x_query)  # [T, Q, B]
    s0 = sw2 * (Fq ** 2).sum(-1) + sn2  # [T, Q]

    def post_var(support_x):  # posterior predictive variance at t's query points [T, Q]
        _, cov = blr.weight_posterior(support_x, torch.zeros_like(support_x))
        return ((Fq @ cov) * Fq).sum(-1) + sn2

    def shrink_trace(support_x):  # tr(F_q H F_qᵀ) per task [T]
        Fs = family.features(support_x)
        _, cov = blr.weight_posterior(support_x, torch.zeros_like(support_x))
        H = cov @ Fs.transpose(1, 2) @ Fs / sn2
        return ((Fq @ H) * Fq).sum((-1, -2))

    st = post_var(batch.x_support)
    expected_none = (0.5 * (s0 / st).log()).mean()
    sw_nll, num, own_trace = [], 0.0, shrink_trace(batch.x_support)
    for perm in perms:
        ss = post_var(batch.x_support[perm])
        sw_nll.append((0.5 * (2 * math.pi * ss).log() + (2 * s0 - ss) / (2 * ss)).mean())
        num = num + (shrink_trace(batch.x_support[perm]) + own_trace).sum()
    own_nll = (0.5 * (2 * math.pi * st).log() + 0.5).mean()
    expected_swapped = torch.stack(sw_nll).mean() - own_nll
    expected_follow = num / (D * 2 * (Fq ** 2).sum())

    assert r.gain_vs_none == pytest.approx(float(expected_none), abs=4 * r.gain_vs_none_se + 1e-3)
    assert r.gain_vs_swapped == pytest.approx(float(expected_swapped), abs=4 * r.gain_vs_swapped_se + 1e-3)
    assert r.follow == pytest.approx(float(expected_follow), abs=4 * r.follow_se + 1e-3)
    assert 0.9 < r.follow < 1.0  # near one: shrinkage towards the prior keeps it below 1


# ---------------------------------------------------------------- convex mixtures

def _lookup(batch, key):
    """Index of the task whose tensor ``key`` ([T, K, D]) equals the given one, per task."""
    ref = getattr(batch, key)

    def find(t):  # t [T, K, D] -> [T]
        return (t[:, None] == ref[None]).flatten(2).all(-1).float().argmax(-1)

    return find


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.75, 1.0])
def test_mixture_of_oracle_and_memorizer_regression_follows_by_the_mixing_weight(alpha):
    """Oracle: reads the task off its support and predicts its true function (follow 1);
    memorizer: reads the task off the query inputs (follow 0). Their mixture's predictive
    mean is linear in alpha, so follow = alpha up to float32 round-off (tolerance 1e-5)."""
    family, batch = _basis_batch(12, seed=1)
    by_support, by_query = _lookup(batch, "x_support"), _lookup(batch, "x_query")

    def mixture(x_support, y_support, x_query, support_mask=None):
        T, Q = x_query.shape[:2]
        params = batch.params
        memo = true_mean(family, {"weights": params["weights"][by_query(x_query)]}, x_query)
        if x_support.shape[1] == 0:
            oracle = memo.clone()
        else:
            oracle = true_mean(family, {"weights": params["weights"][by_support(x_support)]}, x_query)
        logw = torch.tensor([math.log(alpha + 1e-30), math.log(1 - alpha + 1e-30)]).expand(T, 2)
        mean = torch.stack([oracle, memo], 1)  # [T, 2, Q, 1]
        return MixturePredictive(logw, mean, torch.full_like(mean, 0.1))

    r = probe_batch(mixture, batch, family=family, generator=torch.Generator().manual_seed(2))
    assert r.follow == pytest.approx(alpha, abs=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0])
def test_mixture_of_oracle_and_memorizer_classification_follows_by_the_mixing_weight(alpha):
    """Classification: the oracle predicts the labelling its support implies ((1 − ε) one-hot
    + ε uniform, so follow 1 − ε), the memorizer the query task's original labels. The
    mixture of probabilities gives follow = alpha (1 − ε), exactly up to round-off (1e-5)."""
    eps = 0.1
    family = DiseaseTasks(seed=0)
    batch = family.sample(12, 10, 10, generator=torch.Generator().manual_seed(0))
    by_support, by_query = _lookup(batch, "x_support"), _lookup(batch, "x_query")

    def smooth(labels):
        return (1 - eps) * torch.nn.functional.one_hot(labels, 2).float() + eps / 2

    def predict(x_support, y_support, x_query, support_mask=None):
        q = by_query(x_query)
        truth = batch.y_query[q][..., 0].long()  # [T, Q]
        memo = smooth(truth)
        if x_support.shape[1] == 0:
            oracle = memo
        else:
            s = by_support(x_support)
            flipped = (y_support[..., 0] != batch.y_support[s][..., 0]).any(-1).long()  # [T]
            oracle = smooth(truth ^ flipped[:, None])
        return torch.distributions.Categorical(probs=alpha * oracle + (1 - alpha) * memo)

    r = probe_batch(predict, batch, num_classes=2, generator=torch.Generator().manual_seed(2))
    assert r.follow == pytest.approx(alpha * (1 - eps), abs=1e-5)


# ---------------------------------------------------------------- bad input

def test_wrong_shape_or_type_from_predict_raises():
    family, _ = _basis_batch(2)

    def wrong_shape(xs, ys, xq):
        return torch.distributions.Normal(torch.zeros(xq.shape[:2]), 1.0)  # [T, Q], not [T, Q, 1]

    def wrong_type(xs, ys, xq):
        return torch.zeros(xq.shape[:2] + (1,))

    def categorical(xs, ys, xq):
        return torch.distributions.Categorical(logits=torch.zeros(xq.shape[:2] + (2,)))

    for bad, match in [(wrong_shape, "expected"), (wrong_type, "Tensor"), (categorical, "Categorical")]:
        with pytest.raises(ValueError, match=match):
            probe(bad, family, num_support=3, num_query=3, num_tasks=4)
    disease = DiseaseTasks()
    with pytest.raises(ValueError, match="Categorical"):
        probe(_constant_regression, disease, num_support=4, num_query=4, num_tasks=4)

    def three_classes(xs, ys, xq):  # C = 3 on a binary family
        return torch.distributions.Categorical(logits=torch.zeros(xq.shape[:2] + (3,)))

    def bernoulli_pairs(xs, ys, xq):  # probs [T, Q, 2]: not one probability per point
        return torch.distributions.Bernoulli(probs=torch.full(xq.shape[:2] + (2,), 0.5))

    def mixture_wrong_q(xs, ys, xq):  # a MixturePredictive with one query point too few
        mean = torch.zeros(xq.shape[0], 1, xq.shape[1] - 1, 1)
        return MixturePredictive(torch.zeros(xq.shape[0], 1), mean, torch.ones_like(mean))

    for bad, fam in [(three_classes, disease), (bernoulli_pairs, disease), (mixture_wrong_q, family)]:
        with pytest.raises(ValueError, match="expected"):
            probe(bad, fam, num_support=4, num_query=4, num_tasks=4)
    with pytest.raises(ValueError, match="splits must name"):
        probe(_constant_regression, family, num_support=3, num_query=3, num_tasks=4, splits={})


def test_family_without_held_out_tasks_raises():
    class NoTestSampler(BasisFunctionTasks):
        def sample(self, *args, split="train", **kwargs):
            if split == "test":
                raise NotImplementedError("this family has no held-out tasks")
            return super().sample(*args, split=split, **kwargs)

    with pytest.raises(ValueError, match="held-out"):
        probe(_constant_regression, NoTestSampler(), num_support=3, num_query=3, num_tasks=4)


def test_regression_follow_needs_a_true_mean():
    class Opaque(TaskFamily):
        def sample(self, num_tasks, num_support, num_query, *, split="train", generator=None):
            return BasisFunctionTasks().sample(num_tasks, num_support, num_query, generator=generator)

    with pytest.raises(ValueError, match="true_mean"):
        probe(_constant_regression, Opaque(), num_support=3, num_query=3, num_tasks=4)
    with pytest.raises(ValueError, match="2 tasks"):
        derangement(1)
