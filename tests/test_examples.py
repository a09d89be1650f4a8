"""Every script under examples/ runs with tiny flags; a new example must be listed here."""

import importlib.util
import pathlib
import sys

import pytest

EXAMPLES_DIR = pathlib.Path(__file__).resolve().parent.parent / "examples"

#: script -> tiny command-line flags that run it end to end in seconds.
EXAMPLES = {
    "benchmark_svi.py": ["--batch-tasks", "4", "--points", "5", "--repeats", "1"],
    "benchmark_tabular.py": ["--groups", "20", "--min-rows", "2", "--max-rows", "6", "--batch-tasks", "4",
                             "--points", "5", "--repeats", "2", "--steps", "1"],
    "make_sample_data.py": ["--out", "{tmp}"],
    "memorization.py": ["--tiny", "--beta", "--out", "{tmp}"],
    "nlschools_comparison.py": ["--splits", "0", "--steps", "20", "--num-samples", "16", "--shots", "0", "2",
                                "--support-draws", "1", "--out", "{tmp}"],
}


def test_every_example_is_listed():
    scripts = {p.name for p in EXAMPLES_DIR.glob("*.py")}
    assert scripts == set(EXAMPLES), (f"examples not covered by tests: {sorted(scripts - set(EXAMPLES))}; "
                                      f"listed but missing: {sorted(set(EXAMPLES) - scripts)}")


@pytest.mark.parametrize("script", sorted(EXAMPLES))
def test_example_runs(script, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything an example writes by default lands in tmp_path
    spec = importlib.util.spec_from_file_location(script[:-3], EXAMPLES_DIR / script)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    module.main([arg.replace("{tmp}", str(tmp_path)) for arg in EXAMPLES[script]])
