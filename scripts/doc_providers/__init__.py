"""The providers of the generated text of README.md and docs/*.md: REGISTRY maps each doc with markers
(``<!--v:KEY-->`` values, ``<!-- table:NAME -->`` tables; see common.py) to the functions that fill them.

One module per doc gives that doc's values and tables from the files committed under docs/; a doc
that quotes another doc's numbers (README.md quotes them all) lists that doc's functions too.
``scripts/doc_tables.py`` (``make docs``) writes every doc of REGISTRY; tests/test_docs.py checks them.
"""

from . import memorization, model, nlschools, own_data, profiling, quality, reliability
from .common import Provider

__all__ = ["REGISTRY"]

REGISTRY: dict[str, Provider] = {
    "README.md": Provider(values=(model.sinusoid_values, quality.target_values, nlschools.values,
                                  profiling.scale_values, own_data.all_study_values)),
    "docs/model.md": Provider(values=(model.train_values, model.sinusoid_values, model.svi_values,
                                      quality.target_values, quality.seed_group_values, reliability.values),
                              tables=(model.tables,)),
    "docs/own_data.md": Provider(values=(model.train_values, own_data.values, own_data.all_study_values),
                                 tables=(own_data.tables, own_data.study_tables)),
    "docs/nlschools.md": Provider(values=(nlschools.values,), tables=(nlschools.tables,)),
    "docs/reliability.md": Provider(values=(reliability.values,)),
    "docs/quality/README.md": Provider(values=(model.sinusoid_values, reliability.values, quality.values),
                                       tables=(quality.tables,)),
    "docs/profiling.md": Provider(values=(profiling.scale_values, profiling.benchmark_values,
                                          profiling.checkpointed_values, profiling.accuracy_values),
                                  tables=(profiling.tables,)),
    "docs/memorization.md": Provider(values=(memorization.values,)),
}
