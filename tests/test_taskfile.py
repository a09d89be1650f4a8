"""Task files (hierarchical_meta.taskfile) of a built-in family, read through its identity schema:
missing metadata is an empty cell (or nan), read as NaN, and a model predicts for such a task;
x and y must be finite; bad rows stop early naming the line; the predictions file has the
columns of every task file's predictions (task, x, y_mean, y_q05, y_q95).

The model is tiny and untrained (seeded): only finiteness and the plumbing are checked here;
the accuracy of predictions is tested in test_predict.py.
"""

import math

import pytest
import torch

pytest.importorskip("pandas")

from hierarchical_meta.fitted import FittedModel  # noqa: E402
from hierarchical_meta.meta_model import HierarchicalMetaModel, ModelConfig  # noqa: E402
from hierarchical_meta.taskfile import prediction_frame, read_tasks  # noqa: E402
from hierarchical_meta.tasks.frames import read_csv  # noqa: E402
from hierarchical_meta.tasks.schema import Column, TabularSchema  # noqa: E402

TASKS = """task,role,x,y,m1,m2
a,support,0.3,1.2,2.5,
a,query,1.0,,2.5,
b,support,-1.0,0.4,,
b,query,-2.0,,nan,
c,query,0.5,,1.0,-0.4
"""
SCHEMA = TabularSchema.identity(1, 1, 2)


def _write(tmp_path, text):
    path = tmp_path / "tasks.csv"
    path.write_text(text)
    return str(path)


def test_the_identity_schema_names_the_built_in_columns():
    assert SCHEMA.names("x") == ["x"] and SCHEMA.names("y") == ["y"] and SCHEMA.names("metadata") == ["m1", "m2"]
    assert TabularSchema.identity(2, 1, 1).names("x") == ["x1", "x2"]
    assert TabularSchema.identity(2, 1, 1).names("metadata") == ["m"]
    assert SCHEMA.is_identity() and TabularSchema.identity(1, 1, 0).is_identity()
    assert not TabularSchema("task", [Column("x", std=2.0)], [Column("y")]).is_identity()


def test_empty_or_nan_metadata_is_read_as_missing(tmp_path):
    tasks = read_tasks(_write(tmp_path, TASKS), SCHEMA)
    batch = tasks.batch
    assert tasks.labels == ["a", "b", "c"] and not tasks.scored
    assert batch.metadata[0, 0] == 2.5 and torch.isnan(batch.metadata[0, 1])
    assert torch.isnan(batch.metadata[1]).all()  # empty on one row, nan on the other: the same
    assert torch.equal(batch.metadata[2], torch.tensor([1.0, -0.4]))
    assert batch.support_mask.tolist() == [[True], [True], [False]]


def test_a_model_predicts_finite_values_for_tasks_with_missing_metadata(tmp_path):
    tasks = read_tasks(_write(tmp_path, TASKS), SCHEMA)
    torch.manual_seed(0)
    meta = HierarchicalMetaModel(ModelConfig(metadata_dim=2, latent_dim=2, hidden=8, layers=1))
    predictive, log_evidence = meta.predict(tasks.batch, num_samples=16)
    assert torch.isfinite(log_evidence).all()
    out = prediction_frame(SCHEMA, tasks, predictive)
    assert list(out.columns) == ["task", "x", "y_mean", "y_q05", "y_q95"]
    assert out["task"].tolist() == ["a", "b", "c"] and out["x"].tolist() == [1.0, -2.0, 0.5]
    assert all(math.isfinite(v) for c in ("y_mean", "y_q05", "y_q95") for v in out[c])
    assert ((out["y_q05"] < out["y_mean"]) & (out["y_mean"] < out["y_q95"])).all()
    # the fitted object runs the same code on a frame, one chunk of tasks or several, seeded
    torch.manual_seed(3)
    want = prediction_frame(SCHEMA, tasks, meta.predict(tasks.batch, num_samples=16)[0])
    fitted = FittedModel(meta, SCHEMA, num_samples=16)
    frame = read_csv(_write(tmp_path, TASKS), text_columns=("task", "role"))
    assert fitted.predict(frame, seed=3).equals(want)
    chunked = fitted.predict(frame, seed=3, chunk=1)
    assert chunked[["task", "x"]].equals(want[["task", "x"]]) and chunked.attrs["notes"] == []


@pytest.mark.parametrize("old, new, message", [
    ("c,query,0.5,,1.0,-0.4", "c,query,0.5,,1.0,inf", "line 6, column m2: inf is infinite; leave the cell empty"),
    ("a,query,1.0,,2.5,", "a,query,1.0,,2.5,3.0", "line 3: task 'a' has different metadata on different rows"),
    ("a,query,1.0,,2.5,", "a,query,1.0,,,", "line 3: task 'a' has different metadata on different rows"),
    ("a,support,0.3,1.2", "a,support,nan,1.2", "line 2, column x: nan is NaN or infinite; x must be a finite"),
    ("a,support,0.3,1.2", "a,support,0.3,", "line 2, column y: nan is NaN or infinite; y must be a finite number "
                                            "on a support row"),
    ("b,query,-2.0,,nan,", "b,query,-2.0,,nan", "line 5: the row does not have the header's 6 fields"),
    ("b,query,-2.0,,nan,", "b,query,-2.0,,nan,,7", "line 5: the row does not have the header's 6 fields"),
], ids=["inf-m", "m-differs", "m-missing-on-one-row", "nan-x", "empty-support-y", "short-row", "long-row"])
def test_bad_task_files_raise_naming_the_line(tmp_path, old, new, message):
    assert old in TASKS
    path = _write(tmp_path, TASKS.replace(old, new))
    with pytest.raises(ValueError) as error:
        read_tasks(path, SCHEMA)
    assert str(error.value).startswith(path) and message in str(error.value), str(error.value)


def test_a_model_without_metadata_reads_files_without_metadata_columns(tmp_path):
    text = "task,role,x,y\na,support,0.3,1.2\na,query,1.0,\n"
    tasks = read_tasks(_write(tmp_path, text), TabularSchema.identity(1, 1, 0))
    assert tasks.labels == ["a"] and tasks.batch.metadata.shape == (1, 0)
    with pytest.raises(ValueError, match=r"column\(s\) \['m1'\] do not fit the model"):
        read_tasks(_write(tmp_path, "task,role,x,y,m1\na,support,0.3,1.2,0\na,query,1.0,,0\n"),
                   TabularSchema.identity(1, 1, 0))


def test_query_only_files_may_leave_out_y_and_labels_stay_text(tmp_path):
    text = "task,role,x,m1,m2\n007,query,0.1,1,2\n7,query,0.2,1,2\n7.0,query,0.3,1,2\n"
    tasks = read_tasks(_write(tmp_path, text), SCHEMA)
    assert tasks.labels == ["007", "7", "7.0"] and tasks.batch.query_mask.sum(1).tolist() == [1, 1, 1]
