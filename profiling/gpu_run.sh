#!/usr/bin/env bash
# The whole GPU check of profiling/ in one command, for a session lent a GPU:
#   PYTHONPATH=. OUT=/path/to/out bash profiling/gpu_run.sh            # cuda, full study (~8 min budget)
#   PYTHONPATH=. OUT=runs/gpu-smoke bash profiling/gpu_run.sh --device cpu --quick   # rehearsal on the CPU
# Writes under "$OUT" (default runs/gpu): env.txt, tests.txt (the tests that matter on the
# device: vectorized vs loop, MAML vs finite differences, measurement), benchmark.txt
# (one outer step of every method and implementation, side by side) and scale/ (CSV,
# six plots, combined figure, summary). Needs torch, numpy, matplotlib, tqdm, pytest only.
set -uo pipefail
DEVICE=cuda
QUICK=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --quick) QUICK="--quick"; shift ;;
    *) echo "usage: bash profiling/gpu_run.sh [--device cuda|cpu] [--quick]" >&2; exit 2 ;;
  esac
done
PY="${PYTHON:-python3}"
OUT="${OUT:-runs/gpu}"
mkdir -p "$OUT"
export PYTHONPATH="${PYTHONPATH:-.}"
{
  date -u
  "$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available()); print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
# the tests that matter on the device (the CPU-only ones run anyway; they take ~30 s)
PROFILING_TEST_DEVICE="$DEVICE" timeout 240 "$PY" -m pytest -q -p no:cacheprovider \
  tests/test_profiling_algorithms.py tests/test_profiling_study.py -k "not worker_processes" \
  > "$OUT/tests.txt" 2>&1
echo "tests exit $? (see $OUT/tests.txt)"; tail -3 "$OUT/tests.txt"
if [ "$DEVICE" = cuda ]; then REPS=20; else REPS=5; fi
timeout 300 "$PY" -m profiling.benchmark --device "$DEVICE" --repeats "$REPS" > "$OUT/benchmark.txt" 2>&1
echo "benchmark exit $?"; cat "$OUT/benchmark.txt"
# the study: GPU full sweeps fit ~8 min with 20 repeats capped at ~3 s per configuration
if [ "$DEVICE" = cuda ] && [ -z "$QUICK" ]; then EXTRA="--repeats 20 --seconds-per-config 3"; else EXTRA=""; fi
timeout 540 "$PY" -m profiling.scale --device "$DEVICE" $QUICK $EXTRA --out "$OUT/scale" > "$OUT/scale_log.txt" 2>&1
echo "scale exit $?"; tail -40 "$OUT/scale_log.txt"
