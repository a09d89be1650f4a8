"""The categorical likelihood (classification): options, shapes, bound, predictive, a tiny fit.

- bad ``likelihood`` / ``num_classes`` combinations raise ``ValueError``;
- p(y | φ2, x) = Cat(softmax f(x, φ2)) broadcasts over particles, reads y as a float class
  index [T, N, 1], and equals log_softmax(f) picked at the label (the slow reference);
- the guide reads one-hot y, ignores padded slots and rejects labels that are not classes;
- the hand-written bound of :mod:`hierarchical_meta.bound` equals Pyro's ``Trace_ELBO`` on
  the same draws, value and gradients, for every prior and decoder (as tests/test_bound.py
  checks for the normal likelihood, whose helpers this reuses);
- the importance-weighted predictive is Σ_s w_s softmax f(x_q, φ2_s): probabilities sum to
  one and match a loop over draws; ``point_metrics`` gives its accuracy and log-likelihood;
- a checkpoint round-trips; a tiny fit on a disease scenario beats chance on meta-train tasks.
"""

import itertools
import math

import pytest
import torch
from test_bound import EXACT, PARTICLES, SIZES, pyro_loss, trace_elbo

from examples.memorization import BayesianModelPredictor, make_scenario
from hierarchical_meta import bound
from hierarchical_meta.guide import AmortizedGuide
from hierarchical_meta.memorization import probe
from hierarchical_meta.meta_model import HierarchicalMetaModel, ModelConfig, load_checkpoint
from hierarchical_meta.model import DECODERS, PRIORS, GenerativeModel
from hierarchical_meta.predict import posterior_predictive
from hierarchical_meta.predictive import CategoricalMixturePredictive, point_metrics
from hierarchical_meta.train import TrainConfig, fit

T, N, DX, DM, D, C = 4, 5, 2, 2, 2, 3  # tasks, max points, dims of x, m, latents; classes


def make_problem(prior="linear", decoder="features", seed=0):
    """A small categorical model, its guide (random weights) and a ragged batch of T tasks."""
    torch.manual_seed(seed)
    latent = C * (1 + DX) if decoder == "polynomial" else D  # degree 1: [1, x] per class
    model = GenerativeModel(DX, 1, DM, latent, hidden=8, layers=1, prior=prior, decoder=decoder,
                            likelihood="categorical", num_classes=C, polynomial_degree=1)
    guide = AmortizedGuide(DX, 1, DM, latent, hidden=8, layers=1, num_classes=C)
    x = torch.randn(T, N, DX)  # x: [T, N, Dx]
    metadata = torch.randn(T, DM)  # metadata: [T, Dm]
    mask = torch.arange(N) < torch.tensor(SIZES)[:, None]  # mask: [T, N]; the third task has N = 0
    y = torch.randint(C, (T, N, 1)).to(x)  # y: [T, N, 1], class indices stored as floats
    return model, guide, (x, y, metadata, mask)


# ---------------------------------------------------------------------------------------
# options and shapes
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(likelihood="bernoulli"), "likelihood must be one of"),
    (dict(likelihood="categorical"), "num_classes >= 2"),
    (dict(likelihood="categorical", num_classes=1), "num_classes >= 2"),
    (dict(likelihood="categorical", num_classes=2.0), "num_classes >= 2"),
    (dict(num_classes=3), "needs likelihood='categorical'"),
    (dict(likelihood="categorical", num_classes=2, y_dim=2), "y_dim=1"),
    (dict(likelihood="categorical", num_classes=2, noise_std=0.1), "noise_std"),
])
def test_bad_likelihood_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**kwargs)
    with pytest.raises(ValueError, match=match):
        GenerativeModel(**kwargs)


@pytest.mark.parametrize("prior, decoder", list(itertools.product(PRIORS, DECODERS)))
@pytest.mark.usefixtures("float64")
def test_categorical_likelihood_shapes_and_values(prior, decoder):
    model, _, (x, y, metadata, _) = make_problem(prior, decoder)
    S = 3
    phi1 = model.phi1_prior((S, T, 1)).sample()
    phi2 = model.phi2_prior(phi1, metadata[:, None]).sample()  # [S, T, 1, D]
    lik = model.likelihood(phi2, x)
    assert lik.batch_shape == (S, T, N) and lik.event_shape == (1,)
    logp = lik.log_prob(y)  # y: [T, N, 1] float
    assert logp.shape == (S, T, N)
    for s in range(S):  # the slow reference: log_softmax of one particle's logits at the label
        logits = model.decode(phi2[s], x)  # [T, N, C]
        assert logits.shape == (T, N, C)
        torch.testing.assert_close(logp[s], logits.log_softmax(-1).gather(-1, y.long())[..., 0], **EXACT)
    draw = lik.sample()
    assert draw.shape == (S, T, N, 1) and draw.min() >= 0 and draw.max() < C
    with pytest.raises(ValueError, match="decode"):
        model.predictive_mean(phi2, x)
    with pytest.raises(ValueError, match="normal"):
        model.noise_std()


def test_normal_default_keeps_its_parameters():
    """likelihood="normal" is the default and builds exactly the networks it always had."""
    meta = HierarchicalMetaModel(ModelConfig(x_dim=2, y_dim=3))
    assert meta.config.likelihood == "normal" and meta.config.num_classes is None
    assert "model.raw_noise" in meta.state_dict()
    assert meta.model.offset(torch.zeros(1, 2)).shape == (1, 3)
    assert meta.guide.point_encoder(torch.zeros(1, 2 + 3)).shape[-1] == 3 * meta.config.latent_dim + 1


@pytest.mark.usefixtures("float64")
def test_guide_reads_one_hot_labels_and_rejects_non_classes():
    _, guide, (x, y, metadata, mask) = make_problem()
    q = guide.phi2_posterior(x, y, metadata, mask)
    assert q.batch_shape == (T, 1) and q.event_shape == (D,)
    padded = torch.where(mask[..., None], y, 2.5)  # padded slots may hold anything
    torch.testing.assert_close(guide.phi2_posterior(x, padded, metadata, mask).loc, q.loc, **EXACT)
    assert not torch.allclose(guide.phi2_posterior(x, (y + 1) % C, metadata, mask).loc[0], q.loc[0])
    for bad in (0.5, -1.0, float(C)):
        with pytest.raises(ValueError, match="class indices"):
            guide.phi2_posterior(x, torch.where(mask[..., None], torch.full_like(y, bad), y), metadata, mask)


# ---------------------------------------------------------------------------------------
# the bound is Pyro's Trace_ELBO on the same draws
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("prior, decoder", list(itertools.product(PRIORS, DECODERS)))
@pytest.mark.usefixtures("float64")
def test_bound_equals_trace_elbo_on_same_draws(prior, decoder):
    """Float64 sums of the same log-densities in another order: EXACT (1e-10) as in test_bound."""
    model, guide, (x, y, metadata, mask) = make_problem(prior, decoder)
    loss = pyro_loss(trace_elbo(), model, guide, x, y, metadata, mask, seed=1)
    torch.manual_seed(1)
    terms = bound.elbo_terms(model, guide, x, y, metadata, mask, num_particles=PARTICLES, analytic_phi1_kl=False)
    torch.testing.assert_close(terms["elbo"].sum(), -loss, **EXACT)
    assert terms["loglik"][SIZES.index(0)] == 0 and (terms["loglik"] < -0.1)[torch.tensor(SIZES) > 0].all()

    params = list(model.parameters()) + list(guide.parameters())
    pyro_grads = torch.autograd.grad(loss, params)
    our_grads = torch.autograd.grad(-terms["elbo"].sum(), params)
    assert any(g.abs().max() > 1e-3 for g in our_grads)  # the comparison is not vacuous
    for ours, theirs in zip(our_grads, pyro_grads, strict=True):
        torch.testing.assert_close(ours, theirs, **EXACT)


# ---------------------------------------------------------------------------------------
# the categorical posterior predictive
# ---------------------------------------------------------------------------------------

@pytest.mark.usefixtures("float64")
def test_predictive_is_the_weighted_mixture_of_softmaxes():
    model, guide, (x, y, metadata, mask) = make_problem()
    xq, yq = torch.randn(T, 6, DX, dtype=x.dtype), torch.randint(C, (T, 6, 1)).to(x.dtype)
    torch.manual_seed(2)
    predictive, log_evidence = posterior_predictive(model, guide, x, y, metadata, mask, xq, num_samples=32)
    assert isinstance(predictive, CategoricalMixturePredictive) and log_evidence.shape == (T,)
    probs = predictive.probs
    assert probs.shape == (T, 6, C)
    torch.testing.assert_close(probs.sum(-1), torch.ones(T, 6, dtype=x.dtype), **EXACT)
    # the slow reference: Σ_s w_s softmax(f_s), one draw at a time
    reference = sum(predictive.weights[:, s, None, None] * predictive.logits[:, s].softmax(-1) for s in range(32))
    torch.testing.assert_close(probs, reference, **EXACT)
    torch.testing.assert_close(predictive.log_prob(yq), probs.gather(-1, yq.long())[..., 0].log(), **EXACT)
    metrics = point_metrics(predictive, yq)
    correct = (probs.argmax(-1) == yq[..., 0].long()).double().mean()
    assert metrics == pytest.approx({"loglik": float(predictive.log_prob(yq).mean()), "accuracy": float(correct)})
    with pytest.raises(ValueError, match="logits"):
        CategoricalMixturePredictive(torch.zeros(T, 2), torch.zeros(T, 3, 6, C))


def test_checkpoint_round_trip(tmp_path):
    meta = HierarchicalMetaModel(x_dim=DX, metadata_dim=DM, hidden=8, likelihood="categorical", num_classes=C)
    meta.save(str(tmp_path / "model.pt"))
    loaded, _ = load_checkpoint(str(tmp_path / "model.pt"))
    assert loaded.config == meta.config and loaded.model.num_classes == C
    for key, value in meta.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_tiny_fit_on_a_disease_scenario_beats_chance_on_meta_train_tasks():
    """100 SVI steps (about 2 s) reach ~0.86 accuracy on fresh meta-train tasks (chance 0.5,
    the support-ignoring optimum ~0.86); 64 tasks x 10 query points give a standard error
    ~0.02, so the 0.65 threshold is ~8 standard errors above chance and below the fit."""
    scenario = make_scenario("disease-shared")
    family = scenario.make_family()
    torch.manual_seed(0)
    meta = HierarchicalMetaModel(x_dim=family.x_dim, metadata_dim=family.metadata_dim, hidden=16,
                                 likelihood="categorical", num_classes=family.num_classes)
    fit(meta, family, TrainConfig(steps=100, batch_tasks=16, lr=1e-2, eval_every=100, eval_tasks=16), progress=False)
    reports = probe(BayesianModelPredictor(meta, num_samples=64), family, num_support=scenario.num_support,
                    num_query=scenario.num_query, num_tasks=64, num_derangements=1)
    train = reports["meta-train"]
    assert train.chance_metric == 0.5 and train.metric > 0.65, train
    assert all(math.isfinite(r.follow) and math.isfinite(r.loss) for r in reports.values())
