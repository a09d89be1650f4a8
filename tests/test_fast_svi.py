"""The training fast path (``TrainConfig(elbo="fast")``, :class:`~hierarchical_meta.train.FastSVI`)
against Pyro's ``SVI`` on ``Trace_ELBO`` (:class:`~hierarchical_meta.train.PyroSVI`), the reference.

- on the same draws (same seed) both report the same loss and take the same step, for the
  annealed objective (β < 1), in float64;
- the precision-to-covariance factor of the guide is the one ``MultivariateNormal`` computes;
- a checkpoint of one path does not resume under the other.

Tolerances: the losses are sums of float64 log-densities (~1e2) in a different order
(round-off ~1e-13; 1e-10 allowed); the parameters after three Adam steps of lr = 2e-3 (not
torch's default 1e-3) agree to round-off (1e-12 allowed), while a different gradient, ε or lr moves
them by up to ~lr.
"""

import pyro
import pytest
import torch

from hierarchical_meta import HierarchicalMetaModel, ModelConfig, SinusoidTasks
from hierarchical_meta.guide import covariance_cholesky
from hierarchical_meta.train import FastSVI, PyroSVI, TrainConfig, fit, make_svi

pytestmark = pytest.mark.usefixtures("float64")


def _pair(seed=0, **model_options):
    """Two copies of one small model (same initial weights) and a ragged batch."""
    config = ModelConfig(hidden=8, layers=1, latent_dim=3, **model_options)
    torch.manual_seed(seed)
    a = HierarchicalMetaModel(config)
    b = HierarchicalMetaModel(config)
    b.load_state_dict(a.state_dict())
    batch = SinusoidTasks().sample(6, 7, 0, generator=torch.Generator().manual_seed(seed))
    mask = batch.support_mask & (torch.arange(7) < torch.tensor([7, 3, 0, 1, 5, 2])[:, None])
    return a, b, (batch.x_support.double(), batch.metadata.double(), batch.y_support.double(), mask)


@pytest.mark.parametrize("prior, decoder", [("mlp", "features"), ("linear", "mlp")])
def test_fast_step_is_the_pyro_step(prior, decoder):
    a, b, (x, m, y, mask) = _pair(prior=prior, decoder=decoder)
    config = TrainConfig(lr=2e-3, num_particles=3, steps=10)
    pyro.clear_param_store()
    reference, fast = PyroSVI(a, config), FastSVI(b, config)
    initial = {name: p.detach().clone() for name, p in a.named_parameters()}
    for step, beta in enumerate((0.3, 0.7, 1.0)):
        torch.manual_seed(10 + step)
        loss_ref = reference.step(x, m, y, mask, latent_scale=beta)
        torch.manual_seed(10 + step)
        loss_fast = fast.step(x, m, y, mask, latent_scale=beta)
        assert loss_fast == pytest.approx(loss_ref, rel=1e-10, abs=1e-10)
    moved = 0.0
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-12, msg=name)
        moved = max(moved, float((q.detach() - initial[name]).abs().max()))
    assert moved > 2e-3  # three steps of lr 2e-3 moved the weights (the comparison is not vacuous)


def test_covariance_cholesky_is_multivariate_normals_factor():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(5, 4, 4, generator=g)
    precision = A @ A.mT + 0.1 * torch.eye(4)
    S = covariance_cholesky(precision)
    reference = torch.distributions.MultivariateNormal(torch.zeros(5, 4), precision_matrix=precision)
    torch.testing.assert_close(S, reference.scale_tril, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(S @ S.mT, torch.linalg.inv(precision), rtol=1e-8, atol=1e-8)
    assert torch.equal(S, S.tril())


def test_a_checkpoint_resumes_only_under_its_own_elbo(tmp_path):
    family = SinusoidTasks()
    model = HierarchicalMetaModel(ModelConfig(hidden=8, layers=1))
    options = dict(steps=2, batch_tasks=4, max_points=5, eval_every=2, eval_tasks=4, checkpoint_every=2)
    fit(model, family, TrainConfig(elbo="pyro", **options), out_dir=str(tmp_path), progress=False)
    with pytest.raises(ValueError, match=r"elbo 'pyro' \(now 'fast'\)"):
        fit(model, family, TrainConfig(elbo="fast", **dict(options, steps=4)), out_dir=str(tmp_path),
            progress=False)
    with pytest.raises(ValueError, match="elbo must be one of"):
        TrainConfig(elbo="jit")


def test_make_svi_returns_the_stepper_config_elbo_names():
    meta_model = HierarchicalMetaModel(ModelConfig(hidden=8, layers=1))
    assert type(make_svi(meta_model, TrainConfig(elbo="fast", steps=10))) is FastSVI
    assert type(make_svi(meta_model, TrainConfig(elbo="pyro", steps=10))) is PyroSVI
