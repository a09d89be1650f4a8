"""What every doc provider shares: the markers and their substitution, file reading, number formatting.

A doc's generated text sits between markers: a whole Markdown table

    <!-- table:NAME -->            (the table indented as this marker)
    ...
    <!-- /table -->

and an inline ``<!--v:KEY-->TEXT<!--/v-->`` (or ``<!--v:KEY:SPEC-->``, SPEC a Python format spec such
as ``.3f``). A ``Provider`` names the functions that give a doc's values (KEY -> number or phrase)
and tables (NAME -> Markdown); ``render`` puts them between the markers.
"""

from __future__ import annotations

import ast
import csv
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TABLE = re.compile(r"^([ \t]*)(<!-- table:([\w-]+) -->\n)(.*?)^[ \t]*(<!-- /table -->)", re.DOTALL | re.MULTILINE)
VALUE = re.compile(r"<!--v:([\w.-]+)(?::([^>]*?))?-->(.*?)<!--/v-->")
MARKERS = ((TABLE, "<!-- table:", "<!-- /table -->"), (VALUE, "<!--v:", "<!--/v-->"))


# ---- the markers -------------------------------------------------------------------------

def has_markers(text: str) -> bool:
    """Whether ``text`` holds a generated table or value (an opening marker)."""
    return any(opening in text for _, opening, _ in MARKERS)


def check_markers(text: str, where: str) -> None:
    """Every opening marker has its closing one, on the same line for a value; else ValueError."""
    for pattern, opening, closing in MARKERS:
        whole = len(pattern.findall(text))
        if not whole == text.count(opening) == text.count(closing):
            raise ValueError(f"{where}: {text.count(opening)} {opening!r} and {text.count(closing)} {closing!r} "
                             f"markers, but {whole} whole regions (a value must stay on one line)")


def put_table(match: re.Match, tables: dict[str, str], where: str) -> str:
    """A table region rewritten, the table indented as its opening marker (a table inside a list item)."""
    indent, name = match.group(1), match.group(3)
    if name not in tables:
        raise ValueError(f"{where}: no table named {name!r}; known: {sorted(tables)}")
    rows = "".join(indent + line for line in tables[name].splitlines(keepends=True))
    return indent + match.group(2) + rows + indent + match.group(5)


def put_value(match: re.Match, values: dict[str, object], where: str) -> str:
    """An inline value rewritten, formatted by the marker's spec (a phrase takes none)."""
    key, spec = match.group(1), match.group(2)
    if key not in values:
        raise ValueError(f"{where}: no value named {key!r} (scripts/doc_providers/, the doc's provider)")
    value = values[key]
    if isinstance(value, str) and spec:
        raise ValueError(f"{where}: {key!r} is a phrase and takes no format spec, got {spec!r}")
    return f"<!--v:{key}{':' + spec if spec else ''}-->{format(value, spec or '')}<!--/v-->"


def render(text: str, values: dict, tables: dict, where: str = "a doc") -> str:
    """``text`` with every table region and inline value rewritten; unknown names raise ValueError."""
    check_markers(text, where)
    text = TABLE.sub(lambda match: put_table(match, tables, where), text)
    return VALUE.sub(lambda match: put_value(match, values, where), text)


def merged(functions: Iterable[Callable[[], dict]], what: str) -> dict:
    """The union of the dicts the functions return; a name two of them give raises ValueError."""
    out: dict = {}
    for function in functions:
        found = function()
        twice = sorted(out.keys() & found.keys())
        if twice:
            raise ValueError(f"{what} {twice[:5]} given twice, again by {function.__module__}.{function.__name__}")
        out.update(found)
    return out


@dataclass(frozen=True)
class Provider:
    """Where one doc's generated text comes from: functions giving {KEY: value} and {NAME: table}."""

    values: tuple[Callable[[], dict[str, object]], ...] = ()
    tables: tuple[Callable[[], dict[str, str]], ...] = ()

    def all_values(self) -> dict[str, object]:
        return merged(self.values, "values")

    def all_tables(self) -> dict[str, str]:
        return merged(self.tables, "tables")

    def render(self, path: str) -> str:
        """The doc at ``path`` (relative to the repository root) as ``make docs`` writes it."""
        return render((ROOT / path).read_text(), self.all_values(), self.all_tables(), where=path)


# ---- the committed files -----------------------------------------------------------------

def read_text(path: str) -> str:
    return (ROOT / path).read_text()


def read_json(path: str) -> dict:
    return json.loads(read_text(path))


def read_csv(path: str) -> list[dict]:
    with open(ROOT / path, newline="") as f:
        return list(csv.DictReader(f))


def module_constant(path: str, name: str):
    """The literal a module assigns to ``name`` (read, not imported)."""
    for node in ast.parse(read_text(path)).body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == [name]:
            return ast.literal_eval(node.value)
    raise ValueError(f"{path} assigns no literal {name}")


def markdown_tables(text: str) -> list[list[str]]:
    """The Markdown tables of ``text``, each as its lines (header, rule, rows)."""
    out, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            out.append(current)
            current = []
    return out


def cells(line: str) -> list[str]:
    """'| a | b |' -> ['a', 'b']."""
    return [c.strip() for c in line.strip("|").split("|")]


# ---- formatting --------------------------------------------------------------------------

def minus(text: str) -> str:
    """Typographic minus, as the model tables print it."""
    return text.replace("-", "−")


def grouped(n: int) -> str:
    """80000 -> '80 000' (SI grouping from five digits on), 8000 -> '8000'."""
    return f"{n:,}".replace(",", " ") if n >= 10_000 else str(n)


def sci(x: float) -> str:
    """0.003 -> '3e-3'."""
    mantissa, exponent = f"{x:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def ks(shots) -> str:
    """[1, 2] -> 'K = 1 and 2', [0, 2, 5] -> 'K = 0, 2 and 5'."""
    shots = [str(k) for k in shots]
    if not shots:
        raise ValueError("no K to name")
    return "K = " + and_list(shots)


def ks_or_none(shots) -> str:
    """ks(shots), or 'no K' for none."""
    shots = list(shots)
    return ks(shots) if shots else "no K"


def and_list(items) -> str:
    """['a', 'b', 'c'] -> 'a, b and c'."""
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def slashed(xs, spec: str) -> str:
    """[0.1, 0.2] -> '0.100 / 0.200' for spec '.3f'."""
    return " / ".join(format(x, spec) for x in xs)


def extent(xs, spec: str, joiner: str = "–") -> str:
    """[0.2, 0.1, 0.3] -> '0.100–0.300' for spec '.3f': the smallest and the largest."""
    xs = list(xs)
    return f"{min(xs):{spec}}{joiner}{max(xs):{spec}}"


def span(xs, spec: str) -> str:
    """[0.07, 0.08] -> '0.07–0.08' (one number if all round alike)."""
    low, high = format(min(xs), spec), format(max(xs), spec)
    return low if low == high else f"{low}–{high}"


def zero_unsigned(x: float, digits: int) -> float:
    """``x`` rounded to ``digits`` decimals, with −0 as 0 (so -0.0003 prints as 0.00, not -0.00)."""
    return round(x, digits) + 0.0


def mean_sd(r: dict, column: str, sign: str = "") -> str:
    """A summary CSV row's ``column`` as 'mean ± sd' (sd from ``column``_sd); '–' for a NaN mean."""
    mean = float(r[column])
    return "–" if math.isnan(mean) else f"{mean:{sign}.3f} ± {float(r[column + '_sd']):.3f}"


def row(cells) -> str:
    return "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"


def table(header, rows) -> str:
    return "\n".join([row(header), "|" + "---|" * len(header), *(row(r) for r in rows)]) + "\n"
