#!/usr/bin/env bash
# The GPU check, in one go, on a machine with a CUDA GPU:
#   OUT=/some/folder bash scripts/gpu_check.sh
# 1. tests/test_cuda.py (CUDA paths: autocast in the loop, GradScaler, fast.yaml bf16/fp16, resume,
#    compile, the host-sync audit; ~2-3 min on an H100/H200);
# 2. side by side (issue 29): airbench94_muon (BENCH_DIR, default .gpu/bench; unchanged but for its run
#    count: 5 runs after its max-autotune warm-up, ~3.5 min on an H100) and configs/fast_gpu.yaml over 5
#    seeds (cnnkit sweep, one worker: one process, so compiled graphs are reused), then one table from
#    their own logs (scripts/side_by_side.py): TTA accuracy mean ± std, training seconds (warm-up apart),
#    launch-to-report seconds;
# 3. with BENCH=1 only: scripts/bench_train.py --device cuda on fast.yaml and lenet.yaml (~3-4 min);
# 4. with GRID="KEY=V1,V2 ..." only: configs/fast_gpu.yaml over that grid, seed 0, one worker (cnnkit sweep
#    --grid; e.g. GRID="train.prepare=step,epoch train.compile=true,max-autotune-no-cudagraphs"), to choose a
#    setting by its training seconds and accuracy; its summary is grid.log.
# SKIP_TESTS=1 skips step 1 (to fit step 2 in one 10-minute device call when test_cuda.py ran already);
# SKIP_SIDE=1 skips step 2 (a call for step 3 or 4 alone).
# Writes into $OUT: env.txt, test_cuda.log/.xml, airbench.log, side_by_side.md, sweep.log, summary.txt
# (and bench_train.log/.json). Expects python3 with torch and cnnkit importable (PYTHONPATH=repo)
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

tests_rc=0; tests_s=0
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  start=$(date +%s)
  timeout "${TEST_TIMEOUT:-420}" "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py tests/test_optim_paths.py --durations=15 \
    --junitxml="$OUT/test_cuda.xml" 2>&1 | tee "$OUT/test_cuda.log"
  tests_rc=${PIPESTATUS[0]}
  tests_s=$(( $(date +%s) - start ))
fi

airbench_rc=0; sweep_rc=0; airbench_s=0; sweep_s=0
if [ "${SKIP_SIDE:-0}" != 1 ]; then
# airbench94_muon, 5 runs, on this very data (its loader reads cifar10/{train,test}.pt in its folder).
BENCH_DIR=$(cd "${BENCH_DIR:-.gpu/bench}" && pwd)
mkdir -p "$OUT/airbench"
start=$(date +%s)
( cd "$OUT/airbench" && "$PY" "$BENCH_DIR/airbench_data.py" "$CNNKIT_DATA" cifar10 >/dev/null \
  && sed 's/for run in range(200)/for run in range(5)/' "$BENCH_DIR/airbench94_muon.py" > ab5.py \
  && timeout "${AIRBENCH_TIMEOUT:-330}" "$PY" ab5.py ) > "$OUT/airbench.log" 2>&1
airbench_rc=$?
airbench_s=$(( $(date +%s) - start ))
rm -rf "$OUT/airbench"  # its data copies (~180 MB) and logs/: not results

# The cnnkit recipe, 5 seeds, in one worker process.
start=$(date +%s)
timeout "${SWEEP_TIMEOUT:-330}" "$PY" -m cnnkit sweep --config configs/fast_gpu.yaml --seeds 5 --workers 1 \
  --name gpu5 --set output.dir=/tmp/cnnkit-gpu-runs > "$OUT/sweep.log" 2>&1
sweep_rc=$?
sweep_s=$(( $(date +%s) - start ))
"$PY" scripts/side_by_side.py --airbench-log "$OUT/airbench.log" --sweep /tmp/cnnkit-gpu-runs/gpu5 \
  --airbench-wall-s "$airbench_s" 2>&1 | tee "$OUT/side_by_side.md"
fi

bench_rc=0
if [ "${BENCH:-0}" = 1 ]; then
  timeout "${BENCH_TIMEOUT:-420}" "$PY" scripts/bench_train.py --device cuda --configs configs/fast.yaml \
    configs/lenet.yaml --no-textbook --bare-seconds 5 --out "$OUT/bench_train.json" 2>&1 | tee "$OUT/bench_train.log"
  bench_rc=${PIPESTATUS[0]}
fi

grid_rc=0
if [ -n "${GRID:-}" ]; then
  grid_args=()
  for g in $GRID; do grid_args+=(--grid "$g"); done
  timeout "${GRID_TIMEOUT:-300}" "$PY" -m cnnkit sweep --config configs/fast_gpu.yaml --seeds 0 --workers 1 \
    "${grid_args[@]}" --name grid --set output.dir=/tmp/cnnkit-gpu-runs > "$OUT/grid.log" 2>&1
  grid_rc=$?
  for m in /tmp/cnnkit-gpu-runs/grid/*/metrics.jsonl; do  # the two clocks of each cell
    [ -f "$m" ] && echo "$(basename "$(dirname "$m")"): $(tail -n 1 "$m")" >> "$OUT/grid.log"
  done
fi

{
  echo "tests/test_cuda.py: exit $tests_rc in ${tests_s} s: $(tail -n 1 "$OUT/test_cuda.log" 2>/dev/null)"
  echo "airbench94_muon (5 runs + warm-up): exit $airbench_rc in ${airbench_s} s"
  echo "cnnkit sweep configs/fast_gpu.yaml --seeds 5: exit $sweep_rc in ${sweep_s} s"
  [ "${BENCH:-0}" = 1 ] && echo "scripts/bench_train.py --device cuda: exit $bench_rc"
  [ -n "${GRID:-}" ] && echo "cnnkit sweep configs/fast_gpu.yaml --grid $GRID: exit $grid_rc"
} | tee "$OUT/summary.txt"
[ "$tests_rc" -eq 0 ] && [ "$airbench_rc" -eq 0 ] && [ "$sweep_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ "$grid_rc" -eq 0 ]
