"""A linear mixed model with task-level covariates: what a statistician fits to grouped data.

For point n of task t, with fixed-effect features f (an intercept, x, m and chosen
products x_i·m_j) and random-effect features z (an intercept and chosen slopes of x)::

    y_tn = f(x_tn, m_t)ᵀ β + z(x_tn)ᵀ b_t + ε_tn,   b_t ~ N(0, Ψ),   ε_tn ~ N(0, σ²)

β, Ψ and σ² are fitted by REML on the training tasks with statsmodels' ``MixedLM``
(Lindstrom and Bates, 1988). For a new task, the K support points give the Gaussian
posterior of its random effects (the BLUP and its covariance; Henderson, 1975),
computed here from the fitted parameters. With A = Σ_s z_s z_sᵀ / σ² and r_s = y_s - f_sᵀ β
over the support points s::

    Cov[b | support] = (I + Ψ A)⁻¹ Ψ,    E[b | support] = Cov[b | support] Σ_s z_s r_s / σ²

(no inverse of Ψ, so a singular Ψ on the boundary is fine; K = 0 gives the prior;
:mod:`hierarchical_meta.linear_gaussian` computes it). Each query point's predictive is
Gaussian::

    y_q | support ~ N(f_qᵀ β + z_qᵀ E[b | support],  z_qᵀ Cov[b | support] z_q + σ²)

It is returned as a :class:`~hierarchical_meta.predictive.MixturePredictive` with one
component.

A heteroscedastic noise (``noise_slopes``, nlschools: ``(0,)`` = IQ) makes the residual
log-sd linear in chosen entries of x: ε_tn ~ N(0, σ² exp(2 Σ_i c_i x_tn,i)). statsmodels
cannot fit that, so β, Ψ, σ² and c are then fitted by maximum likelihood in torch
(float64, L-BFGS from statsmodels' constant-noise ML fit): the exact Gaussian marginal
likelihood of each task, y_t ~ N(F_t β, Z_t Ψ Z_tᵀ + diag v_t), with Ψ = L Lᵀ
(:func:`hierarchical_meta.linear_gaussian.log_evidence`). Prediction is the same
conditioning with the per-point variances v in place of σ².

β, Ψ, σ² (and c) are plugged in: their estimation uncertainty is not propagated.
The metadata enter as fixed-effect covariates, so they must be observed: a task with a
missing (NaN) metadata entry raises ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence

import torch

from .. import linear_gaussian
from ..predictive import MixturePredictive
from ..tasks.base import TaskBatch
from .design import linear_features

__all__ = ["MixedModel", "MixedModelParameters", "random_effects_posterior"]

_INSTALL_HINT = "pip install 'hierarchical-meta[examples]'"
_LBFGS_ROUNDS = 5  # restarts of L-BFGS (500 iterations each) in the heteroscedastic fit
_GRAD_TOL = 1e-6  # its convergence: gradient norm of the log-likelihood per point


@dataclasses.dataclass
class MixedModelParameters:
    """Fitted (or given) parameters: β [P], Ψ [R, R], σ² (a float), c [S] (default none).

    The residual variance of a point is σ² exp(2 Σ_i c_i x_{noise_slopes[i]}).
    """

    fixed_effects: torch.Tensor
    random_cov: torch.Tensor
    residual_var: float
    log_sd_slopes: torch.Tensor = dataclasses.field(default_factory=lambda: torch.zeros(0))

    def __post_init__(self):
        self.fixed_effects = torch.as_tensor(self.fixed_effects, dtype=torch.float64)
        self.random_cov = torch.as_tensor(self.random_cov, dtype=torch.float64)
        self.log_sd_slopes = torch.as_tensor(self.log_sd_slopes, dtype=torch.float64)
        if self.log_sd_slopes.dim() != 1:
            raise ValueError(f"log_sd_slopes must be [S], got {tuple(self.log_sd_slopes.shape)}")
        R = self.random_cov.shape[0]
        if self.fixed_effects.dim() != 1 or self.random_cov.shape != (R, R):
            raise ValueError("fixed_effects must be [P] and random_cov [R, R], got "
                             f"{tuple(self.fixed_effects.shape)} and "
                             f"{tuple(self.random_cov.shape)}")
        if not self.residual_var > 0:
            raise ValueError(f"residual_var must be > 0, got {self.residual_var}")


def random_effects_posterior(z: torch.Tensor, residual: torch.Tensor, mask: torch.Tensor,
                             random_cov: torch.Tensor, residual_var: float | torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian posterior of each task's random effects given its support points.

    Args:
        z: random-effect features of the support points [T, K, R].
        residual: y - fᵀβ at the support points [T, K].
        mask: which support slots are real [T, K] (K may be 0).
        random_cov: Ψ [R, R]; residual_var: σ², a float or per point [T, K].

    Returns:
        mean [T, R] and covariance [T, R, R] (see the module docstring).
    """
    T, K, R = z.shape
    if residual.shape != (T, K) or mask.shape != (T, K) or random_cov.shape != (R, R):
        raise ValueError(f"shapes disagree: z {tuple(z.shape)}, residual {tuple(residual.shape)}, "
                         f"mask {tuple(mask.shape)}, random_cov {tuple(random_cov.shape)}")
    return linear_gaussian.posterior(random_cov.to(z.dtype), z, residual, residual_var, mask)


#: statsmodels' warnings that leave a fit usable. "The MLE may be on the boundary" comes whenever
#: a random-effect variance is below an absolute 0.01 whatever the data's scale (on
#: standardized nlschools the IQ-slope variance is 0.002-0.013); "Random effects covariance is
#: singular" while the optimizer passes a rank-deficient Ψ (the conditioning here never inverts
#: Ψ, and summary() reports Ψ's smallest eigenvalue); "Retrying" when the second optimizer
#: takes over (a failure of that one is a warning of its own).
_HARMLESS = ("The MLE may be on the boundary", "Random effects covariance is singular",
             "Retrying MixedLM optimization")


def _statsmodels_fit(model, reml: bool) -> tuple[object, list]:
    """statsmodels' fit of ``model`` (L-BFGS, then BFGS from where it stopped if it did not
    converge) and the warnings it gave. L-BFGS can step to where a matrix is singular and
    raise: BFGS from the start then has its turn."""
    from numpy.linalg import LinAlgError

    for methods in (["lbfgs", "bfgs"], ["bfgs"]):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = model.fit(reml=reml, method=methods)
            except LinAlgError:
                if methods == ["bfgs"]:
                    raise
                continue
        return result, caught


def _fit_problems(caught: list, fixed_effects_cov: torch.Tensor) -> list[str]:
    """What makes a statsmodels fit unreliable: its convergence warnings but the harmless ones
    (a Hessian that is not positive definite among them), and fixed-effect variances that are
    not finite and positive."""
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    problems = [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)
                and not str(w.message).startswith(_HARMLESS)]
    variances = fixed_effects_cov.diagonal()
    if not (torch.isfinite(variances).all() and (variances > 0).all()):
        problems.append("some fixed effects have no finite standard error")
    return list(dict.fromkeys(problems))


class MixedModel:
    """Random intercept and random slopes per task, fixed effects with metadata interactions.

    Args:
        random_slopes: indices of x with a random slope (nlschools: ``(0,)`` = IQ).
        interactions: pairs (i, j) adding the fixed effect x_i · m_j (nlschools:
            IQ×GS and IQ×COMB, the cross-level interactions that explain slope variation).
        reml: fit by REML (default) or maximum likelihood.
        noise_slopes: indices of x the residual log-sd is linear in (default none: a
            constant σ²). A heteroscedastic noise is fitted by maximum likelihood, so it
            needs ``reml=False``.
        x_names, metadata_names: names for :meth:`feature_names` (reports only).

    Fixed-effect features: ``[1, x_1..x_Dx, m_1..m_Dm, x_i·m_j for (i, j) in interactions]``;
    random-effect features: ``[1, x_i for i in random_slopes]``. Only ``y_dim = 1``.
    """

    def __init__(self, random_slopes: Sequence[int] = (0,),
                 interactions: Sequence[tuple[int, int]] = ((0, 0), (0, 1)), reml: bool = True,
                 noise_slopes: Sequence[int] = (),
                 x_names: Sequence[str] | None = None,
                 metadata_names: Sequence[str] | None = None):
        self.random_slopes = [int(i) for i in random_slopes]
        self.interactions = [(int(i), int(j)) for i, j in interactions]
        self.reml = bool(reml)
        self.noise_slopes = [int(i) for i in noise_slopes]
        if self.noise_slopes and self.reml:
            raise ValueError(f"noise_slopes={self.noise_slopes} is fitted by maximum likelihood, "
                             "not REML: pass reml=False")
        self.x_names = list(x_names) if x_names is not None else None
        self.metadata_names = list(metadata_names) if metadata_names is not None else None
        self.parameters: MixedModelParameters | None = None
        self.result = None  # the statsmodels results object after fit() (the start, if heteroscedastic)
        self.fit_log_likelihood: float | None = None  # the heteroscedastic ML fit's, on its data
        self._fitted_dims: tuple[int, int] | None = None  # (x_dim, metadata_dim) after fit()
        self.fixed_effects_cov: torch.Tensor | None = None  # [P, P] after fit() (see there)
        self.fit_warnings: list[str] = []
        self.fit_problems: list[str] = []

    # -- features -----------------------------------------------------------------------

    def _check_dims(self, x_dim: int, metadata_dim: int) -> None:
        bad_slopes = [i for i in self.random_slopes + self.noise_slopes if not 0 <= i < x_dim]
        bad_pairs = [(i, j) for i, j in self.interactions
                     if not (0 <= i < x_dim and 0 <= j < metadata_dim)]
        if bad_slopes or bad_pairs:
            raise ValueError(f"random_slopes / noise_slopes {bad_slopes} / interactions {bad_pairs} out of range "
                             f"for x_dim={x_dim}, metadata_dim={metadata_dim}")

    def fixed_features(self, x: torch.Tensor, metadata: torch.Tensor) -> torch.Tensor:
        """f(x, m): x [T, N, Dx], metadata [T, Dm] -> [T, N, P]."""
        self._check_dims(x.shape[-1], metadata.shape[-1])
        missing = torch.isnan(metadata).any(-1).nonzero()[:, 0].tolist()
        if missing:
            raise ValueError(f"the mixed model needs observed metadata, but task(s) {missing[:10]} "
                             "have missing (NaN) entries; impute them or leave those tasks out")
        return linear_features(x, metadata, self.interactions)

    def random_features(self, x: torch.Tensor) -> torch.Tensor:
        """z(x): x [T, N, Dx] -> [T, N, R]."""
        slopes = [x[..., i:i + 1] for i in self.random_slopes]
        return torch.cat([x.new_ones(x.shape[:-1] + (1,))] + slopes, -1)

    def noise_var(self, x: torch.Tensor, residual_var: float | torch.Tensor,
                  log_sd_slopes: torch.Tensor) -> torch.Tensor:
        """Residual variance per point, σ² exp(2 Σ_i c_i x_{noise_slopes[i]}): x [T, N, Dx] -> [T, N]."""
        if len(log_sd_slopes) != len(self.noise_slopes):
            raise ValueError(f"{len(log_sd_slopes)} log-sd slopes given for "
                             f"noise_slopes={self.noise_slopes}")
        return residual_var * torch.exp(2 * x[..., self.noise_slopes] @ log_sd_slopes.to(x.dtype))

    def feature_names(self, x_dim: int, metadata_dim: int) -> tuple[list, list]:
        """Names of the fixed and the random-effect features."""
        xn = self.x_names or [f"x{i}" for i in range(x_dim)]
        mn = self.metadata_names or [f"m{j}" for j in range(metadata_dim)]
        fixed = ["intercept"] + xn + mn + [f"{xn[i]}:{mn[j]}" for i, j in self.interactions]
        return fixed, ["intercept"] + [xn[i] for i in self.random_slopes]

    # -- fitting ------------------------------------------------------------------------

    def _all_points(self, batch: TaskBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Support and query points together: x [T, N, Dx], y [T, N] (0 in padded slots), mask [T, N]."""
        if batch.y_support.shape[-1] != 1:
            raise ValueError(f"MixedModel handles y_dim = 1, got {batch.y_support.shape[-1]}")
        mask = torch.cat([batch.support_mask, batch.query_mask], 1)
        x = torch.cat([batch.x_support, batch.x_query], 1).double()
        y = torch.cat([batch.y_support, batch.y_query], 1).double()[..., 0]
        return torch.where(mask[..., None], x, 0.0), torch.where(mask, y, 0.0), mask

    def fit(self, batch: TaskBatch) -> MixedModel:
        """Fit β, Ψ, σ² (and c) by (RE)ML on every point, support and query, of the batch's tasks.

        statsmodels' warnings are recorded, never shown: ``fit_warnings`` holds them all and
        ``fit_problems`` those that make the fit unreliable (:func:`_fit_problems`), for the
        caller to act on (the linear baselines then drop random slopes). A fit that did not
        converge raises ``RuntimeError``. ``fixed_effects_cov`` [P, P] is the estimates'
        covariance (statsmodels' inverse Hessian; None after a heteroscedastic fit).
        """
        try:
            import statsmodels.api as sm
        except ImportError as error:
            raise ImportError("the mixed-model baseline needs statsmodels: "
                              f"{_INSTALL_HINT}") from error
        x, y, mask = self._all_points(batch)  # [T, N, Dx], [T, N], [T, N]
        groups = torch.arange(batch.num_tasks)[:, None].expand_as(mask)
        exog = self.fixed_features(x, batch.metadata.double())[mask].numpy()  # [n, P]
        exog_re = self.random_features(x)[mask].numpy()  # [n, R]
        if len(set(groups[mask].tolist())) < 2:
            raise ValueError("fitting a mixed model needs at least 2 tasks with points")
        model = sm.MixedLM(y[mask].numpy(), exog, groups=groups[mask].numpy(), exog_re=exog_re)
        result, caught = _statsmodels_fit(model, self.reml)
        covariance = torch.as_tensor(result.cov_params()[:exog.shape[1], :exog.shape[1]])
        self.fit_warnings = list(dict.fromkeys(str(w.message) for w in caught))
        if not result.converged:
            gradient = [m for m in self.fit_warnings if m.startswith("Gradient optimization failed")]
            raise RuntimeError("MixedLM did not converge" + "".join(f" ({m})" for m in gradient[:1]))
        self.fit_problems = _fit_problems(caught, covariance)
        self.result, self.fixed_effects_cov = result, covariance
        self.parameters = MixedModelParameters(
            fixed_effects=torch.as_tensor(result.fe_params),
            random_cov=torch.as_tensor(result.cov_re),  # already scaled by σ² in statsmodels
            residual_var=float(result.scale), log_sd_slopes=torch.zeros(len(self.noise_slopes)))
        self._fitted_dims = (batch.x_support.shape[-1], batch.metadata.shape[-1])
        if self.noise_slopes:
            self.parameters, self.fit_log_likelihood = self._fit_noise(batch)
            self.fixed_effects_cov = None
        return self

    def log_likelihood(self, batch: TaskBatch, parameters: MixedModelParameters | None = None
                       ) -> torch.Tensor:
        """Σ_t log N(y_t; F_t β, Z_t Ψ Z_tᵀ + diag v_t) over every point of the batch's tasks.

        The maximum-likelihood objective (not REML's), at ``parameters`` (default the fitted ones).
        """
        p = parameters if parameters is not None else self._require_fit()
        values, vectors = torch.linalg.eigh(p.random_cov)  # any PSD Ψ = L Lᵀ, singular included
        factor = vectors * values.clamp(min=0).sqrt()
        return self._log_likelihood(batch, p.fixed_effects, factor, p.residual_var, p.log_sd_slopes)

    def _log_likelihood(self, batch, beta, factor, residual_var, log_sd_slopes) -> torch.Tensor:
        x, y, mask = self._all_points(batch)
        residual = y - self.fixed_features(x, batch.metadata.double()) @ beta
        noise = self.noise_var(x, residual_var, log_sd_slopes)
        return linear_gaussian.log_evidence(factor, self.random_features(x), residual, noise, mask).sum()

    def _fit_noise(self, batch: TaskBatch) -> tuple[MixedModelParameters, float]:
        """Maximum likelihood of β, Ψ = L Lᵀ (L lower triangular), log σ and c, from self.parameters."""
        start = self.parameters
        eye = torch.eye(start.random_cov.shape[0], dtype=torch.float64)
        beta = start.fixed_effects.clone().requires_grad_()
        factor = torch.linalg.cholesky(start.random_cov + 1e-8 * eye).contiguous().requires_grad_()
        log_sd = torch.tensor(0.5 * math.log(start.residual_var), dtype=torch.float64, requires_grad=True)
        slopes = start.log_sd_slopes.clone().requires_grad_()
        params = (beta, factor, log_sd, slopes)
        n = int(torch.cat([batch.support_mask, batch.query_mask], 1).sum())
        optimizer = torch.optim.LBFGS(params, max_iter=500, history_size=20, tolerance_grad=1e-9,
                                      tolerance_change=1e-13, line_search_fn="strong_wolfe")

        def loss():
            optimizer.zero_grad()
            value = -self._log_likelihood(batch, beta, factor.tril(), torch.exp(2 * log_sd), slopes) / n
            value.backward()
            return value

        for _ in range(_LBFGS_ROUNDS):  # L-BFGS stops after max_iter evaluations: resume until settled
            optimizer.step(loss)
            loss()
            grad_norm = float(torch.cat([p.grad.reshape(-1) for p in params]).norm())
            if grad_norm < _GRAD_TOL:
                break
        else:
            raise RuntimeError("the heteroscedastic mixed model's L-BFGS did not converge: gradient "
                               f"norm {grad_norm:.1e} of the log-likelihood per point > {_GRAD_TOL}")
        with torch.no_grad():
            L = factor.tril()
            fitted = MixedModelParameters(beta.detach().clone(), L @ L.T, float(torch.exp(2 * log_sd)),
                                          slopes.detach().clone())
            return fitted, float(self._log_likelihood(batch, beta, L, fitted.residual_var, slopes))

    @classmethod
    def from_parameters(cls, parameters: MixedModelParameters, **kwargs) -> MixedModel:
        """A model with given β, Ψ, σ² and c (for tests and what-if analyses)."""
        model = cls(**kwargs)
        model.parameters = parameters
        return model

    def summary(self) -> dict:
        """Fitted parameters by name: fixed effects, random-effect covariance, residual variance."""
        p = self._require_fit()
        dims = self._fitted_dims
        if dims is None:
            fixed = [f"f{i}" for i in range(len(p.fixed_effects))]
            random = [f"z{i}" for i in range(p.random_cov.shape[0])]
        else:
            fixed, random = self.feature_names(*dims)
        out = {"fixed_effects": dict(zip(fixed, p.fixed_effects.tolist(), strict=False)),
               "random_cov": {"names": random, "matrix": p.random_cov.tolist(),
                              "min_eigenvalue": float(torch.linalg.eigvalsh(p.random_cov)[0])},
               "residual_var": p.residual_var}
        if self.noise_slopes:
            names = self.x_names or [f"x{i}" for i in range(max(self.noise_slopes) + 1)]
            out["log_sd_slopes"] = {names[i]: c for i, c in zip(self.noise_slopes, p.log_sd_slopes.tolist(),
                                                                strict=True)}
        if self.fit_warnings:
            out["fit_warnings"] = list(self.fit_warnings)
        if self.fit_log_likelihood is not None:  # ML with this noise against ML with a constant one
            out["log_likelihood"] = {"fitted": self.fit_log_likelihood, "constant_noise": float(self.result.llf)}
        return out

    def _require_fit(self) -> MixedModelParameters:
        if self.parameters is None:
            raise RuntimeError("call fit(batch) (or use from_parameters) before predicting")
        return self.parameters

    # -- prediction ---------------------------------------------------------------------

    def posterior(self, batch: TaskBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean [T, R] and covariance [T, R, R] of each task's random effects."""
        p = self._require_fit()
        xs = batch.x_support.double()
        f = self.fixed_features(xs, batch.metadata.double())  # [T, K, P]
        self._check_width(f.shape[-1], p)
        residual = batch.y_support.double()[..., 0] - f @ p.fixed_effects  # [T, K]
        noise = self.noise_var(torch.where(batch.support_mask[..., None], xs, 0.0), p.residual_var,
                               p.log_sd_slopes)  # [T, K]
        return random_effects_posterior(self.random_features(xs), residual, batch.support_mask,
                                        p.random_cov, noise)

    def predict(self, batch: TaskBatch) -> MixturePredictive:
        """The Gaussian predictive at ``batch.x_query`` given the support: S = 1 component."""
        p = self._require_fit()
        mean_b, cov_b = self.posterior(batch)  # [T, R], [T, R, R]
        xq = batch.x_query.double()
        f = self.fixed_features(xq, batch.metadata.double())  # [T, Q, P]
        z = self.random_features(xq)  # [T, Q, R]
        noise = self.noise_var(xq, p.residual_var, p.log_sd_slopes)  # [T, Q]
        mean_re, var = linear_gaussian.predictive(z, mean_b, cov_b, noise)  # [T, Q] each
        mean = f @ p.fixed_effects + mean_re
        dtype = batch.x_query.dtype
        T = batch.num_tasks
        return MixturePredictive(log_weights=torch.zeros(T, 1, dtype=dtype),
                                 mean=mean[:, None, :, None].to(dtype),  # [T, 1, Q, 1]
                                 std=var.sqrt()[:, None, :, None].to(dtype))

    def _check_width(self, width: int, p: MixedModelParameters) -> None:
        if width != len(p.fixed_effects):
            raise ValueError(f"the batch gives {width} fixed-effect features but the model has "
                             f"{len(p.fixed_effects)} fixed effects; x_dim or metadata_dim differ "
                             "from the data it was fitted on")
