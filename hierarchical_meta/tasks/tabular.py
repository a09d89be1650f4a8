"""A user's grouped data as a task family: one group of rows is one task.

From a pandas DataFrame or a CSV file, with named columns::

    group      the task a row belongs to (any labels)
    x          point inputs (numeric or categorical)                 [row level]
    y          outputs (numeric)                                     [row level]
    metadata   task metadata m, constant within a group (may be none) [group level]

Groups, never rows, are split into ``"train"``, ``"val"`` and ``"test"``: at random
(``split_seed``, ``val_fraction``, ``test_fraction``) or by a ``split_column`` whose value
(train, val or test) is constant within each group. Encodings and standardization
(:class:`~hierarchical_meta.tasks.schema.TabularSchema`) are fitted on the training groups
alone; :attr:`TabularTasks.schema` keeps them, for checkpoints and for reporting in the
user's units.

Group labels are text (:func:`~hierarchical_meta.tasks.schema.level_name`: ``007`` and ``7``
are two groups, 7 and 7.0 one), ordered numbers first (by value), then the others.
Rows with a missing group, x or y are dropped (a note says how many); missing metadata
(an empty cell or NaN) is kept and read as missing. A number beyond ±``MAX_INPUT`` (1e6) is
an error (a typo, or a unit to rescale); a value more than :data:`OUTLIER_SDS` robust standard
deviations from its column's median (σ̂ = 1.4826 MAD, or 1.2533 times the mean absolute
deviation when the MAD is zero) is kept, with a note naming its row. Everything else that is
wrong raises ``ValueError`` naming the column, group or row and the fix, before any training.

Storage: the rows sorted by group, ``x`` [R, Dx] and ``y`` [R, Dy], with ``offsets`` [C + 1]
(group c holds rows offsets[c]..offsets[c+1]) and ``metadata`` [C, Dm]. A batch reads only
the rows of its own groups and is padded to its own largest group (at most the requested
width), never to the largest group of the data set.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch

from .base import SPLITS, TaskBatch, TaskFamily
from .frames import cell_name, import_pandas, read_csv, row_name
from .schema import MAX_INPUT, ROLES, TASK_COLUMNS, Column, TabularSchema, label_order, level_name, numeric_values

__all__ = ["TabularTasks", "VAL_FRACTION", "TEST_FRACTION", "MIN_TRAIN_GROUPS", "OUTLIER_SDS"]

VAL_FRACTION = 0.15
TEST_FRACTION = 0.2
MIN_TRAIN_GROUPS = 3
#: A value this many robust standard deviations from its column's median gets a note (a typo?).
OUTLIER_SDS = 20

Names = str | Sequence[str]


def _names(value: Names, what: str) -> list[str]:
    """A column name or a list of them, as a list; ValueError for anything else."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, Sequence) or not all(isinstance(name, str) for name in names):
        raise ValueError(f"{what} must be a column name or a list of column names (text), got {value!r}")
    return list(names)


def robust_outliers(values) -> tuple[object, float, float]:
    """``(mask, median, sd)`` of the values (a float Series) beyond :data:`OUTLIER_SDS` robust sds
    of their median; sd = 1.4826 MAD, or 1.2533 mean |v - median| when the MAD is 0 (both
    estimate σ of a normal sample); nothing is flagged in a constant column."""
    observed = values.dropna()
    median = float(observed.median()) if len(observed) else 0.0
    spread = (observed - median).abs()
    sd = 1.4826 * float(spread.median()) if len(observed) else 0.0
    if sd == 0 and len(observed):
        sd = 1.2533 * float(spread.mean())
    if sd == 0:
        return values != values, median, sd  # all False
    return (values - median).abs() > OUTLIER_SDS * sd, median, sd


class TabularTasks(TaskFamily):
    """Groups of a data frame as tasks; see the module docstring.

    Args:
        frame: a pandas DataFrame, one row per point.
        group: the column naming each row's group (task).
        x, y, metadata: column names (one name or a list); metadata may be empty.
        categorical: x or metadata columns to one-hot encode even though they hold numbers
            (columns holding text are categorical anyway).
        split_column: a column holding train, val or test per group, instead of a random split.
        val_fraction, test_fraction: fractions of the groups held out at random (each at
            least one group, rounded).
        split_seed: seed of the random group split.
        name: the family's name (reports, checkpoints).

    Attributes: ``schema``, ``group_ids`` (labels in storage order), ``group_sizes`` [C],
    ``offsets`` [C + 1], ``x`` [R, Dx], ``y`` [R, Dy], ``metadata`` [C, Dm] (standardized),
    ``split_indices`` (split -> group indices) and ``notes`` (remarks for the user).
    """

    fixed_dataset = True
    baselines = ("no_metadata", "mixed_model", "pooled")

    def __init__(self, frame, *, group: str, x: Names, y: Names, metadata: Names = (),
                 categorical: Names = (), split_column: str | None = None,
                 val_fraction: float = VAL_FRACTION, test_fraction: float = TEST_FRACTION,
                 split_seed: int = 0, name: str = "tabular"):
        pandas = import_pandas()
        if not isinstance(frame, pandas.DataFrame):
            raise ValueError(f"frame must be a pandas DataFrame, got {type(frame).__name__}")
        self._check_split_options(split_column, val_fraction, test_fraction, split_seed)
        self.name = name
        self.split_seed = int(split_seed)
        self.split_options = ({"split_column": split_column} if split_column is not None else
                              {"split_seed": self.split_seed, "val_fraction": float(val_fraction),
                               "test_fraction": float(test_fraction)})
        self.notes: list[str] = []
        roles = {"x": _names(x, "x"), "y": _names(y, "y"), "metadata": _names(metadata, "metadata")}
        categorical = _names(categorical, "categorical")
        self._check_columns(frame, group, roles, categorical, split_column)
        if frame.empty:
            raise ValueError("the data have no rows")
        kinds = self._kinds(frame, roles, categorical)
        frame, groups = self._group_labels(frame, group)
        if len(groups) < 2:
            raise ValueError(f"column {group!r} holds a single group {groups}; the group column must "
                             "name the tasks, several of them (is it the right column?)")
        frame = self._clean(frame, group, roles, kinds)
        self._check_groups(frame, group, groups)
        self._check_metadata(frame, group, roles["metadata"])
        self.split_indices = self._split(frame, group, groups, split_column, val_fraction, test_fraction)
        self._store(frame, group, groups, roles, kinds)

    @classmethod
    def from_frame(cls, frame, **columns) -> TabularTasks:
        """The same as ``TabularTasks(frame, group=..., x=..., y=..., ...)``."""
        return cls(frame, **columns)

    @classmethod
    def from_csv(cls, path: str, **columns) -> TabularTasks:
        """From a UTF-8 CSV file (a byte-order mark is fine); messages name its line numbers.
        The group and split columns are read as text."""
        return cls(read_csv(path, text_columns=[columns.get("group"), columns.get("split_column")]), **columns)

    @property
    def schema(self) -> TabularSchema:
        """The encodings and standardization fitted on the training groups."""
        return self._schema

    # -- checks and cleaning ----------------------------------------------------------------

    @staticmethod
    def _check_split_options(split_column, val_fraction, test_fraction, split_seed) -> None:
        if not isinstance(split_seed, numbers.Integral):
            raise ValueError(f"split_seed must be an integer, got {split_seed!r}")
        if split_column is not None:
            return
        given = all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in (val_fraction, test_fraction))
        if not (given and 0 < val_fraction and 0 < test_fraction and val_fraction + test_fraction < 1):
            raise ValueError("val_fraction and test_fraction must be numbers > 0 with a sum < 1, got "
                             f"{val_fraction!r} and {test_fraction!r}")

    @staticmethod
    def _check_roles(group, roles, categorical) -> None:
        """One group column, x and y columns, none named like a task file's own, categorical ones x or m."""
        if not isinstance(group, str) or not group:
            raise ValueError(f"group must name one column (the groups' labels), got {group!r}")
        for role, what in (("x", "the point inputs"), ("y", "the outputs")):
            if not roles[role]:
                raise ValueError(f"give at least one {role} column ({what})")
        reserved = [c for role in ROLES for c in roles[role] if c in TASK_COLUMNS]
        if reserved:
            raise ValueError(f"column(s) {reserved} clash with the {list(TASK_COLUMNS)} columns of "
                             "prediction files; rename them")
        stray = [c for c in categorical if c not in roles["x"] + roles["metadata"]]
        if stray:
            raise ValueError(f"categorical column(s) {stray} must be x or metadata columns "
                             "(y columns are numeric)")

    @classmethod
    def _check_columns(cls, frame, group, roles, categorical, split_column) -> None:
        cls._check_roles(group, roles, categorical)
        named = [("group", group)] + [(role, c) for role in ROLES for c in roles[role]]
        if split_column is not None:
            named.append(("split column", split_column))
        seen = {}
        for role, c in named:
            if c in seen:
                as_what = f"as {seen[c]} and as {role}" if seen[c] != role else f"twice as {role}"
                raise ValueError(f"column {c!r} is named {as_what}; give each column one role")
            seen[c] = role
        missing = [c for _, c in named if c not in frame.columns]
        if missing:
            raise ValueError(f"the data lack column(s) {missing}; they have {list(frame.columns)}")
        doubled = [c for _, c in named if list(frame.columns).count(c) > 1]
        if doubled:
            raise ValueError(f"the data have two columns named {doubled[0]!r}; rename one of them")

    @staticmethod
    def _kinds(frame, roles, categorical) -> dict[str, str]:
        """numeric or categorical per used column: y is numeric; an x or metadata column is
        categorical when named so or when it holds text, numeric when it holds numbers (numbers
        stored as text too); text that is mostly numbers is an error naming the first non-number."""
        pandas = import_pandas()
        kinds = {}
        for role in ROLES:
            for c in roles[role]:
                values = frame[c]
                if c in categorical:
                    kinds[c] = "categorical"
                elif role == "y" or pandas.api.types.is_numeric_dtype(values) or pandas.api.types.is_bool_dtype(values):
                    kinds[c] = "numeric"
                else:
                    numbers = pandas.to_numeric(values.dropna(), errors="coerce").notna().mean()
                    if numbers > 0.5:  # mostly numbers: numeric, and a word among them a typo
                        numeric_values(frame, c, role)  # raises, naming the first non-number
                    kinds[c] = "numeric" if numbers > 0.5 else "categorical"
        return kinds

    def _clean(self, frame, group, roles, kinds):
        """Numeric columns as floats, their magnitudes checked and far outliers noted; rows
        with a missing group, x or y dropped (noted)."""
        numeric = [(role, c) for role in ROLES for c in roles[role] if kinds[c] == "numeric"]
        for role, c in numeric:
            frame[c] = numeric_values(frame, c, role)
            self._check_magnitudes(frame, c, role)
        finite = frame[[group] + roles["x"] + roles["y"]].notna().all(axis=1)
        for role, c in numeric:
            if role != "metadata":
                finite &= frame[c].abs() < float("inf")
        if not finite.all():
            first = row_name(frame, finite.index[(~finite).argmax()])
            self.notes.append(f"dropped {int((~finite).sum())} row(s) with a missing or infinite group, "
                              f"x or y value (the first: {first})")
        frame = frame[finite]
        for _, c in numeric:
            self._note_outliers(frame, c)
        return frame

    @staticmethod
    def _check_magnitudes(frame, column, role) -> None:
        """Infinite metadata, and any finite value beyond ±MAX_INPUT, raise naming the cell."""
        values = frame[column]
        infinite = values.abs() == float("inf")
        if role == "metadata" and infinite.any():
            label = infinite.index[infinite.argmax()]
            raise ValueError(f"{cell_name(frame, label, column)}: {values[label]:g} is infinite; leave the cell "
                             "empty when the metadata value is unknown")
        huge = (values.abs() > MAX_INPUT) & ~infinite
        if huge.any():
            label = huge.index[huge.argmax()]
            raise ValueError(f"{cell_name(frame, label, column)}: {values[label]:g} is out of range: beyond "
                             f"±{MAX_INPUT:g}; fix the typo, or rescale column {column!r} to larger units "
                             "(thousands, millions)")

    def _note_outliers(self, frame, column) -> None:
        """A note naming the first value far outside the column's spread (:func:`robust_outliers`)."""
        far, median, sd = robust_outliers(frame[column])
        if far.any():
            label = far.index[far.argmax()]
            value = frame[column][label]
            more = f"; {int(far.sum()) - 1} more such value(s) in the column" if far.sum() > 1 else ""
            self.notes.append(f"{cell_name(frame, label, column)}: {value:g} lies {abs(value - median) / sd:.0f} "
                              f"robust sds from the column's median {median:g} (more than {OUTLIER_SDS}): "
                              f"a typo? It is kept{more}")

    @staticmethod
    def _group_labels(frame, group):
        """``(frame, labels)``: the group column as text (a missing group stays missing) and the
        groups in a stable order: declared categories, else :func:`label_order`."""
        pandas = import_pandas()
        values = frame[group]
        if isinstance(values.dtype, pandas.CategoricalDtype):
            labels = list(dict.fromkeys(level_name(v) for v in values.cat.categories))
        else:
            labels = sorted({level_name(v) for v in values.dropna()}, key=label_order)
        frame = frame.copy()
        frame[group] = [None if pandas.isna(v) else level_name(v) for v in values.astype(object)]
        return frame, labels

    @staticmethod
    def _check_groups(frame, group, groups) -> None:
        sizes = frame.groupby(group, observed=True).size()
        empty = [g for g in groups if sizes.get(g, 0) == 0]
        if empty:
            raise ValueError(f"group(s) {empty[:10]} of column {group!r} have no rows left after dropping "
                             "rows with a missing group, x or y; fill those values or drop those groups")

    @staticmethod
    def _check_metadata(frame, group, metadata) -> None:
        for c in metadata:
            spread = frame.groupby(group, observed=True)[c].nunique(dropna=False)
            if (spread > 1).any():
                g = spread.index[(spread > 1).argmax()]
                values = frame.loc[frame[group] == g, c].drop_duplicates().tolist()[:5]
                raise ValueError(f"metadata column {c!r} varies within group {g!r} (values {values}); "
                                 "metadata must be constant within a group: fix those rows, or make "
                                 f"{c!r} an x column")

    def _split(self, frame, group, groups, split_column, val_fraction, test_fraction) -> dict[str, torch.Tensor]:
        C = len(groups)
        if split_column is not None:
            spread = frame.groupby(group, observed=True)[split_column].nunique(dropna=False)
            if (spread > 1).any():
                g = spread.index[(spread > 1).argmax()]
                raise ValueError(f"split column {split_column!r} varies within group {g!r}; a group "
                                 "belongs to one split: give all its rows the same value")
            first = frame.groupby(group, observed=True)[split_column].first()
            value = ["" if import_pandas().isna(first[g]) else level_name(first[g]) for g in groups]
            bad = [(g, v) for g, v in zip(groups, value, strict=True) if v not in SPLITS]
            if bad:
                raise ValueError(f"split column {split_column!r} holds {bad[0][1]!r} for group {bad[0][0]!r}; "
                                 f"use one of {list(SPLITS)} for every group")
            indices = {s: torch.tensor([i for i, v in enumerate(value) if v == s], dtype=torch.long)
                       for s in SPLITS}
            empty = [s for s in SPLITS if len(indices[s]) == 0]
            if empty:
                raise ValueError(f"split column {split_column!r} puts no group in {empty}; "
                                 "mark at least one group for each of train, val and test")
        else:
            n_test = max(1, round(C * test_fraction))
            n_val = max(1, round(C * val_fraction))
            if C - n_test - n_val < MIN_TRAIN_GROUPS:
                raise ValueError(f"{C} groups leave {C - n_test - n_val} training group(s) after "
                                 f"{n_val} val and {n_test} test; need at least {MIN_TRAIN_GROUPS}: "
                                 "give more groups or lower val_fraction/test_fraction")
            order = torch.randperm(C, generator=torch.Generator().manual_seed(self.split_seed))
            indices = {"test": order[:n_test], "val": order[n_test:n_test + n_val],
                       "train": order[n_test + n_val:]}
        n_train = len(indices["train"])
        if n_train < MIN_TRAIN_GROUPS:
            raise ValueError(f"only {n_train} training group(s); need at least {MIN_TRAIN_GROUPS}: "
                             "mark more groups train")
        return {s: v.sort().values for s, v in indices.items()}

    def _store(self, frame, group, groups, roles, kinds) -> None:
        """Fit the schema on the training groups; store standardized rows sorted by group."""
        position = {g: i for i, g in enumerate(groups)}
        index = frame[group].astype(object).map(position).to_numpy(dtype="int64")
        order = index.argsort(kind="stable")
        frame = frame.iloc[order]
        group_index = torch.as_tensor(index[order], dtype=torch.long)  # [R]
        self.group_ids = groups
        self.group_sizes = torch.bincount(group_index, minlength=len(groups))  # [C]
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), self.group_sizes.cumsum(0)])  # [C + 1]
        first_rows = frame.iloc[self.offsets[:-1].tolist()]  # one row per group, in group order
        train = self.split_indices["train"]
        train_rows = frame[torch.isin(group_index, train).numpy()]
        train_groups = first_rows.iloc[train.tolist()]
        self._schema = TabularSchema(
            group,
            x=[Column.fit(c, kinds[c], train_rows[c]) for c in roles["x"]],
            y=[Column.fit(c, kinds[c], train_rows[c]) for c in roles["y"]],
            metadata=[Column.fit(c, kinds[c], train_groups[c]) for c in roles["metadata"]])
        dtype = torch.get_default_dtype()
        x, x_notes = self.schema.encode(frame, "x")
        y, _ = self.schema.encode(frame, "y")
        metadata, m_notes = self.schema.encode(first_rows, "metadata")
        self.notes += [f"{note} (in validation or test groups)" for note in x_notes + m_notes]
        self.x, self.y, self.metadata = x.to(dtype), y.to(dtype), metadata.to(dtype)
        self.x_dim, self.y_dim, self.metadata_dim = self.schema.x_dim, self.schema.y_dim, self.schema.metadata_dim

    # -- tasks -------------------------------------------------------------------------------

    def groups(self, split: str = "train") -> list:
        """The group labels of a split."""
        self._check_split(split)
        return [self.group_ids[i] for i in self.split_indices[split].tolist()]

    def sample(self, num_tasks: int, num_support: int, num_query: int, *,
               split: str = "train", generator: torch.Generator | None = None) -> TaskBatch:
        """``num_tasks`` groups of ``split`` (with replacement only when the split has fewer),
        for training: random rows of each, the first ``num_support`` the support and up to
        ``num_query`` more the query, masked.

        The batch is as wide as its own largest group allows: K' = min(K, n) support and
        min(Q, n - K') query slots, n the largest chosen group, so ``sample(T, 10_000, 0)``
        over small groups stays narrow. Evaluation uses :meth:`all_tasks`.
        """
        self.check_sizes(num_tasks, num_support, num_query, split)
        indices = self.split_indices[split]
        if num_tasks <= len(indices):
            chosen = indices[torch.randperm(len(indices), generator=generator)[:num_tasks]]
        else:
            chosen = indices[torch.randint(len(indices), (num_tasks,), generator=generator)]
        width = min(num_support + num_query, int(self.group_sizes[chosen].max()))
        return self._batch(chosen, min(num_support, width), width, generator)

    def all_tasks(self, num_support: int, *, split: str = "test",
                  generator: torch.Generator | None = None) -> TaskBatch:
        """Every group of ``split`` with more than ``num_support`` rows, for evaluation.

        ``num_support`` random rows per group are the support and all the others the query
        (padded to the largest of these groups, masked). For one generator seed the random
        order of each group's rows does not depend on ``num_support``, so the supports of
        K = 1, 2, 5, 10 are nested.
        """
        self.check_sizes(1, num_support, 0, split)
        indices = self.split_indices[split]
        eligible = indices[self.group_sizes[indices] > num_support]
        if len(eligible) == 0:
            raise ValueError(f"no {split} group has more than num_support={num_support} rows "
                             f"(largest: {int(self.group_sizes[indices].max())}); lower num_support")
        width = int(self.group_sizes[eligible].max())
        return self._batch(eligible, num_support, width, generator, order_over=indices)

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")

    def _batch(self, chosen: torch.Tensor, num_support: int, width: int,
               generator: torch.Generator | None, order_over: torch.Tensor | None = None) -> TaskBatch:
        """Groups ``chosen`` [T], each's rows in random order in ``width`` slots, the first
        ``num_support`` the support. Random keys are drawn for the rows of ``order_over``
        (default: the chosen groups), so a group's order does not depend on the others chosen."""
        index, mask = self._shuffled_rows(chosen, width, generator, order_over)  # [T, W]
        x = torch.where(mask[..., None], self.x[index], 0.0)  # [T, W, Dx]
        y = torch.where(mask[..., None], self.y[index], 0.0)  # [T, W, Dy]
        K = num_support
        return TaskBatch(x_support=x[:, :K], y_support=y[:, :K], x_query=x[:, K:], y_query=y[:, K:],
                         metadata=self.metadata[chosen], support_mask=mask[:, :K], query_mask=mask[:, K:],
                         params={"group_index": chosen, "group_size": self.group_sizes[chosen]})

    def _shuffled_rows(self, chosen: torch.Tensor, width: int, generator: torch.Generator | None,
                       order_over: torch.Tensor | None):
        """Row indices [T, W] (a random order of each chosen group's rows, cut at W) and mask [T, W].

        Works on the rows of the groups involved only: each row gets a random key, a sort by
        (group, key) shuffles within groups, and a row's rank in its group is its slot.
        """
        over = chosen if order_over is None else order_over  # [G]
        sizes = self.group_sizes[over]  # [G]
        owner = torch.repeat_interleave(torch.arange(len(over)), sizes)  # [R'] group position per row
        start = sizes.cumsum(0) - sizes  # [G]
        rank = torch.arange(len(owner)) - start[owner]  # [R'] slot of a row in its group
        rows = self.offsets[over][owner] + rank  # [R'] group by group
        keys = torch.rand(len(owner), generator=generator, dtype=torch.float64)
        shuffled = rows[torch.argsort(owner + keys)]  # still group by group, shuffled within
        if order_over is None:
            target = torch.arange(len(over))
        else:  # the output task of each group of ``over``, -1 for those not chosen
            target = torch.full((len(over),), -1, dtype=torch.long)
            target[torch.searchsorted(over, chosen)] = torch.arange(len(chosen))
        keep = (rank < width) & (target[owner] >= 0)
        index = torch.zeros(len(chosen), width, dtype=torch.long)
        index[target[owner[keep]], rank[keep]] = shuffled[keep]
        mask = torch.arange(width) < self.group_sizes[chosen][:, None]
        return index, mask
