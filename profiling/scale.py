"""``python -m profiling.scale``: the MAML-versus-ES scaling study (docs/profiling.md).

Runs three sweeps (inner steps, hidden layers, hidden units; the others at their
defaults) for every method, one worker process per (method, sweep), each configuration
measured as in :mod:`profiling.measure`; with ``--executor ray``, one Ray task per
configuration instead, on a local Ray or the cluster at ``--address``
(:mod:`profiling.ray_executor`). Writes to the output folder as it goes:

- ``scale.csv``: one row per configuration (appended and flushed as soon as measured);
- ``runtime_vs_{steps,layers,units}.png``, ``memory_vs_{…}.png`` and ``combined.png``;
- ``summary.txt``: the environment, the fitted growth of every curve and the medians.

Started again on the same folder, it skips the configurations already in the CSV, so a
killed run redoes at most the configuration it was in (a row torn by the kill is dropped
and measured again). An out-of-memory configuration is recorded (``status=oom``) and the
sweep goes on; a worker that dies is recorded (``status=failed:...``) and a fresh worker
takes the remaining configurations. A run holds the lock of its output folder
(:func:`hierarchical_meta.runfiles.hold_folder`): a second run on it stops at once.

A mistake in the input ends in one ``error:`` line and exit status 2; ``--debug`` (or
``PROFILING_DEBUG=1``) shows the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import tempfile

import matplotlib
import torch
from tqdm import tqdm

from hierarchical_meta.errors import debug_requested, report_errors
from hierarchical_meta.runfiles import atomic_write, hold_folder

from .algorithms import IMPLEMENTATIONS, METHODS
from .growth import summary_text
from .measure import resolve_device
from .plots import draw_all
from .rows import drop_torn_row
from .study import (
    DEBUG_ENV,
    EXECUTORS,
    RAY_INSTALL,
    REPEATS,
    SECONDS_PER_CONFIG,
    SWEEP_PARAMETER,
    SWEEPS,
    Config,
    StudyConfig,
    append_row,
    failed_row,
    measure_config,
    read_rows,
    row_key,
)

__all__ = ["main", "run_study", "write_report", "parse_args"]

DEFAULT_OUT = os.path.join("runs", "scale")


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


def _values(run: str) -> str:
    return "; ".join(f"{sweep} {','.join(map(str, values))}" for sweep, values in SWEEPS[run].items())


def parse_args(argv=None) -> tuple[StudyConfig, argparse.Namespace]:
    """The study's config and the CLI's own options (``out``, ``plots_only``) from ``argv``."""
    d = StudyConfig()
    parser = argparse.ArgumentParser(
        prog="python -m profiling.scale", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default=d.device,
                        help="'cpu' or 'cuda' (default: cuda if available, else cpu; "
                             "asking for cuda without one is an error)")
    parser.add_argument("--sweeps", type=_choices(list(SWEEP_PARAMETER)), default=d.sweeps,
                        help=f"comma-separated subset of {','.join(SWEEP_PARAMETER)} (default: all)")
    parser.add_argument("--methods", type=_choices(list(METHODS)), default=d.methods,
                        help=f"comma-separated subset of {','.join(METHODS)} (default: all)")
    parser.add_argument("--impl", choices=IMPLEMENTATIONS, default=d.impl,
                        help=f"implementation to measure: '{d.impl}' (default; batched matrix products over tasks "
                             "and the ES population), 'vmap' (torch.func) or 'loop' (per-task reference)")
    parser.add_argument("--repeats", type=int, default=d.repeats,
                        help=f"timed outer steps per configuration, after warm-up (default {REPEATS['full']}; "
                             f"{REPEATS['quick']} with --quick); capped so one configuration takes about "
                             "--seconds-per-config")
    parser.add_argument("--warmup", type=int, default=d.warmup,
                        help=f"untimed outer steps before timing (default {d.warmup})")
    parser.add_argument("--seconds-per-config", type=float, default=d.seconds_per_config,
                        help="time budget for the repeats of one configuration "
                             f"(default {SECONDS_PER_CONFIG['full']:g} s; "
                             f"{SECONDS_PER_CONFIG['quick']:g} s with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help=f"small sweeps ({_values('quick')}) and few repeats: a smoke run")
    parser.add_argument("--steps", type=_positive_int_list, default=d.steps,
                        help=f"override the inner-step values (default {','.join(map(str, SWEEPS['full']['steps']))})")
    parser.add_argument("--layers", type=_positive_int_list, default=d.layers,
                        help="override the hidden-layer values "
                             f"(default {','.join(map(str, SWEEPS['full']['layers']))})")
    parser.add_argument("--units", type=_positive_int_list, default=d.units,
                        help=f"override the hidden-unit values (default {','.join(map(str, SWEEPS['full']['units']))})")
    parser.add_argument("--base-steps", type=int, default=d.base_steps,
                        help=f"inner steps while another parameter is swept (default {d.base_steps})")
    parser.add_argument("--base-layers", type=int, default=d.base_layers,
                        help=f"hidden layers while another parameter is swept (default {d.base_layers})")
    parser.add_argument("--base-units", type=int, default=d.base_units,
                        help=f"hidden units while another parameter is swept (default {d.base_units})")
    parser.add_argument("--isolation", choices=("process", "none"), default=d.isolation,
                        help="'process': a fresh worker process per method and sweep, so no configuration shares an "
                             f"allocator or CUDA context with another sweep; 'none': all in this process "
                             f"(default {d.isolation})")
    parser.add_argument("--executor", choices=EXECUTORS, default=d.executor,
                        help="'local': worker processes on this machine (default); 'ray': one Ray task per "
                             "configuration, each in a fresh worker process with one GPU on CUDA, on a local Ray "
                             f"or the cluster at --address (needs {RAY_INSTALL})")
    parser.add_argument("--address", default=d.address,
                        help="address of an existing Ray cluster, e.g. 'ray://head:10001' or 'auto' "
                             "(with --executor ray; default: start a local Ray with this machine's cores)")
    parser.add_argument("--threads", type=int, default=d.threads,
                        help="torch threads in each worker (default: 1 on the CPU, where a second thread on a shared "
                             "2-core machine mostly adds contention; torch's default on CUDA)")
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help=f"output folder for scale.csv, the plots and summary.txt (default {DEFAULT_OUT}); "
                             "an existing scale.csv there is resumed")
    parser.add_argument("--plots-only", action="store_true", help="redraw plots and summary from the existing CSV")
    parser.add_argument("--debug", action="store_true", help=f"show the traceback of an error (also: {DEBUG_ENV}=1)")
    args = parser.parse_args(argv)
    fields = {f.name for f in dataclasses.fields(StudyConfig)}
    try:
        config = StudyConfig(**{k: v for k, v in vars(args).items() if k in fields})
    except ValueError as error:
        parser.error(str(error))
    return config, args


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


def run_study(config: StudyConfig, out_dir: str, command: str) -> str:
    """Measure (or resume) the configurations of ``config`` into ``out_dir/scale.csv``, then :func:`write_report`.

    ``command`` is printed on every figure and in the summary, which is returned. Holds the
    lock of ``out_dir`` (created if needed) throughout.
    """
    with hold_folder(out_dir, lambda message: print(message, file=sys.stderr)):
        csv_path = os.path.join(out_dir, "scale.csv")
        device = resolve_device(config.device)
        if drop_torn_row(csv_path):
            print(f"{csv_path}: dropped a row torn by a killed run; its configuration is measured again",
                  file=sys.stderr)
        existing = read_rows(csv_path)
        if existing and existing[0]["device"] != device.type:
            raise ValueError(f"{csv_path} holds a {existing[0]['device']} study but the device is {device.type}: "
                             "use another output folder")
        todo = config.configurations()
        done = {row_key(r) for r in existing}
        todo_left = [c for c in todo if c.key() not in done]
        spec = {"device": str(device), **config.timing}
        with tqdm(total=len(todo), initial=len(todo) - len(todo_left), desc="configurations", unit="cfg",
                  dynamic_ncols=True) as bar:
            if config.executor == "ray":
                if todo_left:
                    from .ray_executor import run_on_ray  # Ray is an optional extra: imported only when asked for
                    run_on_ray(todo_left, csv_path, device, config.timing, bar, address=config.address)
            else:
                for sweep in config.sweeps:
                    for method in config.methods:
                        group = [c for c in todo_left if c.sweep == sweep and c.method == method]
                        if group and config.isolation == "process":
                            _run_worker(group, csv_path, device, spec, bar)
                        elif group:
                            _run_in_process(group, csv_path, device, spec, bar)
        return write_report(config, out_dir, command)


def write_report(config: StudyConfig, out_dir: str, command: str) -> str:
    """Draw the plots and write ``summary.txt`` from ``config``'s rows of ``out_dir/scale.csv``; returns the summary.

    ValueError if the CSV holds no row of ``config``'s configurations (nothing to draw).
    """
    csv_path = os.path.join(out_dir, "scale.csv")
    wanted = {c.key() for c in config.configurations()}
    rows = [r for r in read_rows(csv_path) if row_key(r) in wanted]
    if not rows:
        raise ValueError(f"{csv_path} holds no measured row of this run's configurations: run the study "
                         "(without --plots-only) first, or pass the options it was run with")
    draw_all(rows, out_dir, command)
    text = summary_text(rows, command)
    with atomic_write(os.path.join(out_dir, "summary.txt")) as f:
        f.write(text)
    return text


def main(argv=None) -> int:
    config, args = parse_args(argv)
    matplotlib.use("Agg")  # files only, no windows
    command = _command(argv)

    def work():
        text = write_report(config, args.out, command) if args.plots_only else run_study(config, args.out, command)
        print(text)
        print(f"wrote {args.out}/scale.csv, the plots and summary.txt")

    return report_errors(work, debug=debug_requested(args.debug, DEBUG_ENV))


if __name__ == "__main__":
    raise SystemExit(main())
