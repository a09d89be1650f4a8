"""Memorization in meta-learning, measured: train meta-learners per scenario and probe them.

For each scenario of :mod:`hierarchical_meta.memorization.scenarios` this trains

- ``pooled``: a network of the query input alone on the pooled meta-training points
  (support-ignoring by construction);
- ``cnp``: a conditional neural process (black-box meta-learner);
- ``maml``: MAML on profiling/'s MLP functions (regression scenarios);
- ``bayes`` / ``bayes-no-m``: the hierarchical Bayesian model, with its metadata and
  with metadata withheld (normal likelihood for regression, categorical for
  classification);
- ``oracle``: the closed-form adapting learner of the scenario (no training),

runs the probe on fresh meta-train and meta-test tasks, and writes ``DIR/results.csv``
and ``DIR/results.md`` (performance vs chance and the probe's scores). With ``--beta``
it also runs the information-bottleneck experiment on ``basis-task-id`` and writes
``DIR/beta.csv`` and ``DIR/beta.md``. With ``--update`` it replaces, in an existing
``DIR/results.csv``, only the (scenario, learner) rows this run produces, and lists every
command that made the table in ``DIR/results.md``.

    python examples/memorization.py --out docs/memorization --beta
    python examples/memorization.py --scenario grasp --tiny --out /tmp/mem   # seconds
    python examples/memorization.py --scenario mutually-exclusive --learner bayes --update --out docs/memorization
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import re
import sys
import time

import torch

from hierarchical_meta.memorization import (SCENARIOS, BayesianLinearRegression, BayesianModelPredictor,
                                            ConditionalNeuralProcess, GaussianClassMeans,
                                            GoalGridPosterior, MAMLRegressor, PooledNetwork,
                                            basis_posterior_predictor, fit_episodic, fit_maml,
                                            make_scenario, probe)
from hierarchical_meta.memorization.scenarios import GraspTasks, TaskIdBasisTasks
from hierarchical_meta.meta_model import HierarchicalMetaModel
from hierarchical_meta.tasks.basis import BasisFunctionTasks
from hierarchical_meta.train import TrainConfig, fit

LEARNERS = ("pooled", "cnp", "maml", "bayes", "bayes-no-m", "oracle")
BETAS = (0.0, 0.01, 0.1, 1.0, 10.0)
BAYES_LR = 3e-3  # the Bayesian model's SVI learning rate in the committed results (pinned)


@dataclasses.dataclass
class BetaTrainConfig(TrainConfig):
    """The model's training with the KL terms of φ1 and φ2 weighted by ``beta`` once annealed."""

    beta: float = 1.0

    def kl_weight(self, step: int) -> float:
        return self.beta * super().kl_weight(step)


def oracle_for(family):
    if isinstance(family, BasisFunctionTasks):
        return basis_posterior_predictor(family)
    if isinstance(family, TaskIdBasisTasks):  # Bayesian linear regression on u, ignoring the identifier
        return BayesianLinearRegression(family.features, family.weight_std, family.noise_std)
    if isinstance(family, GraspTasks):
        return GoalGridPosterior(family.reward, family.goal_range, family.noise_std)
    return GaussianClassMeans(num_classes=family.num_classes)


def train_learner(name, family, scenario, args, beta=None):
    """A trained predict function, or None where the learner does not apply."""
    classes = getattr(family, "num_classes", None)
    K, Q = scenario.num_support, scenario.num_query
    if name == "oracle":
        return oracle_for(family)
    if name == "pooled":
        learner = PooledNetwork(family.x_dim, num_classes=classes, hidden=args.hidden)
        fit_episodic(learner, family, num_support=K, num_query=Q, steps=args.steps, seed=args.seed)
        return learner
    if name == "cnp":
        learner = ConditionalNeuralProcess(family.x_dim, num_classes=classes, hidden=args.hidden,
                                           bottleneck=beta is not None, beta=beta or 0.0)
        fit_episodic(learner, family, num_support=K, num_query=Q, steps=args.steps, seed=args.seed)
        return learner
    if name == "maml":
        if classes is not None:
            return None  # MAML's inner loop is the MSE of profiling/: regression only
        learner = MAMLRegressor(family.x_dim, hidden=args.hidden)
        fit_maml(learner, family, num_support=K, num_query=Q, steps=args.maml_steps, seed=args.seed)
        return learner
    if name in ("bayes", "bayes-no-m"):
        key = (scenario.name, beta)
        if key not in args.model_cache:
            classifier = {} if classes is None else dict(likelihood="categorical", num_classes=classes)
            model = HierarchicalMetaModel(x_dim=family.x_dim, y_dim=family.y_dim,
                                          metadata_dim=family.metadata_dim, hidden=args.hidden, **classifier)
            config = BetaTrainConfig(steps=args.steps, max_points=K + Q, seed=args.seed, lr=BAYES_LR,
                                     eval_every=max(args.steps // 4, 1), eval_tasks=32,
                                     beta=1.0 if beta is None else beta)
            fit(model, family, config, progress=False)
            args.model_cache[key] = model
        return BayesianModelPredictor(args.model_cache[key], num_samples=args.num_samples,
                                      withhold_metadata=name == "bayes-no-m")
    raise ValueError(f"unknown learner {name!r}; choose from {LEARNERS}")


def run_scenario(scenario, args, learners, splits=None, beta=None):
    family = scenario.make_family(seed=args.seed)
    rows = []
    for name in learners:
        tic = time.perf_counter()
        predict = train_learner(name, family, scenario, args, beta=beta)
        if predict is None:
            continue
        seconds = time.perf_counter() - tic
        reports = probe(predict, family, num_support=scenario.num_support, num_query=scenario.num_query,
                        num_tasks=args.probe_tasks, num_derangements=args.derangements,
                        splits=splits, seed=args.seed + 1000)
        for report in reports.values():
            row = {"scenario": scenario.name, "learner": name, "train_seconds": round(seconds, 1)}
            if beta is not None:
                row["beta"] = beta
            row.update(report.as_row())
            rows.append(row)
        print(f"{scenario.name:20s} {name:11s} " + "  ".join(
            f"{r.split}: {r.metric_name}={r.metric:.3f} (chance {r.chance_metric:.3f}) follow={r.follow:.2f}"
            for r in reports.values()), flush=True)
    return rows


def write_csv(rows, path):
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
    """The commands listed in an existing results.md (``Command:`` lines)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return re.findall(r"^(?:Command|Then): `(.+)`$", f.read(), flags=re.M)


def markdown_table(rows, command, extra=()):
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


def beta_experiment(args):
    """β on the CNP's per-point latent of x and on the Bayesian model's φ KL terms, task-id variant.

    β is chosen by the follow score on meta-validation tasks (split "val": the training
    identifiers, fresh points and fresh probe draws); meta-test is reported beside it.
    """
    scenario = make_scenario("basis-task-id")
    splits = {"meta-val": "val", "meta-test": "test"}
    rows = []
    for beta in BETAS:  # Pyro's scale must be > 0: the Bayesian model skips β = 0
        rows += run_scenario(scenario, args, ["cnp", "bayes"] if beta > 0 else ["cnp"], splits=splits, beta=beta)
    chosen = {}
    for learner in ("cnp", "bayes"):
        val = [r for r in rows if r["learner"] == learner and r["split"] == "meta-val"]
        if val:
            chosen[learner] = max(val, key=lambda r: r["follow"])["beta"]
    for r in rows:
        r["chosen"] = r["beta"] == chosen.get(r["learner"])
    return rows, chosen


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS),
                        help="scenario to run (repeatable; default: all)")
    parser.add_argument("--learner", action="append", choices=LEARNERS, help="learner (repeatable; default: all)")
    parser.add_argument("--out", required=True, help="output folder for results.csv / results.md")
    parser.add_argument("--steps", type=int, default=3000, help="training steps (pooled, CNP, Bayesian model)")
    parser.add_argument("--maml-steps", type=int, default=1500, help="MAML meta-training steps")
    parser.add_argument("--hidden", type=int, default=64, help="hidden units of every network")
    parser.add_argument("--probe-tasks", type=int, default=256, help="tasks per split in the probe")
    parser.add_argument("--derangements", type=int, default=4, help="support derangements in the probe")
    parser.add_argument("--num-samples", type=int, default=256, help="importance samples (Bayesian model)")
    parser.add_argument("--update", action="store_true",
                        help="replace only this run's (scenario, learner) rows in an existing DIR/results.csv")
    parser.add_argument("--beta", action="store_true", help="also run the β bottleneck experiment")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="tiny sizes for tests (seconds)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.steps, args.maml_steps, args.hidden, args.probe_tasks = 5, 3, 16, 8
        args.derangements, args.num_samples = 2, 16
    for name in ("steps", "maml_steps", "hidden", "probe_tasks", "derangements", "num_samples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    results_csv = os.path.join(args.out, "results.csv")
    if args.update and not os.path.exists(results_csv):
        parser.error(f"--update needs an existing {results_csv}; run once without --update first")
    if args.probe_tasks < 2:
        parser.error("--probe-tasks must be >= 2 (the probe swaps supports across tasks)")
    torch.set_num_threads(1)
    args.model_cache = {}
    os.makedirs(args.out, exist_ok=True)
    command = "python examples/memorization.py " + " ".join(sys.argv[1:] if argv is None else argv)
    names = args.scenario or list(SCENARIOS)
    learners = args.learner or list(LEARNERS)
    rows = []
    for name in names:
        rows += run_scenario(make_scenario(name), args, learners)
    results_md = os.path.join(args.out, "results.md")
    commands = [command]
    if args.update:
        rows = merge_rows(read_csv(results_csv), rows)
        commands = previous_commands(results_md) + commands
    write_csv(rows, results_csv)
    with open(results_md, "w") as f:
        f.write("# Memorization probe: results\n\n" + markdown_table(rows, commands))
    if args.beta:
        beta_rows, chosen = beta_experiment(args)
        write_csv(beta_rows, os.path.join(args.out, "beta.csv"))
        with open(os.path.join(args.out, "beta.md"), "w") as f:
            f.write("# Information bottleneck β on basis-task-id\n\n"
                    f"β chosen by the follow score on meta-validation tasks: {chosen}\n\n"
                    + markdown_table(beta_rows, command, extra=("beta",)))
    print(f"wrote {args.out}/results.csv and results.md" + (" and beta.csv/beta.md" if args.beta else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
