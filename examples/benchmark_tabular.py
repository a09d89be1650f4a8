"""Sampling and training speed of a large tabular family against the sinusoid family.

A synthetic grouped data set (:func:`hierarchical_meta.tasks.synthetic.grouped_frame`,
default about 100 000 rows in 2 000 groups of 25 to 75 rows) becomes a
:class:`~hierarchical_meta.tasks.TabularTasks`; its ``sample()`` (what every training step
calls) is timed against ``SinusoidTasks.sample`` with the same batch shape, and then whole
training steps (sample + one SVI step) of the same model on each. Both run in this
process, alternating (calls for sample(), blocks of steps for training), so the printed
ratios are robust to the machine's load.

    python examples/benchmark_tabular.py                       # defaults
    python examples/benchmark_tabular.py --groups 200 --steps 5 --repeats 20   # quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO

from hierarchical_meta import HierarchicalMetaModel, ModelConfig, SinusoidTasks
from hierarchical_meta.tasks import TabularTasks
from hierarchical_meta.tasks.synthetic import grouped_frame


def seconds_per_call(fns: dict, repeats: int) -> dict:
    """Median seconds of each ``fns[name]()`` over ``repeats`` calls, alternating between them
    (so a change of the machine's load hits all alike), after one warm-up call each."""
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            tic = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - tic)
    return {name: statistics.median(t) for name, t in times.items()}


def seconds_per_step(family, batch_tasks: int, points: int, steps: int, generator: torch.Generator) -> float:
    """Mean seconds of a training step as ``hierarchical_meta.train.fit`` takes it (sample, then
    one SVI step) over ``steps`` steps of a fresh model, after one warm-up step."""
    pyro.clear_param_store()
    config = ModelConfig(x_dim=family.x_dim, y_dim=family.y_dim, metadata_dim=family.metadata_dim)
    meta_model = HierarchicalMetaModel(config)
    svi = SVI(meta_model.model, meta_model.guide, pyro.optim.Adam({"lr": 1e-3}),
              Trace_ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=2))

    def step():
        batch = family.sample(batch_tasks, points, 0, generator=generator)
        svi.step(batch.x_support, batch.metadata, batch.y_support, batch.support_mask)
    step()
    tic = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - tic) / steps


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--groups", type=int, default=2000, help="groups of the tabular data set")
    parser.add_argument("--min-rows", type=int, default=25, help="fewest rows per group")
    parser.add_argument("--max-rows", type=int, default=75, help="most rows per group")
    parser.add_argument("--batch-tasks", type=int, default=32, help="tasks per batch")
    parser.add_argument("--points", type=int, default=20, help="points per task (max_points)")
    parser.add_argument("--repeats", type=int, default=200, help="timed sample() calls (median)")
    parser.add_argument("--steps", type=int, default=30, help="training steps per timed block (3 blocks each)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    if min(args.groups, args.min_rows, args.batch_tasks, args.points, args.repeats, args.steps,
           args.threads) < 1 or args.max_rows < args.min_rows:
        parser.error("sizes must be positive integers with min-rows <= max-rows")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    frame = grouped_frame(args.groups, args.min_rows, args.max_rows)
    tic = time.perf_counter()
    tabular = TabularTasks.from_frame(frame, group="site", x="dose", y="response",
                                      metadata=["altitude", "region"])
    build = time.perf_counter() - tic
    families = {"tabular": tabular, "sinusoid": SinusoidTasks()}
    generator = torch.Generator().manual_seed(0)
    sample = seconds_per_call({name: lambda f=f: f.sample(args.batch_tasks, args.points, 0, generator=generator)
                               for name, f in families.items()}, args.repeats)
    blocks = {name: [] for name in families}
    for _ in range(3):  # alternating blocks of steps, the median block per family
        for name, f in families.items():
            blocks[name].append(seconds_per_step(f, args.batch_tasks, args.points, args.steps, generator))
    step = {name: statistics.median(b) for name, b in blocks.items()}
    print(f"tabular: {len(frame)} rows in {args.groups} groups, built in {build:.2f} s; batches of "
          f"{args.batch_tasks} tasks x {args.points} points, {torch.get_num_threads()} thread(s), "
          f"load average {os.getloadavg()[0]:.2f}")
    for name in families:
        print(f"{name:9s} sample(): {sample[name] * 1e3:7.3f} ms   training step: {step[name] * 1e3:7.1f} ms "
              f"({1 / step[name]:6.1f} steps/s)")
    print(f"ratio tabular / sinusoid: sample() {sample['tabular'] / sample['sinusoid']:.2f}x, "
          f"training step {step['tabular'] / step['sinusoid']:.2f}x")
    return {"rows": len(frame), "build_s": build, "sample_s": sample, "step_s": step}


if __name__ == "__main__":
    main()
