"""Write the result tables and quoted numbers of README.md and docs/*.md from the committed runs.

``python scripts/doc_tables.py`` (``make docs``) rewrites, in place, every doc of
``scripts.doc_providers.REGISTRY``: each region between

    <!-- table:NAME -->            a whole Markdown table (indented as the marker)
    ...
    <!-- /table -->

and each inline ``<!--v:KEY-->TEXT<!--/v-->`` (or ``<!--v:KEY:SPEC-->``, SPEC a Python format
spec such as ``.3f``), from the doc's provider (scripts/doc_providers/, one module per doc). Every
table and number comes from a file committed under docs/.
``--check`` writes nothing and exits 1 naming each doc that differs (tests/test_docs.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the library, profiling/, examples/ and scripts.doc_providers

from scripts.doc_providers import REGISTRY  # noqa: E402  (the repository root is on the path only now)

__all__ = ["expected", "main"]


def expected() -> dict[str, str]:
    """Doc path (relative to the repository root) -> the text ``make docs`` would write."""
    return {path: provider.render(path) for path, provider in REGISTRY.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a doc differs")
    args = parser.parse_args(argv)
    stale = []
    for path, text in expected().items():
        if (ROOT / path).read_text() != text:
            stale.append(path)
            if not args.check:
                (ROOT / path).write_text(text)
    if stale:
        print(("differs from `make docs`: " if args.check else "rewrote: ") + ", ".join(stale))
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
