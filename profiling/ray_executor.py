"""The study's configurations as Ray tasks, on a local Ray or an existing cluster (docs/profiling.md).

Ray is an optional extra (``pip install 'hierarchical-meta[cluster]'``); only
``python -m profiling.scale --executor ray`` imports this module. Each configuration is
one task that runs in a fresh worker process (``max_calls=1``, as the local executor's
isolation), holds one GPU on a CUDA study (``num_gpus=1``) and as many CPUs as torch
threads, and measures with :func:`profiling.study.measure_config`, the code the local
worker runs. The driver appends each row to the CSV as its task finishes; a task whose
worker dies or raises is recorded as ``failed:<error>``, as the local executor records a
dead worker. Tasks are never retried: a configuration that kills its worker would kill
the next one too. The address of a cluster is first tried with a plain connection that gives
up after :data:`CONNECT_SECONDS`, so a wrong or unreachable address ends at once in one line.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

import ray
import torch
from ray.exceptions import RayError, RayTaskError
from tqdm import tqdm

from .measure import resolve_device
from .study import RAY_ADDRESSES, Config, append_row, failed_row, measure_config, ray_endpoint

__all__ = ["run_on_ray", "check_reachable", "CONNECT_SECONDS"]

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
CONNECT_SECONDS = 5.0  # how long a cluster's address may take to accept a connection


def check_reachable(address: str, timeout: float = CONNECT_SECONDS) -> None:
    """ConnectionError, within ``timeout`` seconds, unless the host and port of ``address`` accept a connection.

    (Ray itself waits minutes on an address nobody answers.) ``auto`` is left to Ray, which fails at once.
    """
    endpoint = ray_endpoint(address)
    if endpoint is None:
        return
    try:
        socket.create_connection(endpoint, timeout=timeout).close()
    except OSError as error:
        raise ConnectionError(f"cannot reach the Ray cluster at {address!r} within {timeout:g} s "
                              f"({error.strerror or error}): start the cluster or correct --address "
                              f"({RAY_ADDRESSES}), or leave --address out for a local Ray") from None


@ray.remote(max_calls=1, max_retries=0)
def measure_task(fields: dict, device_type: str, timing: dict) -> dict:
    """One configuration's row, measured in this (fresh) worker process on ``device_type``.

    On CUDA the device is the GPU Ray gave the task (the only one the worker sees).
    """
    if timing["threads"]:
        torch.set_num_threads(timing["threads"])
    return measure_config(Config(**fields), resolve_device(device_type), repeats=timing["repeats"],
                          warmup=timing["warmup"], seconds_per_config=timing["seconds_per_config"])


def run_on_ray(configs: list[Config], csv_path: str, device: torch.device, timing: dict, bar: tqdm,
               address: str | None = None) -> None:
    """Measure ``configs`` as Ray tasks and append their rows to ``csv_path`` as they finish.

    Connects to the cluster at ``address``, or starts a local Ray with this machine's cores
    (None), unless this process is already connected; disconnects (stopping a local Ray) at
    the end if it connected. ``timing`` holds repeats, warmup, seconds_per_config and threads
    (:attr:`profiling.study.StudyConfig.timing`). The workers import this package's code, shipped
    with the tasks, so a cluster needs only the dependencies installed.
    """
    connected = ray.is_initialized()
    if not connected:
        runtime_env = {"py_modules": [PACKAGE_DIR]}
        if address is None:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, runtime_env=runtime_env,
                     logging_level=logging.WARNING)
        else:
            check_reachable(address)
            ray.init(address=address, log_to_driver=False, runtime_env=runtime_env, logging_level=logging.WARNING)
    resources = {"num_cpus": timing["threads"] or 1, "num_gpus": 1 if device.type == "cuda" else 0}
    pending = {}
    try:
        for config in configs:
            pending[measure_task.options(**resources).remote(config.__dict__, device.type, timing)] = config
        while pending:
            bar.set_postfix_str(f"{len(pending)} tasks on Ray", refresh=True)
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            config = pending.pop(ref)
            try:
                row = ray.get(ref)
            except RayTaskError as error:  # the measurement raised: a bug, shown as the local worker shows it
                sys.stderr.write(f"{config}: {error}\n")
                row = failed_row(config, device, f"failed:{type(error.cause).__name__}")
            except RayError as error:  # the worker died (e.g. killed for memory)
                row = failed_row(config, device, f"failed:{type(error).__name__}")
            append_row(csv_path, row)
            bar.update(1)
    finally:
        for ref in pending:  # stopped early: leave no task running on a cluster
            ray.cancel(ref, force=True)
        if not connected:
            ray.shutdown()
