"""``python -m profiling.scale``: the MAML-versus-ES scaling study (DESIGN §4, issue 3).

Runs three sweeps (inner steps, hidden layers, hidden units; the others at their
defaults) for every method, one worker process per (method, sweep), each configuration
measured as in :mod:`profiling.measure`. Writes to the output folder as it goes:

- ``scale.csv``: one row per configuration (appended and flushed as soon as measured);
- ``runtime_vs_{steps,layers,units}.png``, ``memory_vs_{…}.png`` and ``combined.png``;
- ``summary.txt``: the environment, the fitted growth of every curve and the medians.

Started again on the same folder, it skips the configurations already in the CSV, so a
killed run redoes at most the configuration it was in. An out-of-memory configuration
is recorded (``status=oom``) and the sweep goes on; a worker that dies is recorded
(``status=failed:...``) and a fresh worker takes the remaining configurations.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile

import torch
from tqdm import tqdm

from .algorithms import DEFAULT_IMPL, IMPLEMENTATIONS, METHODS
from .growth import summary_text
from .measure import resolve_device
from .plots import draw_all
from .study import SWEEP_PARAMETER, Config, append_row, configurations, failed_row, measure_config, read_rows, row_key

__all__ = ["main", "run_study", "parse_args"]


def _positive_int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated positive integers, e.g. 1,2,4") from error
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: values must be positive integers, e.g. 1,2,4")
    return values


def _choices(allowed):
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"{text!r}: unknown {bad}; choose from {', '.join(allowed)}")
        return values
    return parse


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m profiling.scale", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default=None,
                        help="'cpu' or 'cuda' (default: cuda if available, else cpu; asking for cuda without one is an error)")
    parser.add_argument("--sweeps", type=_choices(list(SWEEP_PARAMETER)), default=list(SWEEP_PARAMETER),
                        help="comma-separated subset of steps,layers,units (default: all three)")
    parser.add_argument("--methods", type=_choices(list(METHODS)), default=list(METHODS),
                        help="comma-separated subset of maml,fomaml,es (default: all)")
    parser.add_argument("--impl", choices=IMPLEMENTATIONS, default=DEFAULT_IMPL,
                        help=f"implementation to measure: '{DEFAULT_IMPL}' (default; batched matrix products over tasks "
                             "and the ES population), 'vmap' (torch.func) or 'loop' (per-task reference)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed outer steps per configuration, after warm-up (default 15; 3 with --quick); "
                             "capped so one configuration takes about --seconds-per-config")
    parser.add_argument("--warmup", type=int, default=2, help="untimed outer steps before timing (default 2)")
    parser.add_argument("--seconds-per-config", type=float, default=None,
                        help="time budget for the repeats of one configuration (default 20 s; 1 s with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="small sweeps (steps 1,2,4; layers 1,2; units 32,64,128) and few repeats: a smoke run")
    parser.add_argument("--steps", type=_positive_int_list, default=None, help="override the inner-step values, e.g. 1,2,4,8,16,32,64")
    parser.add_argument("--layers", type=_positive_int_list, default=None, help="override the hidden-layer values")
    parser.add_argument("--units", type=_positive_int_list, default=None, help="override the hidden-unit values")
    parser.add_argument("--base-steps", type=int, default=5, help="inner steps while another parameter is swept (default 5)")
    parser.add_argument("--base-layers", type=int, default=2, help="hidden layers while another parameter is swept (default 2)")
    parser.add_argument("--base-units", type=int, default=128, help="hidden units while another parameter is swept (default 128)")
    parser.add_argument("--isolation", choices=("process", "none"), default="process",
                        help="'process' (default): a fresh worker process per method and sweep, so no configuration "
                             "shares an allocator or CUDA context with another sweep; 'none': all in this process")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads in each worker (default: 1 on the CPU, where a second thread on a shared "
                             "2-core machine mostly adds contention; torch's default on CUDA)")
    parser.add_argument("--out", default=os.path.join("runs", "scale"),
                        help="output folder for scale.csv, the plots and summary.txt (default runs/scale); "
                             "an existing scale.csv there is resumed")
    parser.add_argument("--plots-only", action="store_true", help="redraw plots and summary from the existing CSV")
    args = parser.parse_args(argv)
    for name in ("repeats", "threads", "base_steps", "base_layers", "base_units"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')}={value}: it must be a positive integer")
    if args.warmup < 0:
        parser.error(f"--warmup={args.warmup}: it must be 0 or more")
    if args.seconds_per_config is not None and args.seconds_per_config <= 0:
        parser.error(f"--seconds-per-config={args.seconds_per_config}: it must be positive")
    try:
        args.device = resolve_device(args.device)
    except ValueError as error:
        parser.error(str(error))
    return args


def _command(argv) -> str:
    return "python -m profiling.scale " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))


def _run_worker(configs: list[Config], csv_path: str, device: torch.device, spec: dict, bar: tqdm) -> None:
    """Measure ``configs`` in fresh worker processes; a dead worker's configuration is recorded as failed."""
    remaining = list(configs)
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    while remaining:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump({**spec, "csv": csv_path, "configs": [c.__dict__ for c in remaining]}, f)
            spec_path = f.name
        current = None
        try:
            with tempfile.TemporaryFile("w+") as errors, subprocess.Popen(
                [sys.executable, "-m", "profiling.worker", spec_path], stdout=subprocess.PIPE, stderr=errors,
                text=True, env=env,
            ) as proc:
                for line in proc.stdout:  # "start i" / "done i status"; anything else is passed over
                    word, *rest = line.split() or [""]
                    if word == "start":
                        current = int(rest[0])
                        bar.set_postfix_str(f"{remaining[current].method} {remaining[current].sweep}", refresh=True)
                    elif word == "done":
                        current = None
                        bar.update(1)
                rc = proc.wait()
                errors.seek(0)
                for line in errors:  # the worker's stderr, less the profiler's start/stop chatter
                    if not line.startswith("USDT:"):
                        sys.stderr.write(line)
        finally:
            os.unlink(spec_path)
        if current is None and rc == 0:
            return
        if current is None:  # died between configurations: nothing half-done
            raise RuntimeError(f"a study worker exited with status {rc} outside a configuration")
        append_row(csv_path, failed_row(remaining[current], device, f"failed:exit{rc}"))
        bar.update(1)
        remaining = remaining[current + 1:]


def _run_in_process(configs: list[Config], csv_path: str, device: torch.device, spec: dict, bar: tqdm) -> None:
    threads = torch.get_num_threads()
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    try:
        for config in configs:
            bar.set_postfix_str(f"{config.method} {config.sweep}", refresh=True)
            append_row(csv_path, measure_config(config, device, repeats=spec["repeats"], warmup=spec["warmup"],
                                                seconds_per_config=spec["seconds_per_config"]))
            bar.update(1)
    finally:
        torch.set_num_threads(threads)


def run_study(args: argparse.Namespace, command: str) -> str:
    """Run (or resume) the sweeps of ``args``; write CSV, plots and summary; return the summary."""
    os.makedirs(args.out, exist_ok=True)
    csv_path = os.path.join(args.out, "scale.csv")
    device = args.device
    values = {k: getattr(args, k) for k in SWEEP_PARAMETER if getattr(args, k) is not None}
    base = {"inner_steps": args.base_steps, "layers": args.base_layers, "hidden": args.base_units}
    todo = configurations(args.methods, args.sweeps, args.impl, quick=args.quick, values=values, base=base)
    existing = read_rows(csv_path)
    if existing and existing[0]["device"] != device.type:
        raise ValueError(f"{csv_path} holds a {existing[0]['device']} study but --device is {device.type}: "
                         "use another --out folder")
    done = {row_key(r) for r in existing}
    todo_left = [c for c in todo if c.key() not in done]
    spec = {
        "device": str(device),
        "repeats": args.repeats or (3 if args.quick else 15),
        "warmup": args.warmup,
        "seconds_per_config": args.seconds_per_config or (1.0 if args.quick else 20.0),
        "threads": args.threads or (1 if device.type == "cpu" else None),
    }
    if not args.plots_only:
        with tqdm(total=len(todo), initial=len(todo) - len(todo_left), desc="configurations", unit="cfg",
                  dynamic_ncols=True) as bar:
            for sweep in args.sweeps:
                for method in args.methods:
                    group = [c for c in todo_left if c.sweep == sweep and c.method == method]
                    if group and args.isolation == "process":
                        _run_worker(group, csv_path, device, spec, bar)
                    elif group:
                        _run_in_process(group, csv_path, device, spec, bar)
    wanted = {c.key() for c in todo}
    rows = [r for r in read_rows(csv_path) if row_key(r) in wanted]
    draw_all(rows, args.out, command)
    text = summary_text(rows, command)
    with open(os.path.join(args.out, "summary.txt"), "w") as f:
        f.write(text)
    return text


def main(argv=None) -> int:
    args = parse_args(argv)
    text = run_study(args, _command(argv))
    print(text)
    print(f"wrote {args.out}/scale.csv, the plots and summary.txt")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
