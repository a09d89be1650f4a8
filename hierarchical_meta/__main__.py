"""Command line: ``python -m hierarchical_meta {render,fit,predict,demo} --help``."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
import time
from typing import Optional, Sequence

import torch

from .evaluate import SHOTS, evaluate, heldout_tasks
from .meta_model import HierarchicalMetaModel, ModelConfig, load_checkpoint
from .model import DECODERS, PRIORS
from .tasks import FAMILIES, make_family
from .train import TrainConfig, fit

DEFAULTS = TrainConfig()


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
    pred.add_argument("--num-samples", type=positive_int, default=2048, help="importance samples per task")
    pred.add_argument("--seed", type=int, default=0)

    demo = sub.add_parser("demo", help="the main job end to end on a small default: diagram, fit with and "
                                       "without metadata, evaluation, plots (what `make demo` runs)",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    demo.add_argument("--out", default="runs/demo", help="output folder")
    add_fit_options(demo)
    return parser


def add_fit_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=positive_int, default=DEFAULTS.steps, help="SVI steps")
    g.add_argument("--seed", type=int, default=0, help="random seed (tasks, initialization, draws)")
    g.add_argument("--metadata", choices=("use", "none"), default="use",
                   help="'none' withholds m everywhere: the ablation baseline")
    g.add_argument("--batch-tasks", type=positive_int, default=DEFAULTS.batch_tasks, help="tasks per SVI step")
    g.add_argument("--max-points", type=positive_int, default=DEFAULTS.max_points,
                   help="points per training task (each task keeps a random min..max of them)")
    g.add_argument("--min-points", type=int, default=DEFAULTS.min_points,
                   help="fewest points a training task keeps")
    g.add_argument("--lr", type=float, default=DEFAULTS.lr, help="Adam learning rate (decays 10x over the run)")
    g.add_argument("--anneal-steps", type=int, default=DEFAULTS.anneal_steps, help="KL annealing steps (β to 1)")
    g.add_argument("--metadata-dropout", type=float, default=DEFAULTS.metadata_dropout,
                   help="fraction of training tasks whose metadata is dropped (read as missing)")
    g.add_argument("--metadata-swap", type=float, default=DEFAULTS.metadata_swap,
                   help="fraction of training tasks given another task's metadata (teaches how far to trust m)")
    m = p.add_argument_group("model")
    defaults = ModelConfig()
    m.add_argument("--latent-dim", type=positive_int, default=defaults.latent_dim, help="dimension D of φ1 and φ2")
    m.add_argument("--hidden", type=positive_int, default=defaults.hidden, help="hidden units per layer")
    m.add_argument("--layers", type=int, default=defaults.layers, help="hidden layers per network")
    m.add_argument("--prior", choices=PRIORS, default=defaults.prior, help="form of p(φ2 | φ1, m)")
    m.add_argument("--decoder", choices=DECODERS, default=defaults.decoder, help="form of p(y | φ2, x)")
    m.add_argument("--guide", choices=("data", "data+metadata"),
                   default="data+metadata" if defaults.guide_sees_metadata else "data",
                   help="what q(φ2 | ...) sees: the support set, or the support set and m")
    e = p.add_argument_group("evaluation")
    e.add_argument("--eval-tasks", type=positive_int, default=200, help="held-out tasks for metrics.json")
    e.add_argument("--num-samples", type=positive_int, default=2048, help="importance samples per task")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_fit(args, out: str) -> dict:
    """Train (or resume), evaluate and plot into ``out``; returns the metrics dict."""
    from .plots import plot_metrics_vs_shots, plot_predictions, plot_training_curve

    family = make_family(args.tasks)
    config = ModelConfig(x_dim=family.x_dim, y_dim=family.y_dim, metadata_dim=family.metadata_dim,
                         latent_dim=args.latent_dim, hidden=args.hidden, layers=args.layers,
                         prior=args.prior, decoder=args.decoder,
                         guide_sees_metadata=args.guide == "data+metadata",
                         use_metadata=args.metadata == "use", task_family=args.tasks)
    train = TrainConfig(steps=args.steps, batch_tasks=args.batch_tasks, max_points=args.max_points,
                        min_points=args.min_points,
                        lr=args.lr, anneal_steps=args.anneal_steps, metadata_dropout=args.metadata_dropout,
                        metadata_swap=args.metadata_swap, seed=args.seed)
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(args.seed)  # the initial weights
    meta_model = HierarchicalMetaModel(config)
    tic = time.perf_counter()
    history = fit(meta_model, family, train, out_dir=out, progress=not args.no_progress)
    print(f"trained {args.steps} steps in {time.perf_counter() - tic:.0f}s -> {out}/model.pt")

    torch.manual_seed(args.seed)
    metrics = evaluate(meta_model, family, num_tasks=args.eval_tasks, num_samples=args.num_samples)
    final = history["eval"][-1]  # held-out ELBO and KLs at the last step (train.heldout_elbo)
    metrics.update({"elbo": final["elbo_per_point"], "kl_phi1": final["kl_phi1_per_task"],
                    "kl_phi2": final["kl_phi2_per_task"], "model": dataclasses.asdict(config),
                    "train": dataclasses.asdict(train), "train_seconds": history["seconds"]})
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    write_metrics_csv(metrics, os.path.join(out, "metrics.csv"))
    plot_training_curve(history, os.path.join(out, "training_curve.png"))
    batch = heldout_tasks(family, 3, max(SHOTS), 50)
    if family.x_dim == 1 and family.y_dim == 1:
        plot_predictions(meta_model, batch, os.path.join(out, "predictions.png"), family=family,
                         num_samples=args.num_samples)
    plot_metrics_vs_shots({"model": metrics}, os.path.join(out, "loglik_vs_k.png"))
    print_table(metrics)
    return metrics


def write_metrics_csv(metrics: dict, path: str) -> None:
    """One row per K: the model, the shuffled-metadata model and the reference side by side."""
    keys = sorted({key for entry in metrics["shots"].values() for key in entry})
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["K"] + keys + ["shuffled_loglik", "shuffled_coverage90"])
        for k, entry in metrics["shots"].items():
            shuffled = metrics["shuffled_metadata"]["shots"][k]
            writer.writerow([k] + [f"{entry.get(key, float('nan')):.4f}" for key in keys]
                            + [f"{shuffled['loglik']:.4f}", f"{shuffled['coverage90']:.4f}"])


def print_table(metrics: dict) -> None:
    print(f"{'K':>3} {'loglik':>8} {'oracle':>8} {'mse':>7} {'cov90':>6} {'shuffled':>9} {'ESS':>6}")
    for k, e in metrics["shots"].items():
        print(f"{k:>3} {e['loglik']:8.3f} {e.get('oracle_loglik', float('nan')):8.3f} {e['mse']:7.3f} "
              f"{e['coverage90']:6.2f} {metrics['shuffled_metadata']['shots'][k]['loglik']:9.3f} {e['ess']:6.0f}")
    if "noise_floor_loglik" in metrics:
        print(f"noise floor {metrics['noise_floor_loglik']:.3f} nats/point; held-out ELBO {metrics['elbo']:.3f}; "
              f"KL φ1 {metrics['kl_phi1']:.2f}, KL φ2 {metrics['kl_phi2']:.2f} nats/task")


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


def run_demo(args) -> None:
    from .plots import plot_metrics_vs_shots

    os.makedirs(args.out, exist_ok=True)
    run_render(os.path.join(args.out, "plate_diagram.svg"), guide=True)
    results = {}
    for label, metadata in (("with metadata", "use"), ("metadata withheld", "none")):
        print(f"== fit {label}")
        args.metadata, args.tasks = metadata, "sinusoid"
        results[label] = run_fit(args, os.path.join(args.out, "with_metadata" if metadata == "use" else "no_metadata"))
    plot_metrics_vs_shots(results, os.path.join(args.out, "loglik_vs_k.png"))
    targets = check_targets(results["with metadata"], results["metadata withheld"])
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump({"runs": results, "targets": targets}, f, indent=2)
    print(f"demo results under {args.out}/")


def check_targets(with_m: dict, without_m: dict) -> dict:
    """The issue's quality targets, each with its measured value and whether it is met."""
    targets = {}
    for k, e in with_m["shots"].items():
        gap = e["oracle_loglik"] - e["loglik"]
        targets[f"K={k}: loglik within 0.3 nats of exact Bayes"] = (round(gap, 3), gap <= 0.3)
        targets[f"K={k}: coverage90 in [0.85, 0.95]"] = (round(e["coverage90"], 3),
                                                        0.85 <= e["coverage90"] <= 0.95)
    margin = with_m["shots"]["0"]["loglik"] - without_m["shots"]["0"]["loglik"]
    targets["K=0: metadata beats withheld metadata (nats)"] = (round(margin, 3), margin > 0.1)
    shuffled = with_m["shuffled_metadata"]["shots"]["10"]["loglik"] - without_m["shots"]["10"]["loglik"]
    targets["K=10: shuffled m no worse than withheld by > 0.2 nats"] = (round(shuffled, 3), shuffled >= -0.2)
    print("\ntargets (measured value, met?)")
    for name, (value, met) in targets.items():
        print(f"  {'ok  ' if met else 'MISS'} {name}: {value}")
    return {name: {"value": value, "met": met} for name, (value, met) in targets.items()}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(1)  # these networks are small: one thread is fastest on 2 cores
    try:
        if args.command == "render":
            run_render(args.out, args.guide)
        elif args.command == "fit":
            run_fit(args, args.out)
        elif args.command == "predict":
            run_predict(args)
        else:
            run_demo(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
