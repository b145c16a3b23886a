#!/usr/bin/env bash
# The GPU check, in one go, on a machine with a CUDA GPU:
#   OUT=/some/folder bash scripts/gpu_check.sh
# 1. tests/test_cuda.py (CUDA paths: autocast in the loop, GradScaler, fast.yaml bf16/fp16, resume,
#    compile, the host-sync audit; ~2-3 min on an H100/H200);
# 2. scripts/bench_train.py --device cuda on configs/fast.yaml and configs/lenet.yaml (~3-4 min).
# Writes at most 6 files into $OUT: env.txt, test_cuda.log, test_cuda.xml, bench_train.log,
# bench_train.json, summary.txt. Expects python3 with torch and cnnkit importable (PYTHONPATH=repo)
# and CNNKIT_DATA pointing at CIFAR-10 (the real-data test and the benchmark need it).
set -u -o pipefail
: "${OUT:?set OUT to the folder for the logs}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  git rev-parse HEAD 2>/dev/null || true
  nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv 2>&1 || true
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'devices', torch.cuda.device_count())"
  echo "CNNKIT_DATA=${CNNKIT_DATA:-unset}"
} > "$OUT/env.txt" 2>&1

start=$(date +%s)
timeout "${TEST_TIMEOUT:-420}" "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py --durations=15 \
  --junitxml="$OUT/test_cuda.xml" 2>&1 | tee "$OUT/test_cuda.log"
tests_rc=${PIPESTATUS[0]}
tests_s=$(( $(date +%s) - start ))

start=$(date +%s)
timeout "${BENCH_TIMEOUT:-420}" "$PY" scripts/bench_train.py --device cuda --configs configs/fast.yaml configs/lenet.yaml \
  --no-textbook --bare-seconds 5 --out "$OUT/bench_train.json" 2>&1 | tee "$OUT/bench_train.log"
bench_rc=${PIPESTATUS[0]}
bench_s=$(( $(date +%s) - start ))

{
  echo "tests/test_cuda.py: exit $tests_rc in ${tests_s} s: $(tail -n 1 "$OUT/test_cuda.log")"
  echo "scripts/bench_train.py --device cuda: exit $bench_rc in ${bench_s} s"
} | tee "$OUT/summary.txt"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
