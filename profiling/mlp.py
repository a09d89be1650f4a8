"""The sinusoid-regression MLP, its functional form, and its hand-written MSE gradient.

The network is 1 → hidden → … → hidden → 1 with ReLU between linear layers. Its
parameters are a dict ``name → tensor`` in the order ``dict(net.named_parameters())``
gives (``"0.weight"``, ``"0.bias"``, ``"2.weight"``, …). The functional form
:func:`mlp_forward` accepts parameters with any leading batch dimensions
(``W: [..., out, in]``, ``b: [..., out]``), which is how the vectorized algorithms run one
network per task or per ES population member with batched matrix products.

:func:`mse_and_grad` is the analytic (backpropagation) gradient of the mean squared error,
written with differentiable tensor operations so that autograd can differentiate *through*
it: that gives second-order MAML with a single ``backward`` (Finn et al., ICML 2017,
eq. 1), and first-order inner steps for ES without building any autograd graph.
It is tested against ``torch.autograd.grad``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["build_mlp", "layer_names", "mlp_forward", "mse", "mse_and_grad"]


def build_mlp(layers: int, hidden: int) -> nn.Sequential:
    """``nn.Sequential`` MLP 1 → hidden × ``layers`` → 1 with ReLU (PyTorch default init)."""
    for name, value in (("layers", layers), ("hidden", hidden)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}={value!r}: it must be a positive integer (e.g. {name}=2)")
    modules: list[nn.Module] = []
    width = 1
    for _ in range(layers):
        modules += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    modules.append(nn.Linear(width, 1))
    return nn.Sequential(*modules)


def layer_names(params: dict[str, torch.Tensor]) -> list[tuple[str, str]]:
    """(weight name, bias name) of each linear layer, input to output."""
    names = list(params)
    if len(names) % 2 or len(names) == 0:
        raise ValueError(
            f"params has keys {names}: expected weight/bias pairs as dict(build_mlp(...).named_parameters()) gives"
        )
    pairs = list(zip(names[0::2], names[1::2], strict=True))
    for w, b in pairs:
        if not (w.endswith("weight") and b.endswith("bias")):
            raise ValueError(f"params keys {w!r}, {b!r} are not a weight/bias pair of a linear layer")
    return pairs


def _linear(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    # h: [..., points, in]; weight: [..., out, in]; bias: [..., out] -> [..., points, out]
    if weight.shape[-1] == 1:  # the input layer: an outer product, cheaper without a matmul
        return h * weight.transpose(-1, -2) + bias.unsqueeze(-2)
    if h.dim() == 3 and weight.dim() == 3 and h.shape[0] == weight.shape[0]:
        return torch.baddbmm(bias.unsqueeze(-2), h, weight.transpose(-1, -2))  # fused bmm + bias
    return h @ weight.transpose(-1, -2) + bias.unsqueeze(-2)


def mlp_forward(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """f_θ(x) for parameters with optional leading batch dims.

    x: [..., points, 1] → [..., points, 1]. Batch dims of ``params`` and ``x`` broadcast.
    """
    pairs = layer_names(params)
    h = x
    for i, (w, b) in enumerate(pairs):
        h = _linear(h, params[w], params[b])
        if i < len(pairs) - 1:
            h = torch.relu(h)
    return h


def mse(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error over points, per leading batch index: [..., points, 1] → [...]."""
    return (mlp_forward(params, x) - y).pow(2).mean(dim=(-2, -1))


def mse_and_grad(
    params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """MSE and its gradient with respect to every parameter, by explicit backpropagation.

    With a_l = h_{l-1} W_lᵀ + b_l, h_l = relu(a_l), L = mean_n (a_out,n − y_n)²:
    δ_out = 2 (a_out − y) / N, ∂L/∂W_l = δ_lᵀ h_{l-1}, ∂L/∂b_l = Σ_n δ_l,
    δ_{l-1} = (δ_l W_l) ⊙ 1[a_{l-1} > 0].
    Shapes: x, y: [B, points, 1]; params: W [B, out, in], b [B, out] (or unbatched W, b
    broadcast over B). Returns loss [B] and gradients shaped like the (batched) params.
    Every operation is differentiable, so autograd can take the second derivative.
    """
    pairs = layer_names(params)
    inputs, masks = [], []
    h = x
    for i, (w, b) in enumerate(pairs):
        inputs.append(h)  # h_{l-1}: [B, points, in]
        a = _linear(h, params[w], params[b])  # a_l: [B, points, out]
        if i < len(pairs) - 1:
            mask = (a > 0).to(a.dtype)
            masks.append(mask)
            h = a * mask
        else:
            h = a
    residual = h - y  # [B, points, 1]
    loss = residual.pow(2).mean(dim=(-2, -1))  # [B]
    delta = 2.0 * residual / residual.shape[-2]  # δ_out: [B, points, 1]
    grads: dict[str, torch.Tensor] = {}
    for i in reversed(range(len(pairs))):
        w, b = pairs[i]
        if inputs[i].shape[-1] == 1:  # input layer: Σ_n δ_n x_n, no matmul needed
            grads[w] = (delta * inputs[i]).sum(dim=-2).unsqueeze(-1)  # [B, out, 1]
        else:
            grads[w] = delta.transpose(-1, -2) @ inputs[i]  # [B, out, in]
        grads[b] = delta.sum(dim=-2)  # [B, out]
        if i > 0:
            delta = (delta @ params[w]) * masks[i - 1]  # δ_{l-1}: [B, points, in]
    return loss, {name: grads[name] for name in params}

