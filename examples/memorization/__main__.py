"""Memorization in meta-learning, measured: train meta-learners per scenario and probe them.

Trains the learners of :mod:`examples.memorization.study` on each scenario of
:mod:`examples.memorization.scenarios`, runs the probe on fresh meta-train and meta-test
tasks, and writes ``DIR/results.csv`` and ``DIR/results.md`` (performance vs chance and
the probe's scores). With ``--beta`` it also runs the information-bottleneck experiment
on ``basis-task-id`` and writes ``DIR/beta.csv`` and ``DIR/beta.md``. With ``--update``
it replaces, in an existing ``DIR/results.csv``, only the (scenario, learner) rows this
run produces, and lists every command that made the table in ``DIR/results.md``.
Run from the repository root:

    python -m examples.memorization --out docs/memorization --beta
    python -m examples.memorization --scenario grasp --tiny --out /tmp/mem   # seconds
    python -m examples.memorization --scenario mutually-exclusive --learner bayes --update --out docs/memorization
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys

import torch

from hierarchical_meta.errors import report_errors
from hierarchical_meta.runfiles import output_folder

from .results import markdown_table, merge_rows, previous_commands, read_csv, write_csv
from .scenarios import SCENARIOS, make_scenario
from .study import LEARNERS, TINY, Study, StudyConfig

__all__ = ["main"]


def main(argv=None) -> list:
    """Run the study from the command line; returns the rows written to ``DIR/results.csv``."""
    parser = argparse.ArgumentParser(prog="python -m examples.memorization",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS),
                        help="scenario to run (repeatable; default: all)")
    parser.add_argument("--learner", action="append", choices=LEARNERS, help="learner (repeatable; default: all)")
    parser.add_argument("--out", required=True, help="output folder for results.csv / results.md")
    default = StudyConfig()  # the one place of the study's defaults
    parser.add_argument("--steps", type=int, default=default.steps,
                        help="training steps (pooled, CNP, Bayesian model); default %(default)s")
    parser.add_argument("--maml-steps", type=int, default=default.maml_steps,
                        help="MAML meta-training steps; default %(default)s")
    parser.add_argument("--hidden", type=int, default=default.hidden,
                        help="hidden units of every network; default %(default)s")
    parser.add_argument("--probe-tasks", type=int, default=default.probe_tasks,
                        help="tasks per split in the probe (>= 2); default %(default)s")
    parser.add_argument("--derangements", type=int, default=default.derangements,
                        help="support derangements in the probe; default %(default)s")
    parser.add_argument("--num-samples", type=int, default=default.num_samples,
                        help="importance samples (Bayesian model); default %(default)s")
    parser.add_argument("--seed", type=int, default=default.seed, help="default %(default)s")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes for tests (seconds): " +
                        ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in TINY.items()))
    parser.add_argument("--update", action="store_true",
                        help="replace only this run's (scenario, learner) rows in an existing DIR/results.csv")
    parser.add_argument("--beta", action="store_true", help="also run the β bottleneck experiment")
    args = parser.parse_args(argv)
    sizes = {f.name: getattr(args, f.name) for f in dataclasses.fields(StudyConfig)}
    try:
        config = StudyConfig(**{**sizes, **(TINY if args.tiny else {})})
    except ValueError as err:
        parser.error(str(err))
    results_csv, results_md = os.path.join(args.out, "results.csv"), os.path.join(args.out, "results.md")
    if args.update and not os.path.exists(results_csv):
        parser.error(f"--update needs an existing {results_csv}; run once without --update first")
    torch.set_num_threads(1)
    output_folder(args.out)
    shown = sys.argv[1:] if argv is None else list(argv)
    command = "python -m examples.memorization " + " ".join(shlex.quote(a) for a in shown)
    study = Study(config, log=lambda line: print(line, flush=True))
    rows = []
    for name in args.scenario or list(SCENARIOS):
        rows += study.run_scenario(make_scenario(name), args.learner or LEARNERS)
    commands = [command]
    if args.update:
        rows = merge_rows(read_csv(results_csv), rows)
        commands = previous_commands(results_md) + commands
    write_csv(rows, results_csv)
    with open(results_md, "w") as f:
        f.write("# Memorization probe: results\n\n" + markdown_table(rows, commands))
    if args.beta:
        beta_rows, chosen = study.beta_experiment()
        write_csv(beta_rows, os.path.join(args.out, "beta.csv"))
        with open(os.path.join(args.out, "beta.md"), "w") as f:
            f.write("# Information bottleneck β on basis-task-id\n\n"
                    f"β chosen by the follow score on meta-validation tasks: {chosen}\n\n"
                    + markdown_table(beta_rows, command, extra=("beta",)))
    print(f"wrote {args.out}/results.csv and results.md" + (" and beta.csv/beta.md" if args.beta else ""))
    return rows


if __name__ == "__main__":
    sys.exit(report_errors(main))  # a user error: one "error:" line, exit 2
