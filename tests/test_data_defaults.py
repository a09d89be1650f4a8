"""The training defaults of a fixed data set (hierarchical_meta/train.py), through fit, run_fit and the CLI.

- data_sized, a pure function of the group counts and the options given: the cap on groups
  per step (and its note), the data-sized schedule, a sampled family's demo schedule (table);
- early stopping: the validation score chooses the kept step (its weights are the model's,
  and the checkpoint's), the run stops after ``patience`` evaluations without improvement, a
  diverged run (collapsed held-out ELBO, a NaN loss) stops and keeps its best step, and
  metrics.json reports the kept step;
- the warning of a clearly untrained model (a 1-step fit), on the console and in metrics.json;
- a run interrupted after a checkpoint and rerun with the same options equals the
  uninterrupted one, early stopping on;
- bad input (table): each an "error" (one clear message) or "handled" (the right result).

Every fit here trains a tiny network (hidden 8) on 16 synthetic sites (11 training, 2
validation and 3 test groups) for at most 40 steps.
"""

import dataclasses
import json
import math
import types
from collections.abc import Callable

import pytest
import torch

pytest.importorskip("pandas")

from hierarchical_meta import train  # noqa: E402
from hierarchical_meta.__main__ import main  # noqa: E402
from hierarchical_meta.checkpoint import Checkpoint  # noqa: E402
from hierarchical_meta.evaluate import EvalConfig  # noqa: E402
from hierarchical_meta.meta_model import HierarchicalMetaModel, ModelConfig, load_checkpoint  # noqa: E402
from hierarchical_meta.pipeline import run_fit  # noqa: E402
from hierarchical_meta.tasks import SinusoidTasks, TabularTasks, make_family  # noqa: E402
from hierarchical_meta.tasks.synthetic import grouped_frame  # noqa: E402
from hierarchical_meta.train import SAMPLED_SCHEDULE, FastSVI, TrainConfig, data_sized, fit, make_svi  # noqa: E402

FRAME = grouped_frame(16, min_rows=6, max_rows=12, seed=0)
COLUMNS = ["--group", "site", "--x", "dose", "--y", "response", "--metadata", "altitude,region"]
TINY_MODEL = ["--hidden", "8", "--latent-dim", "2", "--num-samples", "16", "--no-progress"]
#: A run whose validation score improves, then worsens (lr 0.05 is far too high): it keeps step KEPT and stops at STOP.
STOPPING = TrainConfig(steps=40, eval_every=2, checkpoint_every=2, anneal_steps=0, patience=3, lr=0.05, max_points=12)
KEPT, STOP = 8, 14


def sites() -> TabularTasks:
    return TabularTasks.from_frame(FRAME, group="site", x="dose", y="response", metadata=["altitude", "region"])


def tiny_model(family, seed: int = 0) -> HierarchicalMetaModel:
    torch.manual_seed(seed)
    return HierarchicalMetaModel(ModelConfig(x_dim=family.x_dim, y_dim=family.y_dim,
                                             metadata_dim=family.metadata_dim, hidden=8, latent_dim=2))


def groups(train_groups: int, val_groups: int):
    """A stand-in for a fixed data set: data_sized reads only its group counts."""
    return types.SimpleNamespace(fixed_dataset=True,
                                 split_indices={"train": range(train_groups), "val": range(val_groups)})


# -- data_sized: the rule, case by case -----------------------------------------------------------

SIZED = ("steps", "batch_tasks", "eval_every", "checkpoint_every", "anneal_steps", "patience")
RULE_CASES = [
    # id, family, options given, expected (SIZED order), a fragment of the notes ("" for none)
    ("small-data-full-batch", groups(11, 2), {}, (1500, 11, 75, 75, 188, 5),
     "64 groups per step capped at the 11 training groups"),
    ("as-many-groups-as-the-batch", groups(64, 12), {}, (1500, 64, 75, 75, 188, 5), "training schedule sized"),
    ("more-groups-than-the-batch", groups(100, 20), {"batch_tasks": 32}, (4688, 32, 234, 234, 586, 5),
     "steps 4688, eval_every 234, checkpoint_every 234, anneal_steps 586, patience 5"),
    ("many-groups-hit-the-ceiling", groups(1600, 300), {}, (8000, 64, 400, 400, 1000, 5), "steps 8000"),
    ("given-steps-keep-the-data-schedule", groups(11, 2), {"steps": 20}, (20, 11, 75, 75, 188, 5),
     "eval_every 75"),
    ("everything-given", groups(11, 2),
     {"steps": 10, "eval_every": 2, "checkpoint_every": 3, "anneal_steps": 0, "patience": 0, "batch_tasks": 4},
     (10, 4, 2, 3, 0, 0), ""),
    ("sampled-family", SinusoidTasks(), {}, (8000, 64, 250, 250, 1000, 0), ""),
    ("sampled-family-given-steps", SinusoidTasks(), {"steps": 400, "patience": 2}, (400, 64, 250, 250, 1000, 2),
     ""),
]


@pytest.mark.parametrize("family, given, expected, note", [case[1:] for case in RULE_CASES],
                         ids=[case[0] for case in RULE_CASES])
def test_the_data_sized_rule(family, given, expected, note):
    sized, notes = data_sized(TrainConfig(**given), family)
    assert tuple(getattr(sized, name) for name in SIZED) == expected
    assert (note in " | ".join(notes)) if note else notes == []
    assert data_sized(sized, family) == (sized, [])  # a sized config stays as it is


def test_the_sampled_schedule_is_the_demos():
    """The built-in sampled families keep the schedule the committed demo was trained with."""
    assert SAMPLED_SCHEDULE == {"steps": 8000, "eval_every": 250, "checkpoint_every": 250, "anneal_steps": 1000,
                                "patience": 0}
    sized, _ = data_sized(TrainConfig(), SinusoidTasks())
    assert (sized.lr, sized.batch_tasks, sized.metadata_swap) == (6e-3, 64, 0.03)


# -- early stopping -------------------------------------------------------------------------------

def snapshots(meta_model: HierarchicalMetaModel, into: dict) -> Callable:
    """A fit callback keeping a copy of the weights at every evaluation."""
    def keep(step, metrics):
        into[step] = {name: value.clone() for name, value in meta_model.state_dict().items()}
    return keep


def test_early_stopping_keeps_the_best_step(tmp_path):
    family = sites()
    model, seen = tiny_model(family), {}
    history = fit(model, family, STOPPING, out_dir=str(tmp_path), progress=False, callback=snapshots(model, seen))
    scores = {step: e["val_loglik"] for step, e in zip(history["eval_step"], history["eval"], strict=True)}
    kept = max(scores, key=scores.get)
    assert history["kept_step"] == kept and kept < history["step"][-1] < STOPPING.steps  # worse after, stopped
    assert sum(step > kept for step in scores) == STOPPING.patience
    assert history["stopped"] == f"early stopping: no better validation score in 3 evaluations after step {kept}"
    _, checkpoint = load_checkpoint(str(tmp_path / "model.pt"))
    assert checkpoint.stopped and checkpoint.last_weights is None and checkpoint.optimizer is None
    for name, value in seen[kept].items():
        assert torch.equal(model.state_dict()[name], value) and torch.equal(checkpoint.weights[name], value), name
    assert not torch.equal(seen[kept]["model.raw_noise"], seen[history["step"][-1]]["model.raw_noise"])


def test_without_patience_the_last_step_is_kept():
    family = sites()
    config = dataclasses.replace(STOPPING, steps=12, patience=0)
    model, seen = tiny_model(family), {}
    history = fit(model, family, config, progress=False, callback=snapshots(model, seen))
    assert (history["kept_step"], history["stopped"]) == (12, None)
    assert all("val_loglik" not in e for e in history["eval"])  # nothing scored: the same draws as before
    for name, value in seen[12].items():
        assert torch.equal(model.state_dict()[name], value), name


def test_run_fit_reports_the_kept_step(tmp_path):
    family, lines = sites(), []
    model = dataclasses.asdict(tiny_model(family).config)
    metrics = run_fit(family, ModelConfig(**model), STOPPING, str(tmp_path), EvalConfig(shots=(0, 1)),
                      num_samples=16, progress=False, log=lines.append)
    with open(tmp_path / "metrics.json") as f:
        assert json.load(f) == json.loads(json.dumps(metrics))
    history = Checkpoint.read(str(tmp_path / "model.pt")).history
    kept = metrics["kept_step"]
    assert kept == history["kept_step"] == KEPT and metrics["last_step"] == STOP and metrics["train"]["patience"] == 3
    assert metrics["stopped"].startswith("early stopping") and not metrics["untrained"]
    evaluation = history["eval"][history["eval_step"].index(kept)]
    assert metrics["val_loglik"] == evaluation["val_loglik"] and metrics["elbo"] == evaluation["elbo_per_point"]
    assert f"kept step {kept}: {metrics['val_loglik']:.3f} nats per point on the validation groups" in lines
    assert any(line.startswith(f"stopped at step {STOP}: early stopping") for line in lines)


def test_a_collapsed_run_stops_and_keeps_its_best_step(monkeypatch):
    """The held-out ELBO collapsing after the best step stops the run instead of failing it."""
    real = train.heldout_elbo

    def collapsing(meta_model, batch):
        metrics = real(meta_model, batch)
        collapsing.calls += 1
        return {**metrics, "elbo_per_point": metrics["elbo_per_point"] - (50.0 if collapsing.calls >= 4 else 0.0)}

    collapsing.calls = 0
    monkeypatch.setattr(train, "heldout_elbo", collapsing)
    family = sites()
    config = dataclasses.replace(STOPPING, lr=0.02, patience=10)  # improves all along: only the collapse stops it
    history = fit(tiny_model(family), family, config, progress=False)
    assert history["step"][-1] == 10 and history["kept_step"] == 10  # the 5th evaluation: the second collapsed
    assert history["stopped"].startswith("diverged at step 10 (the held-out ELBO fell from")
    with pytest.raises(FloatingPointError, match="held-out ELBO fell"):  # without patience: an error, as before
        collapsing.calls = 0
        fit(tiny_model(family), family, dataclasses.replace(config, patience=0), progress=False)


def test_a_nan_loss_stops_the_run_at_its_best_step(tmp_path, monkeypatch):
    real = FastSVI.step

    def failing(self, *args, **kwargs):
        loss = real(self, *args, **kwargs)
        return math.nan if self.optimizer.state[self.params[0]]["step"] == 7 else loss

    monkeypatch.setattr(FastSVI, "step", failing)
    family = sites()
    model, seen = tiny_model(family), {}
    history = fit(model, family, dataclasses.replace(STOPPING, lr=0.02), out_dir=str(tmp_path), progress=False,
                  callback=snapshots(model, seen))
    assert history["step"] == list(range(1, 7)) and history["stopped"] == "diverged at step 7 (the loss became nan)"
    kept = history["kept_step"]
    assert kept in (2, 4, 6)
    for name, value in seen[kept].items():
        assert torch.equal(model.state_dict()[name], value), name
    assert load_checkpoint(str(tmp_path / "model.pt"))[1].stopped


# -- the warning of an untrained model ------------------------------------------------------------

@pytest.mark.parametrize("data", [True, False], ids=["data-set", "sinusoid"])
def test_a_one_step_fit_warns_that_it_is_untrained(tmp_path, capsys, data):
    if data:
        FRAME.to_csv(tmp_path / "sites.csv", index=False)
        family_flags = ["--data", str(tmp_path / "sites.csv"), *COLUMNS]
    else:
        family_flags = ["--eval-tasks", "4"]
    assert main(["fit", *family_flags, "--out", str(tmp_path / "run"), "--steps", "1", *TINY_MODEL]) == 0
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert warnings and all("model.pt: " in line for line in warnings), out
    assert any("the training ended at step 1, before the KL annealing" in line for line in warnings)
    with open(tmp_path / "run" / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["untrained"] and metrics["training_warnings"][0].startswith("the training ended at step 1")
    if data:
        assert "note: 64 groups per step capped at the 11 training groups" in out


def history_of(kept: int, last: int, scores: dict, initial: float | None) -> dict:
    """A history with evaluations ``scores`` (step -> validation score) that keeps step ``kept``."""
    return {"step": list(range(1, last + 1)), "eval_step": list(scores), "kept_step": kept,
            "eval": [{"elbo_per_point": 0.0, "val_loglik": score} for score in scores.values()],
            "initial_val_loglik": initial}


@pytest.mark.parametrize("history, anneal_steps, expected", [
    (history_of(20, 40, {10: -3.0, 20: -2.0, 30: -2.5, 40: -2.6}, -5.0), 10, []),
    (history_of(10, 10, {10: -2.0}, -5.0), 100, ["the training ended at step 10, before the KL annealing's 100"]),
    (history_of(10, 30, {10: -5.2, 20: -5.3, 30: -5.4}, -5.2), 5,
     ["the kept step 10 scores -5.200 nats per point on the validation groups, no better than the untrained "
      "model's -5.200: training did not help"]),
    (history_of(1, 1, {1: -6.0}, -5.0), 2, ["before the KL annealing's 2", "no better than the untrained"]),
    (history_of(30, 30, {30: -9.0}, None), 0, []),  # nothing kept by the validation score: nothing to compare
], ids=["trained", "ended-while-annealing", "no-better-than-untrained", "both", "without-validation-score"])
def test_untrained_warnings(history, anneal_steps, expected):
    warnings = train.untrained_warnings(history, TrainConfig(anneal_steps=anneal_steps))
    assert len(warnings) == len(expected), warnings
    assert all(part in text for part, text in zip(expected, warnings, strict=True)), warnings


# -- resume ---------------------------------------------------------------------------------------

class Killed(Exception):
    """What the test raises in place of a SIGKILL right after a checkpoint is written."""


def flat(tree, prefix: str = "") -> dict:
    """A nested dict/list as {path: number}, its text leaves left out."""
    if isinstance(tree, dict):
        return {key: value for name, child in tree.items() for key, value in flat(child, f"{prefix}/{name}").items()}
    if isinstance(tree, list):
        return {key: value for i, child in enumerate(tree) for key, value in flat(child, f"{prefix}[{i}]").items()}
    return {prefix: tree} if isinstance(tree, int | float) else {}


@pytest.mark.parametrize("kill_at", [KEPT - 2, STOP], ids=["before-the-stop", "at-the-stop"])
def test_a_killed_run_resumes_to_the_uninterrupted_one(tmp_path, monkeypatch, kill_at):
    FRAME.to_csv(tmp_path / "sites.csv", index=False)
    argv = ["fit", "--data", str(tmp_path / "sites.csv"), *COLUMNS, *TINY_MODEL, "--steps", "40", "--eval-every",
            "2", "--checkpoint-every", "2", "--anneal-steps", "0", "--patience", "3", "--lr", "0.05",
            "--max-points", "12"]
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    write = Checkpoint.write

    def killing_write(self, path):
        write(self, path)
        if self.step == kill_at and path == str(tmp_path / "split" / "model.pt"):
            raise Killed

    monkeypatch.setattr(Checkpoint, "write", killing_write)
    with pytest.raises(Killed):
        main([*argv, "--out", str(tmp_path / "split"), "--debug"])
    monkeypatch.setattr(Checkpoint, "write", write)
    assert main([*argv, "--out", str(tmp_path / "split")]) == 0
    results = []
    for run in ("whole", "split"):
        with open(tmp_path / run / "metrics.json") as f:
            metrics = json.load(f)
        metrics.pop("train_seconds")
        results.append((metrics, Checkpoint.read(str(tmp_path / run / "model.pt"))))
    (whole, whole_checkpoint), (split, split_checkpoint) = results
    # the mixed model is refitted by statsmodels, whose threaded BLAS may differ in the last bits
    mixed = [flat(run["baselines"].pop("mixed_model")) for run in (whole, split)]
    assert mixed[1].keys() == mixed[0].keys()
    assert [mixed[1][key] for key in mixed[0]] == pytest.approx(list(mixed[0].values()), rel=1e-9, abs=1e-12)
    assert split == whole and (whole["kept_step"], whole["last_step"]) == (KEPT, STOP)  # bit-identical
    for name in ("loss", "eval", "kept_step", "stopped"):
        assert split_checkpoint.history[name] == whole_checkpoint.history[name], name
    for name, value in whole_checkpoint.weights.items():
        assert torch.equal(split_checkpoint.weights[name], value), name


# -- bad input ------------------------------------------------------------------------------------

def cli(tmp, *flags: str) -> int:
    """The exit status of a 2-step fit of the sites with ``flags`` (argparse's, for a flag it refuses)."""
    FRAME.to_csv(tmp / "sites.csv", index=False)
    try:
        return main(["fit", "--data", str(tmp / "sites.csv"), *COLUMNS, "--out", str(tmp / "run"), *TINY_MODEL,
                     "--steps", "2", *flags])
    except SystemExit as exit_info:
        return exit_info.code


def stopped_then(tmp, **changes):
    """Fit STOPPING into tmp/run (it stops at step STOP), then fit again with ``changes``: the history."""
    family = sites()
    fit(tiny_model(family), family, STOPPING, out_dir=str(tmp / "run"), progress=False)
    return fit(tiny_model(family), family, dataclasses.replace(STOPPING, **changes), out_dir=str(tmp / "run"),
               progress=False, extend="steps" in changes)


def split_groups(tmp):
    """The test groups of co2 under --split-seed 0 and 1 (the CLI's family, sized by hand)."""
    return [make_family("co2", split_seed=seed).groups("test") for seed in (0, 1)]


BAD_INPUT = [
    # id, call(tmp), outcome ("error" or "handled"), the message fragment or a check of the result
    ("patience-negative", lambda t: TrainConfig(patience=-1), "error", "patience must be >= 0"),
    ("eval-every-zero", lambda t: TrainConfig(eval_every=0), "error", "eval_every must be a positive integer"),
    ("stepper-of-an-unsized-config", lambda t: make_svi(tiny_model(sites()), TrainConfig()), "error",
     "steps is None: give it, or size the options"),
    ("cli-patience-negative", lambda t: cli(t, "--patience", "-1"), "error", "must be an integer >= 0, got -1"),
    ("cli-anneal-steps-negative", lambda t: cli(t, "--anneal-steps", "-5"), "error",
     "must be an integer >= 0, got -5"),
    ("cli-eval-every-zero", lambda t: cli(t, "--eval-every", "0"), "error", "must be a positive integer, got 0"),
    ("resume-with-another-patience", lambda t: stopped_then(t, patience=4), "error", "patience 3 (now 4)"),
    ("extend-a-stopped-run", lambda t: stopped_then(t, steps=60), "handled",
     lambda history: history["trained_steps"] == 0 and history["step"][-1] == STOP and history["kept_step"] == KEPT),
    ("rerun-a-stopped-run", lambda t: stopped_then(t), "handled",
     lambda history: history["trained_steps"] == 0 and history["stopped"].startswith("early stopping")),
    ("split-seed-of-a-built-in-data-set", split_groups, "handled", lambda test: test[0] != test[1]),
    ("batch-below-the-groups", lambda t: data_sized(TrainConfig(batch_tasks=4), sites()), "handled",
     lambda result: result[0].batch_tasks == 4 and "capped" not in " ".join(result[1])),
]


@pytest.mark.parametrize("call, outcome, expected", [case[1:] for case in BAD_INPUT],
                         ids=[case[0] for case in BAD_INPUT])
def test_bad_input(tmp_path, capsys, call, outcome, expected):
    if outcome == "handled":
        assert expected(call(tmp_path))
        return
    try:
        result = call(tmp_path)
    except ValueError as error:
        message = str(error)
    else:
        errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
        assert result == 2 and len(errors) == 1, errors
        message = errors[0]
        assert not (tmp_path / "run" / "model.pt").exists()  # nothing trained
    assert expected in message and "\n" not in message, message


def test_the_bad_input_table_has_both_outcomes():
    outcomes = [case[2] for case in BAD_INPUT]
    assert set(outcomes) == {"error", "handled"} and len({case[0] for case in BAD_INPUT}) == len(BAD_INPUT)
