"""The user-facing model: generative model + amortized guide, with predict and checkpoints.

Graphical model (plates ``tasks`` ⊃ ``points``; θ global)::

    m_t ──┐
    φ1_t ─┴─> φ2_t ──> y_tn <── x_tn          (generative, parameters θ)
    (x_tn, y_tn) ─ ─> φ2_t ─ ─> φ1_t <─ ─ m_t   (guide, parameters ψ)

See :mod:`hierarchical_meta.model` and :mod:`hierarchical_meta.guide` for the densities.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from .checkpoint import REFIT, Checkpoint
from .guide import AmortizedGuide
from .model import DECODERS, PRIORS, GenerativeModel, check_likelihood, check_polynomial
from .predict import NUM_SAMPLES, exact_predictive, posterior_predictive
from .tasks import TaskBatch
from .tasks.schema import MAX_INPUT  # the inputs the networks accept, as x, y and m reach them

__all__ = ["ModelConfig", "HierarchicalMetaModel", "load_checkpoint"]


@dataclasses.dataclass
class ModelConfig:
    """Everything that fixes the networks' shapes; stored in every checkpoint.

    ``use_metadata=False`` is the ablation that withholds m (fed as missing everywhere).
    ``guide_sees_metadata`` selects q(φ2 | X, Y, m) instead of q(φ2 | X, Y).
    ``guide_components`` = J > 1 makes q(φ2 | ...) a mixture of J Gaussians (guide.py).
    ``noise="heteroscedastic"`` lets the observation noise depend on x and the task (model.py).
    ``likelihood="categorical"`` with ``num_classes`` = C (and y_dim = 1) makes it a
    classifier: y holds class indices and :meth:`HierarchicalMetaModel.predict` returns a
    ``CategoricalMixturePredictive``. ``polynomial_degree`` is the degree of the
    ``decoder="polynomial"`` terms, ``student_df`` the fixed degrees of freedom of
    ``likelihood="student"`` (None: learned; model.py).
    """

    x_dim: int = 1
    y_dim: int = 1
    metadata_dim: int = 2
    latent_dim: int = 4
    hidden: int = 64
    layers: int = 2
    prior: str = "mlp"
    decoder: str = "features"
    guide_sees_metadata: bool = True
    guide_components: int = 1
    use_metadata: bool = True
    noise_std: float | None = None
    noise: str = "constant"
    likelihood: str = "normal"
    num_classes: int | None = None
    polynomial_degree: int = 2
    student_df: float | None = None

    def __post_init__(self):
        for name in ("x_dim", "y_dim", "latent_dim", "hidden", "guide_components"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.metadata_dim < 0:
            raise ValueError(f"metadata_dim must be >= 0 (0: tasks without metadata), got {self.metadata_dim}")
        if self.layers < 0:
            raise ValueError(f"layers must be >= 0, got {self.layers}")
        if self.prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got {self.prior!r}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        if self.noise_std is not None and not (math.isfinite(self.noise_std) and self.noise_std > 0):
            raise ValueError(f"noise_std must be a finite number > 0 (or None to learn it), got {self.noise_std}")
        check_likelihood(self.likelihood, self.num_classes, self.y_dim, self.noise_std, self.noise, self.student_df)
        if self.decoder == "polynomial":
            outputs = self.num_classes if self.likelihood == "categorical" else self.y_dim
            check_polynomial(self.polynomial_degree, self.x_dim, outputs, self.latent_dim)


class HierarchicalMetaModel(nn.Module):
    """p_θ(φ1) p_θ(φ2 | φ1, m) Π_n p_θ(y_n | φ2, x_n) with guide q_ψ(φ2 | X, Y) q_ψ(φ1 | φ2, m).

    Train with :func:`hierarchical_meta.train.fit`; predict with :meth:`predict`.
    """

    def __init__(self, config: ModelConfig | None = None, **kwargs):
        super().__init__()
        self.config = config if config is not None else ModelConfig(**kwargs)
        c = self.config
        shared = dict(x_dim=c.x_dim, y_dim=c.y_dim, metadata_dim=c.metadata_dim,
                      latent_dim=c.latent_dim, hidden=c.hidden, layers=c.layers)
        self.model = GenerativeModel(prior=c.prior, decoder=c.decoder, noise_std=c.noise_std, noise=c.noise,
                                     likelihood=c.likelihood, num_classes=c.num_classes,
                                     polynomial_degree=c.polynomial_degree, student_df=c.student_df, **shared)
        self.guide = AmortizedGuide(sees_metadata=c.guide_sees_metadata, num_classes=c.num_classes,
                                    components=c.guide_components, **shared)

    # -- inputs --------------------------------------------------------------------------
    def check_batch(self, batch: TaskBatch) -> None:
        """Raise ``ValueError`` if the batch's dimensions do not match this model."""
        c = self.config
        found = {"x": batch.x_support.shape[-1], "y": batch.y_support.shape[-1],
                 "metadata": batch.metadata.shape[-1]}
        expected = {"x": c.x_dim, "y": c.y_dim, "metadata": c.metadata_dim}
        for key in found:
            if found[key] != expected[key]:
                raise ValueError(f"{key} has dimension {found[key]} but the model was built for "
                                 f"{expected[key]} (config {key}_dim); "
                                 "build the model from the task family you predict on, or load the "
                                 "checkpoint trained on it")
        for name, values, mask in (("x_support", batch.x_support, batch.support_mask),
                                   ("y_support", batch.y_support, batch.support_mask),
                                   ("x_query", batch.x_query, batch.query_mask),
                                   ("y_query", batch.y_query, batch.query_mask),
                                   ("metadata", batch.metadata[:, None], None)):
            big = values.abs() > MAX_INPUT  # NaN (missing metadata) is not big
            if mask is not None:
                big &= mask[..., None]
            if big.any():
                t, n, d = big.nonzero()[0].tolist()
                where = f"task {t}, dimension {d}" if name == "metadata" else f"task {t}, point {n}, dimension {d}"
                raise ValueError(f"{name} of {where} is {float(values[t, n, d]):g}, beyond ±{MAX_INPUT:g}: "
                                 "the model takes inputs on the scale it was trained on; standardize the data")
    def model_metadata(self, metadata: torch.Tensor) -> torch.Tensor:
        """The metadata the networks see: all-missing (NaN) when ``use_metadata`` is off."""
        if self.config.use_metadata:
            return metadata
        return torch.full_like(metadata, float("nan"))

    # -- prediction -----------------------------------------------------------------------
    def predict(self, batch: TaskBatch, num_samples: int = NUM_SAMPLES, defensive: float = 0.3):
        """Posterior predictive at ``batch.x_query`` given the support set and metadata.

        Returns ``(predictive, log_evidence)``: a ``MixturePredictive``, or a
        ``CategoricalMixturePredictive`` for ``likelihood="categorical"``. ``log_evidence`` [T] estimates
        log p(Y_support | X_support, m) by importance sampling. A linear-Gaussian model with one
        output (``GenerativeModel.linear_gaussian``, y_dim 1) predicts in closed form instead
        (:func:`~hierarchical_meta.predict.exact_predictive`: one Gaussian per query point, the exact
        evidence; ``num_samples`` and ``defensive`` unused).
        """
        self.check_batch(batch)
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if self.model.linear_gaussian and self.config.y_dim == 1:
            return exact_predictive(self.model, batch.x_support, batch.y_support, self.model_metadata(batch.metadata),
                                    batch.support_mask, batch.x_query)
        return posterior_predictive(self.model, self.guide, batch.x_support, batch.y_support,
                                    self.model_metadata(batch.metadata), batch.support_mask,
                                    batch.x_query, num_samples=num_samples, defensive=defensive)

    # -- checkpoints ----------------------------------------------------------------------
    def to_checkpoint(self, **training) -> Checkpoint:
        """A :class:`~hierarchical_meta.checkpoint.Checkpoint` of this model (``training``: its training fields)."""
        return Checkpoint(model_config=dataclasses.asdict(self.config), weights=self.state_dict(), **training)

    def save(self, path: str) -> None:
        """Write the model alone (no training state) to ``path`` atomically; read it with :func:`load_checkpoint`."""
        self.to_checkpoint().write(path)


def load_checkpoint(path: str, map_location="cpu") -> tuple[HierarchicalMetaModel, Checkpoint]:
    """Load ``(HierarchicalMetaModel, Checkpoint)`` from a file written by :meth:`Checkpoint.write`.

    :meth:`Checkpoint.read` checks the file (weights_only: a crafted file cannot run code);
    then its ``model_config`` must be this version's ``ModelConfig`` and the weights must have
    its shapes, checked before any allocation. FileNotFoundError (IsADirectoryError,
    PermissionError) for a path that is not a readable file; ValueError, naming the field, for
    anything else.
    """
    checkpoint = Checkpoint.read(path, map_location)
    try:
        config = _config_of(checkpoint.model_config)
        _check_weights(config, checkpoint.weights)
    except ValueError as error:
        raise ValueError(f"checkpoint {path!r}: {error}") from None
    model = HierarchicalMetaModel(config)
    model.load_state_dict(checkpoint.weights)
    return model, checkpoint


def _config_of(fields: dict) -> ModelConfig:
    """The ``ModelConfig`` of a checkpoint's ``model_config`` field; ValueError naming what is wrong."""
    known = [field.name for field in dataclasses.fields(ModelConfig)]
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise ValueError(f"it is from another version of hierarchical_meta: unknown model_config key(s) {unknown}; "
                         "refit it with this version (or use the version that wrote it)")
    missing = [name for name in known if name not in fields]
    if missing:
        raise ValueError(f"field 'model_config' lacks {missing}; {REFIT}")
    try:
        return ModelConfig(**fields)
    except (TypeError, ValueError) as error:  # a value of the wrong type or range
        raise ValueError(f"field 'model_config' is an invalid configuration ({error}); {REFIT}") from None


def _check_weights(config: ModelConfig, weights: dict) -> None:
    """ValueError unless ``weights`` have the names and shapes of a model of ``config``.

    The model's shapes come from building it on the meta device (no memory), so a
    configuration too large to allocate is refused, not allocated.
    """
    try:
        with torch.device("meta"):
            shapes = {name: value.shape for name, value in HierarchicalMetaModel(config).state_dict().items()}
    except (RuntimeError, TypeError, ValueError, OverflowError) as error:
        raise ValueError(f"field 'model_config' describes networks that cannot be built ({error}); {REFIT}") from None
    missing, unknown = sorted(set(shapes) - set(weights)), sorted(set(weights) - set(shapes))
    if missing or unknown:
        raise ValueError(f"field 'weights' does not match field 'model_config': missing {missing}, unknown "
                         f"{unknown}; {REFIT}")
    for name, shape in shapes.items():
        if weights[name].shape != shape:
            raise ValueError(f"field 'weights' does not match field 'model_config': {name!r} has shape "
                             f"{list(weights[name].shape)}, the configuration needs {list(shape)}; {REFIT}")
