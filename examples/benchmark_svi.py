"""SVI throughput: tasks per second of one vectorized SVI step, against a per-task loop and the fast path.

The vectorized step handles a whole batch of tasks in one Pyro trace (plate ``tasks``);
the reference takes one SVI step per task over the same tasks, as a model without a
task plate would. The fast path (``TrainConfig(elbo="fast")``, the default of ``fit``)
takes the same step on the hand-written bound without Pyro's trace. All run in this
process, interleaved, so the printed ratios are robust to the machine's load; absolute
figures are printed with the load average. Each uses the optimizer ``fit`` uses
(:func:`hierarchical_meta.train.make_svi`).

    python examples/benchmark_svi.py                # defaults: 32 tasks, 20 points
    python examples/benchmark_svi.py --repeats 3 --batch-tasks 8   # quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import pyro
import torch

from hierarchical_meta import HierarchicalMetaModel, SinusoidTasks
from hierarchical_meta.errors import report_errors
from hierarchical_meta.train import TrainConfig, data_sized, make_svi


def pass_seconds(svi, batches) -> float:
    """Seconds of one SVI step per batch in ``batches``."""
    tic = time.perf_counter()
    for b in batches:
        svi.step(b.x_support, b.metadata, b.y_support, b.support_mask, latent_scale=1.0)
    return time.perf_counter() - tic


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--batch-tasks", type=int, default=32, help="tasks per vectorized step")
    parser.add_argument("--points", type=int, default=20, help="points per task")
    parser.add_argument("--particles", type=int, default=2, help="vectorized ELBO particles")
    parser.add_argument("--repeats", type=int, default=20, help="timed passes (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    if min(args.batch_tasks, args.points, args.particles, args.repeats, args.threads) < 1:
        parser.error("all sizes must be positive integers")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    family = SinusoidTasks()
    batch = family.sample(args.batch_tasks, args.points, 0, generator=torch.Generator().manual_seed(0))
    singles = [batch.subset([t]) for t in range(batch.num_tasks)]
    variants = {"vectorized": ("pyro", [batch]), "per-task loop": ("pyro", singles), "fast": ("fast", [batch])}
    steppers = {}
    for name, (elbo, _) in variants.items():
        pyro.clear_param_store()
        meta_model = HierarchicalMetaModel(metadata_dim=family.metadata_dim)
        config, _ = data_sized(TrainConfig(num_particles=args.particles, lr=1e-3, elbo=elbo), family)
        steppers[name] = make_svi(meta_model, config)
    times = {name: [] for name in variants}
    for repeat in range(args.repeats + 1):  # interleaved passes; the first warms up
        for name, (_, batches) in variants.items():
            seconds = pass_seconds(steppers[name], batches)
            if repeat > 0:
                times[name].append(seconds)
    vec, loop, fast = (statistics.median(times[name]) for name in variants)
    print(f"{args.batch_tasks} tasks x {args.points} points, {args.particles} particles, "
          f"{torch.get_num_threads()} thread(s), load average {os.getloadavg()[0]:.2f}")
    print(f"vectorized SVI step : {vec * 1e3:8.1f} ms  {args.batch_tasks / vec:8.0f} tasks/s")
    print(f"per-task loop       : {loop * 1e3:8.1f} ms  {args.batch_tasks / loop:8.0f} tasks/s")
    print(f"speed-up (loop / vectorized): {loop / vec:.1f}x")
    print(f"fast path (bound.py): {fast * 1e3:8.1f} ms  {args.batch_tasks / fast:8.0f} tasks/s")
    print(f"speed-up (vectorized Pyro step / fast path): {vec / fast:.2f}x")
    return {"vectorized_tasks_per_s": args.batch_tasks / vec, "loop_tasks_per_s": args.batch_tasks / loop,
            "fast_tasks_per_s": args.batch_tasks / fast}


if __name__ == "__main__":
    sys.exit(report_errors(main))  # a user error: one "error:" line, exit 2
