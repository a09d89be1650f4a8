"""Command line: ``python -m hierarchical_meta {render,fit,compare,predict,demo} --help``.

A mistake in the input ends in one ``error:`` line and exit status 2 (``--debug`` or
``HIERARCHICAL_META_DEBUG=1`` shows the traceback); docs/reliability.md.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import os
import re
import sys
from collections.abc import Sequence

import matplotlib
import torch

from .baselines import check_degree
from .compare import run_compare
from .errors import DEBUG_ENV, report_errors
from .evaluate import EvalConfig
from .meta_model import ModelConfig
from .model import CONTINUOUS, DECODERS, NOISES, PRIORS
from .pipeline import run_demo, run_fit, run_predict
from .predict import NUM_SAMPLES, PREDICT_CHUNK
from .runfiles import check_output_file
from .tasks import FAMILIES, TabularTasks, TaskFamily, make_family
from .tasks.tabular import TEST_FRACTION, VAL_FRACTION
from .train import (
    ANNEAL_SHARE,
    DATA_EPOCHS,
    DATA_MAX_STEPS,
    ELBOS,
    EVALUATIONS,
    PATIENCE,
    SAMPLED_SCHEDULE,
    TrainConfig,
    check_seed,
)

#: The most values a list option (--shots, --split-seeds) takes.
MAX_LIST = 1000

TRAIN, MODEL, EVAL = TrainConfig(), ModelConfig(), EvalConfig()


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value}")
    return value


def seed(text: str) -> int:
    value = int(text)  # argparse reports a ValueError here as "invalid seed value"
    try:
        return check_seed(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def baseline_degree(text: str) -> int | str:
    try:
        return check_degree(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    debug_help = f"show the traceback of an error (also: {DEBUG_ENV}=1)"
    parser = argparse.ArgumentParser(prog="python -m hierarchical_meta", description=__doc__.split("\n")[0])
    parser.add_argument("--debug", action="store_true", help=debug_help)
    common = argparse.ArgumentParser(add_help=False)  # --debug after the command too
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    sub = parser.add_subparsers(dest="command", required=True)

    render = sub.add_parser("render", help="draw the plate diagram with pyro.render_model", parents=[common])
    render.add_argument("--out", required=True, help="output file; .svg, .png or .pdf (DOT source written beside it)")
    render.add_argument("--guide", action="store_true", help="also draw the guide's inference arrows, dashed")

    fit_p = sub.add_parser("fit", help="train on your grouped data (--data) or a task family with SVI, evaluate, "
                                       "write model.pt, metrics.json, plots",
                           formatter_class=HelpFormatter, parents=[common])
    fit_p.add_argument("--tasks", choices=sorted(FAMILIES), help="a built-in task family (default sinusoid)")
    fit_p.add_argument("--out", required=True, help="output folder (rerunning on it with the same options resumes "
                                                     "from DIR/model.pt)")
    add_data_options(fit_p)
    add_fit_options(fit_p)
    add_shot_options(fit_p)
    add_compare_parser(sub, common)

    pred = sub.add_parser("predict", help="predict query points of new tasks given in a CSV file",
                          description="Predict query points of new tasks in the training data's units. Task file "
                                      "format: hierarchical_meta/taskfile.py (task, role, the data's columns).",
                          parents=[common])
    pred.add_argument("--checkpoint", required=True, help="DIR/model.pt written by fit")
    pred.add_argument("--tasks-file", required=True, help="UTF-8 CSV of support and query points per task")
    pred.add_argument("--out", required=True, help="CSV of predictions (<y>_mean, <y>_q05, <y>_q95, loglik)")
    pred.add_argument("--num-samples", type=positive_int, default=NUM_SAMPLES,
                      help=f"importance samples per task (default {NUM_SAMPLES})")
    pred.add_argument("--seed", type=seed, default=0)
    pred.add_argument("--chunk", type=positive_int, default=PREDICT_CHUNK,
                      help=f"tasks predicted at a time (memory; default {PREDICT_CHUNK})")
    pred.add_argument("--no-progress", action="store_true", help="no progress bar")

    demo = sub.add_parser("demo", help="the main job end to end on a small default: diagram, fit with and "
                                       "without metadata, evaluation, plots (what `make demo` runs)",
                          formatter_class=HelpFormatter, parents=[common])
    demo.add_argument("--out", default="runs/demo", help="output folder")
    add_fit_options(demo)
    return parser


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except None: the help of a sized option says how it is sized."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def sized(what: str) -> str:
    """The default of a training option :func:`~hierarchical_meta.train.data_sized` sizes, for its help."""
    return f"(default: {SAMPLED_SCHEDULE[what]} for sinusoid and basis, sized to a data set)"


def add_fit_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training", f"The schedule options left out are sized to the task family "
                                         f"(train.data_sized; docs/own_data.md): a data set (--data, --tasks "
                                         f"NAME) of G training groups trains {DATA_EPOCHS}·G/B steps of B = "
                                         f"min(--batch-tasks, G) groups (at most {DATA_MAX_STEPS}), evaluates "
                                         f"{EVALUATIONS} times, anneals the KL over 1/{round(1 / ANNEAL_SHARE)} of "
                                         f"the steps, keeps the step best on the validation groups and stops "
                                         f"after {PATIENCE} evaluations without a better one.")
    g.add_argument("--steps", type=positive_int, default=None, help=f"SVI steps {sized('steps')}")
    g.add_argument("--extend", action="store_true",
                   help="resume a checkpoint trained with fewer --steps (otherwise a resume needs the same options)")
    g.add_argument("--eval-every", type=positive_int, default=None,
                   help=f"steps between evaluations on the validation tasks {sized('eval_every')}")
    g.add_argument("--patience", type=nonnegative_int, default=None,
                   help="evaluations without a better validation score before the run stops and keeps its best "
                        f"step; 0: no early stopping, the last step is kept {sized('patience')}")
    g.add_argument("--checkpoint-every", type=positive_int, default=None,
                   help=f"steps between writes of model.pt (a killed run resumes from the last one) "
                        f"{sized('checkpoint_every')}")
    g.add_argument("--seed", type=seed, default=TRAIN.seed, help="random seed (tasks, initialization, draws)")
    g.add_argument("--metadata", metavar="use|none|COL[,COL...]", default=None,
                   help="built-in families: 'use' (default) or 'none', which withholds m everywhere (the "
                        "ablation); with --data: the metadata columns (constant within a group), or "
                        "'none' (or omitted) for no metadata")
    g.add_argument("--batch-tasks", type=positive_int, default=TRAIN.batch_tasks,
                   help="tasks per SVI step (on a data set at most its training groups)")
    g.add_argument("--max-points", type=positive_int, default=TRAIN.max_points,
                   help="points per training task (each task keeps a random min..max of them)")
    g.add_argument("--min-points", type=int, default=TRAIN.min_points,
                   help="fewest points a training task keeps")
    g.add_argument("--lr", type=float, default=TRAIN.lr, help="initial Adam learning rate")
    g.add_argument("--lr-decay", type=float, default=TRAIN.lr_decay,
                   help="the learning rate decays geometrically to lr / LR_DECAY over the run")
    g.add_argument("--clip-norm", type=float, default=TRAIN.clip_norm, help="gradients are clipped to this norm")
    g.add_argument("--anneal-steps", type=nonnegative_int, default=None,
                   help=f"KL annealing steps (β to 1) {sized('anneal_steps')}")
    g.add_argument("--metadata-dropout", type=float, default=TRAIN.metadata_dropout,
                   help="fraction of training tasks whose metadata is dropped (read as missing)")
    g.add_argument("--metadata-swap", type=float, default=TRAIN.metadata_swap,
                   help="fraction of training tasks given another task's metadata (teaches how far to trust m)")
    g.add_argument("--elbo", choices=ELBOS, default=TRAIN.elbo,
                   help="'fast' differentiates the hand-written bound (bound.py); 'pyro' runs Pyro's SVI on "
                        "Trace_ELBO (the reference: same draws, same gradients)")
    m = p.add_argument_group("model")
    m.add_argument("--latent-dim", type=positive_int, default=MODEL.latent_dim, help="dimension D of φ1 and φ2")
    m.add_argument("--hidden", type=positive_int, default=MODEL.hidden, help="hidden units per layer")
    m.add_argument("--layers", type=int, default=MODEL.layers, help="hidden layers per network")
    m.add_argument("--prior", choices=PRIORS, default=MODEL.prior, help="form of p(φ2 | φ1, m)")
    m.add_argument("--decoder", choices=DECODERS, default=MODEL.decoder, help="form of p(y | φ2, x)")
    m.add_argument("--guide", choices=("data", "data+metadata"),
                   default="data+metadata" if MODEL.guide_sees_metadata else "data",
                   help="what q(φ2 | ...) sees: the support set, or the support set and m")
    m.add_argument("--polynomial-degree", type=positive_int, default=MODEL.polynomial_degree,
                   help="degree of --decoder polynomial's terms (it needs --latent-dim >= 1 + degree·x_dim)")
    m.add_argument("--noise", choices=NOISES, default=MODEL.noise,
                   help="observation noise of p(y | φ2, x): one learned s, or s(x, φ2) (heteroscedastic)")
    m.add_argument("--likelihood", choices=CONTINUOUS, default=MODEL.likelihood,
                   help="distribution of the noise: normal, or Student-t (heavy tails)")
    m.add_argument("--student-df", type=float, default=MODEL.student_df,
                   help="degrees of freedom ν > 1 of --likelihood student (default: learned)")
    m.add_argument("--guide-components", type=positive_int, default=MODEL.guide_components,
                   help="q(φ2 | ...) is a mixture of this many Gaussians (1: one Gaussian)")
    e = p.add_argument_group("evaluation")
    e.add_argument("--eval-tasks", type=positive_int, default=EVAL.num_tasks,
                   help="held-out tasks drawn to score a sampled family (sinusoid, basis); a data set is scored "
                        "on all its test groups")
    e.add_argument("--eval-draws", type=positive_int, default=EVAL.draws,
                   help="random support/query partitions of the held-out tasks (or groups), pooled")
    e.add_argument("--num-samples", type=positive_int, default=NUM_SAMPLES, help="importance samples per task")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_data_options(p: argparse.ArgumentParser, split_seed: bool = True) -> None:
    d = p.add_argument_group("your own grouped data (a CSV file, one row per point; docs/own_data.md)")
    d.add_argument("--data", metavar="FILE.csv", help="the data: one group of rows is one task")
    d.add_argument("--group", metavar="COL", help="the column naming each row's group")
    d.add_argument("--x", metavar="COL[,COL...]", help="the input columns (numeric or categorical)")
    d.add_argument("--y", metavar="COL[,COL...]", help="the output column(s), numeric")
    d.add_argument("--categorical", metavar="COL[,COL...]", default="",
                   help="x or metadata columns holding numbers to read as categories")
    split = d.add_mutually_exclusive_group()
    split.add_argument("--split-column", metavar="COL",
                       help="a column holding train, val or test per group (instead of a random split)")
    split.add_argument("--test-fraction", type=float, default=TEST_FRACTION,
                       help="fraction of the groups held out for testing, at random")
    d.add_argument("--val-fraction", type=float, default=VAL_FRACTION,
                   help="fraction of the groups held out for validation, at random")
    if split_seed:
        d.add_argument("--split-seed", type=int, default=0, help="seed of the random split of the groups "
                                                                "(also of a built-in data set: --tasks nlschools...)")


def add_shot_options(p: argparse.ArgumentParser) -> None:
    """--shots, --same-groups and --baseline-degree: which K are scored, on which groups of a data set,
    against which baselines."""
    g = p.add_argument_group("which K (support rows per held-out group) are scored")
    g.add_argument("--shots", metavar="K[,K...]", default=",".join(str(k) for k in EVAL.shots),
                   help="the numbers K of support points, comma-separated (ranges A-B too); a data set is scored "
                        "at each K on every test group with more than K rows")
    g.add_argument("--same-groups", action="store_true",
                   help="score a data set on the same test groups at every K: those with more than the largest K rows")
    g.add_argument("--baseline-degree", type=baseline_degree, default="auto", metavar="auto|1|2|3",
                   help="polynomial degree in each numeric x of the mixed model and pooled regression of a data "
                        "set; 'auto' chooses it on the validation groups")


def add_compare_parser(sub, common: argparse.ArgumentParser) -> None:
    """The ``compare`` command: ``fit`` on several random splits of a data set's groups, compared over them."""
    cmp = sub.add_parser(
        "compare", help="fit a data set on several random splits of its groups; each model's loglik per K "
                        "(mean ± sd over splits), the model's paired margins and its Monte Carlo error",
        description="Run fit on each split of --split-seeds into OUT/split-S (a finished split is read back, "
                    "not refitted) and compare over the splits: comparison.json, comparison.csv, comparison.png "
                    "and a table (docs/own_data.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, parents=[common])
    cmp.add_argument("--tasks", choices=sorted(FAMILIES), help="a built-in data set (nlschools, sleepstudy, "
                                                               "chickweight, co2, hsb82, chem97)")
    cmp.add_argument("--out", required=True, help="output folder: split-S/ per split and the comparison (rerunning "
                                                   "on it resumes)")
    cmp.add_argument("--split-seeds", metavar="S[,S...]", default="0-4",
                     help="the seeds of the random splits of the groups, comma-separated, or a range A-B")
    add_data_options(cmp, split_seed=False)
    add_fit_options(cmp)
    add_shot_options(cmp)


def int_list(text: str, flag: str) -> list[int]:
    """'0,1,2,5-7' -> [0, 1, 2, 5, 6, 7], sorted: integers >= 0 and ranges A-B, comma-separated, each
    named once, at most :data:`MAX_LIST`; ValueError naming ``flag`` and the bad part otherwise."""
    values = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match is None:
            raise ValueError(f"{flag} takes integers >= 0 or ranges A-B, comma-separated (e.g. 0,1,2,5,10 or "
                             f"0-4), got {part.strip()!r} in {text!r}")
        low, high = int(match[1]), int(match[2] or match[1])
        if high < low:
            raise ValueError(f"{flag}: the range {part.strip()!r} runs backwards; write {high}-{low}")
        if len(values) + high - low >= MAX_LIST:
            raise ValueError(f"{flag} {text!r} names more than {MAX_LIST} values; give fewer")
        values += range(low, high + 1)
    twice = sorted({v for v in values if values.count(v) > 1})
    if twice:
        raise ValueError(f"{flag} {text!r} names {twice} more than once; name each value once")
    return sorted(values)


def columns(text: str | None) -> list[str]:
    """'a,b' -> ['a', 'b']; None, '' or 'none' -> []."""
    if text is None or text.strip() in ("", "none"):
        return []
    return [name.strip() for name in text.split(",")]


DATA_ONLY = ("group", "x", "y", "split_column")


def make_fit_family(args) -> TaskFamily:
    """The task family of the parsed fit flags: a built-in family, or the grouped data of --data."""
    if args.data is None:
        given = [f"--{flag.replace('_', '-')}" for flag in DATA_ONLY if getattr(args, flag) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} name columns of your data; give the file with --data FILE.csv")
        return builtin_family(args)
    if args.tasks is not None:
        raise ValueError(f"give --tasks {args.tasks} or --data {args.data}, not both")
    missing = [f"--{flag}" for flag in ("group", "x", "y") if not getattr(args, flag)]
    if missing:
        raise ValueError(f"--data needs {', '.join(missing)}: the columns naming each row's group, "
                         "its inputs and its outputs")
    return TabularTasks.from_csv(args.data, group=args.group, x=columns(args.x), y=columns(args.y),
                                 metadata=columns(args.metadata), categorical=columns(args.categorical),
                                 split_column=args.split_column, val_fraction=args.val_fraction,
                                 test_fraction=args.test_fraction, split_seed=args.split_seed,
                                 name=os.path.splitext(os.path.basename(args.data))[0])


def builtin_family(args) -> TaskFamily:
    """The family of --tasks (default sinusoid); a built-in data set's groups split by --split-seed,
    --val-fraction and --test-fraction."""
    name = args.tasks or "sinusoid"
    if "split_seed" in inspect.signature(FAMILIES[name]).parameters:
        return make_family(name, split_seed=args.split_seed, val_fraction=args.val_fraction,
                           test_fraction=args.test_fraction)
    return make_family(name)


def configs(args, family: TaskFamily):
    """The model, training and evaluation configs of the parsed fit/demo flags."""
    if getattr(args, "data", None) is None and args.metadata not in (None, "use", "none"):
        raise ValueError(f"--metadata takes 'use' or 'none' for a built-in family, got {args.metadata!r}; "
                         "metadata column names go with --data FILE.csv")
    use_metadata = MODEL.use_metadata if args.metadata in (None, "use") else args.metadata != "none"
    model = ModelConfig(x_dim=family.x_dim, y_dim=family.y_dim, metadata_dim=family.metadata_dim,
                        latent_dim=args.latent_dim, hidden=args.hidden, layers=args.layers,
                        prior=args.prior, decoder=args.decoder,
                        guide_sees_metadata=args.guide == "data+metadata", use_metadata=use_metadata,
                        guide_components=args.guide_components, noise=args.noise,
                        polynomial_degree=args.polynomial_degree, likelihood=args.likelihood,
                        student_df=args.student_df)
    train = TrainConfig(steps=args.steps, batch_tasks=args.batch_tasks, max_points=args.max_points,
                        min_points=args.min_points, lr=args.lr, lr_decay=args.lr_decay, clip_norm=args.clip_norm,
                        anneal_steps=args.anneal_steps, metadata_dropout=args.metadata_dropout,
                        metadata_swap=args.metadata_swap, seed=args.seed, checkpoint_every=args.checkpoint_every,
                        elbo=args.elbo, eval_every=args.eval_every, patience=args.patience)
    return model, train, evaluation_config(args, family)


def evaluation_config(args, family: TaskFamily) -> EvalConfig:
    """The evaluation config of the parsed flags: --shots, --same-groups, --eval-draws and, for a
    sampled family alone, --eval-tasks (a data set is scored on all its test groups)."""
    if family.fixed_dataset and args.eval_tasks != EVAL.num_tasks:
        raise ValueError(f"--eval-tasks {args.eval_tasks} sets how many tasks are drawn to score a sampled family "
                         "(sinusoid, basis); a data set is scored on all its test groups: choose how many with "
                         "--test-fraction (or --split-column)")
    shots = int_list(args.shots, "--shots") if "shots" in args else EVAL.shots
    return EvalConfig(shots=shots, num_tasks=args.eval_tasks, draws=args.eval_draws,
                      same_groups=getattr(args, "same_groups", EVAL.same_groups))


def run_compare_command(args, progress: bool) -> None:
    """``compare``: the data set of --data or --tasks split by each seed of --split-seeds (:func:`run_compare`)."""
    if args.data is None and args.tasks is None:
        raise ValueError("compare needs a data set: --data FILE.csv (with --group, --x, --y) or --tasks NAME")
    if args.split_column is not None:
        raise ValueError(f"--split-column {args.split_column} fixes one split of the groups; compare draws random "
                         "splits (--split-seeds): use fit with --split-column")
    seeds = [check_seed(seed) for seed in int_list(args.split_seeds, "--split-seeds")]
    family_of_split = functools.cache(lambda seed: make_fit_family(argparse.Namespace(**vars(args), split_seed=seed)))
    model, train, evaluation = configs(args, family_of_split(seeds[0]))  # checks the data before any training
    run_compare(family_of_split, seeds, model, train, args.out, evaluation, num_samples=args.num_samples,
                progress=progress, extend=args.extend, baseline_degree=args.baseline_degree)


def run_render(out: str, guide: bool) -> None:
    from .render import render_diagram

    check_output_file(out, "--out")
    render_diagram(path=out, guide=guide)
    print(f"wrote {out}")


def run(args) -> None:
    """The work of the parsed command."""
    progress = not args.no_progress if "no_progress" in args else True
    if args.command == "render":
        run_render(args.out, args.guide)
    elif args.command == "predict":
        run_predict(args.checkpoint, args.tasks_file, args.out, num_samples=args.num_samples, seed=args.seed,
                    chunk=args.chunk, progress=progress)
    elif args.command == "compare":
        run_compare_command(args, progress)
    elif args.command == "fit":
        family = make_fit_family(args)
        model, train, evaluation = configs(args, family)
        run_fit(family, model, train, args.out, evaluation, num_samples=args.num_samples, progress=progress,
                extend=args.extend, baseline_degree=args.baseline_degree)
    else:
        model, train, evaluation = configs(args, make_family("sinusoid"))
        run_demo(args.out, model, train, evaluation, num_samples=args.num_samples, progress=progress,
                 extend=args.extend)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    matplotlib.use("Agg")  # files only, no windows
    torch.set_num_threads(1)  # these networks are small: one thread is fastest on 2 cores
    return report_errors(lambda: run(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
