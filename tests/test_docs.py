"""The result tables and quoted numbers of README.md and docs/*.md are what `make docs` writes.

`make docs` (scripts/doc_tables.py) regenerates them from the committed CSV/JSON under docs/;
a doc edited by hand, or a committed run replaced without rerunning it, fails here.
"""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("doc_tables", ROOT / "scripts" / "doc_tables.py")
doc_tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(doc_tables)

EXPECTED = doc_tables.expected()


@pytest.mark.parametrize("path", doc_tables.DOCS)
def test_doc_is_what_make_docs_writes(path):
    current = (ROOT / path).read_text()
    if current != EXPECTED[path]:
        diff = [f"{i + 1}: {a!r}\n    make docs: {b!r}"
                for i, (a, b) in enumerate(zip(current.splitlines(), EXPECTED[path].splitlines(), strict=False))
                if a != b]
        pytest.fail(f"{path} differs from `make docs` (run it and commit):\n" + "\n".join(diff[:5]))


def test_every_result_doc_has_generated_numbers():
    for path in ("README.md", "docs/model.md", "docs/nlschools.md", "docs/profiling.md", "docs/quality/README.md",
                 "docs/memorization.md"):
        assert "<!--v:" in EXPECTED[path], path
    tables = "".join(EXPECTED.values())
    for name in doc_tables.tables():
        assert f"<!-- table:{name} -->" in tables, f"table {name!r} is generated but no doc shows it"


def test_quoted_gaps_are_the_committed_runs_rounded():
    """The README's gaps and the long run's largest gap come from the committed metrics files."""
    import json
    demo = json.loads((ROOT / "docs/demo/with_metadata_metrics.json").read_text())["shots"]
    gaps = " / ".join(f"{e['oracle_loglik'] - e['loglik']:.2f}" for e in demo.values())
    assert f"<!--v:demo.gaps-->{gaps}<!--/v-->" in EXPECTED["README.md"]
    long = json.loads((ROOT / "docs/long/metrics.json").read_text())["shots"]
    worst = max(e["oracle_loglik"] - e["loglik"] for e in long.values())
    assert f"<!--v:long.max_gap:.3f-->{worst:.3f}<!--/v-->" in EXPECTED["docs/model.md"]


def test_memorization_numbers_are_the_committed_rows():
    """docs/memorization.md's task-identifier factor is the two rows' meta-test MSE ratio, not their rounded ratio."""
    import csv
    with open(ROOT / "docs/memorization/results.csv", newline="") as f:
        mse = {r["learner"]: float(r["metric"]) for r in csv.DictReader(f)
               if r["scenario"] == "basis-task-id" and r["split"] == "meta-test"}
    ratio = mse["maml"] / mse["oracle"]
    assert f"<!--v:mem.basis-task-id.maml.test.vs_oracle:.1f-->{ratio:.1f}<!--/v-->" in EXPECTED["docs/memorization.md"]
    assert f"<!--v:mem.basis-task-id.oracle.test.metric:.3f-->{mse['oracle']:.3f}<!--/v-->" in (
        EXPECTED["docs/memorization.md"])


def test_quality_table_has_one_row_per_sinusoid_run_folder():
    """Every docs/quality/<run>/metrics.json with an exact-Bayes reference is a row, with its largest gap."""
    import json
    table = doc_tables.tables()["quality-sinusoid"]
    runs = {p.parent.name: json.loads(p.read_text())["shots"] for p in (ROOT / "docs/quality").glob("*/metrics.json")}
    sinusoid = {name: shots for name, shots in runs.items() if "oracle_loglik" in shots["0"]}
    assert len(sinusoid) >= 12 and len(table.splitlines()) == 2 + len(sinusoid)
    for name, shots in sinusoid.items():
        gaps = " / ".join(f"{e['oracle_loglik'] - e['loglik']:.3f}" for e in shots.values())
        assert f"| `{name}` | {gaps} |" in table, name
    worst = [max(e["oracle_loglik"] - e["loglik"] for e in sinusoid[name].values()) for name in doc_tables.DEFAULTS]
    assert (f"<!--v:quality.swap3.max_gap.each-->{' / '.join(f'{w:.3f}' for w in worst)}<!--/v-->"
            in EXPECTED["docs/quality/README.md"])


def test_profiling_tables_are_the_rows_the_studies_wrote():
    """The accuracy and ES-quality tables (from the CSVs) hold the rows of the committed summary.md."""
    summary = (ROOT / "docs/profiling/accuracy/summary.md").read_text().splitlines()
    tables = doc_tables.tables()
    for name in ("profiling-accuracy", "profiling-es-quality"):
        rows = tables[name].splitlines()[2:]
        assert len(rows) >= 6 and all(line in summary for line in rows), name
    checkpointed = (ROOT / "docs/profiling/checkpointed/summary.txt").read_text()
    slope = EXPECTED["docs/profiling.md"].split("<!--v:ckpt.maml_slope:.2f-->")[1].split("<")[0]
    written = re.search(r"steps +maml +peak_mb +([\d.]+) MB", checkpointed).group(1)
    assert f"{float(slope):.2f}" == f"{float(written):.2f}"


def test_render_keeps_an_indented_table_inside_its_list_item():
    text = "- item\n\n  <!-- table:t -->\n  | old |\n  <!-- /table -->\n"
    assert doc_tables.render(text, {}, {"t": "| a |\n|---|\n"}) == (
        "- item\n\n  <!-- table:t -->\n  | a |\n  |---|\n  <!-- /table -->\n")


def test_render_rewrites_values_and_tables_and_refuses_unknown_names():
    text = "a <!--v:x:.2f-->0<!--/v--> b <!--v:p-->old<!--/v-->\n<!-- table:t -->\nold\n<!-- /table -->\n"
    out = doc_tables.render(text, {"x": 2.798, "p": "K = 1"}, {"t": "| new |\n"})
    assert out == ("a <!--v:x:.2f-->2.80<!--/v--> b <!--v:p-->K = 1<!--/v-->\n"
                   "<!-- table:t -->\n| new |\n<!-- /table -->\n")
    with pytest.raises(ValueError, match="no value named 'y'"):
        doc_tables.render("<!--v:y-->1<!--/v-->", {}, {})
    with pytest.raises(ValueError, match="no table named 'u'"):
        doc_tables.render("<!-- table:u -->\n<!-- /table -->", {}, {})
    with pytest.raises(ValueError, match="whole regions"):
        doc_tables.render("<!--v:x-->1\n<!--/v-->", {"x": 1.0}, {})
    with pytest.raises(ValueError, match="phrase"):
        doc_tables.render("<!--v:p:.2f-->1<!--/v-->", {"p": "K = 1"}, {})


def test_check_mode_reports_a_stale_doc(tmp_path, monkeypatch, capsys):
    assert doc_tables.main(["--check"]) == 0
    stale = dict(EXPECTED, **{"README.md": EXPECTED["README.md"] + "x"})
    monkeypatch.setattr(doc_tables, "expected", lambda: stale)
    assert doc_tables.main(["--check"]) == 1
    assert "README.md" in capsys.readouterr().out
