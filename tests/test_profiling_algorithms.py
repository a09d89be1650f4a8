"""Every fast path of profiling/ against its slow reference, and the math against closed forms.

All exactness checks run in float64 on small nets, seeded.
"""

import math
import os

import pytest
import torch

import profiling
from profiling.algorithms import IMPLEMENTATIONS, METHODS, es, maml_checkpointed
from profiling.measure import saved_tensor_peak_bytes
from profiling.mlp import mlp_forward, mse, mse_and_grad

F64 = torch.float64
# scripts/gpu_run.sh sets PROFILING_TEST_DEVICE=cuda on a GPU machine
DEVICE = os.environ.get("PROFILING_TEST_DEVICE", "cpu")


def make(layers=2, hidden=8, tasks=3, seed=0, dtype=F64):
    torch.manual_seed(seed)
    params = {k: v.detach() for k, v in profiling.build_mlp(layers, hidden).to(dtype).named_parameters()}
    batch = profiling.sample_sinusoid_tasks(tasks, num_support=5, num_query=7,
                                            generator=torch.Generator().manual_seed(seed + 1), dtype=dtype)
    return params, batch


def es_options(seed=3, pairs=4, device="cpu"):
    return {"pairs": pairs, "noise_std": 1e-3, "generator": torch.Generator(device=device).manual_seed(seed)}


def test_public_api():
    assert set(profiling.__all__) >= {"build_mlp", "sample_sinusoid_tasks", "meta_gradient"}
    net = profiling.build_mlp(3, 16)
    assert isinstance(net, torch.nn.Sequential)
    assert [type(m).__name__ for m in net] == ["Linear", "ReLU"] * 3 + ["Linear"]
    batch = profiling.sample_sinusoid_tasks(4, generator=torch.Generator().manual_seed(0))
    assert batch.x_support.shape == (4, 10, 1) and batch["y_query"].shape == (4, 100, 1)
    assert float(batch.x_query.min()) >= 0 and float(batch.x_query.max()) <= 2 * math.pi
    expected = (batch.amplitude[:, None, None] * torch.sin(batch.x_support + batch.phase[:, None, None])
                + batch.offset[:, None, None])
    torch.testing.assert_close(batch.y_support, expected)
    params = dict(net.named_parameters())
    loss, grads = profiling.meta_gradient("maml", params, batch, inner_steps=2)
    assert loss.dim() == 0 and grads.keys() == params.keys()
    assert all(grads[k].shape == params[k].shape for k in params)
    assert all(p.grad is None for p in params.values())  # the caller's tensors are untouched


def test_forward_matches_module():
    params, batch = make()
    net = profiling.build_mlp(2, 8).to(F64)
    net.load_state_dict(params)
    torch.testing.assert_close(mlp_forward(params, batch.x_query), net(batch.x_query), rtol=0, atol=1e-14)


@pytest.mark.parametrize("layers", [1, 3])
def test_handwritten_gradient_matches_autograd(layers):
    params, batch = make(layers=layers)
    # batched params, one network per task, as the vectorized algorithms use them
    batched = {k: (v.unsqueeze(0) + 0.1 * torch.randn(3, *v.shape, dtype=F64)).requires_grad_()
               for k, v in params.items()}
    loss, grads = mse_and_grad(batched, batch.x_support, batch.y_support)
    reference = torch.autograd.grad(mse(batched, batch.x_support, batch.y_support).sum(), list(batched.values()))
    torch.testing.assert_close(loss, mse(batched, batch.x_support, batch.y_support))
    for (_k, g), r in zip(grads.items(), reference, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-14)  # float64, same math: rounding only


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("impl", [i for i in IMPLEMENTATIONS if i != "loop"])
def test_vectorized_matches_loop(method, impl):
    params, batch = make()
    kwargs = dict(inner_steps=3, inner_lr=0.05)
    loss, grads = profiling.meta_gradient(method, params, batch, impl=impl, **kwargs,
                                          **(es_options() if method == "es" else {}))
    ref_loss, ref = profiling.meta_gradient(method, params, batch, impl="loop", **kwargs,
                                            **(es_options() if method == "es" else {}))
    # float64 and the same operations up to summation order. ES divides loss differences
    # by 2σ = 2e-3, which amplifies rounding of the O(1) losses (~1e-16) to ~1e-13.
    atol = 1e-10 if method == "es" else 1e-12
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-14)
    for k in params:
        torch.testing.assert_close(grads[k], ref[k], rtol=1e-9, atol=atol)



@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("segment_steps", [None, 1, 3, 7, 10])  # default (⌈7/3⌉ = 3), one, uneven, whole, too long
def test_checkpointed_maml_equals_maml(impl, segment_steps):
    params, batch = make()
    kwargs = dict(inner_steps=7, inner_lr=0.05, impl=impl)
    loss, grads = profiling.meta_gradient("maml_checkpointed", params, batch, segment_steps=segment_steps, **kwargs)
    ref_loss, ref = profiling.meta_gradient("maml", params, batch, **kwargs)
    _, loop = profiling.meta_gradient("maml", params, batch, inner_steps=7, inner_lr=0.05, impl="loop")
    # float64; the recomputation repeats MAML's operations, so only summation order differs
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-14)
    for k in params:
        torch.testing.assert_close(grads[k], ref[k], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(grads[k], loop[k], rtol=1e-9, atol=1e-12)


def test_default_segments_are_about_sqrt_steps():
    assert [maml_checkpointed.default_segment_steps(L) for L in (1, 4, 5, 32, 64, 128)] == [1, 2, 2, 6, 8, 11]


def test_checkpointed_maml_memory_grows_like_sqrt_steps():
    torch.manual_seed(0)
    params = dict(profiling.build_mlp(2, 16).named_parameters())
    batch = profiling.sample_sinusoid_tasks(4, generator=torch.Generator().manual_seed(0))

    def saved(method, steps, **options):
        return saved_tensor_peak_bytes(
            lambda: profiling.meta_gradient(method, params, batch, inner_steps=steps, **options))

    maml = {L: saved("maml", L) for L in (16, 64)}
    checkpointed = {L: saved("maml_checkpointed", L) for L in (16, 64)}
    # measured: MAML 333 → 1164 kB (×3.5, linear plus a constant), checkpointed 84 → 173 kB (×2.1, ~√4)
    assert maml[64] > 3 * maml[16]
    assert checkpointed[64] < 2.5 * checkpointed[16]
    assert checkpointed[64] < 0.25 * maml[64]
    # one segment recomputes the whole unroll inside the backward, and the measurement sees it
    assert saved("maml_checkpointed", 64, segment_steps=64) > 0.9 * maml[64]


def test_checkpointed_maml_meets_its_memory_targets_at_full_size():
    # the study's configuration: 2 × 128 MLP, 32 tasks; the targets are ≤ 1/2 of MAML at L = 32, ≤ 1/4 at L = 128
    torch.manual_seed(0)
    params = {k: v.detach() for k, v in profiling.build_mlp(2, 128).named_parameters()}
    batch = profiling.sample_sinusoid_tasks(32, generator=torch.Generator().manual_seed(1))
    ratio = {}
    for L in (32, 128):
        maml, checkpointed = (
            saved_tensor_peak_bytes(lambda m=m, L=L: profiling.meta_gradient(m, params, batch, inner_steps=L))
            for m in ("maml", "maml_checkpointed")
        )
        ratio[L] = checkpointed / maml
    # measured 0.249 and 0.137 (deterministic byte counts)
    assert ratio[32] <= 0.5 and ratio[128] <= 0.25, ratio

def meta_objective(params, batch, inner_steps, inner_lr):
    return profiling.meta_gradient("maml", params, batch, inner_steps=inner_steps, inner_lr=inner_lr, impl="loop")[0]


def test_maml_matches_finite_differences():
    params, batch = make(layers=2, hidden=4, tasks=2)
    kwargs = dict(inner_steps=3, inner_lr=0.1)
    _, grads = profiling.meta_gradient("maml", params, batch, **kwargs)
    h = 1e-6
    for k, v in params.items():
        fd = torch.zeros_like(v)
        for i in range(v.numel()):
            plus, minus = dict(params), dict(params)
            e = torch.zeros_like(v).view(-1)
            e[i] = h
            plus[k], minus[k] = v + e.view_as(v), v - e.view_as(v)
            fd.view(-1)[i] = (meta_objective(plus, batch, **kwargs) - meta_objective(minus, batch, **kwargs)) / (2 * h)
        # central differences: truncation O(h²) ≈ 1e-12, rounding ~1e-16/h ≈ 1e-10 in float64
        torch.testing.assert_close(grads[k], fd, rtol=1e-6, atol=1e-8)
    # and the second-order terms matter here: first-order MAML is a different vector
    _, first = profiling.meta_gradient("fomaml", params, batch, **kwargs)
    diff = max(float((first[k] - grads[k]).abs().max()) for k in params)
    assert diff > 1e-4


def test_fomaml_is_query_gradient_at_adapted_weights():
    params, batch = make(tasks=1)
    _, grads = profiling.meta_gradient("fomaml", params, batch, inner_steps=2, inner_lr=0.1, impl="batched")
    fast = {k: v.clone() for k, v in params.items()}
    for _ in range(2):
        _, g = mse_and_grad(fast, batch.x_support[0], batch.y_support[0])
        fast = {k: fast[k] - 0.1 * g[k] for k in fast}
    fast = {k: v.requires_grad_() for k, v in fast.items()}
    ref = torch.autograd.grad(mse(fast, batch.x_query[0], batch.y_query[0]), list(fast.values()))
    for k, r in zip(params, ref, strict=True):
        torch.testing.assert_close(grads[k], r, rtol=1e-12, atol=1e-14)


def linear_model(seed=0):
    # no hidden layer: y = w x + b; support loss quadratic in φ, SGD steps affine in θ,
    # so the meta-objective J(θ) is exactly quadratic and ∇J_σ = ∇J for every σ.
    g = torch.Generator().manual_seed(seed)
    params = {"0.weight": torch.randn(1, 1, generator=g, dtype=F64), "0.bias": torch.randn(1, generator=g, dtype=F64)}
    batch = profiling.sample_sinusoid_tasks(4, num_support=5, num_query=7, generator=g, dtype=F64)
    return params, batch


def flat(grads):
    return torch.cat([g.reshape(-1) for g in grads.values()])


def test_es_is_exact_antithetic_estimate_on_a_quadratic():
    params, batch = linear_model()
    kwargs = dict(inner_steps=3, inner_lr=0.1)
    pairs = 8  # with 4 tasks: pair i is evaluated on task i mod 4
    _, estimate = profiling.meta_gradient("es", params, batch, **kwargs, **es_options(seed=5, pairs=pairs))
    eps = es.draw_noise(params, pairs, torch.Generator().manual_seed(5))
    eps = torch.cat([e.reshape(pairs, -1) for e in eps.values()], dim=1)  # [pairs, D]
    per_task = torch.stack([
        flat(profiling.meta_gradient("maml", params, batch.task(t), **kwargs)[1]) for t in range(4)
    ])  # [tasks, D]
    expected = sum(eps[i] * (eps[i] @ per_task[i % 4]) for i in range(pairs)) / pairs
    # the antithetic difference of a quadratic is exact; rounding of J (~1e-16) / 2σ → 1e-13
    torch.testing.assert_close(flat(estimate), expected, rtol=1e-8, atol=1e-10)


def test_es_approaches_smoothed_gradient_as_population_grows():
    params, batch = linear_model()
    kwargs = dict(inner_steps=3, inner_lr=0.1)
    true = flat(profiling.meta_gradient("maml", params, batch, **kwargs)[1])  # = ∇J_σ (quadratic)
    errors = {}
    for pairs in (16, 256, 4096):
        errs = []
        for seed in range(8):
            _, g = profiling.meta_gradient("es", params, batch, **kwargs, **es_options(seed=seed, pairs=pairs))
            errs.append(float((flat(g) - true).norm() / true.norm()))
        errors[pairs] = sum(errs) / len(errs)
    # relative error ~ sqrt((D + 1) / P) with D = 2 (and task-to-task spread): ~0.4, 0.1, 0.03;
    # 8 seeds average it; thresholds leave a factor of ~3 for the spread of that average.
    assert errors[16] > errors[256] > errors[4096]
    assert errors[4096] < 0.1, errors


def test_es_noise_is_seeded():
    params, batch = make()
    a = profiling.meta_gradient("es", params, batch, **es_options(seed=1))[1]
    b = profiling.meta_gradient("es", params, batch, **es_options(seed=1))[1]
    c = profiling.meta_gradient("es", params, batch, **es_options(seed=2))[1]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda p, b: profiling.meta_gradient("reptile", p, b), "method='reptile'"),
        (lambda p, b: profiling.meta_gradient("maml", p, b, impl="fast"), "impl='fast'"),
        (lambda p, b: profiling.meta_gradient("maml", p, b, inner_steps=0), "inner_steps=0"),
        (lambda p, b: profiling.meta_gradient("maml", p, b, inner_lr=-1.0), "inner_lr=-1.0"),
        (lambda p, b: profiling.meta_gradient("es", p, b, pairs=0), "pairs=0"),
        (lambda p, b: profiling.meta_gradient("es", p, b, noise_std=0.0), "noise_std=0.0"),
        (lambda p, b: profiling.meta_gradient("maml", p, b, pairs=4), "'es' only"),
        (lambda p, b: profiling.meta_gradient("maml", p, b, segment_steps=2), "'maml_checkpointed' only"),
        (lambda p, b: profiling.meta_gradient("maml_checkpointed", p, b, segment_steps=0), "segment_steps=0"),
        (lambda p, b: profiling.meta_gradient("maml", p, b, segments=2), "unknown option"),
        (lambda p, b: profiling.meta_gradient("maml", p, b.to(dtype=torch.float32)), "float32"),
        (lambda p, b: profiling.meta_gradient("maml", p, {"x_support": b.x_support}), "SinusoidBatch"),
        (lambda p, b: profiling.build_mlp(0, 8), "layers=0"),
        (lambda p, b: profiling.build_mlp(2, -3), "hidden=-3"),
        (lambda p, b: profiling.sample_sinusoid_tasks(0), "num_tasks=0"),
    ],
)
def test_bad_input_is_a_clear_error(call, match):
    params, batch = make()
    with pytest.raises(ValueError, match=match):
        call(params, batch)


@pytest.mark.skipif(DEVICE == "cpu", reason="set PROFILING_TEST_DEVICE=cuda (scripts/gpu_run.sh) on a GPU machine")
@pytest.mark.parametrize("method", sorted(METHODS))
def test_vectorized_matches_loop_on_the_device(method):
    from profiling.measure import peak_memory_bytes, resolve_device

    device = resolve_device(DEVICE)
    params, batch = make()
    params = {k: v.to(device) for k, v in params.items()}
    batch = batch.to(device=device)
    def options():  # a fresh generator per call: every implementation draws the same noise
        return es_options(device=device) if method == "es" else {}

    for impl in ("batched", "vmap"):
        _, grads = profiling.meta_gradient(method, params, batch, inner_steps=3, inner_lr=0.05, impl=impl, **options())
        _, ref = profiling.meta_gradient(method, params, batch, inner_steps=3, inner_lr=0.05, impl="loop", **options())
        for k in params:  # float64 on the device: rounding only (ES: amplified by 1/2σ)
            torch.testing.assert_close(grads[k], ref[k], rtol=1e-9, atol=1e-10)
    peak = peak_memory_bytes(lambda: profiling.meta_gradient(method, params, batch, inner_steps=3), device)
    assert peak > 0
