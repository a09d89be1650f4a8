"""A user's grouped data as tasks: splits, standardization, encodings, sampling, bad input.

Data come from :mod:`hierarchical_meta.tasks.synthetic` (sites with a known hierarchy),
generated on the fly and seeded; frames are small, so every test runs in well under a second
except the mixed-model fits.
"""

import filecmp
import importlib.util
import json
import math
import pathlib

import pytest
import torch

pandas = pytest.importorskip("pandas")

from hierarchical_meta.baselines import MixedModel, PooledRegression  # noqa: E402
from hierarchical_meta.bound import elbo_terms  # noqa: E402
from hierarchical_meta.guide import AmortizedGuide  # noqa: E402
from hierarchical_meta.model import GenerativeModel  # noqa: E402
from hierarchical_meta.networks import MLP  # noqa: E402
from hierarchical_meta.predictive import MixturePredictive, point_metrics  # noqa: E402
from hierarchical_meta.taskfile import prediction_frame, read_tasks, tasks_from_frame  # noqa: E402
from hierarchical_meta.tasks import SPLITS, TabularTasks  # noqa: E402
from hierarchical_meta.tasks.schema import Column, TabularSchema  # noqa: E402
from hierarchical_meta.tasks.synthetic import grouped_frame, new_sites_frame  # noqa: E402

COLUMNS = dict(group="site", x="dose", y="response", metadata=["altitude", "region"])


def sites(num_groups=20, seed=0, **kwargs):
    return TabularTasks.from_frame(grouped_frame(num_groups, seed=seed), **COLUMNS, **kwargs)


@pytest.fixture(scope="module")
def family():
    return sites()


def raw_rows(frame, family, group_index):
    """The user's (dose, response) rows of one stored group, as float64 [n, 2]."""
    rows = frame[frame["site"] == family.group_ids[group_index]]
    return torch.tensor(rows[["dose", "response"]].to_numpy(dtype=float))


# -- schema ---------------------------------------------------------------------------------

def test_schema_round_trips_through_plain_data_and_a_weights_only_checkpoint(family, tmp_path):
    data = family.schema.to_dict()
    assert json.loads(json.dumps(data)) == data  # str/int/float/list/dict only
    assert data["metadata"][1] == {"name": "region", "kind": "categorical", "levels": ["east", "north", "south"]}
    assert TabularSchema.from_dict(data) == family.schema
    torch.save({"schema": data}, tmp_path / "ckpt.pt")
    loaded = torch.load(tmp_path / "ckpt.pt", weights_only=True)["schema"]
    assert TabularSchema.from_dict(loaded) == family.schema
    assert family.schema.encoded_names("metadata") == ["altitude", "region=east", "region=north", "region=south"]
    assert (family.x_dim, family.y_dim, family.metadata_dim) == (1, 1, 4)
    assert family.schema.linear_columns("metadata") == [0, 2, 3]
    with pytest.raises(ValueError, match="version"):
        TabularSchema.from_dict({"group": "site"})
    with pytest.raises(ValueError, match="std > 0"):
        Column("dose", mean=0.0, std=0.0)


# -- splits ---------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 7, 123])
def test_groups_never_rows_are_split_disjointly_for_any_seed(seed):
    frame = grouped_frame(20)
    tasks = TabularTasks.from_frame(frame, **COLUMNS, split_seed=seed)
    parts = [set(tasks.groups(s)) for s in SPLITS]
    assert [len(p) for p in parts] == [13, 3, 4]
    assert set.union(*parts) == set(frame["site"]) and sum(map(len, parts)) == 20
    assert int(tasks.group_sizes.sum()) == len(frame)
    for split in SPLITS:  # every row drawn from a split belongs to that split's groups
        batch = tasks.sample(50, 3, 3, split=split, generator=torch.Generator().manual_seed(seed))
        assert set(batch.params["group_index"].tolist()) == set(tasks.split_indices[split].tolist())
    other = TabularTasks.from_frame(frame, **COLUMNS, split_seed=seed + 1)
    assert set(other.groups("test")) != parts[2]


def test_split_column_assigns_whole_groups():
    frame = grouped_frame(12)
    ids = sorted(frame["site"].unique())
    fold = {g: "test" if i < 2 else "val" if i < 4 else "train" for i, g in enumerate(ids)}
    frame["fold"] = frame["site"].map(fold)
    tasks = TabularTasks.from_frame(frame, **COLUMNS, split_column="fold")
    assert tasks.groups("test") == ids[:2] and tasks.groups("val") == ids[2:4] and tasks.groups("train") == ids[4:]
    bad = frame.copy()
    bad.loc[bad.index[bad["site"] == ids[5]][0], "fold"] = "test"  # one row of a training group
    with pytest.raises(ValueError, match=f"varies within group '{ids[5]}'"):
        TabularTasks.from_frame(bad, **COLUMNS, split_column="fold")
    bad = frame.replace({"fold": {"val": "validation"}})
    with pytest.raises(ValueError, match="holds 'validation' for group"):
        TabularTasks.from_frame(bad, **COLUMNS, split_column="fold")
    bad = frame.replace({"fold": {"val": "train"}})
    with pytest.raises(ValueError, match=r"no group in \['val'\]"):
        TabularTasks.from_frame(bad, **COLUMNS, split_column="fold")


def test_standardization_is_fitted_on_training_groups_only(family):
    frame = grouped_frame(20)
    train = family.split_indices["train"]
    rows = torch.cat([torch.arange(family.offsets[c], family.offsets[c + 1]) for c in train.tolist()])
    for v in (family.x[rows].double(), family.y[rows].double(), family.metadata[train, :1].double()):
        assert torch.allclose(v.mean(0), torch.zeros(1, dtype=v.dtype), atol=1e-5)  # float32 storage
        assert torch.allclose(v.std(0), torch.ones(1, dtype=v.dtype), atol=1e-5)
    changed = frame.copy()
    test_sites = changed["site"].isin(family.groups("test"))
    changed.loc[test_sites, "response"] *= 100
    changed.loc[test_sites, "dose"] += 50
    changed.loc[test_sites, "altitude"] = 9000.0
    changed.loc[test_sites, "region"] = "west"
    other = TabularTasks.from_frame(changed, **COLUMNS)
    assert other.schema == family.schema
    assert any("'west'" in note and "validation or test" in note for note in other.notes)


# -- units ----------------------------------------------------------------------------------

def test_stored_rows_decode_to_the_users_values(family):
    frame = grouped_frame(20)
    batch = family.all_tasks(0, split="test", generator=torch.Generator().manual_seed(0))
    for t in range(batch.num_tasks):
        c = int(batch.params["group_index"][t])
        keep = batch.query_mask[t]
        dose = batch.x_query[t, keep, 0].double() * family.schema.x[0].std + family.schema.x[0].mean
        response = family.schema.y_to_user(batch.y_query[t, keep].double())[:, 0]
        got = sorted(zip(dose.tolist(), response.tolist(), strict=True))
        want = sorted(map(tuple, raw_rows(frame, family, c).tolist()))
        assert torch.allclose(torch.tensor(got), torch.tensor(want), atol=1e-4)  # float32 round trip


def test_predictive_and_log_density_in_user_units(family):
    # log p(y) = log p(z) - log s for y = μ + s z: two routes, float64 round-off tolerance
    g = torch.Generator().manual_seed(0)
    pred = MixturePredictive(torch.randn(3, 4, generator=g, dtype=torch.float64),
                             torch.randn(3, 4, 5, 1, generator=g, dtype=torch.float64),
                             torch.rand(3, 4, 5, 1, generator=g, dtype=torch.float64) + 0.1)
    z = torch.randn(3, 5, 1, generator=g, dtype=torch.float64)
    schema = family.schema
    y = schema.y_to_user(z)
    assert torch.allclose(schema.y_from_user(y), z, atol=1e-12)
    user = schema.predictive_to_user(pred)
    jacobian = sum(math.log(c.std) for c in schema.y)  # log p(y) = log p(z) - Σ_j log s_j
    assert torch.allclose(user.log_prob(y), pred.log_prob(z) - jacobian, atol=1e-10)
    assert torch.allclose(user.predictive_mean(), schema.y_to_user(pred.predictive_mean()), atol=1e-10)
    assert torch.allclose(user.quantile(0.95), schema.y_to_user(pred.quantile(0.95)), atol=1e-6)


# -- sampling -------------------------------------------------------------------------------

def test_sample_shapes_masks_and_real_rows(family):
    frame = grouped_frame(20)
    batch = family.sample(8, 4, 6, split="train", generator=torch.Generator().manual_seed(3))
    assert batch.x_support.shape == (8, 4, 1) and batch.x_query.shape == (8, 6, 1)
    assert batch.metadata.shape == (8, 4)
    sizes = batch.params["group_size"]
    assert torch.equal(batch.support_mask.sum(1), sizes.clamp(max=4))
    assert torch.equal(batch.query_mask.sum(1), (sizes - 4).clamp(min=0, max=6))
    again = family.sample(8, 4, 6, split="train", generator=torch.Generator().manual_seed(3))
    assert torch.equal(batch.x_query, again.x_query) and torch.equal(batch.metadata, again.metadata)
    for t in range(8):  # distinct real rows of the task's own group (slow reference: the frame)
        c = int(batch.params["group_index"][t])
        x = torch.cat([batch.x_support[t, batch.support_mask[t]], batch.x_query[t, batch.query_mask[t]]])
        y = torch.cat([batch.y_support[t, batch.support_mask[t]], batch.y_query[t, batch.query_mask[t]]])
        drawn = torch.cat([x.double() * family.schema.x[0].std + family.schema.x[0].mean,
                           family.schema.y_to_user(y.double())], -1)  # [n, 2]
        rows = raw_rows(frame, family, c)
        match = (drawn[:, None, :] - rows[None]).abs().amax(-1) < 1e-3  # [n, rows]
        assert match.any(1).all() and (match.sum(0) <= 1).all()  # each a row, none twice
        assert torch.equal(batch.metadata[t], family.metadata[c])


def test_rows_are_drawn_uniformly_within_a_group():
    # one group of 10 rows, 3 slots: each row lands in the first slot with probability 1/10;
    # 4000 draws give a standard error of 0.0047 per row, tolerance 0.025 (over 5 s.e.)
    frame = pandas.DataFrame({"g": [0] * 10 + [1, 1, 2, 2, 3, 3, 4, 4], "x": range(18), "y": range(18)})
    frame["fold"] = ["train"] * 10 + ["train"] * 4 + ["val", "val", "test", "test"]
    tasks = TabularTasks.from_frame(frame, group="g", x="x", y="y", split_column="fold")
    generator = torch.Generator().manual_seed(0)
    first = []
    for _ in range(4000):
        batch = tasks.sample(3, 1, 2, generator=generator)
        big = batch.params["group_index"] == 0
        first.append(batch.x_support[big, 0, 0])
    x = torch.cat(first)
    counts = torch.stack([(x == v).sum() for v in x.unique()]).double() / len(x)
    assert len(counts) == 10 and (counts - 0.1).abs().max() < 0.025


def test_a_batch_is_as_wide_as_its_own_groups_not_the_data_set():
    frame = grouped_frame(12, min_rows=3, max_rows=6)
    huge = pandas.DataFrame({"site": "huge", "dose": torch.rand(5000).tolist(), "response": 1.0,
                             "altitude": 500.0, "region": "north"})
    frame = pandas.concat([frame, huge], ignore_index=True)
    frame["fold"] = frame["site"].map(lambda s: "test" if s in ("huge", "s001") else "val" if s == "s002" else "train")
    tasks = TabularTasks.from_frame(frame, **COLUMNS, split_column="fold")
    batch = tasks.sample(6, 10_000, 0, generator=torch.Generator().manual_seed(0))
    assert batch.x_support.shape[1] == int(batch.params["group_size"].max()) <= 6
    assert torch.equal(batch.support_mask.sum(1), batch.params["group_size"])
    wide = tasks.sample(2, 30, 20, split="test", generator=torch.Generator().manual_seed(0))
    assert wide.x_support.shape[1] == 30 and wide.x_query.shape[1] == 20  # capped at the request
    narrow = tasks.sample(4, 4, 100, generator=torch.Generator().manual_seed(1))
    assert narrow.x_query.shape[1] == int(narrow.params["group_size"].max()) - 4


def test_all_tasks_keeps_groups_larger_than_k_with_nested_supports(family):
    test = family.split_indices["test"]
    previous = None
    for k in (0, 1, 2, 5, 10):
        batch = family.all_tasks(k, split="test", generator=torch.Generator().manual_seed(0))
        sizes = batch.params["group_size"]
        assert batch.num_tasks == int((family.group_sizes[test] > k).sum())
        assert batch.x_support.shape[1] == k and batch.x_query.shape[1] == int(sizes.max()) - k
        assert torch.equal(batch.query_mask.sum(1), sizes - k) and bool(batch.support_mask.all())
        if previous is not None:
            keep = torch.isin(previous.params["group_index"], batch.params["group_index"])
            kp = previous.x_support.shape[1]
            assert torch.equal(previous.x_support[keep], batch.x_support[:, :kp])
        previous = batch
    with pytest.raises(ValueError, match="num_support=40"):
        family.all_tasks(40)


# -- prediction files -----------------------------------------------------------------------

def test_prediction_frame_with_missing_metadata_zero_shot_and_an_unseen_level(family):
    frame = new_sites_frame(num_support=(0, 3, 8), num_query=5, seed=2)
    frame.loc[frame["task"] == "new2", "region"] = "west"
    tasks = tasks_from_frame(frame, family.schema)
    batch = tasks.batch
    assert tasks.labels == ["new1", "new2", "new3"] and not tasks.scored
    assert batch.x_support.shape == (3, 8, 1) and batch.x_query.shape == (3, 5, 1)
    assert batch.support_mask.sum(1).tolist() == [0, 3, 8] and bool(batch.query_mask.all())
    assert torch.isnan(batch.metadata[2, 0]) and not torch.isnan(batch.metadata[:2]).any()
    assert batch.metadata[1, 1:].tolist() == [0.0, 0.0, 0.0]  # unknown level: all-zero one-hot
    assert tasks.notes and "'west'" in tasks.notes[0] and "unknown" in tasks.notes[0]
    support = frame[(frame["task"] == "new3") & (frame["role"] == "support")]
    want = torch.tensor(support["response"].to_numpy(dtype=float))
    assert torch.allclose(family.schema.y_to_user(batch.y_support[2].double())[:, 0], want, atol=1e-4)
    assert list(tasks.query_rows["task"]) == ["new1"] * 5 + ["new2"] * 5 + ["new3"] * 5


def test_prediction_frame_in_user_units_and_scored(family, tmp_path):
    frame = new_sites_frame(num_support=(2, 4), num_query=3, seed=3)
    frame["response"] = frame["response"].fillna(25.0)  # y on every row: the query rows are scored
    path = tmp_path / "tasks.csv"
    frame.to_csv(path, index=False, encoding="utf-8-sig")  # with a byte-order mark
    tasks = read_tasks(str(path), family.schema)
    assert tasks.scored
    train = family.all_tasks(0, split="train")
    pooled = PooledRegression().fit(train.with_metadata(train.metadata.nan_to_num()))
    batch = tasks.batch.with_metadata(tasks.batch.metadata.nan_to_num())
    predictive = pooled.predict(batch)
    out = prediction_frame(family.schema, tasks, predictive)
    assert list(out.columns) == ["task", "dose", "response_mean", "response_q05", "response_q95",
                                 "response", "loglik"]
    assert len(out) == 6 and (out["response_q05"] < out["response_mean"]).all()
    assert torch.allclose(torch.tensor(out["response"].to_numpy()),
                          torch.tensor(frame.loc[frame["role"] == "query", "response"].to_numpy()), atol=1e-4)
    logp = predictive.log_prob(batch.y_query)[batch.query_mask].double()
    assert torch.allclose(torch.tensor(out["loglik"].to_numpy()),
                          logp - math.log(family.schema.y[0].std), atol=1e-4)


@pytest.mark.parametrize("edit, message", [
    (lambda f: f.assign(role=f["role"].replace({"query": "target"})), r"role must be 'support' or 'query'"),
    (lambda f: f.drop(columns="region"), r"missing column\(s\) \['region'\]"),
    (lambda f: f.assign(altitude=[float(i) for i in range(len(f))]), "row 1: task 'new1' has different metadata"),
    (lambda f: f.assign(dose=f["dose"].where(f.index != 3)), "row 3, column dose: nan is NaN or infinite"),
    (lambda f: f.assign(response=f["response"].where(f["role"] == "query")),
     "row 0, column response: nan is NaN or infinite; y must be a finite number on a support row"),
    (lambda f: f[(f["task"] != "new1") | (f["role"] == "support")], r"task\(s\) \['new1'\] have no query rows"),
])
def test_bad_prediction_frames_name_the_row_or_task(family, edit, message):
    frame = new_sites_frame(num_support=(3, 3), num_query=2, seed=4)
    with pytest.raises(ValueError, match=message):
        tasks_from_frame(edit(frame), family.schema)


# -- bad input ------------------------------------------------------------------------------

def bad(**changes):
    """The sites frame with column edits, and the column roles."""
    frame = grouped_frame(12)
    for name, fn in changes.items():
        frame[name] = fn(frame)
    return frame


def test_one_group_twice_named_columns_and_missing_columns():
    frame = grouped_frame(12)
    with pytest.raises(ValueError, match=r"column 'region' holds a single group \['north'\]|single group"):
        TabularTasks.from_frame(frame.assign(region="north"), group="region", x="dose", y="response")
    with pytest.raises(ValueError, match="column 'altitude' is named as x and as metadata"):
        TabularTasks.from_frame(frame, group="site", x=["dose", "altitude"], y="response", metadata=["altitude"])
    with pytest.raises(ValueError, match="column 'dose' is named twice as x"):
        TabularTasks.from_frame(frame, group="site", x=["dose", "dose"], y="response")
    with pytest.raises(ValueError, match=r"lack column\(s\) \['height'\]"):
        TabularTasks.from_frame(frame, group="site", x="height", y="response")
    doubled = pandas.concat([frame, frame[["dose"]]], axis=1)
    with pytest.raises(ValueError, match="two columns named 'dose'"):
        TabularTasks.from_frame(doubled, **COLUMNS)
    with pytest.raises(ValueError, match="clash with"):
        TabularTasks.from_frame(frame.rename(columns={"dose": "task"}), group="site", x="task", y="response")


def test_non_numeric_y_and_a_typo_in_a_numeric_x_name_the_row():
    frame = grouped_frame(12)
    frame["response"] = frame["response"].astype(object)
    frame.loc[7, "response"] = "n/a?"
    with pytest.raises(ValueError, match=r"row 7, column response: 'n/a\?' is not a number, but y column"):
        TabularTasks.from_frame(frame, **COLUMNS)
    frame = grouped_frame(12)
    frame["dose"] = frame["dose"].astype(object)
    frame.loc[4, "dose"] = "1,5"
    with pytest.raises(ValueError, match="row 4, column dose: '1,5' is not a number, but x column 'dose' is numeric"):
        TabularTasks.from_frame(frame, **COLUMNS)


def test_metadata_varying_within_a_group_names_the_group():
    frame = grouped_frame(12)
    frame.loc[frame.index[frame["site"] == "s003"][1], "altitude"] += 10
    with pytest.raises(ValueError, match="metadata column 'altitude' varies within group 's003'"):
        TabularTasks.from_frame(frame, **COLUMNS)
    frame = grouped_frame(12)
    frame.loc[frame.index[frame["site"] == "s005"][0], "region"] = None  # NaN vs a value: varies too
    with pytest.raises(ValueError, match="'region' varies within group 's005'"):
        TabularTasks.from_frame(frame, **COLUMNS)


def test_missing_metadata_of_a_whole_group_is_kept_as_missing_and_rows_without_y_are_dropped():
    frame = grouped_frame(12)
    frame.loc[frame["site"] == "s004", "altitude"] = math.nan
    frame.loc[0, "response"] = math.nan
    tasks = TabularTasks.from_frame(frame, **COLUMNS)
    c = tasks.group_ids.index("s004")
    assert torch.isnan(tasks.metadata[c, 0]) and not torch.isnan(tasks.metadata[c, 1:]).any()
    assert int(tasks.group_sizes.sum()) == len(frame) - 1
    assert any("dropped 1 row" in note and "row 0" in note for note in tasks.notes)


def test_a_group_left_without_rows_and_too_few_training_groups():
    frame = grouped_frame(12)
    frame.loc[frame["site"] == "s006", "response"] = math.nan
    with pytest.raises(ValueError, match=r"group\(s\) \['s006'\] of column 'site' have no rows left"):
        TabularTasks.from_frame(frame, **COLUMNS)
    frame = grouped_frame(12)
    frame["site"] = pandas.Categorical(frame["site"], categories=sorted(frame["site"].unique()) + ["s999"])
    with pytest.raises(ValueError, match=r"\['s999'\]"):
        TabularTasks.from_frame(frame, **COLUMNS)
    with pytest.raises(ValueError, match="4 groups leave 2 training group"):
        TabularTasks.from_frame(grouped_frame(4), **COLUMNS)
    with pytest.raises(ValueError, match="leave 2 training group"):
        TabularTasks.from_frame(grouped_frame(12), **COLUMNS, val_fraction=0.4, test_fraction=0.45)


def test_csv_files_byte_order_mark_line_numbers_and_path_errors(tmp_path):
    frame = grouped_frame(12)
    path = tmp_path / "sites.csv"
    frame.to_csv(path, index=False, encoding="utf-8-sig")
    assert path.read_bytes()[:3] == b"\xef\xbb\xbf"
    tasks = TabularTasks.from_csv(str(path), **COLUMNS)
    assert tasks.schema == TabularTasks.from_frame(frame, **COLUMNS).schema
    frame["response"] = frame["response"].astype(object)
    frame.loc[5, "response"] = "oops"
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError, match="line 7, column response: 'oops' is not a number"):  # header: line 1
        TabularTasks.from_csv(str(path), **COLUMNS)
    path.write_text("site,dose,dose,response\na,1,2,3\n")
    with pytest.raises(ValueError, match=r"line 1: the header names column\(s\) \['dose'\] more than once"):
        TabularTasks.from_csv(str(path), group="site", x="dose", y="response")
    with pytest.raises(FileNotFoundError, match="no file"):
        TabularTasks.from_csv(str(tmp_path / "nope.csv"), **COLUMNS)
    with pytest.raises(IsADirectoryError, match="is a folder"):
        TabularTasks.from_csv(str(tmp_path), **COLUMNS)


def test_categorical_x_and_numeric_codes_made_categorical():
    frame = grouped_frame(40)
    frame["batch"] = ["A", "B", "C"] * (len(frame) // 3) + ["A"] * (len(frame) % 3)
    frame["zone"] = frame["region"].map({"north": 1, "south": 2, "east": 3})
    tasks = TabularTasks.from_frame(frame, group="site", x=["dose", "batch"], y="response",
                                    metadata=["zone"], categorical=["zone"])
    assert tasks.schema.encoded_names("x") == ["dose", "batch=A", "batch=B", "batch=C"]
    assert tasks.schema.metadata[0].levels == ["1", "2", "3"]
    assert torch.equal(tasks.metadata.sum(1), torch.ones(40))  # one-hot, not standardized
    with pytest.raises(ValueError, match="categorical column.*must be x or metadata"):
        TabularTasks.from_frame(frame, group="site", x="dose", y="response", categorical=["response"])


# -- baselines ------------------------------------------------------------------------------

def test_pooled_regression_is_least_squares_with_its_predictive_variance():
    # with a broad prior (τ = 1e4) the posterior mean is least squares (tolerance 1e-6), and
    # the predictive variance is h Cov h + σ² with σ² = RSS / (n - P)
    tasks = sites(30)
    keep = tasks.schema.linear_columns("metadata")  # a full-rank design, so least squares is unique
    train = tasks.all_tasks(0, split="train")
    train = train.with_metadata(train.metadata[:, keep])
    model = PooledRegression(prior_std=1e4).fit(train)
    mask = train.query_mask
    h = model.features(train.x_query, train.metadata)[mask]
    y = train.y_query.double()[..., 0][mask]
    w = torch.linalg.lstsq(h, y[:, None]).solution[:, 0]
    assert torch.allclose(model.mean, w, atol=1e-6)
    rss = float(((y - h @ w) ** 2).sum())
    assert math.isclose(model.residual_var, rss / (len(y) - h.shape[1]), rel_tol=1e-6)
    test = tasks.all_tasks(2, split="test", generator=torch.Generator().manual_seed(0))
    test = test.with_metadata(test.metadata[:, keep])
    pred = model.predict(test)
    hq = model.features(test.x_query, test.metadata)
    var = ((hq @ model.cov) * hq).sum(-1) + model.residual_var
    assert torch.allclose(pred.std[:, 0, :, 0].double() ** 2, var, rtol=1e-5)
    shuffled = test.with_support_size(0)  # the support is ignored
    assert torch.equal(model.predict(shuffled).mean, pred.mean)
    nan = test.metadata.clone()
    nan[1, 0] = math.nan
    with pytest.raises(ValueError, match=r"task\(s\) \[1\]"):
        model.predict(test.with_metadata(nan))
    plain = PooledRegression(use_metadata=False).fit(train)
    assert len(plain.mean) == 2 and plain.predict(test.with_metadata(nan)).mean.shape == pred.mean.shape


def test_mixed_model_with_random_slopes_fits_tabular_tasks_in_treatment_coding():
    pytest.importorskip("statsmodels")
    tasks = sites(60)
    keep = tasks.schema.linear_columns("metadata")  # one-hot plus intercept would be singular
    train = tasks.all_tasks(0, split="train")
    model = MixedModel(random_slopes=(0,), interactions=((0, 0), (0, 1), (0, 2)),
                       x_names=tasks.schema.encoded_names("x"),
                       metadata_names=[tasks.schema.encoded_names("metadata")[i] for i in keep])
    model.fit(train.with_metadata(train.metadata[:, keep]))
    fixed = model.summary()["fixed_effects"]
    s = tasks.schema
    # the true slope change per 1000 m of altitude is -0.5 per unit dose (synthetic.py)
    per_km = fixed["dose:altitude"] * s.y[0].std / s.x[0].std / s.metadata[0].std * 1000
    assert -0.9 < per_km < -0.1
    test = tasks.all_tasks(5, split="test", generator=torch.Generator().manual_seed(0))
    test = test.with_metadata(test.metadata[:, keep])
    metrics = point_metrics(model.predict(test), test.y_query, test.query_mask)
    pooled = PooledRegression().fit(train.with_metadata(train.metadata[:, keep]))
    baseline = point_metrics(pooled.predict(test), test.y_query, test.query_mask)
    assert metrics["loglik"] > baseline["loglik"]  # random effects help given 5 points
    assert 0.75 < metrics["coverage90"] < 0.99


# -- no metadata ----------------------------------------------------------------------------

def test_the_networks_run_without_metadata():
    # metadata_dim = 0 (sleepstudy): an input-free MLP is a learned constant, no warning
    torch.manual_seed(0)
    net = MLP(0, 3, hidden=8, layers=2)
    out = net(torch.zeros(5, 0))
    assert out.shape == (5, 3) and torch.allclose(out, out[:1].expand(5, 3))
    model = GenerativeModel(x_dim=1, metadata_dim=0, latent_dim=2, hidden=8, prior="linear")
    guide = AmortizedGuide(x_dim=1, metadata_dim=0, latent_dim=2, hidden=8, sees_metadata=True)
    x, y = torch.randn(3, 4, 1), torch.randn(3, 4, 1)
    terms = elbo_terms(model, guide, x, y, torch.zeros(3, 0), num_particles=2)
    assert terms["elbo"].shape == (3,) and torch.isfinite(terms["elbo"]).all()


# -- the shipped sample files ----------------------------------------------------------------

def test_sample_files_are_reproducible_and_read(tmp_path):
    examples = pathlib.Path(__file__).resolve().parent.parent / "examples"
    spec = importlib.util.spec_from_file_location("make_sample_data", examples / "make_sample_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for path in module.main(["--out", str(tmp_path)]):
        name = pathlib.Path(path).name
        assert filecmp.cmp(path, examples / "data" / name, shallow=False), f"examples/data/{name} is stale"
    data = examples / "data"
    tasks = TabularTasks.from_csv(str(data / "grouped_sample.csv"), **COLUMNS)
    assert len(tasks.group_ids) == 60 and tasks.notes == []
    new = read_tasks(str(data / "grouped_sample_new.csv"), tasks.schema)
    assert new.batch.support_mask.sum(1).tolist() == [0, 3, 8] and torch.isnan(new.batch.metadata[2, 0])
    sinusoid = read_tasks(str(data / "sinusoid_tasks.csv"), TabularSchema.identity(1, 1, 2))
    batch = sinusoid.batch
    assert sinusoid.labels == ["task1", "task2", "task3", "task4"] and not sinusoid.scored
    assert batch.support_mask.sum(1).tolist() == [0, 2, 5, 5] and torch.isnan(batch.metadata[3]).all()
