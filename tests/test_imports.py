"""Layering, checked on the source: the library never imports its studies (``profiling``,
``examples``), and no module imports another module's underscore (private) name."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("hierarchical_meta", "profiling", "examples", "tests")


def imported(path):
    """(module, name) for every import in a file; name None for ``import module``."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from ((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            yield from ((module, alias.name) for alias in node.names)


def private(name):
    return name.startswith("_") and not name.startswith("__")


def test_library_never_imports_its_studies():
    found = [(str(p.relative_to(ROOT)), module) for p in (ROOT / "hierarchical_meta").rglob("*.py")
             for module, _ in imported(p) if module.split(".")[0] in ("profiling", "examples")]
    assert not found, f"hierarchical_meta/ imports a study: {found}"


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_imports_a_private_name(package):
    found = [(str(p.relative_to(ROOT)), module, name) for p in (ROOT / package).rglob("*.py")
             for module, name in imported(p)
             if (name is not None and private(name)) or any(private(part) for part in module.split(".") if part)]
    assert not found, f"imports of another module's private name: {found}"


def test_the_checks_see_imports():
    """The scan is not vacuous: it finds this file's own imports."""
    assert ("ast", None) in set(imported(pathlib.Path(__file__)))
