"""The checkpoint file (``DIR/model.pt``): :class:`Checkpoint` alone writes and reads it.

A checkpoint holds a model (its ``ModelConfig`` fields and weights); a training checkpoint
also holds what a fit resumes from (step, the last step's weights and optimizer state, RNG
states, history, training options, the task family's name); ``extra`` is plain data that
identifies the data the model was trained on (a grouped data set's ``{"schema": ...}``).
``weights`` are the model a fit keeps: the last step's, or the best step's on the validation
tasks when the fit selects one (``history["kept_step"]``); a run that stopped early
(``history["stopped"]``) keeps no state to resume from (``last_weights`` and ``optimizer`` None).

The file is ``torch.save`` of one dict of plain data, read with
``torch.load(weights_only=True)`` (tensors, numbers, strings, lists, tuples, dicts: nothing
in it can run code), written atomically (:func:`~hierarchical_meta.runfiles.atomic_write`)::

    {"format": "hierarchical_meta checkpoint", "version": 3,
     "sha256": {field: sha256 of the field's contents (digest), for every field},
     "model_config": {...}, "weights": {name: tensor}, "step": int or None, ...}

:meth:`Checkpoint.read` checks, in order: the file is a checkpoint of this format version;
it has every field and no other; each field's contents match their sha256 (a flipped bit
anywhere is caught); each field has its type and range. Any failure is one ValueError naming
the file, the field and what to do. What the fields mean for the model (a configuration that
can be built, weights of its shapes) is checked by
:func:`hierarchical_meta.meta_model.load_checkpoint`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import pickle

import torch

from .runfiles import atomic_write, check_input_file

__all__ = ["Checkpoint", "FORMAT", "VERSION", "TRAINING_FIELDS", "RESUME_FIELDS", "HISTORY_KEYS", "RNG_STATE_SIZE",
           "REFIT", "SCALARS", "digest"]

FORMAT = "hierarchical_meta checkpoint"
#: The format version this code writes and reads (1: the dict without "format" of earlier versions;
#: 2: without ``last_weights`` and the history's ``kept_step``, ``stopped`` and ``initial_val_loglik``).
VERSION = 3
#: The fields a training checkpoint sets and a model-only checkpoint leaves None.
TRAINING_FIELDS = ("step", "batch_rng", "torch_rng", "history", "train_config", "family")
#: The fields a training checkpoint sets unless its run stopped early: the state it resumes from.
RESUME_FIELDS = ("last_weights", "optimizer")
#: The entries of ``Checkpoint.history``: lists ``step``, ``loss`` (one per step), ``eval_step``,
#: ``eval`` (one per evaluation), the numbers ``seconds``, ``trained_steps`` and ``kept_step``
#: (the step whose weights are kept), ``stopped`` (why the run stopped early, or None) and
#: ``initial_val_loglik`` (the validation score of the untrained model, or None when none is kept).
HISTORY_KEYS = ("step", "loss", "eval_step", "eval", "seconds", "trained_steps", "kept_step", "stopped",
                "initial_val_loglik")
#: Bytes of the state of torch's CPU generator (Mersenne Twister).
RNG_STATE_SIZE = torch.Generator().get_state().numel()
#: The way out of a checkpoint that cannot be used.
REFIT = "use an intact copy, or refit with `python -m hierarchical_meta fit` into a new --out folder"
#: The types of plain data that are not containers.
SCALARS = (type(None), bool, int, float, str)


@dataclasses.dataclass
class Checkpoint:
    """A model and, for a training checkpoint, the state a fit resumes from.

    ``model_config``: the ``ModelConfig`` fields; ``weights``: the kept model's ``state_dict``;
    ``step``: steps trained; ``last_weights``: the ``state_dict`` after step ``step``, and
    ``optimizer``: the stepper's state (``train.make_svi``), which a fit resumes from;
    ``batch_rng`` and ``torch_rng``: the states [RNG_STATE_SIZE] (uint8) of the generator
    fit draws batches from and of torch's global RNG; ``history``: :data:`HISTORY_KEYS`;
    ``train_config``: the ``TrainConfig`` fields; ``family``: the task family's name;
    ``extra``: plain data identifying the training data.
    """

    model_config: dict
    weights: dict
    step: int | None = None
    last_weights: dict | None = None
    optimizer: dict | None = None
    batch_rng: torch.Tensor | None = None
    torch_rng: torch.Tensor | None = None
    history: dict | None = None
    train_config: dict | None = None
    family: str | None = None
    extra: dict = dataclasses.field(default_factory=dict)

    @property
    def resumable(self) -> bool:
        """True for a training checkpoint (a fit can resume from it)."""
        return self.step is not None

    @property
    def stopped(self) -> bool:
        """True for the checkpoint of a run that stopped early (it does not train on)."""
        return self.history is not None and self.history["stopped"] is not None

    def write(self, path: str) -> None:
        """Write the file atomically (a crash never leaves half a file at ``path``); ValueError for a
        checkpoint :meth:`read` would refuse (NaN weights, a field that is not plain data, ...)."""
        problem = self._problem()
        if problem:
            raise ValueError(f"refused to write checkpoint {path!r}: {problem}")
        fields = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        payload = {"format": FORMAT, "version": VERSION,
                   "sha256": {name: digest(value, f"field {name!r}") for name, value in fields.items()}, **fields}
        with atomic_write(path, "wb") as f:
            torch.save(payload, f)

    @classmethod
    def read(cls, path: str, map_location="cpu") -> Checkpoint:
        """The checkpoint in ``path``, checked (module docstring); ValueError or OSError otherwise."""
        check_input_file(path, "checkpoint")
        payload = _unpickle(path, map_location)
        fields = _fields(payload, path)
        _check_digests(fields, payload["sha256"], path)
        checkpoint = cls(**fields)
        problem = checkpoint._problem()
        if problem:
            raise ValueError(f"checkpoint {path!r}: {problem}; the file was edited or written by a faulty "
                             f"program: {REFIT}")
        return checkpoint

    def _problem(self) -> str | None:
        """What is wrong with a field (its type or range), or None."""
        training = [name for name in TRAINING_FIELDS if getattr(self, name) is not None]
        if training and len(training) < len(TRAINING_FIELDS):
            missing = [name for name in TRAINING_FIELDS if name not in training]
            return f"training field(s) {missing} are missing while {training} are set"
        checks = [("model_config", _plain_dict), ("weights", _finite_tensors), ("extra", _plain_dict)]
        if training:
            checks += [("step", _count), ("batch_rng", _rng_state), ("torch_rng", _rng_state), ("history", _history),
                       ("train_config", _plain_dict), ("family", _text)]
        for name, check in checks:
            problem = check(getattr(self, name))
            if problem:
                return f"field {name!r} {problem}"
        if not training:
            return _absent(self, RESUME_FIELDS, "a model-only checkpoint")
        return _history_length(self.history, self.step) or self._resume_problem()

    def _resume_problem(self) -> str | None:
        """What is wrong with the state to resume from: absent after an early stop, else well formed."""
        if self.stopped:
            return _absent(self, RESUME_FIELDS, "the checkpoint of a run that stopped early")
        missing = [name for name in RESUME_FIELDS if getattr(self, name) is None]
        if missing:
            return f"field(s) {missing} are missing: a training checkpoint of a run that goes on resumes from them"
        for name, problem in (("last_weights", _same_tensors(self.last_weights, self.weights)),
                              ("optimizer", _finite_plain_dict(self.optimizer))):
            if problem:
                return f"field {name!r} {problem}"
        return None


def _absent(checkpoint: Checkpoint, names: tuple[str, ...], what: str) -> str | None:
    """Why the fields ``names`` must be None in ``what``, if any of them is set."""
    present = [name for name in names if getattr(checkpoint, name) is not None]
    return f"field(s) {present} must be None in {what}" if present else None


def digest(value, name: str = "value") -> str:
    """sha256 of ``value``: plain data and tensors (dtype, shape and bytes), in order.

    ValueError if ``value`` holds anything else (``name`` names it in the message).
    """
    hasher = hashlib.sha256()
    _feed(hasher, value, name)
    return hasher.hexdigest()


def _feed(hasher, value, name: str) -> None:
    """Add ``value`` to ``hasher``, each piece tagged with its type and length."""
    if isinstance(value, torch.Tensor):
        if value.layout != torch.strided or value.is_quantized:
            raise ValueError(f"{name} holds a {value.layout} tensor; a checkpoint holds dense tensors")
        tensor = value.detach().cpu().contiguous()
        hasher.update(f"tensor {tensor.dtype} {tuple(tensor.shape)}:".encode())
        hasher.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        hasher.update(f"dict {len(value)}:".encode())
        for key, item in value.items():
            _feed(hasher, key, name)
            _feed(hasher, item, name)
    elif isinstance(value, list | tuple):
        hasher.update(f"{type(value).__name__} {len(value)}:".encode())
        for item in value:
            _feed(hasher, item, name)
    elif type(value) in SCALARS:
        text = value.hex() if isinstance(value, float) else repr(value)
        hasher.update(f"{type(value).__name__} {len(text)}:{text}".encode())
    else:
        raise ValueError(f"{name} holds a {type(value).__name__}; a checkpoint holds only tensors, numbers, "
                         "strings, None, lists, tuples and dicts")


def _unpickle(path: str, map_location) -> object:
    """``torch.load(path, weights_only=True)``; ValueError for anything that is not such a file."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" in str(error).lower():
            raise ValueError(f"refused to load {path!r}: it holds Python objects beyond tensors and plain data, "
                             "and unpickling them could run code; load only checkpoints written by "
                             "`python -m hierarchical_meta fit`") from None
        raise ValueError(f"{path!r} is not a hierarchical_meta checkpoint ({error}); pass the "
                         "DIR/model.pt that `python -m hierarchical_meta fit --out DIR` wrote") from None
    except Exception:  # garbage makes the unpickler fail in any way (KeyError, EOFError, ...)
        raise ValueError(f"{path!r} is not a hierarchical_meta checkpoint (it cannot be read as one); pass the "
                         "DIR/model.pt that `python -m hierarchical_meta fit --out DIR` wrote") from None


def _fields(payload: object, path: str) -> dict:
    """The fields of an unpickled file, once it is a checkpoint of this format with every field."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        if isinstance(payload, dict) and {"config", "state_dict"} <= set(payload):
            raise ValueError(f"checkpoint {path!r} is from another version of hierarchical_meta (format 1; this "
                             f"version reads format {VERSION}); refit it with this version, or load it with the "
                             "version that wrote it")
        raise ValueError(f"{path!r} is not a hierarchical_meta checkpoint (no format marker); pass the "
                         "DIR/model.pt that `python -m hierarchical_meta fit --out DIR` wrote")
    if payload.get("version") != VERSION:
        raise ValueError(f"checkpoint {path!r} is from another version of hierarchical_meta (format "
                         f"{payload.get('version')!r}; this version reads format {VERSION}); use the version "
                         "that wrote it, or refit it with this one")
    names = [field.name for field in dataclasses.fields(Checkpoint)]
    missing = [name for name in names + ["sha256"] if name not in payload]
    unknown = sorted(set(payload) - set(names) - {"format", "version", "sha256"})
    if missing or unknown or not isinstance(payload["sha256"], dict):
        what = f"has no field(s) {missing}" if missing else (f"has unknown field(s) {unknown}" if unknown
                                                              else "has no sha256 table")
        raise ValueError(f"checkpoint {path!r} {what}: the file is damaged or was edited; {REFIT}")
    return {name: payload[name] for name in names}


def _check_digests(fields: dict, table: dict, path: str) -> None:
    """ValueError naming the first field whose sha256 is not the one in ``table``."""
    for name, value in fields.items():
        try:
            matches = digest(value, f"field {name!r}") == table.get(name)
        except ValueError as error:
            raise ValueError(f"checkpoint {path!r}: {error}; {REFIT}") from None
        if not matches:
            raise ValueError(f"checkpoint {path!r}: field {name!r} does not match its sha256: the file is damaged or "
                             f"was edited; {REFIT}")


# -- the checks of single fields: each returns what is wrong, or None ----------------------------

def _plain_dict(value) -> str | None:
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        return f"must be a dict with string keys, got {type(value).__name__}"
    return None


def _finite_tensors(value) -> str | None:
    problem = _plain_dict(value)
    if problem:
        return problem
    for key, tensor in value.items():
        if not isinstance(tensor, torch.Tensor):
            return f"entry {key!r} must be a tensor, got {type(tensor).__name__}"
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return f"entry {key!r} holds NaN or infinite values"
    return None


def _finite_plain_dict(value) -> str | None:
    """A dict whose tensors (at any depth) are finite."""
    if not isinstance(value, dict):
        return f"must be a dict, got {type(value).__name__}"
    pending = list(value.values())
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending += item.values()
        elif isinstance(item, list | tuple):
            pending += item
        elif isinstance(item, torch.Tensor) and item.is_floating_point() and not bool(torch.isfinite(item).all()):
            return "holds NaN or infinite values"
    return None


def _count(value) -> str | None:
    if type(value) is not int or value < 0:
        return f"must be an integer >= 0, got {value!r}"
    return None


def _rng_state(value) -> str | None:
    if not isinstance(value, torch.Tensor):
        return f"must be an RNG state ({RNG_STATE_SIZE} bytes, uint8), got {type(value).__name__}"
    if value.dtype != torch.uint8 or value.shape != (RNG_STATE_SIZE,):
        found = f"{value.dtype} of shape {list(value.shape)}"
        return f"must be an RNG state ({RNG_STATE_SIZE} bytes, uint8), got {found}"
    return None


def _text(value) -> str | None:
    return None if isinstance(value, str) else f"must be a string, got {type(value).__name__}"


def _history(value) -> str | None:
    if not isinstance(value, dict) or set(value) != set(HISTORY_KEYS):
        keys = sorted(value) if isinstance(value, dict) else type(value).__name__
        return f"must be a dict with the entries {list(HISTORY_KEYS)}, got {keys}"
    lists = [key for key in ("step", "loss", "eval_step", "eval") if not isinstance(value[key], list)]
    if lists:
        return f"entries {lists} must be lists"
    if not isinstance(value["seconds"], float | int) or not math.isfinite(value["seconds"]):
        return f"entry 'seconds' must be a finite number, got {value['seconds']!r}"
    if len(value["eval_step"]) != len(value["eval"]):
        return "entries 'eval_step' and 'eval' must have one item per evaluation"
    if type(value["kept_step"]) is not int or not 0 <= value["kept_step"] <= len(value["step"]):
        return f"entry 'kept_step' must be one of the steps trained, got {value['kept_step']!r}"
    if value["stopped"] is not None and not isinstance(value["stopped"], str):
        return f"entry 'stopped' must be None or a text, got {type(value['stopped']).__name__}"
    initial = value["initial_val_loglik"]
    if initial is not None and not (isinstance(initial, float) and math.isfinite(initial)):
        return f"entry 'initial_val_loglik' must be None or a finite number, got {initial!r}"
    return None


def _same_tensors(value, weights: dict) -> str | None:
    """What keeps ``value`` from being finite weights with the names, shapes and dtypes of ``weights``."""
    problem = _finite_tensors(value)
    if problem:
        return problem
    shapes = {name: (tensor.shape, tensor.dtype) for name, tensor in weights.items()}
    if {name: (tensor.shape, tensor.dtype) for name, tensor in value.items()} != shapes:
        return "must hold tensors of the names, shapes and dtypes of field 'weights'"
    return None


def _history_length(history: dict, step: int) -> str | None:
    steps, losses = history["step"], history["loss"]
    if len(steps) != step or len(losses) != step or steps[-1:] != ([step] if step else []):
        return (f"field 'history' must hold one loss per step 1..{step} (field 'step'), got {len(losses)} losses, "
                f"the last at step {steps[-1:]}")
    return None
