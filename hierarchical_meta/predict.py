"""Prediction on new tasks from the posterior of the whole model, metadata included.

q(φ2 | X, Y) does not see m, so predicting from the guide alone would throw the
metadata away. Instead the guide is a proposal for self-normalized importance sampling
of p(φ1, φ2 | X_s, Y_s, m) (docs/model.md), made defensive by mixing in the prior::

    r(φ1, φ2) = (1 - α) q(φ2 | X_s, Y_s) q(φ1 | φ2, m) + α p(φ1) p(φ2 | φ1, m)
    w_s ∝ p(φ1_s) p(φ2_s | φ1_s, m) p(Y_s | φ2_s, X_s) / r(φ1_s, φ2_s)

The predictive at query inputs is the mixture Σ_s w_s p(y | φ2_s, x): Gaussian
components (:class:`~hierarchical_meta.predictive.MixturePredictive`) for the normal
likelihood, categorical ones, Σ_s w_s softmax f(x, φ2_s)
(:class:`~hierarchical_meta.predictive.CategoricalMixturePredictive`), for the categorical
likelihood. The mean of the unnormalized weights estimates p(Y_s | X_s, m) (its log is a
bound in expectation).
With K = 0 support points the weights use the metadata alone.

A linear-Gaussian model with one output (:attr:`~hierarchical_meta.model.GenerativeModel.linear_gaussian`:
the linear or affine prior, a decoder linear in φ2, constant normal noise) needs no sampling:
with p(φ2 | m) = N(μ0(m), Σ0 = L Lᵀ + diag σ²) and y = ⟨H(x), φ2⟩ + c(x) + N(0, s²),
:func:`exact_predictive` conditions φ2 on the support in closed form
(:mod:`hierarchical_meta.linear_gaussian`), and each query point's predictive is one Gaussian,
N(H_q E[φ2 | support] + c_q, H_q Cov[φ2 | support] H_qᵀ + s²), with tails as wide as the
model's spread of φ2 (a finite mixture of narrow components falls off at the width s beyond
its outermost draw).
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from . import linear_gaussian
from .predictive import CategoricalMixturePredictive, MixturePredictive

__all__ = ["NUM_SAMPLES", "PREDICT_CHUNK", "posterior_predictive", "exact_predictive", "predict_in_chunks"]

#: Importance samples per task: the default of every predictive of the model (docs/model.md
#: measures the gap to exact Bayes against it).
NUM_SAMPLES = 2048
#: Tasks predicted at a time for a task file: memory grows as chunk x samples x points per task.
PREDICT_CHUNK = 16


@torch.no_grad()
def posterior_predictive(model, guide, x_support, y_support, metadata, support_mask, x_query,
                         num_samples: int = NUM_SAMPLES, defensive: float = 0.3):
    """Importance-weighted posterior predictive.

    Shapes: x_support [T, K, Dx], y_support [T, K, Dy], metadata [T, Dm] (NaN = missing),
    support_mask [T, K], x_query [T, Q, Dx]. Returns ``(predictive, log_evidence [T])`` with
    S = ``num_samples`` components per task: a ``MixturePredictive`` (normal likelihood) or a
    ``CategoricalMixturePredictive`` (categorical; y_support holds class indices, Dy = 1).
    """
    if not 0.0 <= defensive < 1.0:
        raise ValueError(f"defensive must be in [0, 1), got {defensive}")
    T, m = x_support.shape[0], metadata[:, None, :]  # m: [T, 1, Dm]
    n_prior = int(round(defensive * num_samples))
    n_guide = num_samples - n_prior
    share = n_prior / num_samples  # the prior's share as drawn (rounded), which the density must use
    q2 = guide.phi2_posterior(x_support, y_support, metadata, support_mask)  # batch [T, 1]
    phi2_q = q2.sample((n_guide,))  # [Sg, T, 1, D]
    q1_q = guide.phi1_posterior(phi2_q, m)
    phi1_q = q1_q.sample()
    phi1_p = model.phi1_prior((n_prior, T, 1)).sample()  # [Sp, T, 1, D]
    p2_p = model.phi2_prior(phi1_p, m)
    phi2_p = p2_p.sample()
    phi1, phi2 = torch.cat([phi1_q, phi1_p]), torch.cat([phi2_q, phi2_p])  # [S, T, 1, D]

    # each conditional network runs once per draw: at its own draws, and at the other proposal's
    # (an empty proposal, Sg or Sp = 0, is left out: some distributions refuse empty values)
    log_p2, log_q1 = [], []  # p(φ2 | φ1, m) and q(φ1 | φ2, m) at the guide's draws, then at the prior's
    if n_guide:
        log_p2.append(model.phi2_prior(phi1_q, m).log_prob(phi2_q))  # [Sg, T, 1]
        log_q1.append(q1_q.log_prob(phi1_q))
    if n_prior:
        log_p2.append(p2_p.log_prob(phi2_p))  # [Sp, T, 1]
        log_q1.append(guide.phi1_posterior(phi2_p, m).log_prob(phi1_p))
    log_p2, log_q1 = torch.cat(log_p2), torch.cat(log_q1)  # [S, T, 1]
    log_prior = (model.phi1_prior(phi1.shape[:-1]).log_prob(phi1) + log_p2)[..., 0]  # [S, T]
    log_guide = (q2.log_prob(phi2) + log_q1)[..., 0]
    if n_prior == 0:
        log_proposal = log_guide
    else:
        log_proposal = torch.logaddexp(math.log1p(-share) + log_guide, math.log(share) + log_prior)
    if x_support.shape[1] == 0:  # zero-shot: the metadata alone
        loglik = torch.zeros_like(log_prior)
    else:
        loglik = torch.where(support_mask, model.likelihood(phi2, x_support).log_prob(y_support), 0.0).sum(-1)
    log_w = log_prior + loglik - log_proposal  # [S, T]
    log_evidence = log_w.logsumexp(0) - math.log(num_samples)

    f = model.decode(phi2, x_query)  # mean [S, T, Q, Dy] or logits [S, T, Q, C]
    if model.likelihood_name == "categorical":
        return CategoricalMixturePredictive(log_w.T, f.transpose(0, 1)), log_evidence
    mean, std = f, model.scale(phi2, x_query).expand(f.shape)
    df = model.df().detach() if model.likelihood_name == "student" else None  # Student-t components
    predictive = MixturePredictive(log_w.T, mean.transpose(0, 1), std.transpose(0, 1), df)
    return predictive, log_evidence


@torch.no_grad()
def exact_predictive(model, x_support, y_support, metadata, support_mask, x_query):
    """The closed-form posterior predictive of a linear-Gaussian model with one output (the module docstring).

    Same arguments as :func:`posterior_predictive` (Dy = 1); returns ``(predictive, log_evidence [T])``,
    a ``MixturePredictive`` of one component per task and the exact log p(Y_s | X_s, m).
    """
    if not (model.linear_gaussian and model.y_dim == 1):
        raise ValueError("exact_predictive needs a linear-Gaussian model with one output (prior linear or affine, "
                         "decoder features or polynomial, normal likelihood with constant noise, y_dim 1)")
    phi1 = metadata.new_zeros(metadata.shape[0], 1, model.latent_dim)  # at φ1 = 0 the prior's mean is μ0(m)
    mean0, scale0 = model.phi2_prior_params(phi1, metadata[:, None, :])  # [T, 1, D] each
    L = model.phi1_to_phi2.weight
    cov0 = L @ L.T + torch.diag_embed(scale0[:, 0] ** 2)  # Σ0 [T, D, D]
    noise_var = model.noise_std() ** 2  # [1]
    H_s, c_s = model.design(x_support)  # [T, K, 1, D], [T, K, 1]
    support = (H_s[..., 0, :], (y_support - c_s)[..., 0], noise_var, support_mask, mean0[:, 0])
    mean, cov = linear_gaussian.posterior(cov0, *support)  # [T, D], [T, D, D]
    log_evidence = linear_gaussian.log_evidence(torch.linalg.cholesky(cov0), *support)
    H_q, c_q = model.design(x_query)  # [T, Q, 1, D], [T, Q, 1]
    y_mean, y_var = linear_gaussian.predictive(H_q[..., 0, :], mean, cov, noise_var)  # [T, Q] each
    mean_q, std_q = y_mean[..., None] + c_q, y_var.sqrt()[..., None]  # [T, Q, 1]
    return MixturePredictive(mean_q.new_zeros(mean_q.shape[0], 1), mean_q[:, None], std_q[:, None]), log_evidence


def predict_in_chunks(predictor, batch, chunk: int = PREDICT_CHUNK, progress: bool = False):
    """Yield ``(tasks, predictive)`` for consecutive chunks of ``chunk`` tasks of ``batch``.

    ``tasks`` is the slice of ``batch``'s tasks and ``predictive = predictor(batch.subset(tasks))``:
    memory stays bounded by one chunk's predictive, however many tasks the batch holds.
    ``progress`` shows a bar over the tasks.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk}")
    with tqdm(total=batch.num_tasks, disable=not progress, desc="predict", unit="task") as bar:
        for start in range(0, batch.num_tasks, chunk):
            tasks = slice(start, min(start + chunk, batch.num_tasks))
            yield tasks, predictor(batch.subset(tasks))
            bar.update(tasks.stop - start)
