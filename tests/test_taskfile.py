"""Task files (hierarchical_meta.taskfile): missing metadata is an empty cell (or nan), read
as NaN, and a model predicts for such a task; x and y must be finite; bad rows stop early.

The model is tiny and untrained (seeded): only finiteness and the plumbing are checked here;
the accuracy of predictions is tested in test_predict.py.
"""

import csv
import math

import pytest
import torch

from hierarchical_meta.meta_model import HierarchicalMetaModel, ModelConfig
from hierarchical_meta.taskfile import read_task_file, write_predictions

TASKS = """task,role,x,y,m1,m2
a,support,0.3,1.2,2.5,
a,query,1.0,,2.5,
b,support,-1.0,0.4,,
b,query,-2.0,,nan,
c,query,0.5,,1.0,-0.4
"""


def _write(tmp_path, text):
    path = tmp_path / "tasks.csv"
    path.write_text(text)
    return str(path)


def test_empty_or_nan_metadata_is_read_as_missing(tmp_path):
    batch, labels, has_y = read_task_file(_write(tmp_path, TASKS), x_dim=1, y_dim=1, metadata_dim=2)
    assert labels == ["a", "b", "c"] and not has_y
    assert batch.metadata[0, 0] == 2.5 and torch.isnan(batch.metadata[0, 1])
    assert torch.isnan(batch.metadata[1]).all()  # empty on one row, nan on the other: the same
    assert torch.equal(batch.metadata[2], torch.tensor([1.0, -0.4]))
    assert batch.support_mask.tolist() == [[True], [True], [False]]


def test_a_model_predicts_finite_values_for_tasks_with_missing_metadata(tmp_path):
    batch, labels, _ = read_task_file(_write(tmp_path, TASKS), x_dim=1, y_dim=1, metadata_dim=2)
    torch.manual_seed(0)
    meta = HierarchicalMetaModel(ModelConfig(metadata_dim=2, latent_dim=2, hidden=8, layers=1))
    predictive, log_evidence = meta.predict(batch, num_samples=16)
    for values in (predictive.predictive_mean(), predictive.quantile(0.05), predictive.quantile(0.95),
                   log_evidence):
        assert torch.isfinite(values).all()
    out = tmp_path / "predictions.csv"
    write_predictions(str(out), batch, labels, predictive, score=False)
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["task"] for r in rows] == ["a", "b", "c"]
    assert all(math.isfinite(float(r[c])) for r in rows for c in ("mean", "q05", "q95"))


@pytest.mark.parametrize("old, new, message", [
    ("c,query,0.5,,1.0,-0.4", "c,query,0.5,,1.0,inf", "'inf' is infinite; leave the cell empty"),
    ("a,query,1.0,,2.5,", "a,query,1.0,,2.5,3.0", "different metadata on different rows"),
    ("a,query,1.0,,2.5,", "a,query,1.0,,,", "different metadata on different rows"),
    ("a,support,0.3,1.2", "a,support,nan,1.2", "NaN or infinite; drop or impute"),
    ("a,support,0.3,1.2", "a,support,0.3,", "is not a number"),
    ("b,query,-2.0,,nan,", "b,query,-2.0,,nan", "does not have the header's 6 fields"),
    ("b,query,-2.0,,nan,", "b,query,-2.0,,nan,,7", "does not have the header's 6 fields"),
], ids=["inf-m", "m-differs", "m-missing-on-one-row", "nan-x", "empty-support-y", "short-row", "long-row"])
def test_bad_task_files_raise_naming_the_line(tmp_path, old, new, message):
    assert old in TASKS
    with pytest.raises(ValueError, match="line") as error:
        read_task_file(_write(tmp_path, TASKS.replace(old, new)), x_dim=1, y_dim=1, metadata_dim=2)
    assert message in str(error.value)


def test_a_model_without_metadata_reads_files_without_metadata_columns(tmp_path):
    text = "task,role,x,y\na,support,0.3,1.2\na,query,1.0,\n"
    batch, labels, _ = read_task_file(_write(tmp_path, text), x_dim=1, y_dim=1, metadata_dim=0)
    assert labels == ["a"] and batch.metadata.shape == (1, 0)
    with pytest.raises(ValueError, match="'m1' does not fit the model"):
        read_task_file(_write(tmp_path, "task,role,x,y,m1\na,support,0.3,1.2,0\na,query,1.0,,0\n"),
                       x_dim=1, y_dim=1, metadata_dim=0)
