"""The heteroscedastic likelihood (``ModelConfig(noise="heteroscedastic")``, docs/model.md):
p(y | φ2, x) = N(f(x, φ2), s(x, φ2)²) with s = softplus(⟨h_s(x), φ2⟩ + c_s(x)) + 10⁻³.

- shapes broadcast over particles; log_prob against a per-particle, per-point loop (the slow
  reference); at initialization s = 0.3 + 10⁻³ everywhere, the constant model's starting noise;
- s varies with x and with φ2 once the noise network's last layer is not zero;
- the predictive mixes components with each draw's own s; bad combinations are refused;
- it trains through both SVI paths (Pyro's trace and the fast bound agree on the same draws).
"""

import math

import pyro
import pytest
import torch

from hierarchical_meta import HierarchicalMetaModel, ModelConfig, SinusoidTasks, bound
from hierarchical_meta.guide import AmortizedGuide
from hierarchical_meta.model import GenerativeModel
from hierarchical_meta.predict import posterior_predictive

T, N, D, S, DY = 3, 5, 2, 4, 2
TOL = dict(rtol=1e-5, atol=1e-5)  # float32


def _model(seed=0, perturb=True, decoder="features"):
    torch.manual_seed(seed)
    model = GenerativeModel(1, DY, 2, D, hidden=8, layers=1, decoder=decoder, noise="heteroscedastic")
    if perturb:  # move the last layer off its zero start so that s depends on x and φ2
        with torch.no_grad():
            model.noise_features[-1].weight.normal_(0, 0.5)
    return model


def test_scale_starts_at_the_constant_models_noise():
    model = _model(perturb=False)
    constant = GenerativeModel(1, DY, 2, D, hidden=8, layers=1)
    phi2, x = torch.randn(S, T, 1, D), torch.randn(T, N, 1)
    s = model.scale(phi2, x)
    assert s.shape == (S, T, N, DY)
    torch.testing.assert_close(s, constant.noise_std().expand(S, T, N, DY), rtol=0, atol=1e-7)
    assert abs(float(s[0, 0, 0, 0].detach()) - (0.3 + 1e-3)) < 1e-6
    with pytest.raises(ValueError, match="scale"):
        model.noise_std()


@pytest.mark.parametrize("decoder", ["features", "mlp"])
def test_log_prob_against_a_per_point_loop(decoder):
    model = _model(decoder=decoder)
    phi2, x, y = torch.randn(S, T, 1, D), torch.randn(T, N, 1), torch.randn(T, N, DY)
    log_prob = model.likelihood(phi2, x).log_prob(y)
    assert log_prob.shape == (S, T, N)
    h, c = model.noise_features(x).split([DY * D, DY], -1)
    for s in range(S):  # the slow reference
        for t in range(T):
            for n in range(N):
                mean = model.decode(phi2[s, t:t + 1], x[t:t + 1, n:n + 1])[0, 0]
                raw = h[t, n].view(DY, D) @ phi2[s, t, 0] + c[t, n]
                scale = torch.nn.functional.softplus(raw) + 1e-3
                expected = torch.distributions.Normal(mean, scale).log_prob(y[t, n]).sum()
                torch.testing.assert_close(log_prob[s, t, n], expected, **TOL)
    s = model.scale(phi2, x).detach()
    assert s[..., 0].std() > 1e-2  # varies with x and φ2 (not a constant in disguise)
    assert (s[0] - s[1]).abs().max() > 1e-3  # depends on φ2


def test_predictive_uses_each_draws_own_scale():
    torch.manual_seed(0)
    model, guide = _model(), AmortizedGuide(1, DY, 2, D, hidden=8, layers=1)
    x, y, m = torch.randn(T, N, 1), torch.randn(T, N, DY), torch.randn(T, 2)
    mask = torch.ones(T, N, dtype=torch.bool)
    xq = torch.randn(T, 7, 1)
    torch.manual_seed(1)
    predictive, _ = posterior_predictive(model, guide, x, y, m, mask, xq, num_samples=32)
    assert predictive.std.shape == (T, 32, 7, DY)
    assert predictive.std.std() > 1e-2
    # the sampler draws from the guide first: the same seed gives the same φ2_s
    torch.manual_seed(1)
    with torch.no_grad():
        phi2 = guide.phi2_posterior(x, y, m, mask).sample((32 - round(0.3 * 32),))
        torch.testing.assert_close(predictive.std[:, :phi2.shape[0]], model.scale(phi2, xq).transpose(0, 1), **TOL)


def test_bad_combinations_are_refused():
    with pytest.raises(ValueError, match="noise must be one of"):
        ModelConfig(noise="poisson")
    with pytest.raises(ValueError, match="heteroscedastic"):
        ModelConfig(noise="heteroscedastic", noise_std=0.1)
    with pytest.raises(ValueError, match="heteroscedastic"):
        ModelConfig(noise="heteroscedastic", likelihood="categorical", num_classes=3)


@pytest.mark.usefixtures("float64")
def test_fast_bound_equals_trace_elbo_with_heteroscedastic_noise():
    model = _model()
    guide = AmortizedGuide(1, DY, 2, D, hidden=8, layers=1)
    x, y, m = torch.randn(T, N, 1), torch.randn(T, N, DY), torch.randn(T, 2)
    mask = torch.arange(N) < torch.tensor([[5], [2], [0]])
    torch.manual_seed(3)
    loss = pyro.infer.Trace_ELBO(num_particles=S, vectorize_particles=True, max_plate_nesting=2
                                 ).differentiable_loss(model, guide, x, m, y, mask)
    torch.manual_seed(3)
    value = bound.elbo(model, guide, x, y, m, mask, S, analytic_phi1_kl=False)
    torch.testing.assert_close(value, -loss, rtol=1e-10, atol=1e-10)
    params = list(model.noise_features.parameters())
    for ours, theirs in zip(torch.autograd.grad(-value, params), torch.autograd.grad(loss, params), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


def test_heteroscedastic_model_fits_sinusoid_tasks():
    from hierarchical_meta import TrainConfig, fit

    torch.manual_seed(0)
    meta = HierarchicalMetaModel(ModelConfig(hidden=8, layers=1, noise="heteroscedastic"))
    history = fit(meta, SinusoidTasks(), TrainConfig(steps=3, batch_tasks=4, max_points=5, eval_every=3,
                                                     eval_tasks=4), progress=False)
    assert all(math.isfinite(loss) for loss in history["loss"])


def test_constant_scale_broadcasts_like_the_heteroscedastic_one():
    constant = GenerativeModel(1, DY, 2, D, hidden=8, layers=1)
    phi2, x = torch.randn(S, T, 1, D), torch.randn(T, N, 1)
    assert constant.scale(phi2, x).shape == _model().scale(phi2, x).shape == (S, T, N, DY)
    assert constant.scale(phi2[0], x).shape == (T, N, DY)
