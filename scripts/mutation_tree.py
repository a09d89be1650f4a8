"""Copy the tree that mutmut runs on (``make mutation``) into ``build/mutation``.

mutmut leaves decorated functions unmutated, and ``posterior_predictive``, ``evaluate`` and
``heldout_elbo`` are decorated with ``@torch.no_grad()``. In the copy each such decorator is
applied after the module's code instead (``name = torch.no_grad()(name)`` at its end): the
same function, computed the same way, that mutmut can now mutate.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "mutation"
COPIED = ("hierarchical_meta", "profiling", "tests", "docs", "examples", "setup.cfg", "pyproject.toml")
DECORATOR = "torch.no_grad()"


def undecorated(source: str) -> str:
    """``source`` with each top-level ``@torch.no_grad()`` function wrapped at the module's end."""
    lines = source.splitlines(keepends=True)
    names = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and [ast.unparse(d) for d in node.decorator_list] == [DECORATOR]:
            lines[node.decorator_list[0].lineno - 1] = ""
            names.append(node.name)
    return "".join(lines) + "".join(f"\n{name} = {DECORATOR}({name})\n" for name in names)


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, OUT / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, OUT / name)
    for path in (OUT / "hierarchical_meta").glob("*.py"):
        path.write_text(undecorated(path.read_text()))


if __name__ == "__main__":
    main()
