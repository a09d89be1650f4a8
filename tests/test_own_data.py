"""A user's own grouped data through the command line: ``fit --data``, ``predict``, bad input.

- the sample file (examples/data/grouped_sample.csv) end to end at a tiny budget: every
  output, the baselines per K on the same groups, the schema in the checkpoint;
- a file with a known hierarchy (intercepts and slopes driven by a numeric and a
  categorical metadata column, y in large units) at a small budget: the model comes close
  to the pooled regression at K = 0 (its interactions are the true mean of a new group) and
  beats it at every K > 0, and beats the model without metadata at K = 0; predictions of
  new groups come back in the user's units, in the file's order whatever the chunk size;
- ``--metadata none`` (no metadata columns) and ``use_metadata=False`` from Python;
- each bad input: exit status 2, one ``error:`` line naming the column, group or row, and
  nothing trained.

Budgets (measured on a loaded 2-core machine): the known-hierarchy fit trains two models
of 250 steps (about 20 s of CPU); the other fits 20 steps of tiny networks.
"""

import csv
import json
import math
import os
import shutil

import pytest
import torch

pandas = pytest.importorskip("pandas")

from hierarchical_meta.__main__ import main  # noqa: E402
from hierarchical_meta.baselines import linear_baselines  # noqa: E402
from hierarchical_meta.evaluate import EvalConfig, comparable_groups, evaluate  # noqa: E402
from hierarchical_meta.fitted import FittedModel, stored_schema  # noqa: E402
from hierarchical_meta.meta_model import ModelConfig, load_checkpoint  # noqa: E402
from hierarchical_meta.pipeline import run_fit  # noqa: E402
from hierarchical_meta.report import LABELS  # noqa: E402
from hierarchical_meta.tasks import TabularTasks  # noqa: E402
from hierarchical_meta.train import TrainConfig  # noqa: E402

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "data")
SAMPLE = os.path.join(EXAMPLES, "grouped_sample.csv")
SAMPLE_COLUMNS = ["--group", "site", "--x", "dose", "--y", "response", "--metadata", "altitude,region"]
TINY = ["--steps", "20", "--hidden", "8", "--latent-dim", "2", "--batch-tasks", "8", "--num-samples", "32",
        "--no-progress"]
SHOTS = ["0", "1", "2", "5", "10"]


def known_hierarchy(num_groups: int, seed: int, num_support: int | None = None):
    """Groups ``u0``, ``u1``, … with soil (numeric) and kind (clay/sand) metadata::

        a_t = 2 s_t + k_t + u_t,  b_t = 1 + s_t - k_t / 2 + v_t,  u ~ N(0, 0.5²), v ~ N(0, 0.3²)
        z_tn ~ N(0, 1),  y_tn = a_t + b_t z_tn + ε,  ε ~ N(0, 0.5²)

    written in user units: dose = 10 + 3 z, growth = 100 + 10 y, soil = 5 + s. With
    ``num_support``, a prediction file instead: task and role columns, that many support
    rows per group and the others query rows (with their growth, so they can be scored).
    """
    g = torch.Generator().manual_seed(seed)
    f64 = dict(dtype=torch.float64, generator=g)
    soil = torch.randn(num_groups, **f64)
    kind = torch.randint(2, (num_groups,), generator=g)
    a = 2.0 * soil + kind + 0.5 * torch.randn(num_groups, **f64)
    b = 1.0 + soil - 0.5 * kind + 0.3 * torch.randn(num_groups, **f64)
    sizes = torch.randint(5, 31, (num_groups,), generator=g)
    unit = torch.repeat_interleave(torch.arange(num_groups), sizes)
    z = torch.randn(len(unit), **f64)
    y = a[unit] + b[unit] * z + 0.5 * torch.randn(len(unit), **f64)
    frame = pandas.DataFrame({"unit": [f"u{i}" for i in unit.tolist()], "dose": (10 + 3 * z).tolist(),
                              "growth": (100 + 10 * y).tolist(), "soil": (5 + soil[unit]).tolist(),
                              "kind": [("clay", "sand")[k] for k in kind[unit].tolist()]})
    if num_support is None:
        return frame
    frame = frame.rename(columns={"unit": "task"})
    rank = frame.groupby("task").cumcount()
    frame.insert(1, "role", ["support" if r < num_support else "query" for r in rank])
    return frame


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# -- the sample file ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("sample") / "run")
    assert main(["fit", "--data", SAMPLE, *SAMPLE_COLUMNS, "--out", out, *TINY]) == 0
    return out


def test_fit_on_the_sample_file_writes_every_output(sample_run):
    for name in ("model.pt", "metrics.json", "metrics.csv", "loglik_vs_k.png", "training_curve.png",
                 "effects.csv", "effects.png", os.path.join("no_metadata", "model.pt")):
        assert os.path.getsize(os.path.join(sample_run, name)) > 0, name
    with open(os.path.join(sample_run, "metrics.json")) as f:
        metrics = json.load(f)
    assert "response" in metrics["loglik_units"] and "response" in metrics["mse_units"]
    assert metrics["data"]["metadata"] == ["altitude", "region"]
    assert sum(metrics["data"]["groups"].values()) == 60
    assert set(metrics["baselines"]) == {"no_metadata", "mixed_model", "pooled"}, metrics["skipped_baselines"]
    assert list(metrics["shots"]) == SHOTS and metrics["skipped_shots"] == {}
    family = TabularTasks.from_csv(SAMPLE, group="site", x=["dose"], y=["response"], metadata=["altitude", "region"])
    sizes = family.group_sizes[family.split_indices["test"]]
    # at each K, every test group with more than K rows; with K = 0, every test group
    assert [metrics["shots"][k]["num_groups"] for k in SHOTS] == [int((sizes > int(k)).sum()) for k in SHOTS]
    assert metrics["data"]["evaluated_groups"] == len(sizes) and "more than K rows" in metrics["data"]["scored_groups"]
    for name, baseline in metrics["baselines"].items():
        for k in SHOTS:
            # the same groups and the same query points for every model
            assert baseline["shots"][k]["num_groups"] == metrics["shots"][k]["num_groups"], (name, k)
            assert baseline["shots"][k]["num_query_points"] == metrics["shots"][k]["num_query_points"], (name, k)
    mixed = metrics["baselines"]["mixed_model"]
    assert mixed["formula"].startswith("response ~ ") and "| site)" in mixed["formula"]
    assert metrics["baselines"]["pooled"]["formula"] == mixed["formula"].split(" + (")[0]
    assert mixed["fixed_effects"][0]["term"] == "(Intercept)" and mixed["scale"].startswith("the data's units")
    assert all(e["std_error"] > 0 for e in mixed["fixed_effects"])
    rows = read(os.path.join(sample_run, "metrics.csv"))
    assert [(r["K"], r["model"]) for r in rows] == [(k, m) for k in SHOTS for m in LABELS]
    assert {r["formula"] for r in rows if r["model"] == "mixed_model"} == {mixed["formula"]}
    effects = read(os.path.join(sample_run, "effects.csv"))
    assert {r["predictor"] for r in effects} == {LABELS["model"], LABELS["mixed_model"]}
    assert {r["varied"] for r in effects} == {"altitude", "region"}
    assert all(math.isfinite(float(r["loglik"])) and 0 <= float(r["coverage90"]) <= 1 for r in rows)
    model, checkpoint = load_checkpoint(os.path.join(sample_run, "model.pt"))
    schema = stored_schema(checkpoint, model)
    assert schema.names("x") == ["dose"] and schema.group == "site"
    assert checkpoint.extra["schema"] == metrics["schema"]


def test_pooled_baseline_ignores_the_support_and_scores_in_user_units(sample_run):
    """The pooled regression's score at K changes only through its query points; the mixed
    model's K = 0 score is a density of response in its own units (sd about 6, not 1)."""
    with open(os.path.join(sample_run, "metrics.json")) as f:
        metrics = json.load(f)
    mixed = metrics["baselines"]["mixed_model"]["shots"]["0"]
    # a density in standardized units would score around -1.4 with an mse below 1
    assert mixed["mse"] > 2 and mixed["loglik"] < -1.8


# -- which groups are scored at each K ---------------------------------------------------------

def test_groups_of_two_rows_are_scored_at_k0_and_k1():
    """Each K scores every test group with more than K rows; --same-groups those with more than the largest K."""
    frame = known_hierarchy(30, seed=1)
    frame = frame[~frame["unit"].isin(["u0", "u1"]) | (frame.groupby("unit").cumcount() < 2)]  # two rows each
    test = ["u0", "u1", "u3", "u5"]
    frame = frame.assign(part=["test" if u in test else "val" if u == "u2" else "train" for u in frame["unit"]])
    family = TabularTasks.from_frame(frame, group="unit", x="dose", y="growth", split_column="part")
    sizes = frame.groupby("unit").size()[test].tolist()
    assert sizes[:2] == [2, 2] and min(sizes[2:]) > 5
    pooled = linear_baselines(family).predictors["pooled"]
    for same_groups, expected in ((False, {"0": 4, "1": 4, "2": 2, "5": 2}), (True, {"0": 2, "1": 2, "2": 2, "5": 2})):
        config = EvalConfig(shots=(0, 1, 2, 5), same_groups=same_groups, shuffled_metadata=False)
        view, kept, skipped = comparable_groups(family, config.shots, config.same_groups)
        assert kept == [0, 1, 2, 5] and skipped == {}
        scores = evaluate(pooled, view, config)["shots"]
        assert {k: e["num_tasks"] for k, e in scores.items()} == expected, same_groups
    assert scores["0"]["num_query_points"] == sum(sizes[2:])
    view, _, _ = comparable_groups(family, (0, 1, 2, 5))
    assert evaluate(pooled, view, EvalConfig(shots=(0, 1), shuffled_metadata=False))["shots"]["0"][
        "num_query_points"] == sum(sizes)  # the two-row groups' rows are scored at K = 0


# -- a known hierarchy -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def known(tmp_path_factory):
    folder = tmp_path_factory.mktemp("known")
    data = str(folder / "known.csv")
    known_hierarchy(100, seed=0).to_csv(data, index=False)
    out = str(folder / "run")
    assert main(["fit", "--data", data, "--group", "unit", "--x", "dose", "--y", "growth",
                 "--metadata", "soil,kind", "--out", out, "--steps", "250", "--hidden", "32",
                 "--num-samples", "256", "--seed", "0", "--no-progress"]) == 0
    with open(os.path.join(out, "metrics.json")) as f:
        return out, json.load(f)


def test_the_model_beats_pooled_given_support_and_no_metadata_at_k0(known):
    _, metrics = known
    pooled = metrics["baselines"]["pooled"]["shots"]
    no_m = metrics["baselines"]["no_metadata"]["shots"]
    # the pooled regression's x × m interactions are the true mean of a new group: at K = 0 the
    # model can only come close to it; every support row then helps the model alone
    assert metrics["shots"]["0"]["loglik"] > pooled["0"]["loglik"] - 0.15
    for k in SHOTS[1:]:
        assert metrics["shots"][k]["loglik"] > pooled[k]["loglik"] + 0.05, k
    assert metrics["shots"]["0"]["loglik"] > no_m["0"]["loglik"] + 0.3
    # more support points help the model and the mixed model
    mixed = metrics["baselines"]["mixed_model"]["shots"]
    assert metrics["shots"]["10"]["loglik"] > metrics["shots"]["0"]["loglik"] + 0.2
    assert mixed["10"]["loglik"] > mixed["0"]["loglik"] + 0.2


def test_predict_new_groups_in_user_units_in_file_order(known, tmp_path, capsys):
    out, _ = known
    tasks_file = str(tmp_path / "new.csv")
    new = known_hierarchy(12, seed=5, num_support=3)
    new.loc[new["task"] == "u11", "soil"] = math.nan  # missing metadata is read as missing
    new.to_csv(tasks_file, index=False)
    predictions = str(tmp_path / "pred.csv")
    assert main(["predict", "--checkpoint", os.path.join(out, "model.pt"), "--tasks-file", tasks_file,
                 "--out", predictions, "--no-progress"]) == 0
    assert "predicted" in capsys.readouterr().out
    rows = pandas.read_csv(predictions)
    query = new[new["role"] == "query"]
    assert list(rows.columns) == ["task", "dose", "growth_mean", "growth_q05", "growth_q95", "growth", "loglik"]
    assert rows["task"].tolist() == query["task"].tolist()
    assert rows["dose"].tolist() == pytest.approx(query["dose"].tolist(), rel=1e-5)
    assert ((rows["growth_q05"] < rows["growth_mean"]) & (rows["growth_mean"] < rows["growth_q95"])).all()
    inside = ((rows["growth_q05"] <= rows["growth"]) & (rows["growth"] <= rows["growth_q95"])).mean()
    assert 0.75 <= inside <= 1.0  # intervals in standardized units would miss nearly every growth
    assert (rows["growth_mean"] - rows["growth"]).abs().mean() < 0.5 * query["growth"].std()
    # from Python, a run folder and a frame, in chunks of two tasks: the same rows in the same order
    again = FittedModel.load(out).predict(pandas.read_csv(tasks_file), chunk=2)
    assert len(again) == len(query) and again.attrs["notes"] == []
    assert list(again.columns) == list(rows.columns) and again["task"].tolist() == rows["task"].tolist()
    assert again[["dose", "growth"]].to_numpy() == pytest.approx(rows[["dose", "growth"]].to_numpy(), rel=1e-5)
    assert abs(again["growth_mean"].to_numpy() - rows["growth_mean"].to_numpy()).max() < 0.1 * query["growth"].std()


def test_an_unseen_level_is_a_note(known, tmp_path, capsys):
    out, _ = known
    tasks_file = str(tmp_path / "new.csv")
    new = known_hierarchy(2, seed=6, num_support=0).drop(columns="growth")
    new["kind"] = "loam"
    new.to_csv(tasks_file, index=False)
    assert main(["predict", "--checkpoint", os.path.join(out, "model.pt"), "--tasks-file", tasks_file,
                 "--out", str(tmp_path / "p.csv"), "--num-samples", "32", "--no-progress"]) == 0
    assert "note: column 'kind': level(s) ['loam'] were not seen in training" in capsys.readouterr().out


# -- without metadata --------------------------------------------------------------------------

def test_metadata_none_fits_without_metadata_and_without_a_twin(tmp_path):
    out = str(tmp_path / "run")
    columns = SAMPLE_COLUMNS[:-2]
    assert main(["fit", "--data", SAMPLE, *columns, "--metadata", "none", "--out", out, *TINY]) == 0
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["data"]["metadata"] == [] and metrics["model"]["metadata_dim"] == 0
    assert set(metrics["baselines"]) == {"mixed_model", "pooled"}
    assert "shuffled_metadata" not in metrics and not os.path.exists(os.path.join(out, "no_metadata"))


def test_from_python_the_same_run_fit_with_the_metadata_withheld(tmp_path):
    frame = pandas.read_csv(SAMPLE)
    tasks = TabularTasks.from_frame(frame, group="site", x=["dose"], y="response", metadata=["altitude", "region"])
    config = ModelConfig(x_dim=tasks.x_dim, y_dim=tasks.y_dim, metadata_dim=tasks.metadata_dim, hidden=8,
                         latent_dim=2, use_metadata=False)
    metrics = run_fit(tasks, config, TrainConfig(steps=10, batch_tasks=8), str(tmp_path / "new" / "run"),
                      num_samples=16, progress=False, log=None)
    assert metrics["model"]["use_metadata"] is False and "no_metadata" not in metrics["baselines"]
    assert set(metrics["baselines"]) == {"mixed_model", "pooled"}


def test_fit_creates_its_output_folder(tmp_path):
    """The README's ``fit(model, family, config, out_dir="runs/sin")`` on a fresh clone."""
    from hierarchical_meta import HierarchicalMetaModel, SinusoidTasks, fit

    out = tmp_path / "runs" / "sin"
    fit(HierarchicalMetaModel(hidden=8, latent_dim=2), SinusoidTasks(), TrainConfig(steps=2, batch_tasks=4),
        out_dir=str(out), progress=False)
    assert (out / "model.pt").exists()


# -- bad input -----------------------------------------------------------------------------------

def edited_sample(tmp_path, edit):
    frame = pandas.read_csv(SAMPLE)
    edit(frame)
    path = str(tmp_path / "bad.csv")
    frame.to_csv(path, index=False)
    return path


def set_cell(row, column, value):
    def edit(frame):
        frame[column] = frame[column].astype(object)
        frame.loc[row, column] = value
    return edit


BAD = {
    "a missing column": (None, ["--x", "dosage"], ["'dosage'"]),
    "metadata varying in a group": (set_cell(1, "altitude", 5.0), [], ["'altitude'", "'s001'"]),
    "a word in y": (set_cell(3, "response", "twelve"), [], ["line 5, column response", "'twelve'"]),
    "no --group": (None, ["--group", ""], ["--group"]),
    "a bad split value": (lambda f: f.insert(5, "part", "train"), ["--split-column", "part"], ["'part'", "val"]),
    "a missing file": ("missing", [], ["no file", "missing.csv"]),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_error_line_naming_it_before_training(case, tmp_path, capsys):
    edit, flags, named = BAD[case]
    if edit == "missing":
        data = str(tmp_path / "missing.csv")
    else:
        data = edited_sample(tmp_path, edit) if edit else SAMPLE
    args = ["fit", "--data", data, *SAMPLE_COLUMNS, "--out", str(tmp_path / "run"), *TINY, *flags]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for name in named:
        assert name in err[0], (name, err[0])
    assert not os.path.exists(os.path.join(tmp_path, "run", "model.pt"))


@pytest.mark.parametrize("args, named", [
    (["--tasks", "sinusoid", "--data", SAMPLE], "not both"),
    (["--metadata", "altitude"], "--data"),
    (["--group", "site"], "--data"),
])
def test_flags_that_do_not_fit_together(args, named, tmp_path, capsys):
    assert main(["fit", "--out", str(tmp_path / "run"), *TINY, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and named in err[0], err


@pytest.mark.parametrize("option, value, named", [("--split-seed", "1", "split_seed 0 (now 1)"),
                                                  ("--test-fraction", "0.3", "test_fraction 0.2 (now 0.3)")])
def test_a_resume_with_another_split_names_the_option(sample_run, tmp_path, capsys, option, value, named):
    """A rerun into a finished run's folder with another split says which option differs."""
    out = str(tmp_path / "run")
    shutil.copytree(sample_run, out)
    assert main(["fit", "--data", SAMPLE, *SAMPLE_COLUMNS, "--out", out, *TINY, option, value]) == 2
    error = capsys.readouterr().err
    assert named in error and error.count("\n") == 1, error
