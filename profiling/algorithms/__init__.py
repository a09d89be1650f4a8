"""The meta-gradient algorithms, one module each, and the registry the study and tests walk.

``METHODS[method][impl]`` is a function ``(params, batch, *, inner_steps, inner_lr,
**options) → (meta_loss, grads)``; :func:`meta_gradient` checks the inputs and calls it.
"""

from __future__ import annotations

from . import es, fomaml, maml, maml_checkpointed
from .common import check_inner_loop, check_params_and_batch

METHODS = {
    "maml": maml.IMPLEMENTATIONS,
    "fomaml": fomaml.IMPLEMENTATIONS,
    "es": es.IMPLEMENTATIONS,
    "maml_checkpointed": maml_checkpointed.IMPLEMENTATIONS,
}
IMPLEMENTATIONS = ("batched", "vmap", "loop")
DEFAULT_IMPL = "batched"
ES_OPTIONS = ("pairs", "noise_std", "generator")
METHOD_OPTIONS = {"es": ES_OPTIONS, "maml_checkpointed": maml_checkpointed.OPTIONS}

__all__ = ["METHODS", "IMPLEMENTATIONS", "DEFAULT_IMPL", "meta_gradient", "check_method", "check_impl"]


def check_method(method) -> None:
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown: choose one of {sorted(METHODS)}")


def check_impl(impl) -> None:
    if impl not in IMPLEMENTATIONS:
        raise ValueError(
            f"impl={impl!r} is unknown: choose one of {list(IMPLEMENTATIONS)} "
            f"({DEFAULT_IMPL!r} is the fast default, 'loop' the per-task reference)"
        )


def meta_gradient(method, params, batch, *, inner_steps=5, inner_lr=1e-2, impl=DEFAULT_IMPL, **options):
    """One meta-gradient of the post-adaptation query loss.

    Args:
        method: ``"maml"`` (second order through all inner steps), ``"fomaml"`` (first
            order), ``"es"`` (antithetic evolution strategies) or ``"maml_checkpointed"``
            (MAML's gradient, recomputing the inner loop in segments to save memory).
        params: dict name → tensor, as ``dict(build_mlp(layers, hidden).named_parameters())``
            gives (not modified; gradients are returned, not accumulated in ``.grad``).
        batch: a :class:`profiling.SinusoidBatch` on the same device and dtype as params,
            ``x_support``: [tasks, support, 1], ``x_query``: [tasks, query, 1].
        inner_steps: L ≥ 1 inner SGD steps on the support points; inner_lr: α > 0.
        impl: ``"batched"`` (default, batched matrix products), ``"vmap"`` (torch.func)
            or ``"loop"`` (the per-task reference).
        **options: ES only: ``pairs`` (16), ``noise_std`` σ (1e-3), ``generator``;
            checkpointed MAML only: ``segment_steps`` (None: ≈ √inner_steps).

    Returns:
        ``(meta_loss, grads)``: a scalar tensor and a dict with the keys of ``params``.
    """
    check_method(method)
    check_impl(impl)
    check_inner_loop(inner_steps, inner_lr)
    check_params_and_batch(params, batch)
    owner = {k: m for m, names in METHOD_OPTIONS.items() for k in names}
    unknown = [k for k in options if k not in owner]
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}: meta_gradient accepts {METHOD_OPTIONS} (by method)")
    misplaced = sorted(k for k in options if owner[k] != method)
    if misplaced:
        raise ValueError(
            f"option(s) {misplaced} apply to method {owner[misplaced[0]]!r} only, not {method!r}: drop them"
        )
    if method == "es":
        es.check_options(
            options.get("pairs", es.DEFAULT_PAIRS),
            options.get("noise_std", es.DEFAULT_NOISE_STD),
            options.get("generator"),
        )
    if method == "maml_checkpointed":
        maml_checkpointed.check_options(options.get("segment_steps"))
    return METHODS[method][impl](params, batch, inner_steps=inner_steps, inner_lr=inner_lr, **options)
