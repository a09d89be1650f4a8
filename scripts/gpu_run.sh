#!/usr/bin/env bash
# The device check of profiling/: its tests on the device, the side-by-side benchmark, the
# scaling study (every method, the checkpointed MAML included) and the quick accuracy-matched
# comparison, each with a time limit (7.8 minutes together), their outputs in one folder:
#   PYTHONPATH=. OUT=/path/to/out bash scripts/gpu_run.sh                      # cuda, full study
#   PYTHONPATH=. OUT=/tmp/gpu-smoke bash scripts/gpu_run.sh --device cpu --quick   # rehearsal on the CPU
# It runs from the repository root wherever it is called from; a relative OUT is taken
# from the caller's folder. Writes 8 files under "$OUT" (default runs/gpu):
#   env.txt        the machine, Python, torch and CUDA versions
#   tests.txt      tests/test_profiling_algorithms.py and tests/test_profiling_study.py
#                  (vectorized vs loop, MAML vs finite differences, measurement) with
#                  PROFILING_TEST_DEVICE set to the device; 60 s at most
#   benchmark.txt  python -m profiling.benchmark: one outer step of every method and
#                  implementation, side by side; 75 s at most
#   scale_log.txt  python -m profiling.scale: the study's progress and printed summary;
#                  225 s at most (a study cut off keeps the rows measured so far, and its
#                  plots are then drawn from them, 20 s at most)
#   scale/scale.csv, scale/summary.txt, scale/plots.tar (the six plots and combined.png)
#   accuracy.tar   python -m profiling.accuracy_study --quick: its CSVs, summary, plots and
#                  log; 90 s at most
# Needs torch, numpy, matplotlib, tqdm and pytest, not Pyro: the tests run with
# --noconftest, since tests/conftest.py imports Pyro.
set -uo pipefail
DEVICE=cuda
QUICK=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --quick) QUICK="--quick"; shift ;;
    *) echo "usage: bash scripts/gpu_run.sh [--device cuda|cpu] [--quick]" >&2; exit 2 ;;
  esac
done
PY="${PYTHON:-python3}"
OUT="${OUT:-runs/gpu}"
mkdir -p "$OUT/accuracy"
OUT="$(cd "$OUT" && pwd)"
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:-.}" PYTHONUNBUFFERED=1
{
  date -u
  "$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available()); print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
# the tests that matter on the device (the CPU-only ones run too); one torch thread, as
# tests/conftest.py would set it
OMP_NUM_THREADS=1 PROFILING_TEST_DEVICE="$DEVICE" timeout 60 "$PY" -m pytest -q -p no:cacheprovider --noconftest \
  tests/test_profiling_algorithms.py tests/test_profiling_study.py -k "not worker_processes" \
  > "$OUT/tests.txt" 2>&1
echo "tests exit $? (see $OUT/tests.txt)"; tail -3 "$OUT/tests.txt"
if [ "$DEVICE" = cuda ]; then REPS=20; else REPS=5; fi
timeout 75 "$PY" -m profiling.benchmark --device "$DEVICE" --repeats "$REPS" > "$OUT/benchmark.txt" 2>&1
echo "benchmark exit $?"; cat "$OUT/benchmark.txt"
# the study: on a GPU, 20 repeats capped at ~3 s per configuration
if [ "$DEVICE" = cuda ] && [ -z "$QUICK" ]; then EXTRA="--repeats 20 --seconds-per-config 3"; else EXTRA=""; fi
SCALE=("$PY" -m profiling.scale --device "$DEVICE" $QUICK $EXTRA --out "$OUT/scale")
timeout 225 "${SCALE[@]}" > "$OUT/scale_log.txt" 2>&1
echo "scale exit $?"
if [ ! -f "$OUT/scale/summary.txt" ]; then  # cut off: plots and summary from the rows measured
  timeout 20 "${SCALE[@]}" --plots-only >> "$OUT/scale_log.txt" 2>&1
  echo "plots from the partial CSV: exit $?"
fi
tail -40 "$OUT/scale_log.txt"
# the accuracy-matched comparison, quick: one tar of its folder (the device tool returns 8 files)
timeout 90 "$PY" -m profiling.accuracy_study --quick --device "$DEVICE" --out "$OUT/accuracy" \
  > "$OUT/accuracy/log.txt" 2>&1 || echo "accuracy study exit $?"
tail -20 "$OUT/accuracy/log.txt"
tar -cf "$OUT/accuracy.tar" -C "$OUT" accuracy && rm -rf "$OUT/accuracy"
# one file for the seven figures, so that $OUT holds 8 files
if ls "$OUT"/scale/*.png > /dev/null 2>&1; then
  tar -cf "$OUT/scale/plots.tar" -C "$OUT/scale" $(cd "$OUT/scale" && ls *.png) && rm -f "$OUT"/scale/*.png
fi
find "$OUT" -type f | sort
