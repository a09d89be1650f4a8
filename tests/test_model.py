"""The generative model and the amortized guide: shapes, vectorized particles, and the
set encoder's properties (docs/model.md).

- every prior x decoder broadcasts over an extra leading particle dim, and Pyro's
  vectorized ``Trace_ELBO`` runs on it;
- q(φ2 | X, Y) is permutation invariant, returns its aggregation prior at N = 0, ignores
  masked (padded) points, equals a per-task loop on unpadded data (the slow reference),
  and follows the closed form of precision-weighted aggregation, so its std shrinks as N grows;
- NaN metadata is the "missing" path: fed as 0 with a missing flag, finite everywhere.

Networks are tiny (hidden 8) and seeded; float32 round-off in sums of <= 20 terms is
below 1e-5, which is the tolerance of the exact-identity checks.
"""

import itertools

import pyro
import pytest
import torch

from hierarchical_meta.guide import AmortizedGuide
from hierarchical_meta.meta_model import HierarchicalMetaModel, ModelConfig
from hierarchical_meta.model import DECODERS, PRIORS, GenerativeModel
from hierarchical_meta.networks import metadata_features, positive

T, N, D, DX, DY, DM, S = 3, 5, 2, 1, 1, 2, 4
TOL = dict(rtol=1e-5, atol=1e-5)


def _data(seed=0, T=T, N=N, dx=DX, dy=DY, dm=DM):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(T, N, dx, generator=g), torch.randn(T, N, dy, generator=g),
            torch.randn(T, dm, generator=g))


def _guide(sees_metadata=False, seed=0, **kw):
    torch.manual_seed(seed)
    args = dict(x_dim=DX, y_dim=DY, metadata_dim=DM, latent_dim=D, hidden=8, layers=1,
                sees_metadata=sees_metadata)
    args.update(kw)
    return AmortizedGuide(**args)


# -- model shapes ------------------------------------------------------------------------------

def latent_dim(decoder, dy):
    """D, or what the polynomial decoder needs: a coefficient of each of its 3 terms (degree 2) per output."""
    return max(D, 3 * dy) if decoder == "polynomial" else D


@pytest.mark.parametrize("prior, decoder", list(itertools.product(PRIORS, DECODERS)))
@pytest.mark.parametrize("dy", [1, 2])
def test_model_distributions_broadcast_over_particles(prior, decoder, dy):
    torch.manual_seed(0)
    D = latent_dim(decoder, dy)
    model = GenerativeModel(x_dim=DX, y_dim=dy, metadata_dim=DM, latent_dim=D, hidden=8, layers=1,
                            prior=prior, decoder=decoder)
    x, y, m = _data(dy=dy)
    phi1 = model.phi1_prior((S, T, 1)).sample()
    assert phi1.shape == (S, T, 1, D)
    p2 = model.phi2_prior(phi1, m[:, None, :])
    assert p2.batch_shape == (S, T, 1) and p2.event_shape == (D,)
    phi2 = p2.sample()
    lik = model.likelihood(phi2, x)
    assert lik.batch_shape == (S, T, N) and lik.event_shape == (dy,)
    assert lik.log_prob(y).shape == (S, T, N)
    # vectorized == one particle at a time (the slow reference)
    for s in range(S):
        torch.testing.assert_close(model.predictive_mean(phi2[s], x), lik.mean[s], **TOL)
        torch.testing.assert_close(model.phi2_prior(phi1[s], m[:, None, :]).log_prob(phi2[s]),
                                   p2.log_prob(phi2)[s], **TOL)


@pytest.mark.parametrize("prior, decoder", list(itertools.product(PRIORS, DECODERS)))
@pytest.mark.parametrize("sees_metadata", [False, True])
def test_pyro_vectorized_elbo_runs_for_every_prior_and_decoder(prior, decoder, sees_metadata):
    """Trace_ELBO with vectorized particles (an extra leading dim) and a ragged mask."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    D = latent_dim(decoder, DY)
    meta = HierarchicalMetaModel(ModelConfig(latent_dim=D, hidden=8, layers=1, prior=prior, decoder=decoder,
                                             guide_sees_metadata=sees_metadata))
    x, y, m = _data()
    mask = torch.arange(N) < torch.tensor([[0], [2], [N]])  # N = 0, 2, 5 points
    elbo = pyro.infer.Trace_ELBO(num_particles=S, vectorize_particles=True, max_plate_nesting=2)
    loss = elbo.differentiable_loss(meta.model, meta.guide, x, m, y, mask, latent_scale=0.5)
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in meta.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # the traced sites have the documented shapes under the particle plate
    with pyro.plate("particles", S, dim=-3):
        guide_trace = pyro.poutine.trace(meta.guide).get_trace(x, m, y, mask)
        model_trace = pyro.poutine.trace(pyro.poutine.replay(meta.model, trace=guide_trace)).get_trace(x, m, y, mask)
    assert guide_trace.nodes["phi2"]["value"].shape == (S, T, 1, D)
    assert guide_trace.nodes["phi1"]["value"].shape == (S, T, 1, D)
    assert model_trace.nodes["y"]["fn"].batch_shape == (S, T, N)


def test_model_rejects_unknown_options():
    with pytest.raises(ValueError, match="prior"):
        GenerativeModel(prior="gp")
    with pytest.raises(ValueError, match="decoder"):
        GenerativeModel(decoder="cnn")
    with pytest.raises(ValueError, match="noise_std"):
        GenerativeModel(noise_std=0.0)
    with pytest.raises(ValueError, match="latent_dim"):
        ModelConfig(latent_dim=0)


def test_guide_needs_observed_y():
    x, _, m = _data()
    with pytest.raises(ValueError, match="observed y"):
        _guide()(x, m, None)


# -- the set encoder q(φ2 | X, Y) -------------------------------------------------------------

@pytest.mark.parametrize("sees_metadata", [False, True])
def test_guide_is_permutation_invariant(sees_metadata):
    guide = _guide(sees_metadata)
    x, y, m = _data()
    q = guide.phi2_posterior(x, y, m)
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(1))
    q_perm = guide.phi2_posterior(x[:, perm], y[:, perm], m)
    assert q.batch_shape == (T, 1) and q.event_shape == (D,)
    torch.testing.assert_close(q_perm.mean, q.mean, **TOL)
    torch.testing.assert_close(q_perm.stddev, q.stddev, **TOL)


def test_guide_with_no_points_returns_the_aggregation_prior():
    x0, y0 = torch.zeros(T, 0, DX), torch.zeros(T, 0, DY)
    _, _, m = _data()
    guide = _guide(sees_metadata=False)
    q = guide.phi2_posterior(x0, y0, m)
    raw = guide.aggregation_prior_params.detach()
    torch.testing.assert_close(q.mean, raw[:D].expand(T, 1, D), **TOL)
    torch.testing.assert_close(q.stddev, positive(raw[D:]).expand(T, 1, D), **TOL)

    guide_m = _guide(sees_metadata=True)
    q = guide_m.phi2_posterior(x0, y0, m)
    raw = guide_m.aggregation_prior(metadata_features(m)).detach()  # [T, 2D]
    torch.testing.assert_close(q.mean[:, 0], raw[:, :D], **TOL)
    torch.testing.assert_close(q.stddev[:, 0], positive(raw[:, D:]), **TOL)
    # all-masked points are the same as no points
    x, y, _ = _data()
    q_masked = guide_m.phi2_posterior(x, y, m, torch.zeros(T, N, dtype=torch.bool))
    torch.testing.assert_close(q_masked.mean, q.mean, **TOL)
    torch.testing.assert_close(q_masked.stddev, q.stddev, **TOL)


@pytest.mark.parametrize("sees_metadata", [False, True])
def test_guide_ragged_batch_equals_per_task_loop(sees_metadata):
    """Fast path (one padded, masked batch) vs slow reference (each task alone, unpadded).

    Padded slots hold large finite garbage: a masked point must change nothing.
    """
    guide = _guide(sees_metadata)
    x, y, m = _data(T=4)
    counts = [0, 1, 3, N]
    mask = torch.arange(N) < torch.tensor(counts)[:, None]
    x_pad = torch.where(mask[..., None], x, torch.full_like(x, 50.0))
    y_pad = torch.where(mask[..., None], y, torch.full_like(y, -80.0))
    q = guide.phi2_posterior(x_pad, y_pad, m, mask)
    for t, n in enumerate(counts):
        q_t = guide.phi2_posterior(x[t:t + 1, :n], y[t:t + 1, :n], m[t:t + 1])
        torch.testing.assert_close(q.mean[t:t + 1], q_t.mean, **TOL)
        torch.testing.assert_close(q.stddev[t:t + 1], q_t.stddev, **TOL)


def _cov(q):
    """Covariance [..., D, D] of a diagonal (Independent Normal) or full-covariance Gaussian."""
    cov = getattr(q, "covariance_matrix", None)
    return cov if cov is not None else torch.diag_embed(q.variance)


def test_guide_aggregates_gaussian_factors_and_narrows_with_n():
    """Bayesian aggregation of per-point Gaussian factors (Volpp et al. 2021): each point adds
    its own natural parameters (Λ_n, h_n) to those of the aggregation prior (P0, η0). So the
    same point repeated n times gives, in closed form,

        precision_n = P0 + n Λ,   precision_n μ_n = η0 + n h,

    with (Λ, h) read off N = 1 minus N = 0. Λ is positive definite, so every marginal std
    strictly decreases in n (and log det Σ too). This does not depend on how the factors
    are parametrized (diagonal or with low-rank terms). Tolerance 1e-4 relative: inverses
    of 2x2 float32 matrices with precisions up to ~1e2.
    """
    guide = _guide()
    x1, y1 = torch.tensor([[[0.3]]]), torch.tensor([[[-0.7]]])
    m = torch.zeros(1, DM)

    def natural(q):
        precision = torch.linalg.inv(_cov(q)[0, 0].double())
        return precision, precision @ q.mean[0, 0].double()

    with torch.no_grad():
        P0, eta0 = natural(guide.phi2_posterior(x1[:, :0], y1[:, :0], m))
        P1, eta1 = natural(guide.phi2_posterior(x1, y1, m))
        Lam, h = P1 - P0, eta1 - eta0
        assert torch.linalg.eigvalsh((Lam + Lam.T) / 2).min() > 0
        stds, logdets = [], []
        for n in (0, 1, 2, 5, 20):
            q = guide.phi2_posterior(x1.expand(1, n, 1), y1.expand(1, n, 1), m)
            cov_exact = torch.linalg.inv(P0 + n * Lam)
            torch.testing.assert_close(_cov(q)[0, 0].double(), cov_exact, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(q.mean[0, 0].double(), cov_exact @ (eta0 + n * h), rtol=1e-4, atol=1e-5)
            stds.append(q.stddev[0, 0])
            logdets.append(torch.logdet(_cov(q)[0, 0]))
    stds, logdets = torch.stack(stds), torch.stack(logdets)
    assert (stds[1:] < stds[:-1]).all(), stds
    assert (logdets[1:] < logdets[:-1]).all(), logdets


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("components, sees_metadata", [(1, False), (3, True)])
def test_guide_factors_are_the_point_encoders_outputs(components, sees_metadata):
    """q(φ2 | X, Y) of docs/model.md from the encoders' outputs, one task, component and point at a
    time (the slow reference): Λ_j = diag(1/σ0²) + Σ_n mask_n (diag(1/v_n) + a_n a_nᵀ),
    η_j = μ0/σ0² + Σ_n mask_n (r_n/v_n + a_n u_n), mean Λ_j⁻¹ η_j, S_j S_jᵀ = Λ_j⁻¹, and
    log π_j = ℓ0_j + Σ_n mask_n s_nj + const. This pins the signs and powers that the fast-vs-Pyro
    comparisons cannot see (both read the same guide). float64; 1e-10 covers the round-off of
    inverting 2x2 precisions of up to ~1e3."""
    torch.manual_seed(0)
    J = components
    guide = AmortizedGuide(DX, DY, DM, D, hidden=8, layers=1, sees_metadata=sees_metadata, components=J)
    x, y, m = torch.randn(T, N, DX), torch.randn(T, N, DY), torch.randn(T, DM)
    mask = torch.arange(N) < torch.tensor([5, 2, 0])[:, None]
    logits, mean, scale_tril = guide.phi2_posterior_params(x, y, m, mask)
    with torch.no_grad():
        encoded = guide.point_encoder(torch.cat([x, y], -1))  # [T, N, J (3D + 1) (+ J)]
        prior = guide.aggregation_prior(metadata_features(m)) if sees_metadata else \
            guide.aggregation_prior_params.expand(T, -1)  # [T, J 2D (+ J)]
        for t in range(T):
            log_pi = []
            for j in range(J):
                mu0, var0 = prior[t, 2 * D * j:2 * D * j + D], positive(prior[t, 2 * D * j + D:2 * D * (j + 1)]) ** 2
                precision, eta, logit = torch.diag(1 / var0), mu0 / var0, prior[t, 2 * D * J:][j:j + 1].sum()
                for n in range(int(mask[t].sum())):
                    r, v, a, u = encoded[t, n, (3 * D + 1) * j:(3 * D + 1) * (j + 1)].split([D, D, D, 1])
                    precision = precision + torch.diag(1 / positive(v) ** 2) + torch.outer(a, a)
                    eta = eta + r / positive(v) ** 2 + a * u
                    logit = logit + encoded[t, n, (3 * D + 1) * J:][j:j + 1].sum()
                covariance = torch.linalg.inv(precision)
                torch.testing.assert_close(mean[t, j], covariance @ eta, rtol=1e-10, atol=1e-10)
                torch.testing.assert_close(scale_tril[t, j] @ scale_tril[t, j].T, covariance, rtol=1e-10, atol=1e-10)
                log_pi.append(logit)
            if J == 1:
                assert logits is None
            else:
                torch.testing.assert_close(logits[t].log_softmax(-1), torch.stack(log_pi).log_softmax(-1),
                                           rtol=1e-10, atol=1e-10)


@pytest.mark.usefixtures("float64")
def test_mlp_prior_is_l_phi1_plus_the_networks():
    """p(φ2 | φ1, m) of the "mlp" prior: mean L φ1 + MLP(φ1, m), scale σ(φ1, m) = softplus(raw) + 1e-3,
    against the layers applied by hand (same float64 sums; 1e-12)."""
    torch.manual_seed(0)
    model = GenerativeModel(DX, DY, DM, D, hidden=8, layers=1, prior="mlp")
    phi1, m = torch.randn(S, T, 1, D), torch.randn(T, 1, DM)
    mean, scale = model.phi2_prior_params(phi1, m)
    h = torch.cat([phi1, metadata_features(m).expand(S, T, 1, 2 * DM)], -1)

    def by_hand(mlp):
        first, last = mlp[0], mlp[2]
        return torch.nn.functional.silu(h @ first.weight.T + first.bias) @ last.weight.T + last.bias

    with torch.no_grad():
        torch.testing.assert_close(mean, phi1 @ model.phi1_to_phi2.weight.T + by_hand(model.prior_mean),
                                   rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(scale, torch.nn.functional.softplus(by_hand(model.prior_scale)) + 1e-3,
                                   rtol=1e-12, atol=1e-12)

def test_phi1_posterior_broadcasts_over_particles():
    guide = _guide()
    _, _, m = _data()
    phi2 = torch.randn(S, T, 1, D, generator=torch.Generator().manual_seed(2))
    q1 = guide.phi1_posterior(phi2, m[:, None, :])
    assert q1.batch_shape == (S, T, 1) and q1.event_shape == (D,)
    for s in range(S):
        torch.testing.assert_close(guide.phi1_posterior(phi2[s], m[:, None, :]).mean, q1.mean[s], **TOL)


# -- metadata: NaN = missing -------------------------------------------------------------------

def test_metadata_features_mark_missing_entries():
    m = torch.tensor([[1.5, float("nan")], [float("nan"), float("nan")], [-2.0, 3.0]])
    expected = torch.tensor([[1.5, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0], [-2.0, 3.0, 0.0, 0.0]])
    torch.testing.assert_close(metadata_features(m), expected, rtol=0, atol=0)


@pytest.mark.parametrize("prior", PRIORS)
def test_missing_metadata_gives_finite_densities(prior):
    torch.manual_seed(0)
    model = GenerativeModel(metadata_dim=DM, latent_dim=D, hidden=8, layers=1, prior=prior)
    guide = _guide(sees_metadata=True)
    x, y, m = _data()
    m[0, :] = float("nan")
    m[1, 0] = float("nan")
    q2 = guide.phi2_posterior(x, y, m)
    phi2 = q2.sample((S,))
    phi1 = guide.phi1_posterior(phi2, m[:, None, :]).sample()
    logp = model.phi2_prior(phi1, m[:, None, :]).log_prob(phi2)
    assert torch.isfinite(q2.mean).all() and torch.isfinite(phi1).all() and torch.isfinite(logp).all()
    # missing metadata of task 0 is the same as zeros with the missing flags set
    features = metadata_features(m)
    assert torch.equal(features[0], torch.tensor([0.0, 0.0, 1.0, 1.0]))


def test_use_metadata_false_withholds_metadata_in_prediction():
    """The ablation feeds NaN everywhere, so predictions cannot depend on m's values."""
    torch.manual_seed(0)
    meta = HierarchicalMetaModel(ModelConfig(latent_dim=D, hidden=8, layers=1, use_metadata=False))
    assert torch.isnan(meta.model_metadata(torch.zeros(T, DM))).all()
    from hierarchical_meta.tasks import SinusoidTasks
    batch = SinusoidTasks().sample(T, 2, 3, generator=torch.Generator().manual_seed(0))
    outs = []
    for metadata in (batch.metadata, batch.metadata + 10.0):
        torch.manual_seed(5)
        predictive, log_evidence = meta.predict(batch.with_metadata(metadata), num_samples=16)
        outs.append((predictive.log_prob(batch.y_query), log_evidence))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=0, atol=0)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=0, atol=0)
