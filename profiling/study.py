"""The study's configurations, the measurement of one configuration, and its CSV.

Three sweeps, each varying one thing with the others at their defaults (docs/profiling.md;
L = 5 inner steps, 2 hidden layers of 128 units, 32 tasks, 10 support / 100 query
points, α = 1e-2, ES with 16 antithetic pairs and σ = 1e-3):

- ``steps``: inner steps L; ``layers``: hidden layers; ``units``: hidden units per layer.

One CSV row per (method, implementation, sweep, value), written as soon as it is
measured, so a killed study resumes where it stopped (see :mod:`profiling.scale`); a row
torn by a kill in the middle of its write (a last line without its newline) is left out
and removed (:func:`profiling.rows.drop_torn_row`), so its configuration is measured again.
:class:`StudyConfig` holds the settings of one run, and with them every default of the study.
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
from dataclasses import asdict, dataclass

import torch

from . import rows
from .algorithms import DEFAULT_IMPL, METHODS, check_impl, check_method, es, meta_gradient
from .measure import environment, measure, resolve_device
from .mlp import build_mlp
from .tasks import sample_sinusoid_tasks

__all__ = ["StudyConfig", "Config", "configurations", "measure_config", "failed_row", "read_rows", "append_row",
           "row_key", "ray_endpoint", "DEFAULTS", "EXECUTORS", "SWEEP_PARAMETER", "SWEEPS", "REPEATS",
           "SECONDS_PER_CONFIG", "WARMUP"]

DEFAULTS = {"inner_steps": 5, "layers": 2, "hidden": 128}
NUM_TASKS, INNER_LR = 32, 1e-2
PAIRS, NOISE_STD = es.DEFAULT_PAIRS, es.DEFAULT_NOISE_STD
SWEEP_PARAMETER = {"steps": "inner_steps", "layers": "layers", "units": "hidden"}
SWEEPS = {
    "full": {
        "steps": [1, 2, 4, 8, 16, 32],
        "layers": [1, 2, 3, 4, 6, 8],
        "units": [32, 64, 128, 256, 512, 1024],
    },
    "quick": {
        "steps": [1, 2, 4],
        "layers": [1, 2],
        "units": [32, 64, 128],
    },
}
#: Inner-step values that only the exact MAMLs add to the full steps sweep: their memory
#: against L is what the checkpointed variant is for (first-order MAML and ES stay flat).
EXACT_MAMLS = ("maml", "maml_checkpointed")
EXACT_MAML_STEPS = [64, 128]

#: Timed outer steps per configuration after the warm-up, and the time budget (s) that caps
#: them, for the full study and for a ``quick`` smoke run.
REPEATS = {"full": 15, "quick": 3}
SECONDS_PER_CONFIG = {"full": 20.0, "quick": 1.0}
WARMUP = 2
ISOLATIONS = ("process", "none")
#: Where the configurations run: worker processes on this machine, or Ray tasks
#: (:mod:`profiling.ray_executor`), on a local Ray or an existing cluster.
EXECUTORS = ("local", "ray")
DEBUG_ENV = "PROFILING_DEBUG"  # set to 1: the studies' command lines show the traceback of an error
RAY_INSTALL = "pip install 'hierarchical-meta[cluster]'"
RAY_CLIENT = "ray://"  # the scheme of a Ray Client address, ray://HEAD:10001
RAY_ADDRESSES = "ray://HEAD:10001 (Ray Client), HEAD:6379 (a machine of the cluster) or auto"


def ray_endpoint(address: str) -> tuple[str, int] | None:
    """The (host, port) a Ray cluster ``address`` connects to; None for ``auto`` (found by Ray).

    ValueError naming the accepted forms (:data:`RAY_ADDRESSES`) for anything else.
    """
    if address == "auto":
        return None
    host, colon, port = address.removeprefix(RAY_CLIENT).rpartition(":")
    host = host.strip("[]")  # an IPv6 address is written [::1]:10001
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"address={address!r} is not a Ray cluster address: give {RAY_ADDRESSES}")
    return host, int(port)

COLUMNS = [
    "method", "impl", "sweep", "inner_steps", "layers", "hidden", "num_params", "status",
    "time_median_ms", "time_q25_ms", "time_q75_ms", "time_min_ms", "repeats",
    "peak_mb", "saved_peak_mb", "load_1min", "threads",
    "device", "device_name", "torch", "cuda", "num_tasks", "pairs",
]


@dataclass(frozen=True)
class Config:
    method: str
    impl: str
    sweep: str
    inner_steps: int
    layers: int
    hidden: int

    def key(self) -> tuple:
        return (self.method, self.impl, self.sweep, self.inner_steps, self.layers, self.hidden)


@dataclass(frozen=True)
class StudyConfig:
    """One run of the study, with the defaults of ``python -m profiling.scale`` (whose flags these are).

    ``steps``, ``layers``, ``units``: the values of that sweep (None: :data:`SWEEPS`, the
    ``quick`` table for a quick run); ``base_*``: what the other parameters keep while one is
    swept. ``repeats`` and ``seconds_per_config`` (None: :data:`REPEATS` and
    :data:`SECONDS_PER_CONFIG` of the run) size the timing; ``isolation="process"`` measures each
    (method, sweep) in a fresh worker process; ``threads`` (None: 1 on the CPU, torch's default
    on CUDA) sets torch's threads in each; ``device`` None is CUDA if present, else the CPU.
    ``executor="ray"`` runs each configuration as a Ray task in a fresh worker process instead
    (:mod:`profiling.ray_executor`), on the Ray cluster at ``address`` (None: a local Ray).
    """

    methods: tuple = tuple(METHODS)
    sweeps: tuple = tuple(SWEEP_PARAMETER)
    impl: str = DEFAULT_IMPL
    quick: bool = False
    steps: tuple | None = None
    layers: tuple | None = None
    units: tuple | None = None
    base_steps: int = DEFAULTS["inner_steps"]
    base_layers: int = DEFAULTS["layers"]
    base_units: int = DEFAULTS["hidden"]
    repeats: int | None = None
    warmup: int = WARMUP
    seconds_per_config: float | None = None
    isolation: str = "process"
    threads: int | None = None
    device: str | None = None
    executor: str = "local"
    address: str | None = None

    def __post_init__(self):
        for name in ("methods", "sweeps", "steps", "layers", "units"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("repeats", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}={value}: it must be a positive integer (or None for the default)")
        if self.warmup < 0:
            raise ValueError(f"warmup={self.warmup}: it must be 0 or more")
        if self.seconds_per_config is not None and self.seconds_per_config <= 0:
            raise ValueError(f"seconds_per_config={self.seconds_per_config}: it must be positive")
        if self.isolation not in ISOLATIONS:
            raise ValueError(f"isolation={self.isolation!r}: choose from {ISOLATIONS}")
        self._check_executor()
        resolve_device(self.device)
        self.configurations()  # checks methods, sweeps, their values and the base

    def _check_executor(self) -> None:
        """ValueError unless ``executor`` and ``address`` go together and what they need is installed."""
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor={self.executor!r}: choose from {EXECUTORS}")
        if self.address is not None and self.executor != "ray":
            raise ValueError(f"address={self.address!r} is the address of a Ray cluster: use it with executor='ray'")
        if self.executor != "ray":
            return
        if self.isolation != "process":
            raise ValueError(f"isolation={self.isolation!r} with executor='ray': Ray runs every configuration in a "
                             "fresh worker process; use isolation='process' or executor='local'")
        if importlib.util.find_spec("ray") is None:
            raise ValueError(f"executor='ray' needs Ray, which is not installed: {RAY_INSTALL}")
        if self.address is not None:
            ray_endpoint(self.address)
            if self.address.startswith(RAY_CLIENT) and importlib.util.find_spec("grpc") is None:
                raise ValueError(f"address={self.address!r} is a Ray Client address, which needs Ray's client part "
                                 f"(ray[client]), not installed: {RAY_INSTALL}")

    @property
    def run(self) -> str:
        return "quick" if self.quick else "full"

    @property
    def timing(self) -> dict:
        """The measurement settings of every configuration: repeats, warmup, seconds_per_config, threads."""
        return {"repeats": self.repeats or REPEATS[self.run], "warmup": self.warmup,
                "seconds_per_config": self.seconds_per_config or SECONDS_PER_CONFIG[self.run],
                "threads": self.threads or (1 if resolve_device(self.device).type == "cpu" else None)}

    def configurations(self) -> list:
        """Every :class:`Config` of this run, in the order the study measures them."""
        values = {k: list(getattr(self, k)) for k in SWEEP_PARAMETER if getattr(self, k) is not None}
        base = {"inner_steps": self.base_steps, "layers": self.base_layers, "hidden": self.base_units}
        return configurations(self.methods, self.sweeps, self.impl, quick=self.quick, values=values, base=base)


def check_sweeps(sweeps) -> None:
    unknown = [s for s in sweeps if s not in SWEEP_PARAMETER]
    if unknown or not sweeps:
        raise ValueError(f"sweeps={list(sweeps)}: choose from {list(SWEEP_PARAMETER)}")


def configurations(methods, sweeps, impl: str, quick: bool = False, values=None, base=None) -> list[Config]:
    """Every configuration, in the order the study runs them (sweep, then method, then value).

    ``values`` optionally overrides the values of a sweep: ``{"steps": [1, 64]}``;
    ``base`` the defaults the other parameters keep: ``{"hidden": 64}``.
    """
    base = {**DEFAULTS, **(base or {})}
    for k, v in base.items():
        if k not in DEFAULTS or isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"base {k}={v!r}: expected positive integers for {sorted(DEFAULTS)}")
    check_sweeps(sweeps)
    for method in methods:
        check_method(method)
    check_impl(impl)
    table = dict(SWEEPS["quick" if quick else "full"])
    table.update(values or {})
    out = []
    for sweep in sweeps:
        for v in table[sweep]:
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"sweep {sweep!r} has value {v!r}: values must be positive integers")
        extended = sweep == "steps" and not quick and "steps" not in (values or {})
        for method in methods:
            extra = EXACT_MAML_STEPS if extended and method in EXACT_MAMLS else []
            for v in table[sweep] + extra:
                out.append(Config(method, impl, sweep, **{**base, SWEEP_PARAMETER[sweep]: v}))
    return out


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def measure_config(config: Config, device: torch.device, repeats: int = REPEATS["full"], warmup: int = WARMUP,
                   seconds_per_config: float = SECONDS_PER_CONFIG["full"], seed: int = 0) -> dict:
    """One CSV row: time and memory of one outer step of ``config`` on ``device``.

    Repeats are capped so that timing takes about ``seconds_per_config`` (at least 3), as
    sized from the last warm-up step (the first one also pays one-off costs: CUDA context,
    kernel and allocator warm-up).
    An out-of-memory error gives a row with ``status="oom"``; other errors propagate.
    """
    env = environment(device)
    row = {**asdict(config), **env, "num_tasks": NUM_TASKS, "pairs": PAIRS if config.method == "es" else "",
           "threads": torch.get_num_threads(), "load_1min": os.getloadavg()[0]}
    params = None
    try:
        torch.manual_seed(seed)
        net = build_mlp(config.layers, config.hidden)
        row["num_params"] = sum(p.numel() for p in net.parameters())
        params = {k: v.detach().to(device) for k, v in net.named_parameters()}
        batch = sample_sinusoid_tasks(NUM_TASKS, generator=torch.Generator().manual_seed(seed + 1), device=device)
        options = {}
        if config.method == "es":
            options = {"pairs": PAIRS, "noise_std": NOISE_STD,
                       "generator": torch.Generator(device=device).manual_seed(seed + 2)}

        def step():
            return meta_gradient(config.method, params, batch, inner_steps=config.inner_steps,
                                 inner_lr=INNER_LR, impl=config.impl, **options)

        for _ in range(max(warmup, 1)):  # the last warm-up step sizes the number of repeats
            t0 = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - t0
        n = max(3, min(repeats, int(seconds_per_config / max(seconds, 1e-6))))
        result = measure(step, device, repeats=n, warmup=0, saved_tensors=config.impl != "vmap")
        row.update(asdict(result), status="ok")
    except Exception as error:  # only out-of-memory is recorded; anything else is a bug
        if not _is_out_of_memory(error):
            raise
        row.update(status="oom", repeats=0)
        for k in ("time_median_ms", "time_q25_ms", "time_q75_ms", "time_min_ms", "peak_mb", "saved_peak_mb"):
            row[k] = math.nan
    finally:
        params = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def failed_row(config: Config, device: torch.device, status: str) -> dict:
    """A row for a configuration whose worker process died (e.g. killed by the OS)."""
    return {**asdict(config), **environment(device), "status": status, "repeats": 0}


def _parse_row(row: dict) -> dict:
    """A study row with its numbers parsed: empty counts are 0, empty measurements NaN."""
    for k in ("inner_steps", "layers", "hidden", "repeats", "threads"):
        row[k] = int(row[k]) if row.get(k) not in (None, "") else 0
    for k in ("time_median_ms", "time_q25_ms", "time_q75_ms", "time_min_ms", "peak_mb", "saved_peak_mb",
              "load_1min"):
        row[k] = float(row[k]) if row.get(k) not in (None, "") else math.nan
    return row


def read_rows(path) -> list[dict]:
    """Rows of a study CSV, numbers parsed; [] when the file does not exist.

    A torn last row (no newline) is left out; any other damaged row raises ValueError naming its line
    (:func:`profiling.rows.read_rows`).
    """
    return rows.read_rows(path, _parse_row)


def append_row(path, row: dict) -> None:
    """Append one row (writing the header first if the file is new) and flush it to disk."""
    rows.append_row(path, COLUMNS, row)


def row_key(row: dict) -> tuple:
    return (row["method"], row["impl"], row["sweep"], int(row["inner_steps"]), int(row["layers"]), int(row["hidden"]))
