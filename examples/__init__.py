"""Studies and benchmarks built on the library, run from the repository root.

Scripts run as ``python examples/NAME.py``; packages (``examples/memorization``) as
``python -m examples.NAME``. The library (``hierarchical_meta``) never imports them.
"""
