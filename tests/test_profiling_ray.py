"""The study on Ray (``--executor ray``): a local 2-CPU Ray measures what the local executor measures."""

import os
import subprocess
import sys

import pytest
import torch

from profiling import scale
from profiling.study import Config, StudyConfig, append_row, read_rows, row_key

SMALL = ["--device", "cpu", "--quick", "--sweeps", "steps,units", "--methods", "maml,es", "--base-units", "16",
         "--repeats", "1", "--warmup", "0", "--seconds-per-config", "0.05"]


def test_ray_resumes_and_writes_the_local_executors_configurations(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    local, on_ray = str(tmp_path / "local"), str(tmp_path / "ray")
    assert scale.main(SMALL + ["--isolation", "none", "--out", local]) == 0
    expected = read_rows(os.path.join(local, "scale.csv"))
    # a killed Ray run left two rows: the rerun measures only the others
    os.makedirs(on_ray)
    for row in expected[:2]:
        append_row(os.path.join(on_ray, "scale.csv"), row)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)  # the local Ray's size
    assert scale.main(SMALL + ["--executor", "ray", "--out", on_ray]) == 0
    rows = read_rows(os.path.join(on_ray, "scale.csv"))
    keys = [row_key(r) for r in rows]
    assert len(expected) == 12 and len(keys) == len(set(keys))  # no configuration measured twice
    assert set(keys) == {row_key(r) for r in expected}
    assert rows[:2] == expected[:2]  # the resumed rows are left as they were
    assert all(r["status"] == "ok" and r["threads"] == 1 and r["device"] == "cpu" for r in rows)
    assert os.path.exists(os.path.join(on_ray, "combined.png"))


def test_ray_records_a_task_that_raises_as_failed(tmp_path, capsys):
    pytest.importorskip("ray")
    from tqdm import tqdm

    from profiling.ray_executor import run_on_ray
    csv_path = str(tmp_path / "scale.csv")
    bad = Config("maml", "no_such_impl", "steps", 1, 1, 8)  # measure_config raises ValueError in the worker
    timing = StudyConfig(device="cpu", quick=True).timing
    with tqdm(total=1, disable=True) as bar:
        run_on_ray([bad], csv_path, torch.device("cpu"), timing, bar)
    (row,) = read_rows(csv_path)
    assert row_key(row) == bad.key() and row["status"] == "failed:ValueError"
    assert "no_such_impl" in capsys.readouterr().err


def test_missing_ray_is_one_error_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(ValueError, match=r"pip install 'hierarchical-meta\[cluster\]'"):
        StudyConfig(device="cpu", executor="ray")
    with pytest.raises(SystemExit) as exit_:
        scale.main(SMALL + ["--executor", "ray", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "pip install 'hierarchical-meta[cluster]'" in err
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("fields, message", [
    ({"executor": "dask"}, "executor='dask'"),
    ({"address": "auto"}, "use it with executor='ray'"),
    ({"executor": "ray", "isolation": "none"}, "fresh worker process"),
])
def test_study_config_rejects_bad_executor_settings(fields, message):
    with pytest.raises(ValueError, match=message):
        StudyConfig(device="cpu", **fields)


def test_the_local_study_never_imports_ray():
    code = "import sys, profiling, profiling.scale; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
