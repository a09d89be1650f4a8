"""The result tables and quoted numbers of README.md and docs/*.md are what `make docs` writes.

`make docs` (scripts/doc_tables.py) regenerates every doc of scripts.doc_providers.REGISTRY from the
committed CSV/JSON under docs/; a doc edited by hand, or a committed run replaced without rerunning
it, fails here, and so does a doc with markers that no provider fills.
"""

import csv
import functools
import json
import re

import pytest

from scripts import doc_tables
from scripts.doc_providers import REGISTRY
from scripts.doc_providers.common import ROOT, Provider, has_markers, render
from scripts.doc_providers.quality import DEFAULTS


@functools.cache
def expected(path: str) -> str:
    """The doc at ``path`` as `make docs` writes it."""
    return REGISTRY[path].render(path)


@functools.cache
def tables(path: str) -> dict[str, str]:
    return REGISTRY[path].all_tables()


@pytest.mark.parametrize("path", REGISTRY)
def test_doc_is_what_make_docs_writes(path):
    current = (ROOT / path).read_text()
    if current != expected(path):
        diff = [f"{i + 1}: {a!r}\n    make docs: {b!r}"
                for i, (a, b) in enumerate(zip(current.splitlines(), expected(path).splitlines(), strict=False))
                if a != b]
        pytest.fail(f"{path} differs from `make docs` (run it and commit):\n" + "\n".join(diff[:5]))


def test_every_doc_with_markers_has_a_provider():
    """A new doc with generated numbers cannot be forgotten: README.md and every doc under docs/ with markers
    is in REGISTRY, and every doc of REGISTRY has markers."""
    docs = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]
    with_markers = {p.relative_to(ROOT).as_posix() for p in docs if has_markers(p.read_text())}
    assert with_markers == set(REGISTRY), "add the doc's provider to scripts/doc_providers/__init__.py"
    assert {"README.md", "docs/model.md", "docs/profiling.md", "docs/quality/README.md"} <= with_markers


@pytest.mark.parametrize("path", REGISTRY)
def test_every_generated_table_is_in_its_doc(path):
    for name in tables(path):
        assert f"<!-- table:{name} -->" in expected(path), f"table {name!r} is generated but {path} does not show it"


def test_quoted_gaps_are_the_committed_runs_rounded():
    """The README's gaps and the long run's largest gap come from the committed metrics files."""
    demo = json.loads((ROOT / "docs/demo/with_metadata_metrics.json").read_text())["shots"]
    gaps = " / ".join(f"{e['oracle_loglik'] - e['loglik']:.2f}" for e in demo.values())
    assert f"<!--v:demo.gaps-->{gaps}<!--/v-->" in expected("README.md")
    long = json.loads((ROOT / "docs/long/metrics.json").read_text())["shots"]
    worst = max(e["oracle_loglik"] - e["loglik"] for e in long.values())
    assert f"<!--v:long.max_gap:.3f-->{worst:.3f}<!--/v-->" in expected("docs/model.md")


def test_memorization_numbers_are_the_committed_rows():
    """docs/memorization.md's task-identifier factor is the two rows' meta-test MSE ratio, not their rounded ratio."""
    with open(ROOT / "docs/memorization/results.csv", newline="") as f:
        mse = {r["learner"]: float(r["metric"]) for r in csv.DictReader(f)
               if r["scenario"] == "basis-task-id" and r["split"] == "meta-test"}
    ratio = mse["maml"] / mse["oracle"]
    doc = expected("docs/memorization.md")
    assert f"<!--v:mem.basis-task-id.maml.test.vs_oracle:.1f-->{ratio:.1f}<!--/v-->" in doc
    assert f"<!--v:mem.basis-task-id.oracle.test.metric:.3f-->{mse['oracle']:.3f}<!--/v-->" in doc


def test_quality_table_has_one_row_per_sinusoid_run_folder():
    """Every docs/quality/<run>/metrics.json with an exact-Bayes reference is a row, with its largest gap."""
    table = tables("docs/quality/README.md")["quality-sinusoid"]
    runs = {p.parent.name: json.loads(p.read_text())["shots"] for p in (ROOT / "docs/quality").glob("*/metrics.json")}
    sinusoid = {name: shots for name, shots in runs.items() if "oracle_loglik" in shots["0"]}
    assert len(sinusoid) >= 12 and len(table.splitlines()) == 2 + len(sinusoid)
    for name, shots in sinusoid.items():
        gaps = " / ".join(f"{e['oracle_loglik'] - e['loglik']:.3f}" for e in shots.values())
        assert f"| `{name}` | {gaps} |" in table, name
    worst = [max(e["oracle_loglik"] - e["loglik"] for e in sinusoid[name].values()) for name in DEFAULTS]
    assert (f"<!--v:quality.swap3.max_gap.each-->{' / '.join(f'{w:.3f}' for w in worst)}<!--/v-->"
            in expected("docs/quality/README.md"))


def test_profiling_tables_are_the_rows_the_studies_wrote():
    """The accuracy and ES-quality tables (from the CSVs) hold the rows of the committed summary.md."""
    summary = (ROOT / "docs/profiling/accuracy/summary.md").read_text().splitlines()
    for name in ("profiling-accuracy", "profiling-es-quality"):
        rows = tables("docs/profiling.md")[name].splitlines()[2:]
        assert len(rows) >= 6 and all(line in summary for line in rows), name
    checkpointed = (ROOT / "docs/profiling/checkpointed/summary.txt").read_text()
    slope = expected("docs/profiling.md").split("<!--v:ckpt.maml_slope:.2f-->")[1].split("<")[0]
    written = re.search(r"steps +maml +peak_mb +([\d.]+) MB", checkpointed).group(1)
    assert f"{float(slope):.2f}" == f"{float(written):.2f}"


# Marker texts render() meets: (id, text, values, tables, outcome, the output or a fragment of the error).
RENDER_CASES = [
    ("value-and-table", "a <!--v:x:.2f-->0<!--/v--> b <!--v:p-->old<!--/v-->\n<!-- table:t -->\nold\n<!-- /table -->\n",
     {"x": 2.798, "p": "K = 1"}, {"t": "| new |\n"}, "handled",
     "a <!--v:x:.2f-->2.80<!--/v--> b <!--v:p-->K = 1<!--/v-->\n<!-- table:t -->\n| new |\n<!-- /table -->\n"),
    ("table-in-a-list-item", "- item\n\n  <!-- table:t -->\n  | old |\n  <!-- /table -->\n", {},
     {"t": "| a |\n|---|\n"}, "handled", "- item\n\n  <!-- table:t -->\n  | a |\n  |---|\n  <!-- /table -->\n"),
    ("no-markers", "plain text, <!-- a comment -->\n", {}, {}, "handled", "plain text, <!-- a comment -->\n"),
    ("unknown-value", "<!--v:y-->1<!--/v-->", {}, {}, "error", "no value named 'y'"),
    ("unknown-table", "<!-- table:u -->\n<!-- /table -->", {}, {}, "error", "no table named 'u'"),
    ("value-over-two-lines", "<!--v:x-->1\n<!--/v-->", {"x": 1.0}, {}, "error", "whole regions"),
    ("table-never-closed", "<!-- table:t -->\n| a |\n", {}, {"t": "| a |\n"}, "error", "whole regions"),
    ("phrase-with-a-spec", "<!--v:p:.2f-->1<!--/v-->", {"p": "K = 1"}, {}, "error", "phrase"),
]


@pytest.mark.parametrize("text, values, tables_, outcome, result", [case[1:] for case in RENDER_CASES],
                         ids=[case[0] for case in RENDER_CASES])
def test_render(text, values, tables_, outcome, result):
    if outcome == "error":
        with pytest.raises(ValueError, match=re.escape(result)):
            render(text, values, tables_)
    else:
        assert render(text, values, tables_) == result


def test_a_name_two_functions_give_is_refused():
    def first():
        return {"x": 1.0}

    def second():
        return {"x": 2.0, "y": 3.0}

    with pytest.raises(ValueError, match=r"values \['x'\] given twice, again by .*second"):
        Provider(values=(first, second)).all_values()


def test_check_mode_reports_a_stale_doc(monkeypatch, capsys):
    assert doc_tables.main(["--check"]) == 0
    stale = {path: expected(path) + ("x" if path == "README.md" else "") for path in REGISTRY}
    monkeypatch.setattr(doc_tables, "expected", lambda: stale)
    assert doc_tables.main(["--check"]) == 1
    assert "README.md" in capsys.readouterr().out
