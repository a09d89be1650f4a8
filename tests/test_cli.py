"""The command line, called in-process: ``main([...])`` from ``hierarchical_meta.__main__``.

- ``fit`` with tiny flags writes model.pt, metrics.json (documented keys), metrics.csv and
  the plots; rerunning with more steps and ``--extend`` resumes (the step count continues);
  ``--metadata none``;
- ``demo`` writes both fits (with and without metadata), the diagram and the targets;
- ``predict`` on a CSV task file (one task with support, one zero-shot) writes the documented
  columns;
- bad input stops early with a message naming the problem: ``main`` returns 2 and prints
  ``error: ...`` for a ValueError; argparse exits with SystemExit(2) for bad flag values.

Sizes are tiny (hidden 8, D = 2, 8 tasks per step, 8 held-out tasks, 32 importance samples);
predictions.png is drawn only by the first fit (the slowest plot); the library functions
behind the CLI are tested in test_pipeline.py.
"""

import csv
import json
import math
import os
import shutil

import pytest
import torch

from hierarchical_meta import plots
from hierarchical_meta.__main__ import main
from hierarchical_meta.meta_model import HierarchicalMetaModel, ModelConfig, load_checkpoint

TINY = ["--eval-tasks", "8", "--num-samples", "32", "--batch-tasks", "8", "--no-progress",
        "--hidden", "8", "--latent-dim", "2", "--max-points", "10", "--seed", "0"]
SHOT_KEYS = {"loglik", "mse", "coverage90", "oracle_loglik"}


@pytest.fixture
def no_prediction_plot(monkeypatch):
    """Later fits skip predictions.png (the slowest plot); the first fit checks it."""
    monkeypatch.setattr(plots, "plot_predictions", lambda *args, **kwargs: None)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("fit") / "run")
    assert main(["fit", "--out", out, "--steps", "12"] + TINY) == 0
    return out


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# -- fit -------------------------------------------------------------------------------------

def test_fit_writes_checkpoint_metrics_and_plots(fitted):
    for name in ("model.pt", "metrics.json", "metrics.csv", "training_curve.png", "predictions.png",
                 "loglik_vs_k.png"):
        assert os.path.getsize(os.path.join(fitted, name)) > 0, name
    for name in ("training_curve.png", "predictions.png", "loglik_vs_k.png"):
        with open(os.path.join(fitted, name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(os.path.join(fitted, "metrics.json")) as f:
        metrics = json.load(f)
    assert set(metrics["shots"]) == {"0", "1", "2", "5", "10"}
    for k, entry in metrics["shots"].items():
        assert SHOT_KEYS <= set(entry), k
        assert all(math.isfinite(entry[key]) for key in SHOT_KEYS)
        assert 0.0 <= entry["coverage90"] <= 1.0
        assert {"loglik", "mse", "coverage90"} <= set(metrics["shuffled_metadata"]["shots"][k])
    for key in ("noise_floor_loglik", "elbo", "kl_phi1", "kl_phi2"):
        assert math.isfinite(metrics[key]), key
    assert metrics["kl_phi1"] >= 0 and metrics["kl_phi2"] > -1e-3  # KLs (MC for φ2: tiny negatives allowed)
    # the reference cannot beat the noise floor (in expectation; 8 tasks x 50 points at K = 0)
    assert metrics["shots"]["0"]["oracle_loglik"] < metrics["noise_floor_loglik"]
    rows = _read_csv(os.path.join(fitted, "metrics.csv"))
    assert [r["K"] for r in rows] == ["0", "1", "2", "5", "10"]
    assert {"loglik", "mse", "coverage90", "oracle_loglik", "shuffled_loglik"} <= set(rows[0])
    model, checkpoint = load_checkpoint(os.path.join(fitted, "model.pt"))
    assert checkpoint.step == 12 and model.config.hidden == 8 and model.config.use_metadata


def test_rerun_with_more_steps_resumes(fitted, tmp_path, no_prediction_plot, capsys):
    out = str(tmp_path / "run")
    shutil.copytree(fitted, out)
    _, before = load_checkpoint(os.path.join(out, "model.pt"))
    assert main(["fit", "--out", out, "--steps", "16", "--extend"] + TINY) == 0
    assert "trained 4 steps" in capsys.readouterr().out
    _, after = load_checkpoint(os.path.join(out, "model.pt"))
    assert after.step == 16
    assert after.history["step"] == list(range(1, 17))  # continued, not restarted at 1
    assert after.history["loss"][:12] == before.history["loss"]


def test_fit_without_metadata(tmp_path, no_prediction_plot):
    out = str(tmp_path / "none")
    assert main(["fit", "--out", out, "--steps", "4", "--metadata", "none"] + TINY) == 0
    model, _ = load_checkpoint(os.path.join(out, "model.pt"))
    assert not model.config.use_metadata
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["model"]["use_metadata"] is False
    assert all(SHOT_KEYS <= set(entry) for entry in metrics["shots"].values())


def test_fit_into_a_folder_of_another_configuration_stops(fitted, tmp_path, capsys):
    out = tmp_path / "other"
    out.mkdir()
    HierarchicalMetaModel(ModelConfig(hidden=4, latent_dim=2, layers=2)).save(str(out / "model.pt"))
    assert main(["fit", "--out", str(out), "--steps", "3"] + TINY) == 2
    err = capsys.readouterr().err
    assert "model hidden 4 (now 8)" in err and "--out" in err


def test_demo_writes_both_fits_and_the_targets(tmp_path, no_prediction_plot):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "4"] + TINY) == 0
    for name in ("plate_diagram.svg", "loglik_vs_k.png", "with_metadata/metrics.json", "no_metadata/model.pt"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "summary.json") as f:
        summary = json.load(f)
    assert summary["runs"]["with metadata"]["model"]["use_metadata"] is True
    assert summary["runs"]["metadata withheld"]["model"]["use_metadata"] is False
    assert len(summary["targets"]) == 2 * 5 + 2
    assert all(set(t) == {"value", "met"} and isinstance(t["met"], bool) for t in summary["targets"].values())


@pytest.mark.parametrize("steps", ["0", "-3"])
def test_non_positive_steps_stop_at_the_argument_parser(tmp_path, capsys, steps):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--out", str(tmp_path / "x"), "--steps", steps] + TINY)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--steps" in err and f"must be a positive integer, got {steps}" in err, err
    assert not (tmp_path / "x").exists()


# -- predict ---------------------------------------------------------------------------------

TASK_FILE = """task,role,x,y,m1,m2
a,support,0.3,1.2,2.5,0.1
a,support,-1.0,-0.4,2.5,0.1
a,query,1.0,,2.5,0.1
a,query,2.0,,2.5,0.1
b,query,-2.0,,1.0,-0.4
"""


def _predict(checkpoint, tmp_path, text, name="tasks.csv"):
    path = tmp_path / name
    path.write_text(text)
    out = tmp_path / "pred.csv"
    code = main(["predict", "--checkpoint", checkpoint, "--tasks-file", str(path), "--out", str(out),
                 "--num-samples", "32"])
    return code, out


def test_predict_writes_documented_columns_including_zero_shot(fitted, tmp_path):
    code, out = _predict(os.path.join(fitted, "model.pt"), tmp_path, TASK_FILE)
    assert code == 0
    rows = _read_csv(out)
    assert list(rows[0]) == ["task", "x", "y_mean", "y_q05", "y_q95"]  # no y given: not scored
    assert [(r["task"], float(r["x"])) for r in rows] == [("a", 1.0), ("a", 2.0), ("b", -2.0)]
    for r in rows:
        assert float(r["y_q05"]) < float(r["y_mean"]) < float(r["y_q95"])


def test_predict_scores_query_points_with_y(fitted, tmp_path):
    scored = TASK_FILE.replace("a,query,1.0,,", "a,query,1.0,0.7,").replace("a,query,2.0,,", "a,query,2.0,0.1,") \
        .replace("b,query,-2.0,,", "b,query,-2.0,-1.3,")
    code, out = _predict(os.path.join(fitted, "model.pt"), tmp_path, scored)
    assert code == 0
    rows = _read_csv(out)
    assert list(rows[0]) == ["task", "x", "y_mean", "y_q05", "y_q95", "y", "loglik"]
    assert all(math.isfinite(float(r["loglik"])) for r in rows)


# -- bad input: each stops early with a message ---------------------------------------------

@pytest.mark.parametrize("text, message", [
    (TASK_FILE.replace("x,y,m1,m2", "x,y,m1"), "missing column(s) ['m2']"),
    (TASK_FILE.replace("task,role,x,y", "task,role,x,label"), "missing column(s) ['y']"),
    (TASK_FILE.replace("task,role,x,y", "task,role,x1,y"), "missing column(s) ['x']"),  # 2-D x for a 1-D model
    (TASK_FILE.replace("a,support,0.3,1.2", "a,support,0.3,nan"), "NaN or infinite"),
    (TASK_FILE.replace("a,support,0.3,1.2", "a,support,inf,1.2"), "NaN or infinite"),
    (TASK_FILE.replace("b,query,-2.0,,1.0,-0.4", "b,query,-2.0,,1.0,-inf"), "is infinite"),
    (TASK_FILE.replace("a,support,0.3,1.2", "a,support,0.3,"), "y must be a finite number on a support row"),
    (TASK_FILE.replace("a,support,0.3", "a,context,0.3"), "role must be 'support' or 'query'"),
    ("task,role,x,y,m1,m2\n", "no rows"),
], ids=["missing-m2", "missing-y", "x-dims", "nan-y", "inf-x", "inf-m", "empty-support-y", "bad-role", "empty"])
def test_bad_task_files_stop_with_a_message(fitted, tmp_path, capsys, text, message):
    code, out = _predict(os.path.join(fitted, "model.pt"), tmp_path, text)
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert not out.exists()


def test_task_file_with_more_metadata_columns_than_the_model_stops(fitted, tmp_path, capsys):
    """m1, m2, m3 for a model of 2-D metadata: the extra column must not be dropped silently."""
    text = TASK_FILE.replace("m1,m2", "m1,m2,m3").replace(",0.1\n", ",0.1,7.0\n").replace(",-0.4\n", ",-0.4,7.0\n")
    code, out = _predict(os.path.join(fitted, "model.pt"), tmp_path, text)
    assert code == 2
    assert "m3" in capsys.readouterr().err


def test_missing_checkpoint_stops(tmp_path, capsys):
    code, _ = _predict(str(tmp_path / "nope.pt"), tmp_path, TASK_FILE)
    assert code == 2 and "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"not a checkpoint\n", b""], ids=["text", "empty"])
def test_non_checkpoint_file_stops_with_a_message(tmp_path, capsys, content):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    code, _ = _predict(str(bad), tmp_path, TASK_FILE)
    assert code == 2 and "checkpoint" in capsys.readouterr().err


def test_checkpoint_without_config_stops(tmp_path, capsys):
    path = tmp_path / "dict.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    code, _ = _predict(str(path), tmp_path, TASK_FILE)
    assert code == 2 and "is not a hierarchical_meta checkpoint" in capsys.readouterr().err
