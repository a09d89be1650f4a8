"""The evidence lower bound of docs/derivation.md, written in plain torch (no Pyro inference).

With X = x_1:N, Y = y_1:N and q = q(φ2 | X, Y) q(φ1 | φ2, m)::

    log p(Y | X, m) >= E_q[log p(Y | φ2, X)] + E_q[log p(φ2 | φ1, m)] - E_q[log q(φ2 | X, Y)]
                       - E_{q(φ2|X,Y)}[KL(q(φ1 | φ2, m) || p(φ1))]

The φ1 KL is closed-form (both Gaussian); the φ2 terms are Monte Carlo because φ1 is
drawn given φ2. With ``analytic_phi1_kl=False`` every term is Monte Carlo, which is
exactly what Pyro's ``Trace_ELBO`` estimates (same draws, same value). For a mixture
q(φ2 | X, Y) (``AmortizedGuide(components=J)``) the expectation over q(φ2) is taken per
component, Σ_j π_j E_{q_j}[·], with S draws from each: Pyro, which cannot reparameterize a
mixture, estimates the same bound with a score-function term (same mean, more variance).

:func:`importance_log_evidence` is the importance-weighted (tighter) estimate
log (1/S) Σ_s p(φ1_s) p(φ2_s | φ1_s, m) p(Y | φ2_s, X) / q(φ2_s, φ1_s).

``model`` is a :class:`~hierarchical_meta.model.GenerativeModel`; ``guide`` anything
with ``phi2_posterior(x, y, m, mask)`` and ``phi1_posterior(phi2, m)`` (the amortized
guide, or an exact posterior in tests).
"""

from __future__ import annotations

import math

import torch
from torch.distributions import kl_divergence

from .guide import GaussianMixture

__all__ = ["elbo_terms", "elbo", "fast_elbo", "importance_log_evidence"]

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _draw_phi2(q2, num_particles):
    """Reparameterized draws of φ2 and their weights in the expectation, [S', T, 1, D] and [S', T].

    A Gaussian: S' = S draws, each of weight 1/S. A :class:`~hierarchical_meta.guide.GaussianMixture`
    of J components: S draws from every component (S' = J S), each of weight π_j / S, so that
    E_q[f] = Σ_j π_j E_{q_j}[f] is estimated without a draw of the component and its gradient
    reaches the weights π exactly.
    """
    if isinstance(q2, GaussianMixture):
        draws = q2.components.rsample((num_particles,))  # [S, T, 1, J, D]
        phi2 = draws.movedim(-2, 1).flatten(0, 1)  # [S J, T, 1, D], component-major within a particle
        weights = q2.log_weights.exp()[..., 0, :].T.repeat(num_particles, 1) / num_particles  # [S J, T]
        return phi2, weights
    phi2 = q2.rsample((num_particles,))  # [S, T, 1, D]
    return phi2, phi2.new_full(phi2.shape[:2], 1.0 / num_particles)


def _joint_terms(model, guide, x, y, metadata, mask, num_particles):
    """Draw φ2 then φ1 from the guide; return the log-densities per draw, each [S', T], and
    ``weight`` [S', T], each draw's weight in the expectation (:func:`_draw_phi2`)."""
    if mask is None:
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    m = metadata[:, None, :]  # [T, 1, Dm]
    q2 = guide.phi2_posterior(x, y, metadata, mask)  # batch [T, 1]
    phi2, weight = _draw_phi2(q2, num_particles)  # [S', T, 1, D], [S', T]
    q1 = guide.phi1_posterior(phi2, m)  # batch [S', T, 1]
    phi1 = q1.rsample()  # [S', T, 1, D]
    loglik = torch.where(mask, model.likelihood(phi2, x).log_prob(y), 0.0).sum(-1)  # [S', T]
    return dict(q1=q1, phi1=phi1, phi2=phi2, loglik=loglik, weight=weight,
                log_p1=model.phi1_prior(phi1.shape[:-1]).log_prob(phi1)[..., 0],
                log_p2=model.phi2_prior(phi1, m).log_prob(phi2)[..., 0],
                log_q2=q2.log_prob(phi2)[..., 0],
                log_q1=q1.log_prob(phi1)[..., 0])


def elbo_terms(model, guide, x: torch.Tensor, y: torch.Tensor, metadata: torch.Tensor,
               mask: torch.Tensor | None = None, num_particles: int = 1,
               analytic_phi1_kl: bool = True) -> dict:
    """Monte Carlo estimates of each term of the bound, per task ([T] each).

    Keys: ``loglik`` E[log p(Y|φ2,X)], ``kl_phi2`` E[log q(φ2|X,Y) - log p(φ2|φ1,m)],
    ``kl_phi1`` E[KL(q(φ1|φ2,m) || p(φ1))], ``elbo`` = loglik - kl_phi2 - kl_phi1.
    """
    t = _joint_terms(model, guide, x, y, metadata, mask, num_particles)
    if analytic_phi1_kl:
        kl1 = kl_divergence(t["q1"], model.phi1_prior(t["phi1"].shape[:-1]))[..., 0]  # [S, T]
    else:
        kl1 = t["log_q1"] - t["log_p1"]
    kl2 = t["log_q2"] - t["log_p2"]
    w = t["weight"]
    terms = {"loglik": (w * t["loglik"]).sum(0), "kl_phi2": (w * kl2).sum(0), "kl_phi1": (w * kl1).sum(0)}
    terms["elbo"] = terms["loglik"] - terms["kl_phi2"] - terms["kl_phi1"]
    return terms


def elbo(model, guide, x, y, metadata, mask=None, num_particles: int = 1,
         analytic_phi1_kl: bool = True, latent_scale: float = 1.0) -> torch.Tensor:
    """The bound summed over tasks (a scalar; Pyro's loss is its negative).

    ``latent_scale`` = β gives the annealed objective loglik − β (kl_phi2 + kl_phi1), what
    Pyro estimates when the model and guide scale their latent sites by β. With
    ``analytic_phi1_kl=False`` it equals ``Trace_ELBO`` on the same draws, value and gradients
    (the training fast path, :mod:`hierarchical_meta.train`).
    """
    terms = elbo_terms(model, guide, x, y, metadata, mask, num_particles, analytic_phi1_kl)
    return (terms["loglik"] - latent_scale * (terms["kl_phi2"] + terms["kl_phi1"])).sum()


def _gaussian_log_prob(z, half_log_det):
    """log N(v; μ, S Sᵀ) from z = S⁻¹ (v − μ) [..., D] and log |det S| [...]: [...]."""
    return -0.5 * (z ** 2).sum(-1) - half_log_det - z.shape[-1] * HALF_LOG_2PI


def _normal_log_prob(value, loc, scale):
    """log N(value; loc, diag scale²), the last dim summed: [..., D] -> [...] (arguments broadcast)."""
    return _gaussian_log_prob((value - loc) / scale, scale.log().sum(-1))


def fast_elbo(model, guide, x, y, metadata, mask=None, num_particles: int = 1,
              latent_scale: float = 1.0) -> torch.Tensor:
    """:func:`elbo` with ``analytic_phi1_kl=False`` for an :class:`~hierarchical_meta.guide.AmortizedGuide`,
    value and gradients on the same draws, with the Gaussian log-densities written out.

    It builds no ``Distribution``: the guide and the model give the densities' parameters
    (``phi2_posterior_params``, ``phi1_posterior_params``, ``phi2_prior_params``), which saves
    the distributions' Python and tensor overhead in every training step (:mod:`hierarchical_meta.train`).
    Draws are taken as the distributions take them (same random numbers, same order). A draw
    v = μ + S ε of the guide has z = ε in its own density.
    """
    if mask is None:
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    S = num_particles
    m = metadata[:, None, :]  # [T, 1, Dm]
    logits, loc2, scale_tril2 = guide.phi2_posterior_params(x, y, metadata, mask)  # [T, J], [T, J, D], [T, J, D, D]
    T, J, D = loc2.shape
    eps2 = torch.empty(S, T, J, D, dtype=loc2.dtype, device=loc2.device).normal_()
    draws = loc2 + (scale_tril2 @ eps2[..., None])[..., 0]  # [S, T, J, D]: S draws of each component
    phi2 = draws.transpose(1, 2).flatten(0, 1)[:, :, None, :]  # [S J, T, 1, D], component-major within a particle
    half_log_det2 = scale_tril2.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # [T, J]
    if logits is None:
        weight, log_q2 = 1.0 / S, _gaussian_log_prob(eps2, half_log_det2)[..., 0]  # [S, T]
    else:  # E_q[f] = Σ_j π_j E_{q_j}[f] (_draw_phi2); q(φ2) = Σ_j π_j q_j(φ2) at every draw
        log_pi = logits.log_softmax(-1)  # [T, J]
        weight = log_pi.exp().T.repeat(S, 1) / S  # [S J, T]
        z = torch.linalg.solve_triangular(scale_tril2, (phi2 - loc2)[..., None], upper=False)[..., 0]  # [S J, T, J, D]
        log_q2 = (log_pi + _gaussian_log_prob(z, half_log_det2)).logsumexp(-1)
    loc1, scale1 = guide.phi1_posterior_params(phi2, m)  # [S J, T, 1, D]
    eps1 = torch.empty_like(loc1).normal_()
    phi1 = loc1 + eps1 * scale1
    log_q1 = _gaussian_log_prob(eps1, scale1.log().sum(-1))[..., 0]  # [S J, T]
    log_p1 = _gaussian_log_prob(phi1, 0.0)[..., 0]
    log_p2 = _normal_log_prob(phi2, *model.phi2_prior_params(phi1, m))[..., 0]
    if model.likelihood_name == "normal":
        log_y = _normal_log_prob(y, model.decode(phi2, x), model.scale(phi2, x))  # [S J, T, N]
    else:
        log_y = model.likelihood(phi2, x).log_prob(y)
    loglik = torch.where(mask, log_y, 0.0).sum(-1)  # [S J, T]
    return (weight * (loglik - latent_scale * (log_q2 - log_p2 + log_q1 - log_p1))).sum()


def importance_log_evidence(model, guide, x, y, metadata, mask=None,
                            num_samples: int = 256) -> torch.Tensor:
    """Importance-weighted estimate of log p(Y | X, m) per task, [T] (a bound in expectation)."""
    t = _joint_terms(model, guide, x, y, metadata, mask, num_samples)
    log_w = t["log_p1"] + t["log_p2"] + t["loglik"] - t["log_q2"] - t["log_q1"]  # [S', T]
    return (log_w + t["weight"].log()).logsumexp(0)
