"""Held-out classes of R's ``nlschools``: our model against a linear mixed model.

Tasks are school classes (y = language score, x = (IQ, SES), m = (class size GS,
multi-grade flag COMB)); see :mod:`hierarchical_meta.tasks.nlschools`. For each class
split (``--splits``), on the *training* classes this fits

- ``ours``: the hierarchical meta-model, with the metadata m;
- ``ours_no_metadata``: the same model with m withheld (``use_metadata=False``);
- ``mixed_model``: statsmodels' MixedLM with a random intercept and IQ slope per class,
  fixed effects IQ, SES, GS, COMB, IQ×GS, IQ×COMB, predicting from the BLUP given the
  support pupils (:mod:`hierarchical_meta.baselines.mixed_model`);
- ``mixed_model_no_metadata``: the mixed model with fixed effects IQ and SES only;
- ``mixed_model_heteroscedastic``: ``mixed_model`` with a residual log-sd linear in IQ,
  fitted by maximum likelihood (what a noise model varying with IQ is worth to a linear model),

then scores every test class with more than K pupils: K random pupils are the support,
the rest of the class the query; per query pupil the predictive log-likelihood (nats, in
standardized units: subtract log sd(lang) ≈ 2.19 for original units), the MSE of the
predictive mean and the coverage of the central 90% interval. ``--support-draws`` random
support/query partitions per class and K are pooled; all models see the same ones.

Outputs in ``--out``: ``per_split.csv`` (one row per split, model and K),
``comparison.csv`` and ``comparison.md`` (mean and spread over splits),
``loglik_vs_k.png`` and ``fits.json`` (fitted mixed-model parameters, training summaries).

Run ``python examples/nlschools_comparison.py --help``; tiny smoke run:
``python examples/nlschools_comparison.py --splits 0 --steps 20 --num-samples 16 --shots 0 2 --out /tmp/nls``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shlex
import statistics
import sys
import time

import torch

from hierarchical_meta.baselines import MixedModel
from hierarchical_meta.errors import report_errors
from hierarchical_meta.evaluate import EvalConfig, evaluate
from hierarchical_meta.meta_model import HierarchicalMetaModel, ModelConfig
from hierarchical_meta.runfiles import output_folder
from hierarchical_meta.tasks.nlschools import NLSchoolsTasks
from hierarchical_meta.train import TrainConfig, fit

MODELS = ("ours", "ours_no_metadata", "mixed_model", "mixed_model_no_metadata", "mixed_model_heteroscedastic")
METRICS = ("loglik", "mse", "coverage90")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--splits", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                   help="seeds of the class-level train/val/test splits")
    p.add_argument("--shots", type=int, nargs="+", default=[0, 1, 2, 5, 10],
                   help="numbers K of support pupils")
    p.add_argument("--support-draws", type=int, default=3,
                   help="random support/query partitions per test class and K, pooled")
    p.add_argument("--steps", type=int, default=2000, help="SVI steps per model and split")
    p.add_argument("--batch-tasks", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--metadata-swap", type=float, default=TrainConfig.metadata_swap,
                   help="fraction of training classes given another class's metadata (fit's --metadata-swap)")
    p.add_argument("--latent-dim", type=int, default=4)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--prior", default="mlp", help="p(phi2 | phi1, m): 'mlp' or 'linear'")
    p.add_argument("--decoder", default="features", help="'features' or 'mlp'")
    p.add_argument("--noise", default="constant", help="'constant' or 'heteroscedastic' (s(x, phi2))")
    p.add_argument("--num-samples", type=int, default=1024,
                   help="importance samples per class for our model's predictive")
    p.add_argument("--out", default="runs/nlschools", help="output folder")
    p.add_argument("--progress", action="store_true", help="show training progress bars")
    return p.parse_args(argv)


def without_metadata(batch):
    return batch.with_metadata(batch.metadata[:, :0])  # Dm = 0: no metadata fixed effects


def run_split(args, split_seed, log):
    family = NLSchoolsTasks(split_seed=split_seed)
    # every model sees the same support draws: draw d partitions the test classes with seed 1000 split + d
    protocol = EvalConfig(shots=args.shots, seed=1000 * split_seed, draws=args.support_draws,
                          shuffled_metadata=False)
    train = family.all_tasks(0, split="train")
    rows, fits = [], {"split": split_seed, "classes": {s: len(family.groups(s)) for s in ("train", "val", "test")},
                      "sd_lang_train": family.schema.y[0].std}

    names = dict(x_names=family.schema.encoded_names("x"), metadata_names=family.schema.encoded_names("metadata"))
    mixed = MixedModel(**names).fit(train)
    mixed_plain = MixedModel(interactions=(), x_names=names["x_names"]).fit(without_metadata(train))
    mixed_het = MixedModel(noise_slopes=(0,), reml=False, **names).fit(train)  # log-sd linear in IQ
    fits["mixed_model"], fits["mixed_model_no_metadata"] = mixed.summary(), mixed_plain.summary()
    fits["mixed_model_heteroscedastic"] = mixed_het.summary()
    predictors = {"mixed_model": mixed.predict,
                  "mixed_model_no_metadata": lambda b: mixed_plain.predict(without_metadata(b)),
                  "mixed_model_heteroscedastic": mixed_het.predict}

    for name, use_metadata in (("ours", True), ("ours_no_metadata", False)):
        config = ModelConfig(x_dim=family.x_dim, y_dim=family.y_dim, metadata_dim=family.metadata_dim,
                             latent_dim=args.latent_dim, hidden=args.hidden, layers=args.layers,
                             prior=args.prior, decoder=args.decoder, noise=args.noise, use_metadata=use_metadata)
        torch.manual_seed(split_seed)  # the initial weights (fit() seeds the training itself)
        model = HierarchicalMetaModel(config)
        train_config = TrainConfig(steps=args.steps, batch_tasks=args.batch_tasks, lr=args.lr,
                                   metadata_swap=args.metadata_swap,
                                   max_points=int(family.group_sizes.max()),
                                   eval_every=max(args.steps // 4, 1), eval_tasks=64,
                                   checkpoint_every=args.steps, seed=split_seed,
                                   anneal_steps=1000, patience=0)  # the last step, as in docs/nlschools.md
        tic = time.perf_counter()
        history = fit(model, family, train_config, progress=args.progress)
        fits[name] = {"seconds": time.perf_counter() - tic, "final_eval": history["eval"][-1]}
        if args.noise == "constant":
            fits[name]["noise_std"] = model.model.noise_std().tolist()
        log(f"split {split_seed}: trained {name} in {fits[name]['seconds']:.0f} s, "
            f"val ELBO/point {history['eval'][-1]['elbo_per_point']:.3f}")
        predictors[name] = lambda b, model=model: model.predict(b, num_samples=args.num_samples)[0]

    for name in MODELS:
        torch.manual_seed(split_seed)  # our model's importance samples: reruns give the same numbers
        result = evaluate(predictors[name], family, protocol)
        for k in args.shots:
            entry = result["shots"][str(k)]
            rows.append({"split": split_seed, "model": name, "K": k, "test_classes": entry["num_tasks"],
                         **{key: entry[key] for key in METRICS},
                         "query_pupils": entry["num_query_points"] / args.support_draws})
    return rows, fits


def summarize(rows, shots):
    """Mean and sample standard deviation over splits; paired difference to the mixed model."""
    by = {(r["split"], r["model"], r["K"]): r for r in rows}
    splits = sorted({r["split"] for r in rows})
    def spread(values):  # sample sd over splits; NaN with one split or for undefined entries
        return statistics.stdev(values) if len(values) > 1 and not any(map(math.isnan, values)) \
            else float("nan")

    summary = []
    for name in MODELS:
        for k in shots:
            cells = [by[(s, name, k)] for s in splits]
            out = {"model": name, "K": k, "splits": len(splits)}
            for key in METRICS:
                values = [c[key] for c in cells]
                out[key], out[f"{key}_sd"] = statistics.fmean(values), spread(values)
            diff = [by[(s, name, k)]["loglik"] - by[(s, "mixed_model", k)]["loglik"] for s in splits]
            out["loglik_minus_mixed"], out["loglik_minus_mixed_sd"] = statistics.fmean(diff), spread(diff)
            plain = f"{name}_no_metadata"  # m's worth: paired gain over the same model without m
            gain = ([by[(s, name, k)]["loglik"] - by[(s, plain, k)]["loglik"] for s in splits]
                    if plain in MODELS else [float("nan")] * len(splits))
            out["metadata_gain"], out["metadata_gain_sd"] = statistics.fmean(gain), spread(gain)
            out["query_pupils"] = statistics.fmean(c["query_pupils"] for c in cells)
            out["test_classes"] = statistics.fmean(c["test_classes"] for c in cells)
            summary.append(out)
    return summary


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})


def markdown_table(summary, command):
    lines = [f"Command: `{command}`", "",
             "Per query pupil on held-out classes (standardized lang; mean ± sample sd over "
             f"{summary[0]['splits']} class splits). `Δ loglik` is the paired difference to "
             "`mixed_model` on the same split, `gain from m` the paired difference to the same model "
             "without metadata (mean ± sd).", "",
             "| model | K | loglik | Δ loglik vs mixed | gain from m | mse | coverage90 | test classes "
             "| query pupils |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in summary:
        lines.append(f"| {r['model']} | {r['K']} | {r['loglik']:.3f} ± {r['loglik_sd']:.3f} | "
                     f"{r['loglik_minus_mixed']:+.3f} ± {r['loglik_minus_mixed_sd']:.3f} | "
                     + (f"{r['metadata_gain']:+.3f} ± {r['metadata_gain_sd']:.3f} | "
                        if not math.isnan(r["metadata_gain"]) else "– | ") +
                     f"{r['mse']:.3f} ± {r['mse_sd']:.3f} | {r['coverage90']:.3f} ± {r['coverage90_sd']:.3f} | "
                     f"{r['test_classes']:.1f} | {r['query_pupils']:.0f} |")
    return "\n".join(lines) + "\n"


def plot(summary, shots, path, note):
    """Left: loglik (mean ± sd over splits). Right: paired difference to the mixed model."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"ours": ("C0", "-o"), "ours_no_metadata": ("C0", "--s"),
              "mixed_model": ("C3", "-^"), "mixed_model_no_metadata": ("C3", "--v"),
              "mixed_model_heteroscedastic": ("C2", "-D")}
    for i, name in enumerate(MODELS):
        rows = [r for r in summary if r["model"] == name]
        ks = [r["K"] + 0.08 * (i - (len(MODELS) - 1) / 2) for r in rows]  # dodge so the error bars do not overlap
        color, fmt = styles[name]
        for ax, key in ((left, "loglik"), (right, "loglik_minus_mixed")):
            sd = [0.0 if math.isnan(r[f"{key}_sd"]) else r[f"{key}_sd"] for r in rows]
            ax.errorbar(ks, [r[key] for r in rows], yerr=sd, fmt=fmt, color=color, capsize=3,
                        label=name.replace("_", " "))
    left.set_ylabel("predictive log-likelihood per query pupil (nats)")
    left.set_title("held-out classes: mean ± sd over splits")
    right.set_ylabel("loglik minus mixed model's, same split (nats)")
    right.set_title("paired difference to the mixed model: mean ± sd")
    right.axhline(0.0, color="k", lw=0.8)
    for ax in (left, right):
        ax.set_xticks(list(shots))
        ax.set_xlabel("K support pupils per held-out class")
        ax.grid(alpha=0.3)
    left.legend(fontsize=8)
    left.text(0.01, 0.01, note, transform=left.transAxes, fontsize=7, va="bottom")
    fig.suptitle("nlschools (R MASS): language score of pupils in held-out classes")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    if any(k < 0 for k in args.shots) or args.support_draws < 1 or args.steps < 1:
        raise SystemExit("--shots must be >= 0, --support-draws and --steps >= 1")
    torch.set_num_threads(1)  # small networks: one thread is fastest and leaves the other cores free
    output_folder(args.out)
    shown = list(sys.argv[1:]) if argv is None else list(argv)
    command = "python examples/nlschools_comparison.py " + " ".join(shlex.quote(a) for a in shown)
    rows, fits = [], []
    for split_seed in args.splits:
        split_rows, split_fits = run_split(args, split_seed, log=lambda s: print(s, flush=True))
        rows += split_rows
        fits.append(split_fits)
    summary = summarize(rows, args.shots)
    write_csv(os.path.join(args.out, "per_split.csv"), rows)
    write_csv(os.path.join(args.out, "comparison.csv"), summary)
    table = markdown_table(summary, command)
    with open(os.path.join(args.out, "comparison.md"), "w") as f:
        f.write(table)
    with open(os.path.join(args.out, "fits.json"), "w") as f:
        json.dump({"command": command, "args": vars(args), "splits": fits}, f, indent=1)
    plot(summary, args.shots, os.path.join(args.out, "loglik_vs_k.png"),
         note=f"{len(args.splits)} splits, {args.steps} SVI steps; CPU")
    print(table)
    return summary


if __name__ == "__main__":
    sys.exit(report_errors(main))  # a user error: one "error:" line, exit 2
