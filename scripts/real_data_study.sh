#!/usr/bin/env bash
# The real-data comparison of docs/own_data.md: each named data set (default: all of them) over
# five random splits of its groups at the default settings, one thread per process, results
# copied into docs/own_data/study/NAME/ (comparison.json/csv/png, effects of split 0).
# Usage: scripts/real_data_study.sh [NAME...]; the runs stay under runs/study/ and resume.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(co2 chickweight bodyweight sleepstudy hsb82 nlschools chem97)
for name in "${names[@]}"; do
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$PY" -m hierarchical_meta compare --tasks "$name" --split-seeds 0-4 \
      --out "runs/study/$name" --no-progress > "runs/study/$name.log" 2>&1 || { tail -n 3 "runs/study/$name.log"; exit 1; }
  mkdir -p "docs/own_data/study/$name"
  cp "runs/study/$name"/comparison.{json,csv,png} "docs/own_data/study/$name/"
  cp "runs/study/$name"/split-0/effects.{csv,png} "docs/own_data/study/$name/" 2>/dev/null || true
  echo "$name -> docs/own_data/study/$name"
done
