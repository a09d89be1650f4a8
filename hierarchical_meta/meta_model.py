"""The user-facing model: generative model + amortized guide, with predict and checkpoints.

Graphical model (plates ``tasks`` ⊃ ``points``; θ global)::

    m_t ──┐
    φ1_t ─┴─> φ2_t ──> y_tn <── x_tn          (generative, parameters θ)
    (x_tn, y_tn) ─ ─> φ2_t ─ ─> φ1_t <─ ─ m_t   (guide, parameters ψ)

See :mod:`hierarchical_meta.model` and :mod:`hierarchical_meta.guide` for the densities.
"""

from __future__ import annotations

import dataclasses
import os
import pickle

import torch
from torch import nn

from .guide import AmortizedGuide
from .model import DECODERS, PRIORS, GenerativeModel, check_likelihood
from .predict import NUM_SAMPLES, posterior_predictive
from .tasks import TaskBatch

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
    ``CategoricalMixturePredictive``.
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

    def __post_init__(self):
        for name in ("x_dim", "y_dim", "metadata_dim", "latent_dim", "hidden", "guide_components"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.layers < 0:
            raise ValueError(f"layers must be >= 0, got {self.layers}")
        if self.prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got {self.prior!r}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        check_likelihood(self.likelihood, self.num_classes, self.y_dim, self.noise_std, self.noise)


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
                                     likelihood=c.likelihood, num_classes=c.num_classes, **shared)
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
        log p(Y_support | X_support, m) by importance sampling.
        """
        self.check_batch(batch)
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        return posterior_predictive(self.model, self.guide, batch.x_support, batch.y_support,
                                    self.model_metadata(batch.metadata), batch.support_mask,
                                    batch.x_query, num_samples=num_samples, defensive=defensive)

    # -- checkpoints ----------------------------------------------------------------------
    def save(self, path: str, **extra) -> None:
        """Write config + weights (+ ``extra`` entries) atomically: a crash never leaves half a file."""
        state = {"config": dataclasses.asdict(self.config), "state_dict": self.state_dict(), **extra}
        tmp = f"{path}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, path)


def load_checkpoint(path: str, map_location="cpu"):
    """Load ``(HierarchicalMetaModel, checkpoint dict)`` from a file written by :meth:`save`."""
    if not os.path.exists(path):
        raise ValueError(f"checkpoint {path!r} does not exist; train one with "
                         "`python -m hierarchical_meta fit --out DIR` (it writes DIR/model.pt)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except (pickle.UnpicklingError, EOFError, RuntimeError) as error:
        raise ValueError(f"{path!r} is not a hierarchical_meta checkpoint ({error}); pass the "
                         "DIR/model.pt that `python -m hierarchical_meta fit --out DIR` wrote") from None
    if not isinstance(state, dict) or "config" not in state or "state_dict" not in state:
        raise ValueError(f"{path!r} is not a hierarchical_meta checkpoint (no config/state_dict)")
    try:
        config = ModelConfig(**state["config"])
    except TypeError as error:  # a field this version does not have (or lacks)
        raise ValueError(f"checkpoint {path!r} was written by another version of hierarchical_meta "
                         f"({error}); retrain it with this version") from None
    model = HierarchicalMetaModel(config)
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as error:
        raise ValueError(f"checkpoint {path!r} does not match its stored configuration: {error}") from None
    return model, state
