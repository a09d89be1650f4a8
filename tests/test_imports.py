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


# -- import cycles --------------------------------------------------------------------------------

CYCLE_FREE = ("hierarchical_meta", "profiling")


def module_names(packages=CYCLE_FREE) -> dict[str, pathlib.Path]:
    """Dotted module name -> file, for every module of ``packages`` (a package is its __init__.py)."""
    found = {}
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported_modules(name: str, path: pathlib.Path, known) -> set[str]:
    """The known modules ``name`` imports anywhere in its file (function-level imports too), with
    the packages whose __init__ such an import runs first (those that do not contain ``name``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]) if node.level else ""
            base = ".".join(part for part in (base, node.module or "") if part)
            targets.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names)
    edges = set()
    for target in targets:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            ancestor = ".".join(parts[:i])
            inside = name == ancestor or name.startswith(ancestor + ".")
            if ancestor in known and ancestor != name and (i == len(parts) or not inside):
                edges.add(ancestor)
    return edges


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` (module -> modules it imports) as a path that ends where it starts, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_library_and_the_profiling_study_have_no_import_cycle():
    known = module_names()
    graph = {name: imported_modules(name, path, known) for name, path in known.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_sees_cycles_and_function_level_imports(tmp_path):
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "one.py").write_text("def f():\n    from .two import g\n")
    (tmp_path / "pkg" / "two.py").write_text("from pkg import one\n")
    known = {"pkg": tmp_path / "pkg" / "__init__.py", "pkg.one": tmp_path / "pkg" / "one.py",
             "pkg.two": tmp_path / "pkg" / "two.py"}
    graph = {name: imported_modules(name, path, known) for name, path in known.items()}
    assert graph == {"pkg": set(), "pkg.one": {"pkg.two"}, "pkg.two": {"pkg.one"}}
    assert find_cycle(graph) == ["pkg.one", "pkg.two", "pkg.one"]
