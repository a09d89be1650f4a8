"""Command line: ``python -m hierarchical_meta {render,fit,predict,demo} --help``.

A mistake in the input ends in one ``error:`` line and exit status 2 (``--debug`` or
``HIERARCHICAL_META_DEBUG=1`` shows the traceback); docs/reliability.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import matplotlib
import torch

from .errors import DEBUG_ENV, report_errors
from .evaluate import EvalConfig
from .meta_model import ModelConfig
from .model import CONTINUOUS, DECODERS, NOISES, PRIORS
from .pipeline import run_demo, run_fit, run_predict
from .predict import NUM_SAMPLES, PREDICT_CHUNK
from .runfiles import check_output_file
from .tasks import FAMILIES, TabularTasks, TaskFamily, make_family
from .tasks.tabular import TEST_FRACTION, VAL_FRACTION
from .train import ELBOS, TrainConfig, check_seed

TRAIN, MODEL, EVAL = TrainConfig(), ModelConfig(), EvalConfig()


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def seed(text: str) -> int:
    value = int(text)  # argparse reports a ValueError here as "invalid seed value"
    try:
        return check_seed(value)
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
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter, parents=[common])
    fit_p.add_argument("--tasks", choices=sorted(FAMILIES), help="a built-in task family (default sinusoid)")
    fit_p.add_argument("--out", required=True, help="output folder (rerunning on it with the same options resumes "
                                                     "from DIR/model.pt)")
    add_data_options(fit_p)
    add_fit_options(fit_p)

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
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter, parents=[common])
    demo.add_argument("--out", default="runs/demo", help="output folder")
    add_fit_options(demo)
    return parser


def add_fit_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=positive_int, default=TRAIN.steps, help="SVI steps")
    g.add_argument("--extend", action="store_true",
                   help="resume a checkpoint trained with fewer --steps (otherwise a resume needs the same options)")
    g.add_argument("--checkpoint-every", type=positive_int, default=TRAIN.checkpoint_every,
                   help="steps between writes of model.pt (a killed run resumes from the last one)")
    g.add_argument("--seed", type=seed, default=TRAIN.seed, help="random seed (tasks, initialization, draws)")
    g.add_argument("--metadata", metavar="use|none|COL[,COL...]", default=None,
                   help="built-in families: 'use' (default) or 'none', which withholds m everywhere (the "
                        "ablation); with --data: the metadata columns (constant within a group), or "
                        "'none' (or omitted) for no metadata")
    g.add_argument("--batch-tasks", type=positive_int, default=TRAIN.batch_tasks, help="tasks per SVI step")
    g.add_argument("--max-points", type=positive_int, default=TRAIN.max_points,
                   help="points per training task (each task keeps a random min..max of them)")
    g.add_argument("--min-points", type=int, default=TRAIN.min_points,
                   help="fewest points a training task keeps")
    g.add_argument("--lr", type=float, default=TRAIN.lr, help="initial Adam learning rate")
    g.add_argument("--lr-decay", type=float, default=TRAIN.lr_decay,
                   help="the learning rate decays geometrically to lr / LR_DECAY over the run")
    g.add_argument("--clip-norm", type=float, default=TRAIN.clip_norm, help="gradients are clipped to this norm")
    g.add_argument("--anneal-steps", type=int, default=TRAIN.anneal_steps, help="KL annealing steps (β to 1)")
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
    e.add_argument("--eval-tasks", type=positive_int, default=EVAL.num_tasks, help="held-out tasks for metrics.json")
    e.add_argument("--eval-draws", type=positive_int, default=EVAL.draws,
                   help="random support/query partitions of the held-out tasks (or groups), pooled")
    e.add_argument("--num-samples", type=positive_int, default=NUM_SAMPLES, help="importance samples per task")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_data_options(p: argparse.ArgumentParser) -> None:
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
    d.add_argument("--split-seed", type=int, default=0, help="seed of the random split of the groups")


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
        return make_family(args.tasks or "sinusoid")
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
                        elbo=args.elbo)
    return model, train, EvalConfig(num_tasks=args.eval_tasks, draws=args.eval_draws)


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
    elif args.command == "fit":
        family = make_fit_family(args)
        model, train, evaluation = configs(args, family)
        run_fit(family, model, train, args.out, evaluation, num_samples=args.num_samples, progress=progress,
                extend=args.extend)
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
