"""Write the sample files under examples/data/, reproducibly (seeded).

- ``grouped_sample.csv``: a grouped data set for ``fit --data`` (60 sites of 5 to 30 rows;
  columns site, dose, response, altitude, region; the hierarchy is in
  :mod:`hierarchical_meta.tasks.synthetic`);
- ``grouped_sample_new.csv``: new sites to predict, in the same column names plus task and
  role (one site without support rows, one with its altitude unknown);
- ``sinusoid_tasks.csv``: a task file for a model trained on the sinusoid family (columns
  task, role, x, y, m1, m2; see :mod:`hierarchical_meta.taskfile`): four tasks with 0, 2, 5
  and 5 support rows, the last with empty (unknown) metadata.

    python examples/make_sample_data.py              # rewrites examples/data/
    python examples/make_sample_data.py --out /tmp/data
"""

from __future__ import annotations

import argparse
import csv
import os

import torch

from hierarchical_meta.tasks import SinusoidTasks
from hierarchical_meta.tasks.synthetic import grouped_frame, new_sites_frame

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def write_sinusoid_tasks(path: str, num_support=(0, 2, 5, 5), num_query: int = 4, seed: int = 0) -> None:
    """Sinusoid tasks as a task file; query rows without y, the last task's metadata empty."""
    batch = SinusoidTasks().sample(len(num_support), max(num_support), num_query, split="test",
                                   generator=torch.Generator().manual_seed(seed))
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["task", "role", "x", "y", "m1", "m2"])
        for t, k in enumerate(num_support):
            label = f"task{t + 1}"
            metadata = ["", ""] if t == len(num_support) - 1 else [f"{v:.4g}" for v in batch.metadata[t].tolist()]
            for j in range(k):
                writer.writerow([label, "support", f"{float(batch.x_support[t, j, 0]):.4g}",
                                 f"{float(batch.y_support[t, j, 0]):.4g}"] + metadata)
            for j in range(num_query):
                writer.writerow([label, "query", f"{float(batch.x_query[t, j, 0]):.4g}", ""] + metadata)


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default=DATA_DIR, help="output folder")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    paths = [os.path.join(args.out, name) for name in
             ("grouped_sample.csv", "grouped_sample_new.csv", "sinusoid_tasks.csv")]
    grouped_frame(60, 5, 30, seed=0).to_csv(paths[0], index=False)
    new_sites_frame(num_support=(0, 3, 8), num_query=5, seed=2).to_csv(paths[1], index=False)
    write_sinusoid_tasks(paths[2])
    for path in paths:
        print(f"wrote {path}")
    return paths


if __name__ == "__main__":
    main()
