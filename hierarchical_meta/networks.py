"""Small network pieces shared by the generative model and the guide.

Every network acts on the last dimension and broadcasts over any leading dimensions,
so Pyro's vectorized particles (an extra leading dim) pass straight through.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MLP", "cat_broadcast", "metadata_features", "positive"]


class MLP(nn.Sequential):
    """in_dim -> [hidden] * layers -> out_dim with SiLU activations (``layers = 0``: affine).

    The leading dims are flattened into one for the layers (each then one matrix product,
    without the reshapes ``nn.Linear`` records per layer for inputs of more than two dims).
    ``in_dim = 0`` (no metadata) is a learned constant: the first layer has no weights,
    only its bias (initialized to zero, as torch does for a layer without inputs).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 64, layers: int = 2):
        dims = [in_dim] + [hidden] * layers + [out_dim]
        modules = []
        for i in range(len(dims) - 1):
            with warnings.catch_warnings():
                # torch warns that initializing the empty weight of a layer without inputs
                # is a no-op; that is the intent here, and only that warning is silenced.
                warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op",
                                        category=UserWarning)
                modules.append(nn.Linear(dims[i], dims[i + 1]))
            if i < len(dims) - 2:
                modules.append(nn.SiLU())
        super().__init__(*modules)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """[..., in_dim] -> [..., out_dim]."""
        h = input.reshape(math.prod(input.shape[:-1]), input.shape[-1])  # (sizes, not -1: in_dim may be 0)
        for layer in self:  # layer.forward: the layers have no hooks, and Module.__call__ costs more than a small layer
            h = layer.forward(h)
        return h.reshape(*input.shape[:-1], h.shape[-1])


def cat_broadcast(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate along the last dim after broadcasting all leading dims."""
    batch = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    return torch.cat([t.expand(*batch, t.shape[-1]) for t in tensors], -1)


def metadata_features(metadata: torch.Tensor) -> torch.Tensor:
    """Network input for metadata with missing entries: [..., Dm] -> [..., 2 Dm].

    A NaN entry means "not observed": it is fed as 0 with its missing flag set to 1.
    This is how metadata dropout in training and withheld metadata are represented.
    """
    missing = torch.isnan(metadata)
    return torch.cat([torch.where(missing, 0.0, metadata), missing.to(metadata.dtype)], -1)


def positive(raw: torch.Tensor, minimum: float = 1e-3) -> torch.Tensor:
    """A positive scale from an unconstrained network output."""
    return nn.functional.softplus(raw) + minimum
