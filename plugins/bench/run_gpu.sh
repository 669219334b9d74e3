#!/usr/bin/env bash
# The one prepared GPU run: build the kernels and the harness, write spa's
# layout cases, check every kernel at every M, time against cuBLAS FP16 on
# Llama 7B/13B/70B shapes, write plugins/bench/results.json and print the
# goal verdicts. Needs nvcc + cuBLAS + an NVIDIA GPU; Python 3 with numpy is
# used for spa's layout cases when available (skipped with a warning if not).
#
#   plugins/bench/run_gpu.sh [--quick]       (about 2-4 minutes on an H100)
set -euo pipefail
cd "$(dirname "$0")/../.."
QUICK=${1:-}
BUILD=${BUILD:-build/plugins-gpu}
LOG=plugins/bench/gpu_run.log
mkdir -p "$BUILD"
exec > >(tee "$LOG") 2>&1

nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader
CC=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
NVCC=${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
"$NVCC" --version | tail -1

# cuBLAS: $CUBLAS_ROOT, the toolkit's, else an nvidia-cublas wheel's.
CUBLAS_INC="" CUBLAS_LIB="" CUBLAS_FLAG="-lcublas"
for root in ${CUBLAS_ROOT:-} "$(dirname "$(dirname "$(readlink -f "$NVCC")")")" /usr/local/cuda $(python3 -c 'import glob,site; print(" ".join(glob.glob(site.getsitepackages()[0]+"/nvidia/cu*")))' 2>/dev/null); do
  if [ -f "$root/include/cublas_v2.h" ]; then
    for lib in "$root/lib64" "$root/lib" "$root/targets/x86_64-linux/lib"; do
      if [ -e "$lib/libcublas.so" ]; then CUBLAS_INC=$root/include CUBLAS_LIB=$lib; break 2; fi
      if [ -e "$lib/libcublas.so.13" ]; then CUBLAS_INC=$root/include CUBLAS_LIB=$lib CUBLAS_FLAG="-l:libcublas.so.13"; break 2; fi
      if [ -e "$lib/libcublas.so.12" ]; then CUBLAS_INC=$root/include CUBLAS_LIB=$lib CUBLAS_FLAG="-l:libcublas.so.12"; break 2; fi
    done
  fi
done
[ -n "$CUBLAS_LIB" ] || { echo "error: cuBLAS not found (install libcublas or nvidia-cublas)"; exit 1; }
export LD_LIBRARY_PATH="$CUBLAS_LIB:${LD_LIBRARY_PATH:-}"

echo "== build (sm_$CC)"
start=$(date +%s)
pids=()
for k in w4a16 w4_sp24 w4_gqsa; do
  "$NVCC" -std=c++17 -O3 -lineinfo -gencode "arch=compute_$CC,code=sm_$CC" -c "plugins/kernels/$k.cu" -o "$BUILD/$k.o" &
  pids+=($!)
done
"$NVCC" -std=c++17 -O3 -gencode "arch=compute_$CC,code=sm_$CC" -I"$CUBLAS_INC" -c plugins/bench/harness.cu -o "$BUILD/harness.o" &
pids+=($!)
"$NVCC" -std=c++17 -O3 -gencode "arch=compute_$CC,code=sm_$CC" plugins/bench/mma_sp_probe.cu -o "$BUILD/mma_sp_probe" &
pids+=($!)
for pid in "${pids[@]}"; do wait "$pid"; done  # not a bare `wait`: it would also wait for tee
"$NVCC" "$BUILD"/*.o -o "$BUILD/harness" -gencode "arch=compute_$CC,code=sm_$CC" -L"$CUBLAS_LIB" $CUBLAS_FLAG
echo "built in $(( $(date +%s) - start ))s"

# spa's layout cases: $SPA_CASES or $BUILD/cases when already written (e.g.
# carried from the CPU machine: python -m spa.trt.bench_cases --small DIR),
# else written here (needs python3 + numpy).
CASES_DIR=${SPA_CASES:-$BUILD/cases}
CASES=()
if [ -f "$CASES_DIR/cases.txt" ]; then
  echo "using the layout cases in $CASES_DIR"
  CASES=(--cases "$CASES_DIR")
elif python3 -c 'import numpy' 2>/dev/null && PYTHONPATH=. python3 -m spa.trt.bench_cases "$CASES_DIR"; then
  CASES=(--cases "$CASES_DIR")
else
  echo "warning: python3 with numpy/spa not available; skipping spa's layout cases (random-weight checks still run)"
fi

echo "== mma.sp metadata probe (the one hardware fact the CPU emulation assumes)"
probe=0
"$BUILD/mma_sp_probe" || probe=$?

echo "== correctness + timing"
status=0
"$BUILD/harness" ${CASES[@]+"${CASES[@]}"} --out plugins/bench/results.json $QUICK || status=$?

echo "== goals"
python3 plugins/bench/goals.py plugins/bench/results.json || true
[ $probe -eq 0 ] || echo "mma.sp probe exit status $probe: the w4_sp24 rows above use a metadata layout the tensor cores read differently (see the probe's line)"
echo "harness exit status $status; log in $LOG; results in plugins/bench/results.json; slices/split-K tuning data in plugins/bench/split_sweep.json"
exit $status
