"""Real tasks with metadata: the Dutch schools data of R's MASS, as a tabular family.

``nlschools`` (Snijders and Bosker, 1999; Venables and Ripley's MASS) holds 2287 pupils
in 133 grade-8 classes of Dutch elementary schools. One class is one task and one pupil
is one point::

    x = (IQ, SES)     verbal IQ and family socio-economic status        (pupil level)
    y = lang          language test score                                (pupil level)
    m = (GS, COMB)    class size and the multi-grade flag (1 = combined) (class level)

:class:`NLSchoolsTasks` is :class:`~hierarchical_meta.tasks.tabular.TabularTasks` over the
packaged data (:func:`~hierarchical_meta.tasks.datasets.load_nlschools`): classes, not
pupils, are split (``split_seed`` picks one of many splits) and standardization is fitted
on the training classes, kept in ``schema``.
"""

from __future__ import annotations

from .datasets import load_nlschools
from .tabular import TEST_FRACTION, VAL_FRACTION, TabularTasks

__all__ = ["NLSchoolsTasks", "load_nlschools"]


class NLSchoolsTasks(TabularTasks):
    """Classes of ``nlschools`` as tasks; ``data``: a frame with the same columns instead."""

    def __init__(self, split_seed: int = 0, val_fraction: float = VAL_FRACTION,
                 test_fraction: float = TEST_FRACTION, data=None):
        super().__init__(load_nlschools() if data is None else data, group="class", x=["IQ", "SES"],
                         y="lang", metadata=["GS", "COMB"], split_seed=split_seed,
                         val_fraction=val_fraction, test_fraction=test_fraction, name="nlschools")
