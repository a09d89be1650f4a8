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
component. β, Ψ and σ² are plugged in: their estimation uncertainty is not propagated.
The metadata enter as fixed-effect covariates, so they must be observed: a task with a
missing (NaN) metadata entry raises ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import torch

from .. import linear_gaussian
from ..predictive import MixturePredictive
from ..tasks.base import TaskBatch

__all__ = ["MixedModel", "MixedModelParameters", "random_effects_posterior"]

_INSTALL_HINT = "pip install 'hierarchical-meta[examples]'"


@dataclasses.dataclass
class MixedModelParameters:
    """Fitted (or given) parameters: β [P], Ψ [R, R], σ² (a float)."""

    fixed_effects: torch.Tensor
    random_cov: torch.Tensor
    residual_var: float

    def __post_init__(self):
        self.fixed_effects = torch.as_tensor(self.fixed_effects, dtype=torch.float64)
        self.random_cov = torch.as_tensor(self.random_cov, dtype=torch.float64)
        R = self.random_cov.shape[0]
        if self.fixed_effects.dim() != 1 or self.random_cov.shape != (R, R):
            raise ValueError("fixed_effects must be [P] and random_cov [R, R], got "
                             f"{tuple(self.fixed_effects.shape)} and "
                             f"{tuple(self.random_cov.shape)}")
        if not self.residual_var > 0:
            raise ValueError(f"residual_var must be > 0, got {self.residual_var}")


def random_effects_posterior(z: torch.Tensor, residual: torch.Tensor, mask: torch.Tensor,
                             random_cov: torch.Tensor, residual_var: float
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian posterior of each task's random effects given its support points.

    Args:
        z: random-effect features of the support points [T, K, R].
        residual: y - fᵀβ at the support points [T, K].
        mask: which support slots are real [T, K] (K may be 0).
        random_cov: Ψ [R, R]; residual_var: σ².

    Returns:
        mean [T, R] and covariance [T, R, R] (see the module docstring).
    """
    T, K, R = z.shape
    if residual.shape != (T, K) or mask.shape != (T, K) or random_cov.shape != (R, R):
        raise ValueError(f"shapes disagree: z {tuple(z.shape)}, residual {tuple(residual.shape)}, "
                         f"mask {tuple(mask.shape)}, random_cov {tuple(random_cov.shape)}")
    return linear_gaussian.posterior(random_cov.to(z.dtype), z, residual, residual_var, mask)


class MixedModel:
    """Random intercept and random slopes per task, fixed effects with metadata interactions.

    Args:
        random_slopes: indices of x with a random slope (nlschools: ``(0,)`` = IQ).
        interactions: pairs (i, j) adding the fixed effect x_i · m_j (nlschools:
            IQ×GS and IQ×COMB, the cross-level interactions that explain slope variation).
        reml: fit by REML (default) or maximum likelihood.
        x_names, metadata_names: names for :meth:`feature_names` (reports only).

    Fixed-effect features: ``[1, x_1..x_Dx, m_1..m_Dm, x_i·m_j for (i, j) in interactions]``;
    random-effect features: ``[1, x_i for i in random_slopes]``. Only ``y_dim = 1``.
    """

    def __init__(self, random_slopes: Sequence[int] = (0,),
                 interactions: Sequence[tuple[int, int]] = ((0, 0), (0, 1)), reml: bool = True,
                 x_names: Sequence[str] | None = None,
                 metadata_names: Sequence[str] | None = None):
        self.random_slopes = [int(i) for i in random_slopes]
        self.interactions = [(int(i), int(j)) for i, j in interactions]
        self.reml = bool(reml)
        self.x_names = list(x_names) if x_names is not None else None
        self.metadata_names = list(metadata_names) if metadata_names is not None else None
        self.parameters: MixedModelParameters | None = None
        self.result = None  # the statsmodels results object after fit()
        self._fitted_dims: tuple[int, int] | None = None  # (x_dim, metadata_dim) after fit()

    # -- features -----------------------------------------------------------------------

    def _check_dims(self, x_dim: int, metadata_dim: int) -> None:
        bad_slopes = [i for i in self.random_slopes if not 0 <= i < x_dim]
        bad_pairs = [(i, j) for i, j in self.interactions
                     if not (0 <= i < x_dim and 0 <= j < metadata_dim)]
        if bad_slopes or bad_pairs:
            raise ValueError(f"random_slopes {bad_slopes} / interactions {bad_pairs} out of range "
                             f"for x_dim={x_dim}, metadata_dim={metadata_dim}")

    def fixed_features(self, x: torch.Tensor, metadata: torch.Tensor) -> torch.Tensor:
        """f(x, m): x [T, N, Dx], metadata [T, Dm] -> [T, N, P]."""
        self._check_dims(x.shape[-1], metadata.shape[-1])
        missing = torch.isnan(metadata).any(-1).nonzero()[:, 0].tolist()
        if missing:
            raise ValueError(f"the mixed model needs observed metadata, but task(s) {missing[:10]} "
                             "have missing (NaN) entries; impute them or leave those tasks out")
        m = metadata[:, None, :].expand(-1, x.shape[1], -1)  # [T, N, Dm]
        products = [x[..., i] * m[..., j] for i, j in self.interactions]
        return torch.cat([x.new_ones(x.shape[:-1] + (1,)), x, m] +
                         [p[..., None] for p in products], -1)

    def random_features(self, x: torch.Tensor) -> torch.Tensor:
        """z(x): x [T, N, Dx] -> [T, N, R]."""
        slopes = [x[..., i:i + 1] for i in self.random_slopes]
        return torch.cat([x.new_ones(x.shape[:-1] + (1,))] + slopes, -1)

    def feature_names(self, x_dim: int, metadata_dim: int) -> tuple[list, list]:
        """Names of the fixed and the random-effect features."""
        xn = self.x_names or [f"x{i}" for i in range(x_dim)]
        mn = self.metadata_names or [f"m{j}" for j in range(metadata_dim)]
        fixed = ["intercept"] + xn + mn + [f"{xn[i]}:{mn[j]}" for i, j in self.interactions]
        return fixed, ["intercept"] + [xn[i] for i in self.random_slopes]

    # -- fitting ------------------------------------------------------------------------

    def fit(self, batch: TaskBatch) -> MixedModel:
        """Fit β, Ψ, σ² by (RE)ML on every point, support and query, of the batch's tasks."""
        try:
            import statsmodels.api as sm
            from statsmodels.tools.sm_exceptions import ConvergenceWarning, SingularMatrixWarning
        except ImportError as error:
            raise ImportError("the mixed-model baseline needs statsmodels: "
                              f"{_INSTALL_HINT}") from error
        if batch.y_support.shape[-1] != 1:
            raise ValueError(f"MixedModel handles y_dim = 1, got {batch.y_support.shape[-1]}")
        x = torch.cat([batch.x_support, batch.x_query], 1).double()  # [T, N, Dx]
        y = torch.cat([batch.y_support, batch.y_query], 1).double()[..., 0]  # [T, N]
        mask = torch.cat([batch.support_mask, batch.query_mask], 1)  # [T, N]
        groups = torch.arange(batch.num_tasks)[:, None].expand_as(mask)
        exog = self.fixed_features(x, batch.metadata.double())[mask].numpy()  # [n, P]
        exog_re = self.random_features(x)[mask].numpy()  # [n, R]
        if len(set(groups[mask].tolist())) < 2:
            raise ValueError("fitting a mixed model needs at least 2 tasks with points")
        model = sm.MixedLM(y[mask].numpy(), exog, groups=groups[mask].numpy(), exog_re=exog_re)
        with warnings.catch_warnings():
            # A boundary estimate is legitimate here, so two warnings about it are ignored,
            # and nothing else: failed convergence still warns and is checked below.
            # - "The MLE may be on the boundary": raised whenever a random-effect variance
            #   is below an absolute 0.01 whatever the data's scale (on standardized
            #   nlschools the IQ-slope variance is 0.002-0.013);
            # - "Random effects covariance is singular": raised while the optimizer
            #   evaluates the score at a rank-deficient Ψ. On some class splits the REML
            #   optimum has rank-1 Ψ (intercept and slope perfectly correlated); the
            #   conditioning below never inverts Ψ, and summary() reports Ψ's smallest
            #   eigenvalue so a boundary fit is visible.
            warnings.filterwarnings("ignore", message="The MLE may be on the boundary",
                                    category=ConvergenceWarning)
            warnings.filterwarnings("ignore", message="Random effects covariance is singular",
                                    category=SingularMatrixWarning)
            result = model.fit(reml=self.reml, method=["lbfgs", "bfgs"])
        if not result.converged:
            raise RuntimeError("MixedLM did not converge; see result.mle_retvals")
        self.result = result
        self.parameters = MixedModelParameters(
            fixed_effects=torch.as_tensor(result.fe_params),
            random_cov=torch.as_tensor(result.cov_re),  # already scaled by σ² in statsmodels
            residual_var=float(result.scale))
        self._fitted_dims = (batch.x_support.shape[-1], batch.metadata.shape[-1])
        return self

    @classmethod
    def from_parameters(cls, parameters: MixedModelParameters, **kwargs) -> MixedModel:
        """A model with given β, Ψ, σ² (for tests and what-if analyses)."""
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
        return {"fixed_effects": dict(zip(fixed, p.fixed_effects.tolist(), strict=False)),
                "random_cov": {"names": random, "matrix": p.random_cov.tolist(),
                               "min_eigenvalue": float(torch.linalg.eigvalsh(p.random_cov)[0])},
                "residual_var": p.residual_var}

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
        return random_effects_posterior(self.random_features(xs), residual, batch.support_mask,
                                        p.random_cov, p.residual_var)

    def predict(self, batch: TaskBatch) -> MixturePredictive:
        """The Gaussian predictive at ``batch.x_query`` given the support: S = 1 component."""
        p = self._require_fit()
        mean_b, cov_b = self.posterior(batch)  # [T, R], [T, R, R]
        xq = batch.x_query.double()
        f = self.fixed_features(xq, batch.metadata.double())  # [T, Q, P]
        z = self.random_features(xq)  # [T, Q, R]
        mean_re, var = linear_gaussian.predictive(z, mean_b, cov_b, p.residual_var)  # [T, Q] each
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
