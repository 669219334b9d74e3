#!/usr/bin/env bash
# The one prepared GPU run (about 5-7 minutes on a bare H200 with CUDA 13,
# CMake and PyTorch; budget 8): build the kernels and the harness, probe the
# mma.sp metadata reading, measure DRAM/L2 latency with a pointer chase,
# check every kernel at every M, time them against cuBLAS FP16 on Llama
# 7B/13B/70B shapes (plus the slices x splits sweep at M = 1..64), time
# torch's tinygemm on the same shapes, export Nsight Compute stall metrics,
# compare with the committed predictions and print one verdict line per goal
# naming the card. Everything goes under one folder:
#
#   plugins/bench/run_gpu.sh [--quick] [--out DIR] [--dry-run]
#
#   DIR/gpu_run.log         this run's log
#   DIR/results.json        timing rows (harness); DIR/split_sweep.json: tuning sweep;
#                           DIR/row_halves.json: M = 64 in one CTA per column block or two;
#                           DIR/launch_floor.json: an empty kernel's time in the same CUDA graphs
#                           (also with programmatic dependent launch); DIR/pdl.json: every kernel
#                           at M = 1, 16, 64 with PDL (as results.json) and without (SPA_PDL=0);
#                           DIR/prefill.json: M = 128-2048 as launched, in calls of 64 rows, cuBLAS
#                           (and cuBLAS plus the least a dequantize-to-FP16 step costs)
#   DIR/latency.json        pointer chase (latency.cu)
#   DIR/competitors.json    torch tinygemm + cuBLAS FP16 (tinygemm.py; absent without torch)
#   DIR/ncu/                Nsight Compute stalls: stalls.ncu-rep, stalls.txt, stalls.csv (absent without ncu)
#   DIR/model_vs_measured.txt  predictions.json (model.py) against results.json
#   DIR/bounds.txt          the goals at the kernels' limits, with this run's cuBLAS (model.py bounds)
#   DIR/goals.txt           the verdict lines (goals.py)
#
# --dry-run checks the tools and prints the steps without building or running
# anything (no GPU needed). Needs nvcc + cuBLAS + an NVIDIA GPU; Python 3 (numpy
# for spa's layout cases when not carried: see plugins/README.md "GPU run").
set -euo pipefail
cd "$(dirname "$0")/../.."
QUICK="" OUT_DIR="" DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=--quick; shift ;;
    --out) OUT_DIR=$2; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    *) echo "usage: $0 [--quick] [--out DIR] [--dry-run]" >&2; exit 2 ;;
  esac
done
BUILD=${BUILD:-build/plugins-gpu}
OUT_DIR=${OUT_DIR:-build/gpu-run}
BENCH=plugins/bench
NVCC=${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
NCU=${NCU:-$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1 || true)}
TORCH=$(python3 -c 'import torch; print(torch.__version__)' 2>/dev/null || true)
START=$(date +%s)

# Every step after the build gets a wall-clock cap so that the whole call
# stays within 8 minutes (480 s): each takes at most its cap and what is left
# of 460 s. The harness's cap leaves the later steps room; killed at it, it
# leaves results.json (written after every shape) with the shapes it finished,
# and the steps after it still run on those.
HARNESS_CAP=330 NCU_CAP=90 TINYGEMM_CAP=150 LATENCY_CAP=60 TOTAL=460
cap() { local left=$(( TOTAL - ($(date +%s) - START) )); echo $(( left < $1 ? (left > 0 ? left : 1) : $1 )); }
# Stall metrics (per issued instruction) that split the per-iteration time into
# memory latency, barriers, issue and pipe pressure (diagnosis.md §8).
STALLS=long_scoreboard,short_scoreboard,barrier,wait,math_pipe_throttle,mio_throttle,lg_throttle,not_selected,selected,no_instruction,dispatch_stall,branch_resolving
METRICS=$(echo "$STALLS" | tr , '\n' | sed 's/.*/smsp__average_warps_issue_stalled_&_per_issue_active.ratio/' | paste -sd,)
METRICS=$METRICS,smsp__inst_executed.sum,smsp__warps_active.avg.per_cycle_active,dram__throughput.avg.pct_of_peak_sustained_elapsed,dram__bytes_read.sum,sm__cycles_elapsed.avg.per_second,gpu__time_duration.sum
NCU_ARGS=(--profile-from-start off --clock-control none -k "regex:gemm_kernel|gemv_kernel"
          --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section Occupancy
          --section LaunchStats --section MemoryWorkloadAnalysis)

if [ $DRY -eq 1 ]; then
  echo "dry run: output folder $OUT_DIR, build folder $BUILD"
  echo "nvcc:  ${NVCC} ($([ -x "$NVCC" ] && "$NVCC" --version | tail -1 || echo missing))"
  echo "ncu:   ${NCU:-missing (the stall export will be skipped)}"
  echo "torch: ${TORCH:-missing (tinygemm will be skipped)}"
  echo "steps: build (kernels, harness, mma_sp_probe, latency) | mma.sp probe | pointer chase -> latency.json"
  echo "       | harness ${QUICK:-(full)} -> results.json, split_sweep.json (sweep M = 1, 4, 16, 32, 64), row_halves.json, launch_floor.json, pdl.json (and the PDL chain check), prefill.json"
  echo "       | tinygemm.py -> competitors.json | ncu ${NCU_ARGS[*]} --metrics (stall reasons, instructions, DRAM) harness --profile -> ncu/"
  echo "       | model.py compare -> model_vs_measured.txt | model.py bounds -> bounds.txt | goals.py -> goals.txt"
  exit 0
fi

mkdir -p "$BUILD" "$OUT_DIR"
exec > >(tee "$OUT_DIR/gpu_run.log") 2>&1
step() { echo "== $1 ($(( $(date +%s) - START ))s)"; }

nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader
CC=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
"$NVCC" --version | tail -1
echo "ncu: ${NCU:-not found}; torch: ${TORCH:-not installed}"

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

step "build (sm_$CC)"
ARCH=(-gencode "arch=compute_$CC,code=sm_$CC")
pids=()
for k in w4a16 w4_sp24 w4_gqsa w4_gqsa_tile; do
  "$NVCC" -std=c++17 -O3 -lineinfo "${ARCH[@]}" -c "plugins/kernels/$k.cu" -o "$BUILD/$k.o" & pids+=($!)
done
"$NVCC" -std=c++17 -O3 "${ARCH[@]}" -I"$CUBLAS_INC" -c $BENCH/harness.cu -o "$BUILD/harness.o" & pids+=($!)
"$NVCC" -std=c++17 -O3 "${ARCH[@]}" $BENCH/mma_sp_probe.cu -o "$BUILD/mma_sp_probe" & pids+=($!)
"$NVCC" -std=c++17 -O3 "${ARCH[@]}" $BENCH/latency.cu -o "$BUILD/latency" & pids+=($!)
for pid in "${pids[@]}"; do wait "$pid"; done  # not a bare `wait`: it would also wait for tee
"$NVCC" "$BUILD"/w4a16.o "$BUILD"/w4_sp24.o "$BUILD"/w4_gqsa.o "$BUILD"/w4_gqsa_tile.o "$BUILD"/harness.o -o "$BUILD/harness" "${ARCH[@]}" \
  -L"$CUBLAS_LIB" $CUBLAS_FLAG

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

step "mma.sp metadata probe (the one hardware fact the CPU emulation assumes)"
probe=0
"$BUILD/mma_sp_probe" || probe=$?

step "pointer chase (L2 and DRAM latency, idle and under load)"
timeout "$(cap $LATENCY_CAP)" "$BUILD/latency" --out "$OUT_DIR/latency.json" || echo "warning: pointer chase failed or ran past ${LATENCY_CAP}s"

step "correctness + timing"
status=0
rm -f "$OUT_DIR"/{results,split_sweep,row_halves,launch_floor,pdl,prefill}.json  # a folder reused: no stale rows
timeout "$(cap $HARNESS_CAP)" "$BUILD/harness" ${CASES[@]+"${CASES[@]}"} --out "$OUT_DIR/results.json" $QUICK || status=$?
if [ $status -eq 124 ]; then
  echo "FAILED | harness | ran past its ${HARNESS_CAP}s cap: results.json holds the shapes it finished"
  status=1
fi
[ -f "$OUT_DIR/results.json" ] || { echo "error: the harness wrote no results.json (see above)"; exit 1; }

step "torch tinygemm (_weight_int4pack_mm) on the same shapes"
if [ -n "$TORCH" ]; then
  timeout "$(cap $TINYGEMM_CAP)" python3 $BENCH/tinygemm.py "$OUT_DIR/competitors.json" $QUICK \
    || echo "warning: tinygemm timing failed or ran past ${TINYGEMM_CAP}s"
else
  echo "SKIPPED | tinygemm | torch is not installed"
fi

step "Nsight Compute stall metrics (w4a16, w4_sp24 at M = 1, 16; w4_gqsa, w4_gqsa_tile at M = 1, 8; 4096x11008)"
if [ -n "$NCU" ] && [ -x "$NCU" ]; then
  mkdir -p "$OUT_DIR/ncu"
  # The sections alone carry every stall reason; the explicit metrics make them
  # one CSV row each. A metric name this ncu does not know fails the whole
  # run, so retry with the sections alone.
  if timeout "$(cap $NCU_CAP)" "$NCU" "${NCU_ARGS[@]}" --metrics "$METRICS" -f -o "$OUT_DIR/ncu/stalls" "$BUILD/harness" --profile \
     || timeout "$(cap $NCU_CAP)" "$NCU" "${NCU_ARGS[@]}" -f -o "$OUT_DIR/ncu/stalls" "$BUILD/harness" --profile; then
    "$NCU" --import "$OUT_DIR/ncu/stalls.ncu-rep" --print-details all > "$OUT_DIR/ncu/stalls.txt" || true
    "$NCU" --import "$OUT_DIR/ncu/stalls.ncu-rep" --csv --page raw > "$OUT_DIR/ncu/stalls.csv" || true
  else
    echo "warning: ncu failed or ran past ${NCU_CAP}s (needs profiling permission: NVreg_RestrictProfilingToAdminUsers=0 or root)"
  fi
else
  echo "SKIPPED | ncu | Nsight Compute not found"
fi

step "model vs measured"
python3 $BENCH/model.py compare "$OUT_DIR/results.json" > "$OUT_DIR/model_vs_measured.txt" || true
tail -12 "$OUT_DIR/model_vs_measured.txt" || true  # the rows' summary, the launch floor, the PDL summary

step "bounds"
python3 $BENCH/model.py bounds "$OUT_DIR/results.json" > "$OUT_DIR/bounds.txt" || true
grep '^note:' "$OUT_DIR/bounds.txt" || true  # a card other than the model's H200
tail -13 "$OUT_DIR/bounds.txt" || true

step "goals"
competitors=$OUT_DIR/competitors.json
[ -f "$competitors" ] || competitors=$BENCH/competitors.json  # the last run's tinygemm timings
python3 $BENCH/goals.py "$OUT_DIR/results.json" --competitors "$competitors" | tee "$OUT_DIR/goals.txt" || true
[ $probe -eq 0 ] || echo "mma.sp probe exit status $probe: the w4_sp24 rows above use a metadata layout the tensor cores read differently (see the probe's line)"
echo "harness exit status $status; $(( $(date +%s) - START ))s; everything in $OUT_DIR"
exit $status
