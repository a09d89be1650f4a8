"""Reaction times under sleep deprivation (R's lme4 ``sleepstudy``), as a tabular family.

18 subjects, 10 days each (Belenky et al., 2003): one subject is one task, no metadata::

    x = Days       days of sleep deprivation (0..9)
    y = Reaction   mean reaction time, ms

The textbook fit is a linear mixed model with a random intercept and a random slope of
Days per subject. :class:`SleepStudyTasks` is
:class:`~hierarchical_meta.tasks.tabular.TabularTasks` over the packaged data
(:func:`~hierarchical_meta.tasks.datasets.load_sleepstudy`): subjects are split at random
(``split_seed``), so with 18 subjects the test split holds 4 and validation 3.
"""

from __future__ import annotations

from .datasets import load_sleepstudy
from .tabular import TEST_FRACTION, VAL_FRACTION, TabularTasks

__all__ = ["SleepStudyTasks", "load_sleepstudy"]


class SleepStudyTasks(TabularTasks):
    """Subjects of ``sleepstudy`` as tasks; ``data``: a frame with the same columns instead."""

    def __init__(self, split_seed: int = 0, val_fraction: float = VAL_FRACTION,
                 test_fraction: float = TEST_FRACTION, data=None):
        super().__init__(load_sleepstudy() if data is None else data, group="Subject", x="Days",
                         y="Reaction", split_seed=split_seed, val_fraction=val_fraction,
                         test_fraction=test_fraction, name="sleepstudy")
