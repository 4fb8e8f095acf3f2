#!/usr/bin/env bash
# Where the Triton IFM's time goes on a GPU, and the whole model after the
# channels_last padding change: every Triton kernel alone over its launch
# configurations (sweep_triton.py, compiled in parallel first), the whole-model
# benchmark with torch.compile and CUDA graphs, the model's kernel profile, and
# the native op's argument checks alone (they aborted on an H200). Logs and JSON
# go to ${OUT:-gpu_out}. Usage: bash benchmarks/gpu_sweep.sh
set -u
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
step() { local name=$1 limit=$2; shift 2; echo "=== $name ($(date +%T), limit ${limit}s)"; local t0=$SECONDS
         timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
         tail -n "${TAIL:-25}" "$OUT/$name.log"; echo "=== $name: exit $rc after $((SECONDS - t0)) s"; }
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
ARCH=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
TAIL=3 step install 60 env INIK_NO_EXTENSION=1 $PY -m pip install --no-build-isolation --no-deps --no-index -e .
echo "=== sweep compile ($(date +%T))"; t0=$SECONDS
for i in $(seq 0 13); do
  timeout 150 $PY benchmarks/sweep_triton.py --compile-only --part "$i/14" ${SWEEP_ARGS:-} > "$OUT/sweep_c$i.log" 2>&1 &
done
wait; cat "$OUT"/sweep_c*.log | grep -v "^part" | head -20; echo "=== sweep compile: $((SECONDS - t0)) s"
# The native extension builds beside the sweep's timing (CPU work against GPU-timed kernels).
( timeout 300 env TORCH_CUDA_ARCH_LIST="$ARCH" INIK_BUILD_CUDA=1 MAX_JOBS=16 \
    $PY -m pip install --no-build-isolation --no-deps --no-index -e . > "$OUT/build.log" 2>&1;
  echo "build exit $?" >> "$OUT/build.log" ) &
BUILD=$!
TAIL=40 step sweep 150 $PY benchmarks/sweep_triton.py --out "$OUT/sweep.json" ${SWEEP_ARGS:-}
wait $BUILD; tail -n 3 "$OUT/build.log"
TAIL=40 step crash_probe 60 $PY -X faulthandler -m pytest -q -p no:cacheprovider tests/test_ifm_cpp.py -k reject_bad
TAIL=30 step bench_model 150 $PY benchmarks/bench_model.py --sizes 640 --no-train \
    --modes baseline,fast,fast-bf16,fast-bf16-graph,fast-bf16-compiled-graph --out "$OUT/bench_model.json"
TAIL=45 step profile_model 60 $PY benchmarks/profile_model.py --mode fast-bf16
echo "done $(date +%T)"
