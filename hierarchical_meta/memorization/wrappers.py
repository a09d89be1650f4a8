"""The package's meta-learners as predict functions for the probe.

- :class:`BayesianModelPredictor`: the hierarchical model's importance-weighted posterior
  predictive p(y_q | support, m) (:func:`hierarchical_meta.predict.posterior_predictive`),
  or with the metadata withheld (fed as missing, NaN, which the model is trained to read):
  a ``MixturePredictive`` for regression, a ``CategoricalMixturePredictive`` (class
  probabilities Σ_s w_s softmax f(x_q, φ2_s)) for a model with the categorical likelihood.
  Each call reseeds its sampler, so the probe's conditions share random numbers.
- :class:`MAMLRegressor`: MAML (Finn et al., ICML 2017) on profiling/'s MLP functions.
  The inner loop is L SGD steps on the support MSE with :func:`profiling.mlp.mse_and_grad`
  (as ``profiling``'s batched MAML), generalized to inputs of any width; the predictive is
  N(f_φL(x_q), s²) with s the adapted networks' query RMSE on meta-training tasks. With no
  support the initialization θ predicts unadapted. :meth:`MAMLRegressor.meta_gradient`
  equals :func:`profiling.meta_gradient` ("maml", "batched") for 1-D inputs (tested).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..predict import posterior_predictive
from ..tasks.base import TaskFamily
from .neural import _mlp

__all__ = ["BayesianModelPredictor", "MAMLRegressor", "fit_maml"]


class BayesianModelPredictor:
    """p(y_q | x_q, support, m) of a trained :class:`~hierarchical_meta.HierarchicalMetaModel`.

    ``num_samples`` importance samples, a share ``defensive`` of them from the prior
    (:func:`~hierarchical_meta.predict.posterior_predictive`); pinned here so that the
    probe's numbers do not move with the library's defaults.
    """

    def __init__(self, meta_model, num_samples: int = 256, withhold_metadata: bool = False, seed: int = 0,
                 defensive: float = 0.1):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.meta_model, self.num_samples, self.defensive = meta_model, num_samples, defensive
        self.withhold_metadata, self.seed = withhold_metadata, seed

    def __call__(self, x_support, y_support, x_query, support_mask=None, metadata=None):
        T = x_query.shape[0]
        dm = self.meta_model.config.metadata_dim
        if metadata is None or self.withhold_metadata:
            metadata = torch.full((T, dm), float("nan"))
        metadata = self.meta_model.model_metadata(metadata)
        if support_mask is None:
            support_mask = torch.ones(x_support.shape[:2], dtype=torch.bool)
        # posterior_predictive, not meta_model.predict: a TaskBatch would reject withheld (NaN) metadata
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            predictive, _ = posterior_predictive(self.meta_model.model, self.meta_model.guide, x_support,
                                                 y_support, metadata, support_mask, x_query,
                                                 num_samples=self.num_samples, defensive=self.defensive)
        return predictive


class MAMLRegressor(nn.Module):
    """An MLP Dx → hidden × layers → Dy meta-trained by MAML; predicts after L inner steps."""

    def __init__(self, x_dim: int, y_dim: int = 1, hidden: int = 40, layers: int = 2,
                 inner_steps: int = 5, inner_lr: float = 0.05):
        super().__init__()
        if inner_steps < 1 or inner_lr <= 0:
            raise ValueError(f"need inner_steps >= 1 and inner_lr > 0, got {inner_steps}, {inner_lr}")
        self.net = _mlp([x_dim] + [hidden] * layers + [y_dim])  # ReLU, as profiling.mlp's functions
        self.inner_steps, self.inner_lr = inner_steps, float(inner_lr)
        self.register_buffer("noise_std", torch.tensor(1.0))

    def params(self):
        return dict(self.net.named_parameters())

    def adapt(self, theta, x_support, y_support, support_mask=None):
        """φ_L per task (W: [T, out, in], b: [T, out]) after L SGD steps on the support MSE."""
        from profiling.algorithms.common import expand_params, sgd_step
        from profiling.mlp import mse_and_grad
        if support_mask is not None and not bool(support_mask.all()):
            raise ValueError("MAMLRegressor adapts on full supports only; got a support_mask with "
                             "padded slots (sample tasks with a fixed support size)")
        fast = expand_params(theta, x_support.shape[0])
        if x_support.shape[1] == 0:
            return fast
        for _ in range(self.inner_steps):
            _, g = mse_and_grad(fast, x_support, y_support)
            fast = sgd_step(fast, g, self.inner_lr)
        return fast

    def meta_gradient(self, x_support, y_support, x_query, y_query):
        """(meta-loss, grads): the query MSE after adaptation, differentiated through it."""
        from profiling.algorithms.common import leaf_params
        from profiling.mlp import mse
        theta = leaf_params(self.params())
        fast = self.adapt(theta, x_support, y_support)
        meta_loss = mse(fast, x_query, y_query).mean()
        grads = torch.autograd.grad(meta_loss, list(theta.values()))
        return meta_loss.detach(), dict(zip(theta, grads))

    def forward(self, x_support, y_support, x_query, support_mask=None):
        from profiling.mlp import mlp_forward
        with torch.enable_grad():
            fast = self.adapt(self.params(), x_support, y_support, support_mask)
            mean = mlp_forward(fast, x_query).detach()  # [T, Q, Dy]
        return torch.distributions.Normal(mean, self.noise_std.expand(mean.shape))


def fit_maml(learner: MAMLRegressor, family: TaskFamily, *, num_support: int, num_query: int,
             steps: int = 1000, tasks_per_step: int = 16, lr: float = 1e-3, seed: int = 0) -> list:
    """Meta-train with Adam on MAML meta-gradients, then set the predictive noise from
    the adapted query RMSE on fresh meta-training tasks. Returns the meta-loss per step."""
    if getattr(family, "num_classes", None) is not None:
        raise ValueError("MAMLRegressor is a regression learner (MSE inner loop); "
                         f"{type(family).__name__} is a classification family")
    # Not train.fit (SVI on the Bayesian model's ELBO): Adam on profiling's hand-written meta-gradients.
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(learner.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        b = family.sample(tasks_per_step, num_support, num_query, split="train", generator=generator)
        loss, grads = learner.meta_gradient(b.x_support, b.y_support, b.x_query, b.y_query)
        for name, p in learner.net.named_parameters():
            p.grad = grads[name]
        optimizer.step()
        losses.append(float(loss))
    b = family.sample(256, num_support, num_query, split="train", generator=generator)
    mean = learner(b.x_support, b.y_support, b.x_query).mean
    learner.noise_std.fill_(math.sqrt(float(((mean - b.y_query) ** 2).mean())))
    return losses
