"""Bad checkpoints, resumes and seeds, one table row each (hierarchical_meta/checkpoint.py, train.py).

Each case names how the input is made, its route and its outcome class: "error" (a
ValueError or OSError whose one-line message holds the fragment; on the command line exit
status 2 and one ``error:`` line, never a traceback) or "handled" (the right result, the
fragment in it). Routes:

- ``file``: ``make(tmp, fitted)`` writes a checkpoint file; it is loaded with
  ``load_checkpoint`` *and* given to ``python -m hierarchical_meta predict --checkpoint``;
- ``api``: ``make`` returns a call into the library (fit, TrainConfig);
- ``cli``: ``make`` returns the argv of ``python -m hierarchical_meta``.

A damaged file is "raw" (bytes or fields changed, the sha256 table left as it was: the digest
catches it) or "resealed" (fields changed and their sha256 recomputed, as a deliberate edit
would: the checks of each field catch it). Checkpoints are tiny: hidden 4, D = 2, 2 steps.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from hierarchical_meta.__main__ import main
from hierarchical_meta.checkpoint import RNG_STATE_SIZE, digest
from hierarchical_meta.meta_model import HierarchicalMetaModel, ModelConfig, load_checkpoint
from hierarchical_meta.tasks import SinusoidTasks
from hierarchical_meta.train import MAX_SEED, TrainConfig, fit

MODEL = ModelConfig(hidden=4, latent_dim=2, layers=1)
TRAIN = TrainConfig(steps=2, batch_tasks=4, max_points=5, eval_tasks=4, eval_every=2, checkpoint_every=2,
                    num_particles=1)
TASKS = """task,role,x,y,m1,m2
a,support,0.3,1.2,2.5,0.1
a,query,1.0,,2.5,0.1
b,query,-2.0,,1.0,-0.4
"""
WEIGHT = "model.phi1_to_phi2.weight"  # [D, D]
SPLIT = {"split_seed": 0, "test_fraction": 0.2}
SCHEMA = {"version": 1, "group": "site", "y": ["growth"]}


def tiny_model(seed: int = 0) -> HierarchicalMetaModel:
    torch.manual_seed(seed)
    return HierarchicalMetaModel(MODEL)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> Path:
    """A folder with the checkpoint of a finished 2-step fit."""
    out = tmp_path_factory.mktemp("fitted")
    fit(tiny_model(), SinusoidTasks(), TRAIN, out_dir=str(out), progress=False)
    return out


# -- how inputs are made ------------------------------------------------------------------------

def raw(edit: Callable[[dict], object]) -> Callable:
    """A copy of the fitted checkpoint whose unpickled dict ``edit`` changed (or replaced), sha256 untouched."""
    def make(tmp: Path, fitted: Path) -> str:
        state = torch.load(fitted / "model.pt", weights_only=True)
        state = edit(state) or state
        torch.save(state, tmp / "damaged.pt")
        return str(tmp / "damaged.pt")
    return make


def resealed(edit: Callable[[dict], object]) -> Callable:
    """A copy of the fitted checkpoint with fields changed by ``edit`` and their sha256 recomputed."""
    def reseal(state: dict) -> dict:
        edit(state)
        state["sha256"] = {name: digest(state[name]) for name in state["sha256"]}
        return state
    return raw(reseal)


def flipped(find: Callable[[dict], bytes]) -> Callable:
    """A copy of the fitted checkpoint with one bit flipped in the bytes ``find(state)`` (found in the file)."""
    def make(tmp: Path, fitted: Path) -> str:
        data = bytearray((fitted / "model.pt").read_bytes())
        needle = find(torch.load(fitted / "model.pt", weights_only=True))
        at = data.find(needle)
        assert at >= 0 and data.find(needle, at + 1) < 0  # found once: the flip is where it is meant to be
        data[at + len(needle) // 2] ^= 0x04
        (tmp / "damaged.pt").write_bytes(bytes(data))
        return str(tmp / "damaged.pt")
    return make


def written(content: bytes | Callable[[], object]) -> Callable:
    """A file holding ``content`` (bytes), or ``torch.save`` of what ``content()`` returns."""
    def make(tmp: Path, fitted: Path) -> str:
        path = tmp / "damaged.pt"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content(), path)
        return str(path)
    return make


def truncated(tmp: Path, fitted: Path) -> str:
    data = (fitted / "model.pt").read_bytes()
    (tmp / "damaged.pt").write_bytes(data[:len(data) // 2])
    return str(tmp / "damaged.pt")


def model_only(tmp: Path, fitted: Path) -> str:
    tiny_model().save(str(tmp / "model.pt"))
    return str(tmp / "model.pt")


def format_1() -> dict:
    """What earlier versions wrote: config and state_dict, no format marker."""
    model = tiny_model()
    return {"config": dataclasses.asdict(model.config), "state_dict": model.state_dict(), "step": 2}


class Shell:
    """An object whose unpickling would run a shell command."""

    def __reduce__(self):
        return os.system, ("echo pwned",)


def weight_bytes(state: dict) -> bytes:
    return state["weights"][WEIGHT].numpy().tobytes()


def set_weight(value: float) -> Callable[[dict], None]:
    return lambda s: s["weights"][WEIGHT].view(-1).__setitem__(0, value)


def refit(tmp: Path, fitted: Path, config: TrainConfig = TRAIN, **options) -> Callable:
    """A call of fit into a copy of the fitted folder (its checkpoint possibly edited before)."""
    if not (tmp / "model.pt").exists():
        (tmp / "model.pt").write_bytes((fitted / "model.pt").read_bytes())
    return lambda: fit(tiny_model(1), SinusoidTasks(), config, out_dir=str(tmp), progress=False, **options)


def rerun(**changes) -> Callable:
    return lambda tmp, fitted: refit(tmp, fitted, dataclasses.replace(TRAIN, **changes))


def resume_edited(edit: Callable[[dict], object]) -> Callable:
    """fit resuming the fitted checkpoint after ``edit`` (resealed), extended by one step."""
    def make(tmp: Path, fitted: Path) -> Callable:
        os.replace(resealed(edit)(tmp, fitted), tmp / "model.pt")
        return refit(tmp, fitted, dataclasses.replace(TRAIN, steps=3), extend=True)
    return make


def resume_pyro_edited(edit: Callable[[dict], object]) -> Callable:
    """Like :func:`resume_edited` for a fit with ``elbo="pyro"`` (ClippedAdam's state per parameter)."""
    def make(tmp: Path, fitted: Path) -> Callable:
        config = dataclasses.replace(TRAIN, elbo="pyro")
        fit(tiny_model(), SinusoidTasks(), config, out_dir=str(tmp / "pyro"), progress=False)
        os.replace(resealed(edit)(tmp, tmp / "pyro"), tmp / "model.pt")
        return refit(tmp, fitted, dataclasses.replace(config, steps=3), extend=True)
    return make


def resume_with_extra(saved: dict, now: dict) -> Callable:
    """fit trained with ``checkpoint_extra=saved``, then resumed with ``now``."""
    def make(tmp: Path, fitted: Path) -> Callable:
        fit(tiny_model(), SinusoidTasks(), TRAIN, out_dir=str(tmp), progress=False, checkpoint_extra=saved)
        return refit(tmp, fitted, checkpoint_extra=now)
    return make


def steps_trained(history: dict) -> str:
    return f"trained {history['trained_steps']} steps to step {history['step'][-1]}"


def predict_argv(tmp: Path, checkpoint: str) -> list[str]:
    (tmp / "tasks.csv").write_text(TASKS)
    return ["predict", "--checkpoint", checkpoint, "--tasks-file", str(tmp / "tasks.csv"), "--out",
            str(tmp / "pred.csv"), "--num-samples", "8", "--no-progress"]


def predict_fitted(*options: str) -> Callable:
    """The argv of predict with the fitted checkpoint and ``options``."""
    return lambda tmp, fitted: predict_argv(tmp, str(fitted / "model.pt")) + list(options)


# -- the table ----------------------------------------------------------------------------------

@dataclasses.dataclass
class Case:
    id: str
    make: Callable  # (tmp_path, fitted folder) -> a file path, a call or an argv, as route says
    route: str  # "file", "api" or "cli"
    outcome: str  # "error" or "handled"
    fragment: str  # in the error message, or in the handled result


def file(id, make, outcome, fragment):
    return Case(id, make, "file", outcome, fragment)


CASES = [
    # the file is not a checkpoint of this format
    file("missing-file", lambda t, f: str(t / "none.pt"), "error", "does not exist"),
    file("directory", lambda t, f: str(t), "error", "is a directory"),
    file("empty-file", written(b""), "error", "not a hierarchical_meta checkpoint"),
    file("text-file", written(b"task,role,x\n"), "error", "not a hierarchical_meta checkpoint"),
    file("truncated-file", truncated, "error", "not a hierarchical_meta checkpoint"),
    file("a-list", written(lambda: [1, 2]), "error", "not a hierarchical_meta checkpoint (no format marker)"),
    file("a-dict-of-something-else", written(lambda: {"weights": torch.zeros(2)}), "error", "no format marker"),
    file("python-object-inside", written(lambda: {"format": "x", "payload": Shell()}), "error", "refused to load"),
    file("format-1-of-earlier-versions", written(format_1), "error", "another version of hierarchical_meta (format 1"),
    file("format-of-a-newer-version", raw(lambda s: s.update(version=4)), "error", "(format 4; this version reads"),
    file("format-version-not-a-number", raw(lambda s: s.update(version="2")), "error", "format '2'"),
    # fields missing or unknown
    file("missing-field", raw(lambda s: s.pop("history") and s), "error", "has no field(s) ['history']"),
    file("missing-sha256-table", raw(lambda s: s.pop("sha256") and s), "error", "has no field(s) ['sha256']"),
    file("sha256-table-not-a-dict", raw(lambda s: s.update(sha256="0" * 64)), "error", "has no sha256 table"),
    file("unknown-field", raw(lambda s: s.update(notes="hello")), "error", "unknown field(s) ['notes']"),
    # raw damage: the digest of the field catches it
    file("bit-flip-in-weights", flipped(weight_bytes), "error", "field 'weights' does not match its sha256"),
    file("bit-flip-in-family-name", flipped(lambda s: s["family"].encode()), "error",
         "field 'family' does not match its sha256"),
    file("weights-edited", raw(set_weight(0.5)), "error", "field 'weights' does not match its sha256"),
    file("config-edited", raw(lambda s: s["model_config"].update(hidden=8)), "error",
         "field 'model_config' does not match its sha256"),
    file("step-edited", raw(lambda s: s.update(step=1)), "error", "field 'step' does not match its sha256"),
    file("digest-edited", raw(lambda s: s["sha256"].update(extra="0" * 64)), "error",
         "field 'extra' does not match its sha256"),
    # resealed edits: each field's check catches it
    file("nan-weight", resealed(set_weight(float("nan"))), "error", f"entry '{WEIGHT}' holds NaN or infinite"),
    file("infinite-weight", resealed(set_weight(float("inf"))), "error", "holds NaN or infinite values"),
    file("weight-of-wrong-shape", resealed(lambda s: s["weights"].update({WEIGHT: torch.zeros(3, 2)})), "error",
         f"'{WEIGHT}' has shape [3, 2], the configuration needs [2, 2]"),
    file("weight-missing", resealed(lambda s: s["weights"].pop(WEIGHT)), "error", f"missing ['{WEIGHT}']"),
    file("weight-unknown", resealed(lambda s: s["weights"].update(extra=torch.zeros(1))), "error",
         "unknown ['extra']"),
    file("sparse-weight", raw(lambda s: s["weights"].update({WEIGHT: torch.eye(2).to_sparse()})), "error",
         "field 'weights' holds a torch.sparse_coo tensor"),
    file("weight-not-a-tensor", resealed(lambda s: s["weights"].update({WEIGHT: [[1.0, 0.0], [0.0, 1.0]]})),
         "error", f"entry '{WEIGHT}' must be a tensor, got list"),
    file("config-too-large-to-build", resealed(lambda s: s["model_config"].update(hidden=2 ** 62)), "error",
         "describes networks that cannot be built"),
    file("config-too-large-to-allocate", resealed(lambda s: s["model_config"].update(hidden=10 ** 12)), "error",
         "the configuration needs [1000000000000, 6]"),
    file("config-value-of-wrong-type", resealed(lambda s: s["model_config"].update(hidden="4")), "error",
         "is an invalid configuration"),
    file("config-value-out-of-range", resealed(lambda s: s["model_config"].update(latent_dim=0)), "error",
         "latent_dim must be >= 1"),
    file("config-key-of-another-version", resealed(lambda s: s["model_config"].update(task_family="sinusoid")),
         "error", "unknown model_config key(s) ['task_family']"),
    file("config-key-missing", resealed(lambda s: s["model_config"].pop("noise")), "error",
         "field 'model_config' lacks ['noise']"),
    file("config-not-a-dict", resealed(lambda s: s.update(model_config=[4, 2])), "error",
         "field 'model_config' must be a dict"),
    file("step-a-string", resealed(lambda s: s.update(step="2")), "error",
         "field 'step' must be an integer >= 0, got '2'"),
    file("step-negative", resealed(lambda s: s.update(step=-1)), "error", "got -1"),
    file("step-a-float", resealed(lambda s: s.update(step=2.0)), "error", "got 2.0"),
    file("step-a-bool", resealed(lambda s: s.update(step=True)), "error", "got True"),
    file("step-beyond-its-history", resealed(lambda s: s.update(step=5)), "error", "one loss per step 1..5"),
    file("rng-state-cut", resealed(lambda s: s.update(batch_rng=s["batch_rng"][:100])), "error",
         f"field 'batch_rng' must be an RNG state ({RNG_STATE_SIZE} bytes, uint8), got torch.uint8 of shape [100]"),
    file("rng-state-of-wrong-type", resealed(lambda s: s.update(torch_rng=s["torch_rng"].float())), "error",
         "field 'torch_rng' must be an RNG state"),
    file("rng-state-not-a-tensor", resealed(lambda s: s.update(torch_rng=[1, 2])), "error", "got list"),
    file("optimizer-nan", resealed(lambda s: s["optimizer"]["state"][0]["exp_avg"].fill_(float("nan"))), "error",
         "field 'optimizer' holds NaN or infinite values"),
    file("history-not-a-dict", resealed(lambda s: s.update(history=[1, 2])), "error",
         "field 'history' must be a dict with the entries"),
    file("history-entry-missing", resealed(lambda s: s["history"].pop("loss")), "error",
         "field 'history' must be a dict with the entries"),
    file("history-seconds-nan", resealed(lambda s: s["history"].update(seconds=float("nan"))), "error",
         "entry 'seconds' must be a finite number"),
    file("training-field-missing", resealed(lambda s: s.update(batch_rng=None)), "error",
         "training field(s) ['batch_rng'] are missing"),
    file("resume-field-missing", resealed(lambda s: s.update(optimizer=None)), "error",
         "field(s) ['optimizer'] are missing: a training checkpoint of a run that goes on resumes from them"),
    file("resume-field-after-a-stop", resealed(lambda s: s["history"].update(stopped="early stopping")), "error",
         "field(s) ['last_weights', 'optimizer'] must be None in the checkpoint of a run that stopped early"),
    file("last-weights-of-another-shape",
         resealed(lambda s: s.update(last_weights={**s["weights"], WEIGHT: torch.zeros(1)})), "error",
         "field 'last_weights' must hold tensors of the names, shapes and dtypes of field 'weights'"),
    file("last-weights-not-finite", resealed(lambda s: s.update(last_weights={
        **s["weights"], WEIGHT: torch.full_like(s["weights"][WEIGHT], float("nan"))})), "error",
         f"field 'last_weights' entry '{WEIGHT}' holds NaN"),
    file("kept-step-beyond-the-steps", resealed(lambda s: s["history"].update(kept_step=99)), "error",
         "entry 'kept_step' must be one of the steps trained, got 99"),
    file("stopped-not-a-text", resealed(lambda s: s["history"].update(stopped=1)), "error",
         "entry 'stopped' must be None or a text, got int"),
    file("initial-score-not-finite", resealed(lambda s: s["history"].update(initial_val_loglik=float("nan"))),
         "error", "entry 'initial_val_loglik' must be None or a finite number, got nan"),
    file("family-not-a-string", resealed(lambda s: s.update(family=3)), "error", "field 'family' must be a string"),
    file("extra-with-a-number-key", resealed(lambda s: s.update(extra={1: "a"})), "error",
         "field 'extra' must be a dict with string keys"),
    # intact files
    file("intact-training-checkpoint", lambda t, f: str(f / "model.pt"), "handled", "predicted 2 query points"),
    file("model-without-training-state", model_only, "handled", "predicted 2 query points"),
    # resuming a fit
    Case("resume-same-options", lambda t, f: refit(t, f), "api", "handled", "trained 0 steps to step 2"),
    Case("resume-other-checkpoint-interval", rerun(checkpoint_every=1), "api", "handled", "trained 0 steps"),
    Case("resume-extended", lambda t, f: refit(t, f, dataclasses.replace(TRAIN, steps=3), extend=True), "api",
         "handled", "trained 1 steps to step 3"),
    Case("resume-other-seed", rerun(seed=1), "api", "error", "seed 0 (now 1)"),
    Case("resume-fewer-steps", rerun(steps=1), "api", "error", "steps 2 (now 1, fewer than the 2 already trained)"),
    Case("resume-more-steps-without-extend", rerun(steps=3), "api", "error", "pass --extend"),
    Case("resume-same-data", resume_with_extra({"schema": SCHEMA, "split": SPLIT}, {"schema": SCHEMA, "split": SPLIT}),
         "api", "handled", "trained 0 steps"),
    Case("resume-other-split-seed", resume_with_extra({"split": SPLIT}, {"split": {**SPLIT, "split_seed": 1}}),
         "api", "error", "other options than this run's: split_seed 0 (now 1). Rerun"),
    Case("resume-other-test-fraction", resume_with_extra({"split": SPLIT}, {"split": {**SPLIT, "test_fraction": 0.3}}),
         "api", "error", "test_fraction 0.2 (now 0.3)"),
    Case("resume-other-columns", resume_with_extra({"schema": SCHEMA}, {"schema": {**SCHEMA, "y": ["yield"]}}),
         "api", "error", "schema y (another data set"),
    Case("resume-data-of-a-plain-value", resume_with_extra({"data": "a.csv"}, {"data": "b.csv"}), "api", "error",
         "data (another data set"),
    Case("resume-training-option-of-another-version", resume_edited(lambda s: s["train_config"].update(warmup=3)),
         "api", "error", "another version of hierarchical_meta: training option(s) ['warmup'] differ"),
    Case("resume-optimizer-moment-of-wrong-shape",
         resume_edited(lambda s: s["optimizer"]["state"][0].update(exp_avg=torch.zeros(7))), "api", "error",
         "field 'optimizer' does not fit the model: its exp_avg of parameter 'model.raw_noise' is [7]"),
    Case("resume-optimizer-of-fewer-parameters",
         resume_edited(lambda s: s["optimizer"]["param_groups"][0]["params"].pop()), "api", "error",
         "field 'optimizer' does not fit the model: it is not an Adam state of this model's parameters"),
    Case("resume-pyro-optimizer-moment-of-wrong-shape",
         resume_pyro_edited(lambda s: s["optimizer"]["guide$$$point_encoder.0.weight"]["state"][0].update(
             exp_avg_sq=torch.zeros(1))), "api", "error",
         "its exp_avg_sq of parameter 'guide$$$point_encoder.0.weight' is [1], the parameter has shape [4, 2]"),
    Case("resume-pyro-optimizer-of-unknown-parameter",
         resume_pyro_edited(lambda s: s["optimizer"].update({"guide$$$extra": {"state": {}}})), "api", "error",
         "it holds the state of an unknown parameter 'guide$$$extra'"),
    Case("resume-pyro-optimizer-not-clipped-adams",
         resume_pyro_edited(lambda s: s.update(optimizer={"model$$$raw_noise": 1})), "api", "error",
         "it is not a ClippedAdam state of this model's parameters"),
    Case("resume-model-without-training-state", lambda t, f: (model_only(t, f), refit(t, f))[1], "api", "error",
         "holds a model but not the training state"),
    # seeds
    Case("seed-beyond-64-bits", lambda t, f: lambda: TrainConfig(seed=2 ** 70), "api", "error",
         "seed must be an integer from 0 to 18446744073709551614"),
    Case("seed-negative", lambda t, f: lambda: TrainConfig(seed=-1), "api", "error", "got -1"),
    Case("seed-a-float", lambda t, f: lambda: TrainConfig(seed=1.5), "api", "error", "got 1.5"),
    Case("seed-largest", lambda t, f: lambda: TrainConfig(seed=MAX_SEED), "api", "handled", f"seed={MAX_SEED}"),
    Case("cli-fit-seed-negative", lambda t, f: ["fit", "--out", str(t / "run"), "--seed", "-1"], "cli", "error",
         "argument --seed: seed must be an integer from 0 to"),
    Case("cli-fit-seed-beyond-64-bits", lambda t, f: ["fit", "--out", str(t / "run"), "--seed", str(2 ** 70)], "cli",
         "error", f"got {2 ** 70}"),
    Case("cli-predict-seed-beyond-64-bits", predict_fitted("--seed", str(2 ** 64)), "cli", "error",
         f"argument --seed: seed must be an integer from 0 to {MAX_SEED} (torch's seeds are 64-bit), got {2 ** 64}"),
    Case("cli-predict-seed-negative", predict_fitted("--seed", "-5"), "cli", "error", "got -5"),
    Case("cli-predict-seed-not-a-number", predict_fitted("--seed", "2**70"), "cli", "error",
         "invalid seed value: '2**70'"),
    Case("cli-predict-seed-largest", predict_fitted("--seed", str(MAX_SEED)), "cli", "handled",
         "predicted 2 query points"),
]


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse
        code = exit_info.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return code, captured.out, captured.err


def check_cli(case: Case, argv: list[str], capsys) -> None:
    code, out, err = run_cli(argv, capsys)
    if case.outcome == "error":
        errors = [line for line in err.splitlines() if "error:" in line]
        assert code == 2 and len(errors) == 1 and case.fragment in errors[0], err
    else:
        assert code == 0 and case.fragment in out, err


def check_call(case: Case, call: Callable) -> None:
    if case.outcome == "error":
        with pytest.raises((ValueError, OSError)) as raised:
            call()
        message = str(raised.value)
        assert case.fragment in message and "\n" not in message, message
    else:
        result = call()
        shown = steps_trained(result) if isinstance(result, dict) else str(result)
        assert case.fragment in shown, shown


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case, tmp_path, fitted, capsys):
    made = case.make(tmp_path, fitted)
    if case.route == "file":
        if case.outcome == "error":
            check_call(case, lambda: load_checkpoint(made))
        else:
            model, checkpoint = load_checkpoint(made)
            assert dataclasses.asdict(model.config) == checkpoint.model_config
        check_cli(case, predict_argv(tmp_path, made), capsys)
        assert (tmp_path / "pred.csv").exists() == (case.outcome == "handled")
    elif case.route == "api":
        check_call(case, made)
    else:
        check_cli(case, made, capsys)


def test_the_table_covers_both_outcomes_and_every_route():
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)) and {case.outcome for case in CASES} == {"error", "handled"}
    assert {case.route for case in CASES} == {"file", "api", "cli"}
    assert sum(case.route == "file" and case.outcome == "error" for case in CASES) >= 40
