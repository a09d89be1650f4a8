"""MAML (Finn et al., ICML 2017) on profiling/'s MLP functions, as a predict function for the probe.

The inner loop is L SGD steps on the support MSE with :func:`profiling.mlp.mse_and_grad`
(the hand-written gradient ``profiling``'s batched MAML differentiates through), here
for inputs of any width::

    φ_0,t = θ,   φ_k+1,t = φ_k,t − α ∇ MSE_support,t(φ_k,t),   k < L

and the predictive is N(f_φL(x_q), s²) with s the adapted networks' query RMSE on
meta-training tasks. With no support the initialization θ predicts unadapted.
:meth:`MAMLRegressor.meta_gradient` equals :func:`profiling.meta_gradient` ("maml",
"batched") for 1-D inputs (tested).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from hierarchical_meta.tasks.base import TaskFamily
from profiling.mlp import mlp_forward, mse, mse_and_grad

from .networks import mlp

__all__ = ["MAMLRegressor", "fit_maml"]


class MAMLRegressor(nn.Module):
    """An MLP Dx → hidden × layers → Dy meta-trained by MAML; predicts after L inner steps."""

    def __init__(self, x_dim: int, y_dim: int = 1, hidden: int = 40, layers: int = 2,
                 inner_steps: int = 5, inner_lr: float = 0.05):
        super().__init__()
        if inner_steps < 1 or inner_lr <= 0:
            raise ValueError(f"need inner_steps >= 1 and inner_lr > 0, got {inner_steps}, {inner_lr}")
        self.net = mlp([x_dim] + [hidden] * layers + [y_dim])  # ReLU, as profiling.mlp's functions
        self.inner_steps, self.inner_lr = inner_steps, float(inner_lr)
        self.register_buffer("noise_std", torch.tensor(1.0))

    def params(self) -> dict[str, torch.Tensor]:
        """θ by name, in the order :func:`profiling.mlp.mlp_forward` reads them."""
        return dict(self.net.named_parameters())

    def adapt(self, theta, x_support, y_support, support_mask=None) -> dict[str, torch.Tensor]:
        """φ_L per task (W: [T, out, in], b: [T, out]) after L SGD steps on the support MSE."""
        if support_mask is not None and not bool(support_mask.all()):
            raise ValueError("MAMLRegressor adapts on full supports only; got a support_mask with "
                             "padded slots (sample tasks with a fixed support size)")
        T = x_support.shape[0]
        fast = {k: v.expand(T, *v.shape) for k, v in theta.items()}  # θ per task, no copy
        if x_support.shape[1] == 0:
            return fast
        for _ in range(self.inner_steps):
            _, grads = mse_and_grad(fast, x_support, y_support)
            fast = {k: fast[k] - self.inner_lr * grads[k] for k in fast}
        return fast

    def meta_gradient(self, x_support, y_support, x_query, y_query):
        """(meta-loss, grads): the query MSE after adaptation, differentiated through it."""
        theta = {k: v.detach().requires_grad_(True) for k, v in self.params().items()}
        meta_loss = mse(self.adapt(theta, x_support, y_support), x_query, y_query).mean()
        grads = torch.autograd.grad(meta_loss, list(theta.values()))
        return meta_loss.detach(), dict(zip(theta, grads, strict=True))

    def forward(self, x_support, y_support, x_query, support_mask=None):
        with torch.enable_grad():
            fast = self.adapt(self.params(), x_support, y_support, support_mask)
            mean = mlp_forward(fast, x_query).detach()  # [T, Q, Dy]
        return torch.distributions.Normal(mean, self.noise_std.expand(mean.shape))


def fit_maml(learner: MAMLRegressor, family: TaskFamily, *, num_support: int, num_query: int,
             steps: int = 1000, tasks_per_step: int = 16, lr: float = 1e-3, seed: int = 0) -> list:
    """Meta-train with Adam on MAML meta-gradients, then set the predictive noise from
    the adapted query RMSE on fresh meta-training tasks. Returns the meta-loss per step."""
    if family.num_classes is not None:
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
