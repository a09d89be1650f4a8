"""Bad input data, one table: labels that look like numbers, huge and far-out values, files that
are not UTF-8 CSV, and wrong arguments to the Python API.

Each case is ``"error"`` (the command line's one ``error:`` line and exit status 2, or a
ValueError / OSError from Python, naming the problem) or ``"handled"`` (the right result,
checked). Command-line cases run ``main(argv)`` in-process; the model behind ``predict`` is
untrained and seeded (saved with the sample data's schema), so the checks are about the
plumbing; one tiny ``fit --data`` (2 steps) runs end to end.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable

import pytest
import torch

pandas = pytest.importorskip("pandas")

from hierarchical_meta import (  # noqa: E402
    FittedModel,
    HierarchicalMetaModel,
    ModelConfig,
    SinusoidTasks,
    TabularTasks,
    TrainConfig,
    run_fit,
)
from hierarchical_meta.__main__ import main  # noqa: E402
from hierarchical_meta.tasks.synthetic import grouped_frame, new_sites_frame  # noqa: E402

COLUMNS = dict(group="site", x="dose", y="response", metadata=["altitude", "region"])
FLAGS = ["--group", "site", "--x", "dose", "--y", "response", "--metadata", "altitude,region"]
TINY = ["--steps", "2", "--hidden", "8", "--latent-dim", "2", "--batch-tasks", "8", "--num-samples", "16",
        "--eval-draws", "1", "--no-progress"]
PARQUET = b"PAR1\x15\x04\x15\x10\x15\x14L\x15\x02\x15\x00\x12\x00\x00"
XLSX = b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00b\xee\x9dh^\x01\x00\x00"


@dataclasses.dataclass
class Case:
    """``run(tmp, model)`` gives argv (CLI) or does the call (API); ``expect``: fragments of the
    error line or message ("error"), or of the output ("handled"); ``check(tmp, model, result)``
    checks a handled case's result (a CLI case's: its exit status)."""

    id: str
    route: str  # "cli" or "api"
    outcome: str  # "error" or "handled"
    run: Callable
    expect: tuple[str, ...] = ()
    check: Callable | None = None


# -- inputs ---------------------------------------------------------------------------------------

def data_file(tmp, edit=None, text: bytes | None = None, name: str = "sites.csv") -> str:
    """The sample sites as a CSV file, edited (``edit(frame)``), or the bytes ``text``."""
    path = tmp / name
    if text is not None:
        path.write_bytes(text)
        return str(path)
    frame = grouped_frame(30)
    if edit:
        edit(frame)
    frame.to_csv(path, index=False)
    return str(path)


def set_cell(row: int, column: str, value):
    def edit(frame):
        frame[column] = frame[column].astype(object)
        frame.loc[row, column] = value
    return edit


def numbered_sites(frame):
    """Sites named by numbers, two of them ``007`` and ``7``: different groups."""
    codes = {site: str(100 + i) for i, site in enumerate(sorted(frame["site"].unique()))}
    codes["s001"], codes["s002"] = "007", "7"
    frame["site"] = frame["site"].map(codes)


def tasks_file(tmp, labels=("new1", "new2", "new3"), edit=None, text: bytes | None = None) -> str:
    """New sites as a task file (0, 3 and 8 support rows), named ``labels``, edited."""
    if text is not None:
        return data_file(tmp, text=text, name="new.csv")
    frame = new_sites_frame(num_support=(3, 0, 8), num_query=2, seed=1)
    frame["task"] = frame["task"].map(dict(zip(["new1", "new2", "new3"], labels, strict=True)))
    if edit:
        edit(frame)
    path = tmp / "new.csv"
    frame.to_csv(path, index=False)
    return str(path)


def predict(tmp, model, tasks: str, out: str = "pred.csv") -> list[str]:
    return ["predict", "--checkpoint", model, "--tasks-file", tasks, "--out", str(tmp / out), "--num-samples", "16",
            "--no-progress"]


def fit_data(tmp, data: str) -> list[str]:
    return ["fit", "--data", data, *FLAGS, "--out", str(tmp / "run"), *TINY]


# -- checks of handled cases ------------------------------------------------------------------------

def labels_kept_apart(tmp, model, result):
    """007 and 7 are two tasks: the same predictions as for the labels a and b, 007 written as such."""
    rows = pandas.read_csv(tmp / "pred.csv", dtype={"task": str})
    assert rows["task"].tolist() == ["007", "007", "7", "7", "x", "x"]
    assert main(predict(tmp, model, tasks_file(tmp, ("a", "b", "x")), "plain.csv")) == 0
    plain = pandas.read_csv(tmp / "plain.csv")
    assert rows.drop(columns="task").equals(plain.drop(columns="task"))


def groups_kept_apart(tmp, model, tasks):
    assert "007" in tasks.group_ids and "7" in tasks.group_ids and len(tasks.group_ids) == 30
    assert sorted(tasks.group_ids, key=lambda g: (int(g), g)) == tasks.group_ids  # numbers in order


def fit_noted_the_outlier_and_kept_the_groups(tmp, model, result):
    with open(tmp / "run" / "metrics.json") as f:
        data = json.load(f)["data"]
    assert sum(data["groups"].values()) == 30  # 007 and 7 were not merged
    assert any("line 5, column dose: 5000 lies" in note for note in data["notes"])


def predicted_text_labels(tmp, model, frame):
    assert frame["task"].tolist() == ["007", "007", "7", "7", "x", "x"]
    assert list(frame.columns) == ["task", "dose", "response_mean", "response_q05", "response_q95"]


def one_group_for_7_and_7_0(tmp, model, tasks):
    assert tasks.group_ids.count("7") == 1 and "007" in tasks.group_ids and "7.0" not in tasks.group_ids


def outlier_noted(tmp, model, tasks):
    assert any("row 4, column dose: 5000 lies" in note and "robust sds" in note for note in tasks.notes), tasks.notes


# -- the API calls ----------------------------------------------------------------------------------

def frame_with(edit=None):
    frame = grouped_frame(30)
    if edit:
        edit(frame)
    return frame


def mixed_labels(frame):
    """Sites 7 (a number), 7.0 (a float: the same label) and "007" (text: another)."""
    first = frame[frame["site"] == "s001"].iloc[0]
    frame.loc[frame["site"] == "s002", ["altitude", "region"]] = [first["altitude"], first["region"]]
    frame["site"] = frame["site"].astype(object)
    frame.loc[frame["site"] == "s001", "site"] = 7
    frame.loc[frame["site"] == "s002", "site"] = 7.0
    frame.loc[frame["site"] == "s003", "site"] = "007"


def fitted(model: str) -> FittedModel:
    return FittedModel.load(os.path.dirname(model), num_samples=16)


def new_frame(edit=None, labels=("new1", "new2", "new3")):
    frame = new_sites_frame(num_support=(3, 0, 8), num_query=2, seed=1)
    frame["task"] = frame["task"].map(dict(zip(["new1", "new2", "new3"], labels, strict=True)))
    if edit:
        edit(frame)
    return frame


def run_fit_with(family, **change):
    config = ModelConfig(**{"hidden": 8, "latent_dim": 2, **change})
    return lambda tmp, model: run_fit(family, config, TrainConfig(steps=2), str(tmp / "run"), log=None, progress=False)


CASES = [
    # labels are text
    Case("predict-task-labels-007-and-7", "cli", "handled",
         lambda t, m: predict(t, m, tasks_file(t, ("007", "7", "x"))), ("predicted 6 query points of 3 task(s)",),
         labels_kept_apart),
    Case("fit-data-group-labels-007-and-7", "api", "handled",
         lambda t, m: TabularTasks.from_csv(data_file(t, numbered_sites), **COLUMNS), check=groups_kept_apart),
    Case("fit-data-labels-and-an-outlier-end-to-end", "cli", "handled",
         lambda t, m: fit_data(t, data_file(t, lambda f: (numbered_sites(f), set_cell(3, "dose", 5000)(f)))),
         ("note: line 5, column dose: 5000 lies", "robust sds"), fit_noted_the_outlier_and_kept_the_groups),
    Case("frame-labels-7-and-7.0-are-one-group", "api", "handled",
         lambda t, m: TabularTasks.from_frame(frame_with(mixed_labels), **COLUMNS), check=one_group_for_7_and_7_0),
    Case("fitted-predict-labels-as-text", "api", "handled",
         lambda t, m: fitted(m).predict(new_frame(labels=("007", 7, "x"))), check=predicted_text_labels),
    # magnitudes and outliers
    Case("fit-data-huge-dose", "cli", "error", lambda t, m: fit_data(t, data_file(t, set_cell(3, "dose", 1e30))),
         ("line 5, column dose: 1e+30 is out of range", "beyond ±1e+06")),
    Case("fit-data-huge-metadata", "cli", "error",
         lambda t, m: fit_data(t, data_file(t, set_cell(0, "altitude", -3e7))), ("column altitude", "out of range")),
    Case("fit-data-infinite-metadata", "cli", "error",
         lambda t, m: fit_data(t, data_file(t, set_cell(0, "altitude", "inf"))), ("line 2, column altitude: inf is",)),
    Case("frame-huge-response", "api", "error",
         lambda t, m: TabularTasks.from_frame(frame_with(set_cell(8, "response", 2e6)), **COLUMNS),
         ("row 8, column response: 2e+06 is out of range",)),
    Case("frame-outlier-is-a-note", "api", "handled",
         lambda t, m: TabularTasks.from_frame(frame_with(set_cell(4, "dose", 5000.0)), **COLUMNS), check=outlier_noted),
    Case("predict-huge-dose", "cli", "error",
         lambda t, m: predict(t, m, tasks_file(t, edit=set_cell(1, "dose", 5e8))),
         ("line 3, column dose", "out of range")),
    Case("fitted-predict-huge-altitude", "api", "error",
         lambda t, m: fitted(m).predict(new_frame(set_cell(0, "altitude", 1e9))), ("row 0, column altitude",)),
    # files that are not UTF-8 CSV
    Case("fit-data-parquet", "cli", "error", lambda t, m: fit_data(t, data_file(t, text=PARQUET)),
         ("sites.csv: this is a Parquet file", "save it as UTF-8 CSV")),
    Case("fit-data-xlsx", "cli", "error", lambda t, m: fit_data(t, data_file(t, text=XLSX)),
         ("sites.csv: this is a zip archive (an Excel .xlsx file", "UTF-8 CSV")),
    Case("fit-data-latin-1", "cli", "error",
         lambda t, m: fit_data(t, data_file(t, text="site,dose,response,altitude,region\nb\u00e9,1,2,3,a\n"
                                                 .encode("latin-1"))),
         ("sites.csv: not UTF-8 text (byte 0xe9 on line 2", "save it as UTF-8 CSV")),
    Case("fit-data-ragged-row", "cli", "error",
         lambda t, m: fit_data(t, data_file(t, text=b"site,dose,response\na,1,2\na,1,2,3\n")),
         ("sites.csv, line 3: the row does not have the header's 3 fields (it has 4)",)),
    Case("fit-data-empty-file", "cli", "error", lambda t, m: fit_data(t, data_file(t, text=b"")),
         ("the data lack column(s) ['site',",)),
    Case("predict-tasks-file-parquet", "cli", "error", lambda t, m: predict(t, m, tasks_file(t, text=PARQUET)),
         ("new.csv: this is a Parquet file", "UTF-8 CSV")),
    Case("predict-tasks-file-latin-1", "cli", "error",
         lambda t, m: predict(t, m, tasks_file(t, text="task,role,dose\n\u00e9,query,1\n".encode("cp1252"))),
         ("new.csv: not UTF-8 text", "UTF-8 CSV")),
    Case("from-csv-xlsx", "api", "error",
         lambda t, m: TabularTasks.from_csv(data_file(t, text=XLSX), **COLUMNS), ("sites.csv: this is a zip",)),
    # wrong arguments and frames from Python
    Case("frame-x-not-a-column-name", "api", "error",
         lambda t, m: TabularTasks.from_frame(frame_with(), group="site", x=3, y="response"),
         ("x must be a column name or a list of column names (text), got 3",)),
    Case("frame-group-a-list", "api", "error",
         lambda t, m: TabularTasks.from_frame(frame_with(), **{**COLUMNS, "group": ["site"]}),
         ("group must name one column",)),
    Case("frame-misspelled-column", "api", "error",
         lambda t, m: TabularTasks.from_frame(frame_with(), **{**COLUMNS, "x": "dosage"}),
         ("the data lack column(s) ['dosage']",)),
    Case("frame-empty", "api", "error", lambda t, m: TabularTasks.from_frame(frame_with().iloc[:0], **COLUMNS),
         ("the data have no rows",)),
    Case("frame-not-a-data-frame", "api", "error", lambda t, m: TabularTasks.from_frame([[1, 2]], **COLUMNS),
         ("frame must be a pandas DataFrame, got list",)),
    Case("frame-text-in-y", "api", "error",
         lambda t, m: TabularTasks.from_frame(frame_with(set_cell(2, "response", "n/a")), **COLUMNS),
         ("row 2, column response: 'n/a' is not a number",)),
    Case("frame-fraction-as-text", "api", "error",
         lambda t, m: TabularTasks.from_frame(frame_with(), **COLUMNS, val_fraction="0.1"), ("val_fraction",)),
    Case("frame-split-seed-as-text", "api", "error",
         lambda t, m: TabularTasks.from_frame(frame_with(), **COLUMNS, split_seed="a"),
         ("split_seed must be an integer, got 'a'",)),
    Case("run-fit-on-a-data-frame", "api", "error",
         lambda t, m: run_fit(frame_with(), ModelConfig(), TrainConfig(steps=2), str(t / "run"), log=None),
         ("family must be a TaskFamily", "got DataFrame")),
    Case("run-fit-eval-config-of-the-wrong-type", "api", "error",
         lambda t, m: run_fit(SinusoidTasks(), ModelConfig(), TrainConfig(), str(t / "run"), eval_config={"shots": 1}),
         ("eval_config must be an EvalConfig or None",)),
    Case("run-fit-model-of-other-dims", "api", "error", run_fit_with(SinusoidTasks(), metadata_dim=3),
         ("task family 'sinusoid' has (x, y, metadata) dims (1, 1, 2)",)),
    Case("fitted-predict-misspelled-column", "api", "error",
         lambda t, m: fitted(m).predict(new_frame().rename(columns={"dose": "Dose"})), ("missing column(s) ['dose']",)),
    Case("fitted-predict-empty-frame", "api", "error", lambda t, m: fitted(m).predict(new_frame().iloc[:0]),
         ("no rows",)),
    Case("fitted-predict-not-a-frame", "api", "error", lambda t, m: fitted(m).predict({"task": ["a"]}),
         ("the tasks must be a pandas DataFrame, got dict",)),
    Case("fitted-predict-text-in-x", "api", "error",
         lambda t, m: fitted(m).predict(new_frame(set_cell(1, "dose", "seven"))),
         ("row 1, column dose: 'seven' is not a number",)),
    Case("fitted-predict-task-missing", "api", "error",
         lambda t, m: fitted(m).predict(new_frame(set_cell(0, "task", None))), ("row 0: the task column is empty",)),
    Case("fitted-load-missing-run", "api", "error", lambda t, m: FittedModel.load(str(t / "nope")),
         ("checkpoint", "does not exist")),
    Case("fitted-of-a-classifier", "api", "error",
         lambda t, m: FittedModel(HierarchicalMetaModel(likelihood="categorical", num_classes=3),
                                  SinusoidTasks().schema),
         ("classifier",)),
]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    """An untrained model (seeded) saved with the sample sites' schema: what ``predict`` reads."""
    tasks = TabularTasks.from_frame(grouped_frame(30), **COLUMNS)
    torch.manual_seed(0)
    meta_model = HierarchicalMetaModel(ModelConfig(x_dim=tasks.x_dim, y_dim=tasks.y_dim,
                                                   metadata_dim=tasks.metadata_dim, hidden=8, latent_dim=2))
    path = str(tmp_path_factory.mktemp("model") / "model.pt")
    meta_model.to_checkpoint(extra={"schema": tasks.schema.to_dict()}).write(path)
    return path


def run_case(case: Case, tmp, model, capsys):
    """(exit status or None, output) of a CLI case; (result or exception, message) of an API case."""
    if case.route == "cli":
        code = main(case.run(tmp, model))
        captured = capsys.readouterr()
        return code, captured.out + captured.err
    try:
        return case.run(tmp, model), ""
    except (ValueError, OSError) as error:
        return error, str(error)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_case(case, tmp_path, model, capsys):
    result, text = run_case(case, tmp_path, model, capsys)
    if case.outcome == "error":
        lines = [line for line in text.splitlines() if line.startswith("error:")]
        if case.route == "cli":
            assert result == 2 and len(lines) == 1 and "Traceback" not in text, text
            text = lines[0]
        else:
            assert isinstance(result, (ValueError, OSError)), result
        assert "\n" not in text.strip()
        for fragment in case.expect:
            assert fragment in text, (fragment, text)
        assert not os.path.exists(tmp_path / "run" / "model.pt") and not os.path.exists(tmp_path / "pred.csv")
        return
    assert not isinstance(result, Exception), text
    assert case.route == "api" or result == 0, text
    for fragment in case.expect:
        assert fragment in text, (fragment, text)
    case.check(tmp_path, model, result)


def test_the_table_covers_both_routes_and_outcomes():
    kinds = {(case.route, case.outcome) for case in CASES}
    assert kinds == {("cli", "error"), ("cli", "handled"), ("api", "error"), ("api", "handled")}
    assert len({case.id for case in CASES}) == len(CASES)
    assert all(case.check is not None for case in CASES if case.outcome == "handled")
