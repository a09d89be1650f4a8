"""SVI throughput: tasks per second of one vectorized SVI step, against a per-task loop.

The vectorized step handles a whole batch of tasks in one Pyro trace (plate ``tasks``);
the reference takes one SVI step per task over the same tasks, as a model without a
task plate would. Both run in this process, one after the other, so the printed ratio
is robust to the machine's load; absolute figures are printed with the load average.

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
from pyro.infer import SVI, Trace_ELBO

from hierarchical_meta import HierarchicalMetaModel, SinusoidTasks
from hierarchical_meta.errors import report_errors


def time_steps(svi, batches, repeats):
    """Median seconds over ``repeats`` passes of one SVI step per batch in ``batches``."""
    times = []
    for _ in range(repeats + 1):  # the first pass warms up
        tic = time.perf_counter()
        for b in batches:
            svi.step(b.x_support, b.metadata, b.y_support, b.support_mask)
        times.append(time.perf_counter() - tic)
    return statistics.median(times[1:])


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
    results = {}
    for name, batches in (("vectorized", [batch]), ("per-task loop", singles)):
        pyro.clear_param_store()
        meta_model = HierarchicalMetaModel(metadata_dim=family.metadata_dim)
        svi = SVI(meta_model.model, meta_model.guide, pyro.optim.Adam({"lr": 1e-3}),
                  Trace_ELBO(num_particles=args.particles, vectorize_particles=True, max_plate_nesting=2))
        results[name] = time_steps(svi, batches, args.repeats)
    vec, loop = results["vectorized"], results["per-task loop"]
    print(f"{args.batch_tasks} tasks x {args.points} points, {args.particles} particles, "
          f"{torch.get_num_threads()} thread(s), load average {os.getloadavg()[0]:.2f}")
    print(f"vectorized SVI step : {vec * 1e3:8.1f} ms  {args.batch_tasks / vec:8.0f} tasks/s")
    print(f"per-task loop       : {loop * 1e3:8.1f} ms  {args.batch_tasks / loop:8.0f} tasks/s")
    print(f"speed-up (loop / vectorized): {loop / vec:.1f}x")
    return {"vectorized_tasks_per_s": args.batch_tasks / vec, "loop_tasks_per_s": args.batch_tasks / loop}


if __name__ == "__main__":
    sys.exit(report_errors(main))  # a user error: one "error:" line, exit 2
