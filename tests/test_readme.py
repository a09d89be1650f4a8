"""The README's Python snippet runs as written, with only its sizes made tiny here."""

import os
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent

#: snippet text -> the same call at a test's size (steps, importance samples, held-out tasks)
TINY = {
    "TrainConfig(steps=2000)": "TrainConfig(steps=20, eval_every=10, checkpoint_every=10)",
    "TrainConfig(steps=8000)": "TrainConfig(steps=20, eval_every=10, checkpoint_every=10)",
    'out_dir="runs/sites-py")': 'out_dir="runs/sites-py", num_samples=16, progress=False, log=None)',
    "evaluate_model(model, family)": "evaluate_model(model, family, EvalConfig(num_tasks=4), num_samples=16)",
    'FittedModel.load("runs/sites-py")': 'FittedModel.load("runs/sites-py", num_samples=16)',
}


def python_blocks(text):
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_readme_python_snippet_runs(tmp_path, monkeypatch):
    blocks = python_blocks((ROOT / "README.md").read_text())
    assert len(blocks) == 1
    code = blocks[0]
    for text, tiny in TINY.items():
        assert text in code, f"the README snippet no longer contains {text!r}: update TINY"
        code = code.replace(text, tiny)
    (tmp_path / "examples").symlink_to(ROOT / "examples")  # the snippet reads examples/data/
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile("from hierarchical_meta import EvalConfig\n" + code, "README.md", "exec"), namespace)
    assert os.path.exists("runs/sites-py/metrics.json") and os.path.exists("runs/sin-py/model.pt")
    assert namespace["predictive"].log_prob(namespace["batch"].y_query).shape == (5, 50)
    assert set(namespace["metrics"]["shots"]) == {"0", "1", "2", "5", "10"}
    predictions, new_sites = namespace["predictions"], namespace["new_sites"]
    assert list(predictions.columns) == ["task", "dose", "response_mean", "response_q05", "response_q95"]
    assert predictions["task"].tolist() == new_sites.loc[new_sites["role"] == "query", "task"].tolist()
