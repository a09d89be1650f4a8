"""One outer step of every method in every implementation, side by side in one process.

``python -m profiling.benchmark [--device cpu] [--repeats 20]`` on the study's default
configuration (docs/profiling.md; 2 × 128 MLP, L = 5, 32 tasks, 10 support and 100 query
points, ES with 16 antithetic pairs, float32) prints the median milliseconds and the
loop / vectorized ratios, with the machine load and torch thread count beside them.
Implementations are interleaved round-robin, so a change of machine load hits all of
them alike; the ratios are what to compare across machines, not the milliseconds.
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch

from .algorithms import IMPLEMENTATIONS, METHODS, check_method, meta_gradient
from .measure import environment, quantile, resolve_device, time_step
from .mlp import build_mlp
from .study import DEFAULTS, NUM_TASKS, PAIRS
from .tasks import sample_sinusoid_tasks

__all__ = ["run_benchmark", "main", "DEFAULT_REPEATS"]

DEFAULT_REPEATS = 20  # timed steps per method and implementation


def run_benchmark(device="cpu", repeats: int = DEFAULT_REPEATS, layers: int = DEFAULTS["layers"],
                  hidden: int = DEFAULTS["hidden"],
                  inner_steps: int = DEFAULTS["inner_steps"], num_tasks: int = NUM_TASKS, pairs: int = PAIRS,
                  seed: int = 0, methods=None) -> dict[tuple[str, str], list[float]]:
    """Times (ms) of one meta-gradient per (method, impl), measured round-robin."""
    device = resolve_device(device)
    methods = list(methods or METHODS)
    for method in methods:
        check_method(method)
    torch.manual_seed(seed)
    params = {k: v.detach().to(device) for k, v in build_mlp(layers, hidden).named_parameters()}
    batch = sample_sinusoid_tasks(num_tasks, generator=torch.Generator().manual_seed(seed), device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    steps = {}
    for method in methods:
        for impl in IMPLEMENTATIONS:
            options = {"pairs": pairs, "generator": generator} if method == "es" else {}
            steps[method, impl] = (lambda m=method, i=impl, o=options: meta_gradient(
                m, params, batch, inner_steps=inner_steps, impl=i, **o))
    times = {key: [] for key in steps}
    for step in steps.values():  # warm-up
        time_step(step, device, repeats=1, warmup=2)
    for _ in range(repeats):
        for key, step in steps.items():
            times[key] += time_step(step, device, repeats=1, warmup=0)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m profiling.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="'cpu' or 'cuda' (default: cuda if available, else cpu)")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS,
                        help=f"timed steps per method and implementation (default {DEFAULT_REPEATS})")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads before timing (default: torch's)")
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        parser.error(str(error))
    if args.repeats < 1:
        parser.error(f"--repeats={args.repeats}: it must be at least 1")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads={args.threads}: it must be at least 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    env = environment(device)
    load_before = os.getloadavg()
    times = run_benchmark(device, repeats=args.repeats)
    load_after = os.getloadavg()
    print(f"device: {env['device_name']}  torch {env['torch']}  cuda {env['cuda']}  threads {torch.get_num_threads()}")
    print(f"load average (1, 5, 15 min) before {load_before}  after {load_after}")
    print(f"default configuration: {DEFAULTS['layers']} x {DEFAULTS['hidden']} MLP, L = {DEFAULTS['inner_steps']}, "
          f"{NUM_TASKS} tasks, 10 support / 100 query, ES {PAIRS} pairs, float32")
    print(f"{'method':8s} {'impl':8s} {'median ms':>10s} {'q25':>8s} {'q75':>8s}  loop / this")
    for method in METHODS:
        loop_median = statistics.median(times[method, "loop"])
        for impl in IMPLEMENTATIONS:
            t = times[method, impl]
            median, q25, q75 = statistics.median(t), quantile(t, 0.25), quantile(t, 0.75)
            print(f"{method:8s} {impl:8s} {median:10.2f} {q25:8.2f} {q75:8.2f}  {loop_median / median:6.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
