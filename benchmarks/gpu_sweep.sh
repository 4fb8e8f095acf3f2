#!/usr/bin/env bash
# The GPU checks of the Triton IFM and the whole model in one pass: the offline
# kernel report for this GPU's architecture (registers, spills), the GPU tests
# (both Triton designs, `triton` and `triton2`, against the reference), the native
# op's argument checks (under cuda-gdb if they fail: they once crashed the process
# on an H200), the IFM benchmark with both Triton designs side by side (fp32 with
# IEEE and TF32 dots, bf16), the whole-model benchmarks and a profile of the model.
# Logs and JSON go to ${OUT:-gpu_out}. Usage: bash benchmarks/gpu_sweep.sh
# STEPS (comma-separated) picks what runs after the install, so that a second call
# can finish what a first one's time limit cut: report, build, tests, bench_ifm,
# bench_model, train_compiled, profile (the default: all of these), and sweep (the
# kernels over their launch configurations, sweep_triton.py, compiled in parallel
# first; SWEEP_ONLY picks the jobs, default the second design's kernels and both
# designs' autotuned backward); e.g.
#   STEPS=build,bench_model,train_compiled bash benchmarks/gpu_sweep.sh
# All steps take longer than one 10-minute command; two calls fit: first
# STEPS=report,tests,bench_ifm (the Triton designs), then
# STEPS=build,bench_model,train_compiled,profile (the whole model).
# train_wide (only when named) trains the wide-blur cascade on the GPU for TRAIN_S
# seconds (default 300; Ctrl-C's stop: a checkpoint after a whole step) from the
# carried folder runs/gpu_carry (made by benchmarks/gpu_carry.py: photos and the
# initial weights; name it in the call's carry) with configs/wide/cascade_gpu.json,
# and returns $OUT/wide_gpu.safetensors (the weights) and the run's log.csv in all.tgz
# (its validation draws on training photos - the carried ones are all from the training
# split - so its PSNR is no held-out score: evaluate the weights with the model card's commands):
#   STEPS=train_wide TRAIN_S=420 bash benchmarks/gpu_sweep.sh
set -u
STEPS=${STEPS:-report,build,tests,bench_ifm,bench_model,train_compiled,profile}
want() { [[ $STEPS == all || ",$STEPS," == *",$1,"* ]]; }
OUT=${OUT:-gpu_out}; LOGS=/tmp/gpu_logs; mkdir -p "$LOGS"
# everything also goes into one archive after each step (the device tool returns at most 8 files)
pack() { tar czf "$OUT/all.tgz" -C "$LOGS" . 2>/dev/null; }
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
step() { local name=$1 limit=$2; shift 2; echo "=== $name ($(date +%T), limit ${limit}s)"; local t0=$SECONDS
         timeout "$limit" "$@" > "$LOGS/$name.log" 2>&1; local rc=$?
         tail -n "${TAIL:-25}" "$LOGS/$name.log"; echo "=== $name: exit $rc after $((SECONDS - t0)) s"; pack; }
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
ARCH=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
TAIL=2 step install 60 env INIK_NO_EXTENSION=1 $PY -m pip install --no-build-isolation --no-deps --no-index -e .
want report && TAIL=3 step kernel_report 120 $PY benchmarks/kernel_report.py --arch "sm_${ARCH/./}" --jobs 16 \
    --kernels triton,triton2 && $PY benchmarks/kernel_report.py --arch "sm_${ARCH/./}" --jobs 16 --json \
    > "$LOGS/kernel_report.json" 2>/dev/null
if want sweep; then
echo "=== sweep compile ($(date +%T))"; t0=$SECONDS
SWEEP_ONLY=${SWEEP_ONLY:-fwd2,storek2,coef2,atoms2,image2,kbuf2,all2,all}
for i in $(seq 0 13); do
  timeout 120 $PY benchmarks/sweep_triton.py --compile-only --only "$SWEEP_ONLY" --part "$i/14" \
    > "$LOGS/sweep_c$i.log" 2>&1 &
done
for i in 0 1 2 3; do  # bf16: where the dense forward's half-precision dots may pay
  timeout 120 $PY benchmarks/sweep_triton.py --compile-only --dtype bfloat16 --only fwd,fwd2 --part "$i/4" \
    > "$LOGS/sweep_c1$i.log" 2>&1 &
done
wait; cat "$LOGS"/sweep_c*.log | grep -v "^part" | head -20 > "$LOGS/sweep_compile.log"
cat "$LOGS/sweep_compile.log"; rm -f "$LOGS"/sweep_c[0-9]*.log; echo "=== sweep compile: $((SECONDS - t0)) s"
fi
# The native extension builds beside the sweep's timing (CPU work against GPU-timed kernels).
BUILD=
want build && { ( timeout 200 env TORCH_CUDA_ARCH_LIST="$ARCH" INIK_BUILD_CUDA=1 MAX_JOBS=16 \
    $PY -m pip install --no-build-isolation --no-deps --no-index -e . > "$LOGS/build.log" 2>&1;
  echo "build exit $?" >> "$LOGS/build.log" ) &
BUILD=$!; }
want sweep && TAIL=${SWEEP_TAIL:-30} step sweep 120 $PY benchmarks/sweep_triton.py --only "$SWEEP_ONLY" --out "$LOGS/sweep.json"
want sweep && TAIL=${SWEEP_TAIL:-12} step sweep_bf16 60 $PY benchmarks/sweep_triton.py --dtype bfloat16 --only fwd,fwd2 \
    --out "$LOGS/sweep_bf16.json"
[[ -n $BUILD ]] && { wait $BUILD; tail -n 2 "$LOGS/build.log"; }
want tests && TAIL=12 step tests 300 $PY -m pytest -q -p no:cacheprovider -n 8 -rs -k "not reject_bad" \
    tests/test_ifm_conformance.py tests/test_ifm_triton.py tests/test_ifm_triton2.py tests/test_ifm_cpp.py tests/test_fast_path.py
want tests && TAIL=6 step reject_bad 60 $PY -m pytest -q -p no:cacheprovider -k reject_bad tests/test_ifm_cpp.py
if want tests && { ! grep -q " passed" "$LOGS/reject_bad.log" || grep -q "failed\|rror" "$LOGS/reject_bad.log"; }; then
  TAIL=30 step crash_gdb 60 cuda-gdb -batch -ex run -ex bt --args $PY -c \
    "import torch, inik.ops._ext; x=[torch.randn(2,3,5,7), torch.randn(2,3,5,7), torch.randn(2,4,5,7), torch.randn(3,4,5,5)]; torch.ops.inik.ifm_native_forward(*x, [5,2,1])"
fi
want bench_ifm && TAIL=22 step bench_ifm_fp32 120 $PY benchmarks/bench_ifm.py --backends unfused,cuda,triton,triton2 \
    --out "$LOGS/bench_ifm_fp32.json"
want bench_ifm && TAIL=16 step bench_ifm_tf32 90 $PY benchmarks/bench_ifm.py --tf32 --backends unfused,triton,triton2 \
    --out "$LOGS/bench_ifm_tf32.json"
want bench_ifm && TAIL=16 step bench_ifm_bf16 90 $PY benchmarks/bench_ifm.py --dtype bfloat16 --backends unfused,triton,triton2 \
    --out "$LOGS/bench_ifm_bf16.json"
want bench_model && TAIL=14 step bench_model 170 $PY benchmarks/bench_model.py --sizes 640 \
    --modes baseline,fast,fast-bf16,fast-bf16-graph,fast-bf16-compiled-graph --out "$LOGS/bench_model.json"
want bench_model && TAIL=6 step bench_model_cudnn 90 $PY benchmarks/bench_model.py --sizes 640 --no-train --cudnn-benchmark \
    --modes fast-bf16,fast-bf16-graph --out "$LOGS/bench_model_cudnn.json"
# the training target (2x the baseline's speed, half its memory): the compiled step
want train_compiled && TAIL=8 step train_compiled 150 $PY benchmarks/bench_model.py --sizes 640 --no-infer \
    --modes baseline,fast-bf16-compiled --out "$LOGS/bench_train_compiled.json"
want profile && TAIL=45 step profile_model 60 $PY benchmarks/profile_model.py --size 640 --mode fast-bf16 --rows 30
if [[ ",$STEPS," == *",train_wide,"* ]]; then  # only when named: it needs the carried folder
  TRAIN_S=${TRAIN_S:-300}
  rm -rf /tmp/wide_gpu "$OUT/wide_gpu.safetensors"  # a warm machine's earlier run must not come back as this one
  TAIL=12 step train_wide $((TRAIN_S + 120)) timeout -s INT -k 90 "$TRAIN_S" $PY -m inik train \
      --config configs/wide/cascade_gpu.json --data runs/gpu_carry/photos --init runs/gpu_carry/init.safetensors \
      --out /tmp/wide_gpu --no-progress
  cp /tmp/wide_gpu/log.csv "$LOGS/wide_gpu_log.csv" && cp /tmp/wide_gpu/config.json "$LOGS/wide_gpu_config.json"
  [[ -f /tmp/wide_gpu/last.safetensors ]] && cp /tmp/wide_gpu/last.safetensors "$OUT/wide_gpu.safetensors"; pack
fi
echo "done $(date +%T)"
