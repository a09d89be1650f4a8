"""Timing and peak memory of one outer step, on a GPU or on the CPU.

What each number means (the CSV columns of the study):

- ``time_median_ms``, ``time_q25_ms``, ``time_q75_ms``: median and quartiles of the
  wall time of one step over ``repeats`` runs after ``warmup`` runs. On CUDA the step is
  bracketed by CUDA events and the device is synchronized; on the CPU it is
  ``time.perf_counter`` around the (synchronous) step.
- ``peak_mb``: the peak of bytes allocated *above the step's starting point* during one
  step (MiB, 2**20 bytes). On CUDA: ``reset_peak_memory_stats`` before the step,
  ``max_memory_allocated() − memory_allocated()`` measured before it. On the CPU:
  ``torch.profiler``'s memory events (every allocation and free of the CPU allocator,
  in order) summed cumulatively; the maximum of that running sum. Neither counts the
  allocator's cache nor what the process held before the step.
- ``saved_peak_mb``: the device-independent view: the peak, during the step, of the
  bytes of distinct storages held by tensors that autograd saved for backward
  (``torch.autograd.graph.saved_tensors_hooks``). It is what MAML must keep to
  differentiate through its inner loop. ``torch.func`` transforms refuse saved-tensor
  hooks, so it is not measured for the ``vmap`` implementations (NaN).
"""

from __future__ import annotations

import math
import os
import statistics
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.profiler import ProfilerActivity, profile

MIB = 2.0**20

__all__ = [
    "resolve_device",
    "time_step",
    "peak_memory_bytes",
    "saved_tensor_peak_bytes",
    "Measurement",
    "measure",
    "quantile",
    "environment",
]


def resolve_device(device) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"`` or None (CUDA if present, else CPU) → torch.device.

    Raises ValueError before any work when CUDA is asked for and there is none.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device={device!r} is not a device: use 'cpu' or 'cuda'") from error
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but CUDA is not available here: use device='cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif dev.type != "cpu":
        raise ValueError(f"device={device!r}: only 'cpu' and 'cuda' are supported")
    return dev


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(step: Callable[[], object], device: torch.device, repeats: int, warmup: int = 2) -> list[float]:
    """Wall times of ``repeats`` calls of ``step`` in milliseconds, after ``warmup`` calls."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats={repeats}, warmup={warmup}: need repeats ≥ 1 and warmup ≥ 0")
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def _cpu_peak_from_profiler(step: Callable[[], object]) -> int:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [
        e for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for event in events:
        current += event.nbytes()  # + for an allocation, − for a free
        peak = max(peak, current)
    return peak


def peak_memory_bytes(step: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated above the starting point during one call of ``step``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    return _cpu_peak_from_profiler(step)


class _SavedTensorTracker:
    """Live bytes of distinct storages saved for backward, and their peak."""

    def __init__(self):
        self.count: dict[int, int] = {}
        self.live = 0
        self.peak = 0

    def _release(self, key: int, nbytes: int) -> None:
        self.count[key] -= 1
        if self.count[key] == 0:
            del self.count[key]
            self.live -= nbytes

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key, nbytes = storage.data_ptr(), storage.nbytes()
        if key not in self.count:
            self.count[key] = 0
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        self.count[key] += 1
        weakref.finalize(tensor, self._release, key, nbytes)
        return tensor

    @staticmethod
    def unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor


def saved_tensor_peak_bytes(step: Callable[[], object]) -> int:
    """Peak bytes of (distinct storages of) tensors saved for backward during ``step``."""
    tracker = _SavedTensorTracker()
    with torch.autograd.graph.saved_tensors_hooks(tracker.pack, tracker.unpack):
        step()
    return tracker.peak


@dataclass
class Measurement:
    time_median_ms: float
    time_q25_ms: float
    time_q75_ms: float
    time_min_ms: float
    repeats: int
    peak_mb: float
    saved_peak_mb: float
    load_1min: float
    threads: int


def quantile(values: list[float], q: float) -> float:
    """The q-quantile of ``values`` with linear interpolation between order statistics."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def measure(step: Callable[[], object], device: torch.device, repeats: int, warmup: int = 2,
            saved_tensors: bool = True) -> Measurement:
    """Time ``step`` (median and quartiles), then its peak memory and saved-tensor peak."""
    times = time_step(step, device, repeats, warmup)
    peak = peak_memory_bytes(step, device)
    saved = saved_tensor_peak_bytes(step) if saved_tensors else float("nan")
    return Measurement(
        time_median_ms=statistics.median(times),
        time_q25_ms=quantile(times, 0.25),
        time_q75_ms=quantile(times, 0.75),
        time_min_ms=min(times),
        repeats=repeats,
        peak_mb=peak / MIB,
        saved_peak_mb=saved / MIB,
        load_1min=os.getloadavg()[0],
        threads=torch.get_num_threads(),
    )


def environment(device: torch.device) -> dict[str, str]:
    """Device name and versions, for every row and file the study writes."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU ({os.cpu_count()} cores visible, {torch.get_num_threads()} torch threads)"
    return {
        "device": device.type,
        "device_name": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none",
    }
