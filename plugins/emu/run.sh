#!/usr/bin/env bash
# Build the spa kernels for the host emulation (spa_emu.h) under a sanitizer
# and run emu_check on a cases folder written by `python -m spa.trt.bench_cases`.
#
#   plugins/emu/run.sh [--sanitizer address|thread] [--build-dir DIR] CASES_DIR [emu_check options]
#   plugins/emu/run.sh [--sanitizer ...] [--build-dir DIR] --probe    (plugins/bench/mma_sp_probe.cu)
#   plugins/emu/run.sh [--sanitizer ...] [--build-dir DIR] --build-only   (build emu_check, run nothing)
#
# Needs g++ (C++20) and the CUDA toolkit's headers (cuda_fp16.h ...); no GPU,
# no libcudart. Exit status: emu_check's (0 when every run passed).
# SPA_EMU_KERNELS=DIR takes the kernel sources from DIR instead (the tests use
# it to check that a broken copy of a kernel is caught). SPA_EMU_JOBS=1: one
# compiler at a time.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SAN=address
BUILD=""
PROBE=0
BUILD_ONLY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --sanitizer) SAN=$2; shift 2 ;;
    --build-dir) BUILD=$2; shift 2 ;;
    --probe) PROBE=1; shift ;;
    --build-only) BUILD_ONLY=1; shift ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] || [ $PROBE -eq 1 ] || [ $BUILD_ONLY -eq 1 ] || { echo "usage: $0 [--sanitizer address|thread] [--build-dir DIR] CASES_DIR [emu_check options]" >&2; exit 2; }
case "$SAN" in address|thread) ;; *) echo "error: --sanitizer must be address or thread" >&2; exit 2 ;; esac
CXX=${CXX:-g++}
command -v "$CXX" >/dev/null || { echo "error: $CXX not found (install g++)" >&2; exit 2; }
CUDA_INCLUDE=""
for root in ${CUDA_HOME:-} "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc || echo /nonexistent)")")")" /usr/local/cuda; do
  if [ -n "$root" ] && [ -f "$root/include/cuda_fp16.h" ]; then CUDA_INCLUDE=$root/include; break; fi
done
[ -n "$CUDA_INCLUDE" ] || { echo "error: CUDA headers (cuda_fp16.h) not found; set CUDA_HOME" >&2; exit 2; }
BUILD=${BUILD:-build/plugins-emu-$SAN}
mkdir -p "$BUILD"
KERNELS=${SPA_EMU_KERNELS:-$HERE/../kernels}
FLAGS=(-std=c++20 -O1 -g -DSPA_EMULATE "-fsanitize=$SAN" -fno-omit-frame-pointer "-I$HERE/../kernels" "-I$CUDA_INCLUDE")
# halt_on_error: a sanitizer report fails the run instead of scrolling past.
export ASAN_OPTIONS=${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=0}
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:exitcode=66}
if [ $PROBE -eq 1 ]; then
  "$CXX" "${FLAGS[@]}" -x c++ "$HERE/../bench/mma_sp_probe.cu" -x none "$HERE/emu_runtime.cpp" \
    -o "$BUILD/mma_sp_probe" -lpthread
  exec "$BUILD/mma_sp_probe"
fi
# A build folder whose emu_check was linked with these flags from these sources, none
# changed since, is reused: repeated runs (the tests call this several times) skip the
# compile, which takes about a minute under a sanitizer.
STAMP="$BUILD/emu_check.stamp"
WANT="$CXX ${FLAGS[*]} $KERNELS"
if [ -x "$BUILD/emu_check" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  stale=0
  for source in "$KERNELS"/*.cu "$KERNELS"/*.cuh "$KERNELS"/*.h "$HERE"/emu_check.cpp "$HERE"/emu_runtime.cpp "$HERE"/spa_emu.h; do
    if [ -e "$source" ] && [ "$source" -nt "$BUILD/emu_check" ]; then stale=1; fi
  done
  if [ $stale -eq 0 ]; then
    [ $BUILD_ONLY -eq 1 ] && exit 0
    exec "$BUILD/emu_check" "$@"
  fi
fi
rm -f "$STAMP"
# SPA_EMU_JOBS=1 compiles one file at a time (a shared machine); default: all six at once.
pids=()
status=0
compile() {
  "$CXX" "${FLAGS[@]}" "$@" & pids+=($!)
  if [ "${SPA_EMU_JOBS:-0}" = 1 ]; then wait "${pids[-1]}" || status=1; pids=(); fi
}
for k in w4a16 w4_sp24 w4_gqsa w4_gqsa_tile; do
  compile -x c++ -c "$KERNELS/$k.cu" -o "$BUILD/$k.o"
done
compile -c "$HERE/emu_runtime.cpp" -o "$BUILD/emu_runtime.o"
compile -c "$HERE/emu_check.cpp" -o "$BUILD/emu_check.o"
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
[ $status -eq 0 ] || { echo "error: compiling for the emulation failed" >&2; exit 2; }
"$CXX" "-fsanitize=$SAN" "$BUILD"/w4a16.o "$BUILD"/w4_sp24.o "$BUILD"/w4_gqsa.o "$BUILD"/w4_gqsa_tile.o "$BUILD"/emu_runtime.o \
  "$BUILD"/emu_check.o -o "$BUILD/emu_check" -lpthread
printf '%s' "$WANT" > "$STAMP"
[ $BUILD_ONLY -eq 1 ] && exit 0
exec "$BUILD/emu_check" "$@"
