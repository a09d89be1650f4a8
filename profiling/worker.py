"""A worker process of the study: measures a list of configurations and appends their rows.

``python -m profiling.worker SPEC.json`` where the spec holds ``csv``, ``device``,
``repeats``, ``warmup``, ``seconds_per_config``, ``threads`` and ``configs`` (a list of
:class:`profiling.study.Config` fields). It prints ``start i`` before and ``done i`` after
configuration i, so :mod:`profiling.scale` can show progress and know which configuration
a dead worker was in. One worker per (method, sweep) keeps configurations of different
sweeps and methods from sharing an allocator or a CUDA context.
"""

from __future__ import annotations

import gc
import json
import sys

import torch

from .measure import resolve_device
from .study import Config, append_row, measure_config


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python -m profiling.worker SPEC.json (written by python -m profiling.scale)")
    with open(argv[0]) as f:
        spec = json.load(f)
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device = resolve_device(spec["device"])
    for i, fields in enumerate(spec["configs"]):
        print(f"start {i}", flush=True)
        row = measure_config(Config(**fields), device, repeats=spec["repeats"], warmup=spec["warmup"],
                             seconds_per_config=spec["seconds_per_config"])
        append_row(spec["csv"], row)
        gc.collect()
        print(f"done {i} {row['status']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
