"""Every example under examples/ runs with tiny flags and returns and writes what it promises.

An example is a script ``examples/NAME.py`` or a package ``examples/NAME/`` with a
``__main__.py`` (run as ``python -m examples.NAME``); each has a ``main(argv)``. A new
example must be listed in :data:`EXAMPLES` with its tiny flags and a check of its outputs.
"""

import csv
import importlib
import importlib.util
import json
import math
import pathlib
import sys

import pytest

from examples.memorization import LEARNERS, SCENARIOS
from examples.memorization.study import BETAS

EXAMPLES_DIR = pathlib.Path(__file__).resolve().parent.parent / "examples"


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_files(folder, names):
    """Each file exists and is not empty."""
    for name in names:
        path = folder / name
        assert path.is_file() and path.stat().st_size > 0, f"{path} missing or empty"


def assert_finite(rows, keys):
    for row in rows:
        for key in keys:
            assert math.isfinite(float(row[key])), (key, row)


def check_benchmark_tabular(result, tmp_path):
    """Both families timed: positive, finite seconds per sample() and per training step."""
    assert result["rows"] >= 20 * 2
    for key in ("sample_s", "step_s"):
        assert set(result[key]) == {"tabular", "sinusoid"}
        assert all(math.isfinite(v) and v > 0 for v in result[key].values()), result


def check_sample_data(paths, tmp_path):
    """The three sample files (test_tabular checks they equal the shipped examples/data/)."""
    names = ["grouped_sample.csv", "grouped_sample_new.csv", "sinusoid_tasks.csv"]
    assert [pathlib.Path(p).name for p in paths] == names
    assert_files(tmp_path, names)


def check_benchmark_svi(result, tmp_path):
    assert set(result) == {"vectorized_tasks_per_s", "loop_tasks_per_s", "fast_tasks_per_s"}
    assert all(math.isfinite(v) and v > 0 for v in result.values()), result


PROBE_SCORES = ("loss", "loss_swapped", "loss_none", "gain_vs_swapped", "gain_vs_swapped_se", "gain_vs_none",
                "gain_vs_none_se", "follow", "follow_se", "metric", "metric_none", "chance_loss", "chance_metric")


def check_memorization(rows, tmp_path):
    """One row per scenario, learner and split (MAML on regression scenarios only); the β
    sweep: the CNP at every β, the Bayesian model at every β > 0, one β chosen per learner."""
    expected = [(s.name, learner, split) for s in SCENARIOS.values() for learner in LEARNERS
                if learner != "maml" or s.make_family().num_classes is None
                for split in ("meta-train", "meta-test")]
    assert [(r["scenario"], r["learner"], r["split"]) for r in rows] == expected
    assert_files(tmp_path, ["results.csv", "results.md", "beta.csv", "beta.md"])
    on_disk = read_csv(tmp_path / "results.csv")
    assert [(r["scenario"], r["learner"], r["split"]) for r in on_disk] == expected
    assert_finite(on_disk, PROBE_SCORES)
    assert all(r["metric_name"] in ("mse", "accuracy") for r in on_disk)
    table = (tmp_path / "results.md").read_text()
    assert table.count("\n| ") == len(expected) + 1  # a header and one line per row
    beta = read_csv(tmp_path / "beta.csv")
    runs = [("cnp", b) for b in BETAS] + [("bayes", b) for b in BETAS if b > 0]
    assert sorted((r["learner"], float(r["beta"]), r["split"]) for r in beta) == sorted(
        (learner, b, split) for learner, b in runs for split in ("meta-val", "meta-test"))
    assert_finite(beta, PROBE_SCORES)
    for learner in ("cnp", "bayes"):
        chosen = {float(r["beta"]) for r in beta if r["learner"] == learner and r["chosen"] == "True"}
        assert len(chosen) == 1, (learner, chosen)


def check_nlschools_comparison(summary, tmp_path):
    """Five models at K = 0 and 2 on one split: finite scores, coverage a probability."""
    models = ("ours", "ours_no_metadata", "mixed_model", "mixed_model_no_metadata", "mixed_model_heteroscedastic")
    assert [(r["model"], r["K"]) for r in summary] == [(m, k) for m in models for k in (0, 2)]
    assert_finite(summary, ("loglik", "mse", "coverage90", "loglik_minus_mixed", "query_pupils"))
    assert all(r["mse"] > 0 and 0 <= r["coverage90"] <= 1 and r["test_classes"] > 0 for r in summary)
    assert_files(tmp_path, ["per_split.csv", "comparison.csv", "comparison.md", "fits.json", "loglik_vs_k.png"])
    per_split = read_csv(tmp_path / "per_split.csv")
    assert len(per_split) == len(summary) and {r["split"] for r in per_split} == {"0"}
    assert_finite(per_split, ("loglik", "mse", "coverage90"))
    assert len(read_csv(tmp_path / "comparison.csv")) == len(summary)
    fits = json.loads((tmp_path / "fits.json").read_text())
    assert [f["split"] for f in fits["splits"]] == [0]


#: example -> (tiny command-line flags that run it end to end in seconds, check of its outputs).
EXAMPLES = {
    "benchmark_svi.py": (["--batch-tasks", "4", "--points", "5", "--repeats", "1"], check_benchmark_svi),
    "benchmark_tabular.py": (["--groups", "20", "--min-rows", "2", "--max-rows", "6", "--batch-tasks", "4",
                              "--points", "5", "--repeats", "2", "--steps", "1"], check_benchmark_tabular),
    "make_sample_data.py": (["--out", "{tmp}"], check_sample_data),
    "memorization": (["--tiny", "--beta", "--out", "{tmp}"], check_memorization),
    "nlschools_comparison.py": (["--splits", "0", "--steps", "20", "--num-samples", "16", "--shots", "0", "2",
                                 "--support-draws", "1", "--out", "{tmp}"], check_nlschools_comparison),
}


def test_every_example_is_listed():
    scripts = {p.name for p in EXAMPLES_DIR.glob("*.py") if p.name != "__init__.py"}
    packages = {p.parent.name for p in EXAMPLES_DIR.glob("*/__main__.py")}
    found = scripts | packages
    assert found == set(EXAMPLES), (f"examples not covered by tests: {sorted(found - set(EXAMPLES))}; "
                                    f"listed but missing: {sorted(set(EXAMPLES) - found)}")


def load_main(name, monkeypatch):
    """The ``main`` of a script (loaded from its file) or of a package's ``__main__``."""
    if not name.endswith(".py"):
        return importlib.import_module(f"examples.{name}.__main__").main
    spec = importlib.util.spec_from_file_location(name[:-3], EXAMPLES_DIR / name)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_runs_and_writes_its_outputs(name, tmp_path, monkeypatch):
    flags, check = EXAMPLES[name]
    main = load_main(name, monkeypatch)
    monkeypatch.chdir(tmp_path)  # anything an example writes by default lands in tmp_path
    check(main([arg.replace("{tmp}", str(tmp_path)) for arg in flags]), tmp_path)
