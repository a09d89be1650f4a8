"""The mixture guide q(φ2 | X, Y) = Σ_j π_j N(μ_j, Σ_j) (``AmortizedGuide(components=J)``, docs/model.md).

- ``GaussianMixture.log_prob`` against a per-component loop (the slow reference), its draws
  against the mixture's mean and component frequencies;
- the set encoder keeps its properties: permutation invariance, masked points ignored, the
  ragged batch equals a per-task loop, N = 0 gives the aggregation prior's weights;
- the bound takes the expectation per component (weights π_j / S), and its mean agrees with
  Pyro's ``Trace_ELBO`` (a score-function estimate for the mixture site) within Monte Carlo error;
- the model trains and predicts with it, and the plate diagram still renders from the Pyro guide.
"""

import math

import pyro
import pytest
import torch

from hierarchical_meta import HierarchicalMetaModel, ModelConfig, bound
from hierarchical_meta.guide import AmortizedGuide, GaussianMixture
from hierarchical_meta.model import GenerativeModel

T, N, D, J = 3, 6, 2, 3
TOL = dict(rtol=1e-5, atol=1e-5)  # float32 sums of <= 20 terms


def _guide(seed=0, sees_metadata=True):
    torch.manual_seed(seed)
    return AmortizedGuide(1, 1, 2, D, hidden=8, layers=1, sees_metadata=sees_metadata, components=J)


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, N, 1, generator=g), torch.randn(T, N, 1, generator=g), torch.randn(T, 2, generator=g)


def test_log_prob_is_the_weighted_sum_of_component_densities():
    g = torch.Generator().manual_seed(0)
    logits, loc = torch.randn(T, 1, J, generator=g), torch.randn(T, 1, J, D, generator=g)
    A = torch.randn(T, 1, J, D, D, generator=g)
    scale_tril = torch.linalg.cholesky(A @ A.mT + 0.5 * torch.eye(D))
    q = GaussianMixture(logits, loc, scale_tril)
    assert q.batch_shape == (T, 1) and q.event_shape == (D,)
    value = torch.randn(5, T, 1, D, generator=g)
    expected = torch.zeros(5, T, 1)
    for j in range(J):  # the slow reference: one Gaussian at a time
        component = torch.distributions.MultivariateNormal(loc[..., j, :], scale_tril=scale_tril[..., j, :, :])
        expected += logits.softmax(-1)[..., j] * component.log_prob(value).exp()
    torch.testing.assert_close(q.log_prob(value), expected.log(), **TOL)


def test_draws_follow_the_mixture():
    """20 000 draws: component frequencies within 4.5 binomial standard errors (< 0.016 here) of π,
    and the sample mean within 4.5 standard errors of Σ_j π_j μ_j."""
    torch.manual_seed(1)
    logits = torch.tensor([[[0.0, 1.0, -1.0]]])
    loc = torch.tensor([[[[-5.0, 0.0], [5.0, 0.0], [0.0, 5.0]]]])
    q = GaussianMixture(logits, loc, 0.1 * torch.eye(D).expand(1, 1, J, D, D))
    draws = q.sample((20000,))  # [S, 1, 1, D]
    assert draws.shape == (20000, 1, 1, D)
    pi = logits.softmax(-1)[0, 0]
    nearest = (draws[:, 0, 0, None, :] - loc[0, 0]).norm(dim=-1).argmin(-1)
    frequency = torch.bincount(nearest, minlength=J) / 20000.0
    assert ((frequency - pi).abs() < 4.5 * (pi * (1 - pi) / 20000).sqrt()).all(), (frequency, pi)
    mean = (pi[:, None] * loc[0, 0]).sum(0)
    sd = draws[:, 0, 0].std(0) / math.sqrt(20000)
    assert ((draws[:, 0, 0].mean(0) - mean).abs() < 4.5 * sd).all()


def test_mixture_set_encoder_is_permutation_invariant_and_masks_points():
    guide = _guide()
    x, y, m = _data()
    q = guide.phi2_posterior(x, y, m)
    assert isinstance(q, GaussianMixture)
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(2))
    q_perm = guide.phi2_posterior(x[:, perm], y[:, perm], m)
    value = torch.randn(4, T, 1, D)
    torch.testing.assert_close(q_perm.log_prob(value), q.log_prob(value), **TOL)
    sizes = torch.tensor([6, 2, 0])
    mask = torch.arange(N) < sizes[:, None]
    ragged = guide.phi2_posterior(x, torch.where(mask[..., None], y, 9.0), m, mask)
    for t in range(T):  # the slow reference: each task alone, unpadded
        alone = guide.phi2_posterior(x[t:t + 1, :sizes[t]], y[t:t + 1, :sizes[t]], m[t:t + 1])
        torch.testing.assert_close(ragged.log_weights[t], alone.log_weights[0], **TOL)
        torch.testing.assert_close(ragged.log_prob(value)[:, t], alone.log_prob(value[:, t:t + 1])[:, 0], **TOL)
    # N = 0: the weights are the aggregation prior's ℓ0(m) alone
    prior = guide.aggregation_prior(torch.cat([m, torch.zeros_like(m)], -1))[:, J * 2 * D:]
    torch.testing.assert_close(ragged.log_weights[2, 0], prior[2].log_softmax(-1), **TOL)
    with pytest.raises(ValueError, match="components"):
        AmortizedGuide(components=0)


@pytest.mark.usefixtures("float64")
def test_bound_takes_the_expectation_per_component_and_agrees_with_pyro():
    """The bound with S draws per component vs Pyro's Trace_ELBO (score function for the mixture
    site), both averaged over R repeats: the means agree within 4 standard errors of their
    difference; the per-component weights sum to one per task."""
    torch.manual_seed(0)
    model = GenerativeModel(1, 1, 2, D, hidden=8, layers=1)
    guide = _guide()
    x, y, m = _data()
    mask = torch.arange(N) < torch.tensor([[6], [2], [0]])
    with torch.no_grad():
        torch.manual_seed(3)
        t = bound._joint_terms(model, guide, x, y, m, mask, 4)
        assert t["phi2"].shape == (4 * J, T, 1, D)
        torch.testing.assert_close(t["weight"].sum(0), torch.ones(T), rtol=1e-12, atol=1e-12)
        R, S = 40, 50
        ours, theirs = [], []
        elbo = pyro.infer.Trace_ELBO(num_particles=S, vectorize_particles=True, max_plate_nesting=2)
        for r in range(R):
            torch.manual_seed(100 + r)
            ours.append(float(bound.elbo(model, guide, x, y, m, mask, S, analytic_phi1_kl=False)))
            theirs.append(-float(elbo.loss(model, guide, x, m, y, mask)))
    ours, theirs = torch.tensor(ours), torch.tensor(theirs)
    se = (ours.var() / R + theirs.var() / R).sqrt()
    assert abs(ours.mean() - theirs.mean()) < 4 * se, (ours.mean(), theirs.mean(), se)
    assert se < 1.0  # the check has teeth: a missing term is O(1) per task


def test_mixture_model_trains_predicts_and_renders(tmp_path):
    from hierarchical_meta import SinusoidTasks, TrainConfig, fit
    from hierarchical_meta.render import render_diagram

    torch.manual_seed(0)
    family = SinusoidTasks()
    meta = HierarchicalMetaModel(ModelConfig(hidden=8, layers=1, guide_components=2))
    history = fit(meta, family, TrainConfig(steps=3, batch_tasks=4, max_points=5, eval_every=3, eval_tasks=4),
                  progress=False)
    assert all(math.isfinite(loss) for loss in history["loss"])
    batch = family.sample(2, 3, 4, split="test", generator=torch.Generator().manual_seed(0))
    predictive, log_evidence = meta.predict(batch, num_samples=64)
    assert predictive.mean.shape == (2, 64, 4, 1) and torch.isfinite(log_evidence).all()
    path = tmp_path / "diagram.svg"
    render_diagram(path=str(path), meta_model=meta, guide=True)
    assert path.exists()
