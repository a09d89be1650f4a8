"""``compare``: one data set over several group splits (hierarchical_meta/compare.py, the CLI).

- the aggregation against a hand computation on fixture metrics dicts: means, sample sds,
  paired margins, wins, the groups per K, the worst group, a baseline missing on a split;
- the Monte Carlo error from two scorings, by hand, and the second scoring itself: with the
  training seed it reproduces the first score exactly (same groups, same draws), with another
  seed it differs a little;
- ``compare`` end to end on 2 splits of the sample file at a tiny budget: every output, the
  summary agreeing with the per-split metrics, a rerun reading the finished splits back (no
  training, no rescoring), a rerun with other --shots re-evaluating without training;
- loglik_vs_k.png's K ticks and the shuffled curve's legend;
- bad input, table-driven (:data:`CASES`): --shots, --split-seeds, --eval-tasks, compare
  without a data set or with a fixed split; each "error" is one ``error:`` line and exit
  status 2 before any training, each "handled" the right parsed value.

Budget: the end-to-end fits train 20 steps of tiny networks, without metadata (no twin).
"""

import dataclasses
import json
import math
import os
import shutil
import statistics

import pytest

pandas = pytest.importorskip("pandas")

from hierarchical_meta import plots  # noqa: E402
from hierarchical_meta.__main__ import build_parser, evaluation_config, int_list, main, make_fit_family  # noqa: E402
from hierarchical_meta.compare import (  # noqa: E402
    CSV_COLUMNS,
    RESCORE_FILE,
    format_comparison,
    mc_error,
    paired_margin,
    rescore,
    summarize,
)
from hierarchical_meta.tasks import TabularTasks  # noqa: E402

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "data")
SAMPLE = os.path.join(EXAMPLES, "grouped_sample.csv")
DATA = ["--data", SAMPLE, "--group", "site", "--x", "dose", "--y", "response"]
TINY = ["--steps", "20", "--hidden", "8", "--latent-dim", "2", "--batch-tasks", "8", "--num-samples", "32",
        "--no-progress", "--seed", "0"]


# -- the aggregation -------------------------------------------------------------------------------

def split_metrics(model, no_m, mixed, groups, worst=None):
    """A run_fit metrics dict: the logliks per K ("0", "1") of the model and two baselines."""
    def shots(values):
        return {k: {"loglik": v, "num_groups": groups[k]} for k, v in values.items()}
    metrics = {"shots": shots(model), "loglik_units": "nats per query point",
               "data": {"scored_groups": "at each K, every test group with more than K rows"},
               "baselines": {"no_metadata": {"label": "model, metadata withheld", "shots": shots(no_m)},
                             "mixed_model": {"label": "mixed model (BLUP)", "shots": shots(mixed)}}}
    if worst is not None:
        metrics["shots"]["0"].update(worst_group_loglik=worst, worst_group=f"g{worst}")
    return metrics


RUNS = {
    0: split_metrics({"0": -1.0, "1": -0.8}, {"0": -1.2, "1": -0.9}, {"0": -0.9, "1": -0.7}, {"0": 5, "1": 5},
                     worst=-3.0),
    1: split_metrics({"0": -1.4, "1": -1.0}, {"0": -1.3, "1": -1.1}, {"0": -1.5, "1": -1.2}, {"0": 6, "1": 4},
                     worst=-4.5),
    3: split_metrics({"0": -0.9, "1": -0.6}, {"0": -1.0, "1": -0.8}, {"0": -1.0, "1": -0.6}, {"0": 5, "1": 5}),
}
del RUNS[3]["baselines"]["mixed_model"]["shots"]["1"]  # say the mixed model failed at K = 1 on split 3
RESCORED = {0: {"0": {"loglik": -1.03}, "1": {"loglik": -0.8}}, 1: {"0": {"loglik": -1.36}, "1": {"loglik": -1.02}},
            3: {"0": {"loglik": -0.9}, "1": {"loglik": -0.59}}}


def test_the_summary_is_the_hand_computation():
    summary = summarize(RUNS, RESCORED)
    assert summary["splits"] == [0, 1, 3] and list(summary["shots"]) == ["0", "1"]
    assert summary["labels"] == {"model": "model", "no_metadata": "model, metadata withheld",
                                 "mixed_model": "mixed model (BLUP)"}
    k0 = summary["shots"]["0"]
    assert k0["models"]["model"]["mean"] == pytest.approx((-1.0 - 1.4 - 0.9) / 3)
    # sample sd: deviations 0.1, -0.3, 0.2 from -1.1
    assert k0["models"]["model"]["sd"] == pytest.approx(math.sqrt((0.01 + 0.09 + 0.04) / 2))
    # paired: the model minus withheld metadata is +0.2, -0.1, +0.1 on the three splits
    margin = k0["margins"]["no_metadata"]
    assert margin["values"] == pytest.approx({"0": 0.2, "1": -0.1, "3": 0.1})
    assert margin["mean"] == pytest.approx(0.2 / 3) and margin["wins"] == 2 and margin["splits"] == 3
    assert margin["sd"] == pytest.approx(statistics.stdev([0.2, -0.1, 0.1]))
    # at K = 1 the mixed model misses split 3: two pairs, -0.1 and +0.2
    k1 = summary["shots"]["1"]
    assert k1["models"]["mixed_model"]["splits"] == 2
    assert k1["margins"]["mixed_model"]["values"] == pytest.approx({"0": -0.1, "1": 0.2})
    assert k1["margins"]["mixed_model"]["wins"] == 1
    assert k1["num_groups"] == {"0": 5, "1": 4, "3": 5}
    # Monte Carlo error at K = 0: differences 0.03, -0.04, 0 -> sqrt(mean d^2 / 2)
    assert k0["mc_error"]["value"] == pytest.approx(math.sqrt((0.03 ** 2 + 0.04 ** 2) / 3 / 2))
    assert k0["worst_group_loglik"] == {"values": {"0": -3.0, "1": -4.5}, "min": -4.5, "split": 1, "group": "g-4.5"}
    assert "worst_group_loglik" not in k1
    assert k0["worst_group_by_model"] == {"model": -4.5} and "worst_group_by_model" not in k1
    json.dumps(summary, allow_nan=False)  # plain JSON: an sd over one split would be None


def test_the_worst_group_of_every_model_is_its_lowest_over_splits():
    runs = {s: split_metrics({"0": -1.0}, {"0": -1.0}, {"0": -1.0}, {"0": 5}, worst=w)
            for s, w in ((0, -3.0), (1, -2.0))}
    runs[0]["baselines"]["mixed_model"]["shots"]["0"]["worst_group_loglik"] = -7.0
    runs[1]["baselines"]["mixed_model"]["shots"]["0"]["worst_group_loglik"] = -1.5
    assert summarize(runs)["shots"]["0"]["worst_group_by_model"] == {"model": -3.0, "mixed_model": -7.0}


def test_one_split_has_no_sd_and_the_table_says_so():
    summary = summarize({7: RUNS[0]}, {7: RESCORED[0]})
    assert summary["shots"]["0"]["models"]["model"]["sd"] is None
    table = format_comparison(summary)
    assert "-1.000 ± n/a" in table and "+0.200 ± n/a (1/1)" in table and "(seeds 7)" in table
    assert "worst group" in table and "-3.000 (split 7, group g-3.0)" in table


def test_the_table_has_a_line_per_k_and_model_with_margins_and_mc_error():
    lines = format_comparison(summarize(RUNS, RESCORED)).splitlines()
    model_k0 = next(line for line in lines if line.split()[:3] == ["0", "5-6", "model"])
    assert "-1.100 ± 0.265" in model_k0 and f"{math.sqrt((0.03 ** 2 + 0.04 ** 2) / 6):.4f}" in model_k0
    withheld = lines[lines.index(model_k0) + 1]
    assert "model, metadata withheld" in withheld and "+0.067 ± 0.153 (2/3)" in withheld
    assert "every test group with more than K rows" in "\n".join(lines)


def test_mc_error_of_two_scorings():
    first, second = {"0": 1.0, "1": 2.0}, {"0": 1.2, "1": 1.9, "9": 5.0}
    result = mc_error(first, second)
    assert result["value"] == pytest.approx(math.sqrt((0.04 + 0.01) / 2 / 2))
    assert result["values"] == pytest.approx({"0": 0.2 / math.sqrt(2), "1": 0.1 / math.sqrt(2)})


def test_a_margin_pairs_the_splits_both_models_have():
    margin = paired_margin({"a": 1.0, "b": 2.0, "c": 0.5}, {"b": 2.5, "c": 0.0, "d": 9.0})
    assert margin["values"] == {"b": -0.5, "c": 0.5} and margin["wins"] == 1 and margin["mean"] == 0.0


# -- end to end ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("compare") / "run")
    argv = ["compare", *DATA, "--metadata", "none", "--split-seeds", "0-1", "--shots", "0,2,5", "--out", out, *TINY]
    assert main(argv) == 0
    return out, argv


def read_json(path):
    with open(path) as f:
        return json.load(f)


def test_compare_writes_the_comparison_of_its_splits(compared, capsys):
    out, _ = compared
    for name in ("comparison.json", "comparison.csv", "comparison.png", "split-0/metrics.json",
                 "split-1/model.pt", f"split-1/{RESCORE_FILE}"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    summary = read_json(os.path.join(out, "comparison.json"))
    runs = {s: read_json(os.path.join(out, f"split-{s}", "metrics.json")) for s in (0, 1)}
    assert summary["splits"] == [0, 1] and list(summary["shots"]) == ["0", "2", "5"]
    assert set(summary["labels"]) == {"model", "mixed_model", "pooled"}
    for k, entry in summary["shots"].items():
        model = [runs[s]["shots"][k]["loglik"] for s in (0, 1)]
        pooled = [runs[s]["baselines"]["pooled"]["shots"][k]["loglik"] for s in (0, 1)]
        assert entry["models"]["model"]["mean"] == pytest.approx(statistics.fmean(model))
        assert entry["margins"]["pooled"]["mean"] == pytest.approx(statistics.fmean(model) - statistics.fmean(pooled))
        assert entry["num_groups"] == {str(s): runs[s]["shots"][k]["num_groups"] for s in (0, 1)}
        assert 0 < entry["mc_error"]["value"] < 0.5  # two seeds, 32 samples: differs, but not by much
    assert runs[0]["data"]["split"]["split_seed"] == 0 and runs[1]["data"]["split"]["split_seed"] == 1
    assert "standardized" in runs[0]["elbo_units"]
    rows = (pandas.read_csv(os.path.join(out, "comparison.csv")))
    assert tuple(rows.columns) == CSV_COLUMNS and len(rows) == 3 * 3
    assert rows.loc[rows["model"] == "model", "margin_mean"].isna().all()
    assert rows.loc[rows["model"] == "pooled", "splits_won"].between(0, 2).all()


def test_the_second_scoring_reproduces_the_first_with_the_training_seed(compared):
    """The same groups, support draws and model: only the prediction seed makes the two scores differ."""
    out, _ = compared
    folder = os.path.join(out, "split-1")
    metrics = read_json(os.path.join(folder, "metrics.json"))
    family = TabularTasks.from_csv(SAMPLE, group="site", x=["dose"], y=["response"], split_seed=1)
    again = rescore(folder, family, metrics, seed=metrics["train"]["seed"])
    for k, entry in metrics["shots"].items():
        assert again[k]["loglik"] == pytest.approx(entry["loglik"], abs=1e-6), k
    other = read_json(os.path.join(folder, RESCORE_FILE))
    assert other["seed"] == metrics["train"]["seed"] + 1
    assert any(other["shots"][k]["loglik"] != entry["loglik"] for k, entry in metrics["shots"].items())


def test_a_rerun_reads_finished_splits_back(compared, capsys):
    out, argv = compared
    stamps = {name: os.stat(os.path.join(out, name)).st_mtime_ns
              for name in ("split-0/model.pt", "split-1/metrics.json", f"split-0/{RESCORE_FILE}")}
    before = read_json(os.path.join(out, "comparison.json"))
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished, read back") == 2 and "trained" not in printed and "note:" not in printed
    assert {name: os.stat(os.path.join(out, name)).st_mtime_ns for name in stamps} == stamps
    assert read_json(os.path.join(out, "comparison.json")) == before
    assert "model minus it" in printed and "MC error" in printed


def test_a_rerun_with_other_shots_evaluates_again_without_training(compared, tmp_path, capsys):
    out = str(tmp_path / "copy")
    shutil.copytree(compared[0], out)
    argv = [out if a == compared[0] else a for a in compared[1]]
    argv[argv.index("--shots") + 1] = "0,1"
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("other shots options") == 2 and printed.count("trained 0 steps") == 2
    assert list(read_json(os.path.join(out, "comparison.json"))["shots"]) == ["0", "1"]


# -- the plot of one fit -----------------------------------------------------------------------------

def test_loglik_vs_k_ticks_the_evaluated_k_and_names_the_shuffled_curve(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plots.plt, "close", figures.append)
    metrics = {"shots": {k: {"loglik": -1.0 - int(k) / 10} for k in ("0", "1", "3")},
               "shuffled_metadata": {"shots": {k: {"loglik": -1.2} for k in ("0", "1", "3")}}}
    plots.plot_metrics_vs_shots({"model": metrics}, str(tmp_path / "k.png"), ylabel="a long label\nin two lines",
                                tasks="groups")
    ax = figures[0].axes[0]
    assert list(ax.get_xticks()) == [0, 1, 3]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["model", "model, metadata shuffled across groups"]
    monkeypatch.undo()
    plots.plt.close(figures[0])


# -- bad input -----------------------------------------------------------------------------------------

@dataclasses.dataclass
class Case:
    """``argv`` after the command and its data; ``outcome`` "error" (``expected``: a fragment of the one
    error line) or "handled" (``expected``: what ``parsed`` reads from the parsed flags)."""

    id: str
    command: str
    argv: list
    outcome: str
    expected: object
    parsed: object = None


def shots_of(args):
    return evaluation_config(args, make_fit_family(args)).shots


def seeds_of(args):
    return int_list(args.split_seeds, "--split-seeds")


CASES = [
    Case("shots-word", "fit", ["--shots", "one"], "error", "--shots takes integers >= 0 or ranges A-B"),
    Case("shots-negative", "fit", ["--shots", "-1"], "error", "got '-1'"),
    Case("shots-empty", "fit", ["--shots", ""], "error", "got ''"),
    Case("shots-decimal", "fit", ["--shots", "0,1.5"], "error", "got '1.5'"),
    Case("shots-twice", "fit", ["--shots", "0,1,1"], "error", "names [1] more than once"),
    Case("shots-backwards-range", "fit", ["--shots", "5-2"], "error", "runs backwards; write 2-5"),
    Case("shots-too-many", "fit", ["--shots", "0-5000"], "error", "more than 1000 values"),
    Case("shots-none-fits-the-groups", "fit", ["--shots", "40"], "error", "no K of [40] can be evaluated"),
    Case("eval-tasks-on-a-data-set", "fit", ["--eval-tasks", "8"], "error", "a data set is scored on all its test"),
    Case("shots-unsorted", "fit", ["--shots", "5,0,2"], "handled", (0, 2, 5), shots_of),
    Case("shots-range", "fit", ["--shots", "0-2,10"], "handled", (0, 1, 2, 10), shots_of),
    Case("shots-default", "fit", [], "handled", (0, 1, 2, 5, 10), shots_of),
    Case("compare-seeds-word", "compare", ["--split-seeds", "all"], "error", "--split-seeds takes integers"),
    Case("compare-seeds-twice", "compare", ["--split-seeds", "0-2,2"], "error", "names [2] more than once"),
    Case("compare-seeds-backwards", "compare", ["--split-seeds", "4-0"], "error", "runs backwards"),
    Case("compare-split-column", "compare", ["--split-column", "site"], "error", "compare draws random splits"),
    Case("compare-eval-tasks", "compare", ["--eval-tasks", "8"], "error", "--eval-tasks 8 sets how many tasks"),
    Case("compare-seeds-list", "compare", ["--split-seeds", "4,0"], "handled", [0, 4], seeds_of),
    Case("compare-seeds-default", "compare", [], "handled", [0, 1, 2, 3, 4], seeds_of),
]
NO_DATA = [
    Case("compare-without-data", "compare", [], "error", "compare needs a data set"),
    Case("compare-a-sampled-family", "compare", ["--tasks", "sinusoid"], "error", "sampled family"),
]


@pytest.mark.parametrize("case", CASES + NO_DATA, ids=lambda c: c.id)
def test_bad_input(case, tmp_path, capsys):
    data = DATA if case not in NO_DATA else []
    out = str(tmp_path / "run")
    argv = [case.command, *data, "--out", out, *TINY, *case.argv]
    if case.outcome == "handled":
        assert case.parsed(build_parser().parse_args(argv)) == case.expected
        return
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and case.expected in err[0], err
    assert not os.path.exists(os.path.join(out, "model.pt")) and not os.path.exists(os.path.join(out, "split-0"))


def test_fit_tasks_of_a_data_set_takes_the_split_seed():
    args = build_parser().parse_args(["fit", "--tasks", "co2", "--split-seed", "3", "--out", "x"])
    assert make_fit_family(args).split_options["split_seed"] == 3
