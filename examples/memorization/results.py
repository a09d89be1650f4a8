"""The study's tables: CSV rows on disk, merged updates, and the Markdown table of results."""

from __future__ import annotations

import csv
import os
import re

from .scenarios import SCENARIOS
from .study import LEARNERS

__all__ = ["write_csv", "read_csv", "merge_rows", "previous_commands", "markdown_table"]


def write_csv(rows, path):
    """One row per dict; the columns are every key, in order of first appearance."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path):
    """Rows of a CSV written by :func:`write_csv`, numbers parsed back (int, else float)."""
    def parse(value):
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
        return value
    with open(path, newline="") as f:
        return [{k: parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


def merge_rows(old, new):
    """``old`` with the (scenario, learner) pairs of ``new`` replaced, in scenario then learner order."""
    pairs = {(r["scenario"], r["learner"]) for r in new}
    rows = [r for r in old if (r["scenario"], r["learner"]) not in pairs] + new
    order = {name: i for i, name in enumerate(SCENARIOS)}
    # a stable sort keeps each pair's splits in their order
    return sorted(rows, key=lambda r: (order.get(r["scenario"], len(order)), LEARNERS.index(r["learner"])))


def previous_commands(path):
    """The commands listed in an existing results.md (``Command:`` and ``Then:`` lines)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return re.findall(r"^(?:Command|Then): `(.+)`$", f.read(), flags=re.M)


def markdown_table(rows, command, extra=()):
    """The probe's scores per row, under the command(s) that made them; ``extra`` columns after the learner."""
    head = ["scenario", "learner", *extra, "split", "metric", "own support", "no support", "chance",
            "NLL own", "gain vs swapped (nats)", "gain vs none (nats)", "follow"]
    commands = [command] if isinstance(command, str) else list(command)
    lines = [f"Command: `{commands[0]}`", *[f"Then: `{c}`" for c in commands[1:]], "",
             "metric: accuracy (classification) or MSE (regression); chance: the majority class, or a "
             "constant predictor (the split's query variance). NLL: nats per query point. "
             "± one standard error across tasks.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["scenario"], r["learner"], *[str(r[k]) for k in extra], r["split"], r["metric_name"],
                 f"{r['metric']:.3f}", f"{r['metric_none']:.3f}", f"{r['chance_metric']:.3f}",
                 f"{r['loss']:.3f}", f"{r['gain_vs_swapped']:.3f} ± {r['gain_vs_swapped_se']:.3f}",
                 f"{r['gain_vs_none']:.3f} ± {r['gain_vs_none_se']:.3f}",
                 f"{r['follow']:.3f} ± {r['follow_se']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
