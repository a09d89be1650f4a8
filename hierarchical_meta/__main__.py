"""Command line: ``python -m hierarchical_meta {render,fit,predict,demo} --help``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import matplotlib
import torch

from .evaluate import EvalConfig
from .meta_model import ModelConfig, load_checkpoint
from .model import DECODERS, NOISES, PRIORS
from .pipeline import run_demo, run_fit
from .predict import NUM_SAMPLES
from .tasks import FAMILIES, TaskFamily, make_family
from .train import ELBOS, TrainConfig

TRAIN, MODEL, EVAL = TrainConfig(), ModelConfig(), EvalConfig()


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hierarchical_meta", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    render = sub.add_parser("render", help="draw the plate diagram with pyro.render_model")
    render.add_argument("--out", required=True, help="output file; .svg, .png or .pdf (DOT source written beside it)")
    render.add_argument("--guide", action="store_true", help="also draw the guide's inference arrows, dashed")

    fit_p = sub.add_parser("fit", help="train on a task family with SVI, evaluate, write model.pt, metrics.json, plots",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    fit_p.add_argument("--tasks", default="sinusoid", choices=sorted(FAMILIES), help="task family")
    fit_p.add_argument("--out", required=True, help="output folder (rerunning on it resumes from DIR/model.pt)")
    add_fit_options(fit_p)

    pred = sub.add_parser("predict", help="predict query points of new tasks given in a CSV file",
                          description="Predict query points of new tasks. Task file format: see "
                                      "hierarchical_meta/taskfile.py (columns task, role, x, y, m1, m2, ...).")
    pred.add_argument("--checkpoint", required=True, help="DIR/model.pt written by fit")
    pred.add_argument("--tasks-file", required=True, help="CSV of support and query points per task")
    pred.add_argument("--out", required=True, help="CSV of predictions (mean, q05, q95, loglik if y given)")
    pred.add_argument("--num-samples", type=positive_int, default=NUM_SAMPLES,
                      help=f"importance samples per task (default {NUM_SAMPLES})")
    pred.add_argument("--seed", type=int, default=0)

    demo = sub.add_parser("demo", help="the main job end to end on a small default: diagram, fit with and "
                                       "without metadata, evaluation, plots (what `make demo` runs)",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    demo.add_argument("--out", default="runs/demo", help="output folder")
    add_fit_options(demo)
    return parser


def add_fit_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=positive_int, default=TRAIN.steps, help="SVI steps")
    g.add_argument("--seed", type=int, default=TRAIN.seed, help="random seed (tasks, initialization, draws)")
    g.add_argument("--metadata", choices=("use", "none"), default="use" if MODEL.use_metadata else "none",
                   help="'none' withholds m everywhere: the ablation baseline")
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
    m.add_argument("--noise", choices=NOISES, default=MODEL.noise,
                   help="observation noise of p(y | φ2, x): one learned s, or s(x, φ2) (heteroscedastic)")
    m.add_argument("--guide-components", type=positive_int, default=MODEL.guide_components,
                   help="q(φ2 | ...) is a mixture of this many Gaussians (1: one Gaussian)")
    e = p.add_argument_group("evaluation")
    e.add_argument("--eval-tasks", type=positive_int, default=EVAL.num_tasks, help="held-out tasks for metrics.json")
    e.add_argument("--num-samples", type=positive_int, default=NUM_SAMPLES, help="importance samples per task")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")


def configs(args, family: TaskFamily):
    """The model, training and evaluation configs of the parsed fit/demo flags."""
    model = ModelConfig(x_dim=family.x_dim, y_dim=family.y_dim, metadata_dim=family.metadata_dim,
                        latent_dim=args.latent_dim, hidden=args.hidden, layers=args.layers,
                        prior=args.prior, decoder=args.decoder,
                        guide_sees_metadata=args.guide == "data+metadata", use_metadata=args.metadata == "use",
                        guide_components=args.guide_components, noise=args.noise)
    train = TrainConfig(steps=args.steps, batch_tasks=args.batch_tasks, max_points=args.max_points,
                        min_points=args.min_points, lr=args.lr, lr_decay=args.lr_decay, clip_norm=args.clip_norm,
                        anneal_steps=args.anneal_steps, metadata_dropout=args.metadata_dropout,
                        metadata_swap=args.metadata_swap, seed=args.seed, elbo=args.elbo)
    return model, train, EvalConfig(num_tasks=args.eval_tasks)


def run_predict(args) -> None:
    from .taskfile import read_task_file, write_predictions

    meta_model, _ = load_checkpoint(args.checkpoint)
    c = meta_model.config
    batch, labels, score = read_task_file(args.tasks_file, c.x_dim, c.y_dim, c.metadata_dim)
    torch.manual_seed(args.seed)
    predictive, _ = meta_model.predict(batch, num_samples=args.num_samples)
    write_predictions(args.out, batch, labels, predictive, score)
    print(f"predicted {int(batch.query_mask.sum())} query points of {len(labels)} task(s) -> {args.out}")


def run_render(out: str, guide: bool) -> None:
    from .render import render_diagram

    render_diagram(path=out, guide=guide)
    print(f"wrote {out}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    matplotlib.use("Agg")  # files only, no windows
    torch.set_num_threads(1)  # these networks are small: one thread is fastest on 2 cores
    try:
        if args.command == "render":
            run_render(args.out, args.guide)
        elif args.command == "predict":
            run_predict(args)
        elif args.command == "fit":
            family = make_family(args.tasks)
            model, train, evaluation = configs(args, family)
            run_fit(family, model, train, args.out, evaluation, num_samples=args.num_samples,
                    progress=not args.no_progress)
        else:
            model, train, evaluation = configs(args, make_family("sinusoid"))
            run_demo(args.out, model, train, evaluation, num_samples=args.num_samples, progress=not args.no_progress)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
