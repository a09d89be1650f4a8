"""Trained meta-learners for the memorization scenarios, and their training loop.

- :class:`PooledNetwork`: a network of the query input alone, trained on the pooled
  points of all meta-training tasks. It ignores the support by construction: the
  "complete memorization" end point.
- :class:`ConditionalNeuralProcess` (Garnelo et al., ICML 2018): a black-box meta-learner
  p(y_q | x_q, r), r = mean over the support of h(x_k, y_k). It *can* adapt, and it can
  also memorize when x_q identifies the task (Yin et al., ICLR 2020, §4). With
  ``bottleneck=True`` the query input passes through a stochastic encoding
  z ~ q(z | x_q) = N(μ(x_q), diag σ(x_q)²) and training adds β·KL(q(z | x_q) ‖ N(0, I))
  per query point: Yin et al.'s meta-regularization on activations, which limits how
  much the query input alone can say about the task. Prediction uses z = μ(x_q).

All are predict functions in the probe's convention (``module(x_support, y_support,
x_query, support_mask)``) with a training penalty ``penalty()`` (β·KL, zero without a
bottleneck); :func:`fit_episodic` trains any of them on a task family. :func:`mlp` is
the plain ReLU network they (and :class:`~examples.memorization.maml.MAMLRegressor`)
are built from.
"""

from __future__ import annotations

import torch
from torch import nn

from hierarchical_meta.tasks.base import TaskFamily

__all__ = ["mlp", "PooledNetwork", "ConditionalNeuralProcess", "fit_episodic"]


def mlp(sizes) -> nn.Sequential:
    """Linear layers sizes[0] → sizes[1] → … → sizes[-1] with ReLU between them."""
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class _Head(nn.Module):
    """Output layer -> Normal (regression, ``num_classes=None``) or Categorical."""

    def __init__(self, y_dim: int, num_classes: int | None):
        super().__init__()
        self.y_dim, self.num_classes = y_dim, num_classes
        self.size = num_classes if num_classes is not None else 2 * y_dim

    def forward(self, out: torch.Tensor):
        if self.num_classes is not None:
            return torch.distributions.Categorical(logits=out)
        mean, raw = out.split(self.y_dim, -1)
        return torch.distributions.Normal(mean, nn.functional.softplus(raw) + 1e-3)


class PooledNetwork(nn.Module):
    """p(y | x) from the query input alone; the support is accepted and ignored."""

    def __init__(self, x_dim: int, y_dim: int = 1, num_classes: int | None = None, hidden: int = 64):
        super().__init__()
        self.head = _Head(y_dim, num_classes)
        self.net = mlp([x_dim, hidden, hidden, self.head.size])

    def forward(self, x_support, y_support, x_query, support_mask=None):
        return self.head(self.net(x_query))

    def penalty(self):
        """No regularizer: zero."""
        return torch.zeros(())


class ConditionalNeuralProcess(nn.Module):
    """p(y_q | x_q, r(D)) with r the masked mean of h(x_k, y_k) over the support D.

    Shapes: x_support [T, K, Dx], y_support [T, K, Dy] (class indices for
    classification), x_query [T, Q, Dx]; r [T, R]; with no support r = 0.
    """

    def __init__(self, x_dim: int, y_dim: int = 1, num_classes: int | None = None, hidden: int = 64,
                 r_dim: int = 32, bottleneck: bool = False, z_dim: int = 16, beta: float = 0.0):
        super().__init__()
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.num_classes, self.bottleneck, self.beta = num_classes, bottleneck, float(beta)
        y_in = num_classes if num_classes is not None else y_dim
        self.encoder = mlp([x_dim + y_in, hidden, hidden, r_dim])
        q_dim = x_dim
        if bottleneck:
            self.query_encoder = mlp([x_dim, hidden, 2 * z_dim])
            q_dim = z_dim
        self.head = _Head(y_dim, num_classes)
        self.decoder = mlp([q_dim + r_dim, hidden, hidden, self.head.size])
        self.r_dim = r_dim
        self._kl = torch.zeros(())

    def _y_in(self, y):
        if self.num_classes is None:
            return y
        return nn.functional.one_hot(y[..., 0].round().long().clamp(0, self.num_classes - 1),
                                     self.num_classes).to(y.dtype)

    def forward(self, x_support, y_support, x_query, support_mask=None):
        T, K = x_support.shape[:2]
        if K == 0:
            r = x_query.new_zeros(T, self.r_dim)  # [T, R]
        else:
            keep = (torch.ones(T, K) if support_mask is None else support_mask.float())[..., None]  # [T, K, 1]
            h = self.encoder(torch.cat([x_support, self._y_in(y_support)], -1))  # [T, K, R]
            r = (h * keep).sum(1) / keep.sum(1).clamp_min(1.0)  # [T, R]
        q = x_query  # [T, Q, Dx], or z [T, Q, Z] through the bottleneck
        if self.bottleneck:
            loc, raw = self.query_encoder(x_query).chunk(2, -1)  # [T, Q, Z] each
            scale = nn.functional.softplus(raw) + 1e-4
            if self.training:
                q = loc + scale * torch.randn_like(loc)
                self._kl = (0.5 * (loc ** 2 + scale ** 2 - 1) - scale.log()).sum(-1).mean()
            else:
                q = loc
        out = self.decoder(torch.cat([q, r[:, None].expand(-1, x_query.shape[1], -1)], -1))
        return self.head(out)

    def penalty(self):
        """β·KL(q(z | x_q) ‖ N(0, I)) per query point from the last training-mode call
        (zero without the bottleneck)."""
        return self.beta * self._kl if self.bottleneck else torch.zeros(())


def fit_episodic(learner: nn.Module, family: TaskFamily, *, num_support: int, num_query: int,
                 steps: int = 2000, tasks_per_step: int = 32, lr: float = 1e-3, seed: int = 0) -> list:
    """Train ``learner`` on meta-training tasks (split ``"train"``) by maximum likelihood.

    Loss per step: mean query negative log-likelihood + ``learner.penalty()`` (β·KL for a
    bottleneck). Class indices in ``y`` where ``family.num_classes`` is set. Returns the
    loss per step. (Not :func:`hierarchical_meta.train.fit`:
    that one runs SVI on the Bayesian model's ELBO; these are plain networks.)
    """
    if steps < 0 or tasks_per_step < 1:
        raise ValueError(f"need steps >= 0 and tasks_per_step >= 1, got {steps}, {tasks_per_step}")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(learner.parameters(), lr=lr)
    learner.train()
    losses = []
    for _ in range(steps):
        batch = family.sample(tasks_per_step, num_support, num_query, split="train", generator=generator)
        dist = learner(batch.x_support, batch.y_support, batch.x_query, batch.support_mask)
        if family.num_classes is not None:
            logp = dist.log_prob(batch.y_query[..., 0].round().long())  # [T, Q]
        else:
            logp = dist.log_prob(batch.y_query).sum(-1)
        loss = -(logp * batch.query_mask).sum() / batch.query_mask.sum() + learner.penalty()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    learner.eval()
    return losses
