// The skeleton the 8-warp kernels share (w4a16, w4_sp24, w4_gqsa_tile): the
// activation copy of a pipeline stage, the stage ring, tile sums to Y (direct
// or through a split's slabs and arrival counters) and each CTA's share of a
// launch's rows. Device code; the primitives are in spa_device.cuh, the host
// side that launches these kernels in spa_launch.cuh. Internal to
// plugins/kernels.
#pragma once

#include "spa_device.cuh"

namespace spa {

// ---- shared by the 8-warp kernels (w4a16, w4_sp24, w4_gqsa_tile) ------------
// The activation copy of one pipeline stage: kRows rows of one 128-k group, 16
// chunks of 16 B per row; chunk c = threadIdx.x + i * kThreads is row c / 16.
// Rows >= M are zero-filled by the same copy (src-size 0: no memory read);
// threads without a chunk (kRows = 8: the upper half) copy nothing.
// `slot(row, c16)` is the kernel's swizzle of 16-B chunks within a row.
template <typename T, int kRows, int kThreads>
struct ActivationCopy {
  static constexpr int kChunks = kRows * (SPA_W4_GROUP / 8);
  static constexpr int kPerThread = (kChunks + kThreads - 1) / kThreads;  // 1, 1, 2, 4
  const T* src[kPerThread];
  int dst[kPerThread];
  bool valid[kPerThread];
  bool last;  // this thread has a chunk in its last slot

  template <typename Slot>
  __device__ __forceinline__ ActivationCopy(const T* a, int M, int K, int g_begin, Slot slot) {
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      const int c = threadIdx.x + i * kThreads, row = c / 16, c16 = c % 16;
      valid[i] = row < M;
      src[i] = a + (valid[i] ? static_cast<size_t>(row) * K + static_cast<size_t>(g_begin) * SPA_W4_GROUP + c16 * 8 : 0);
      dst[i] = (c < kChunks ? row : 0) * SPA_W4_GROUP + slot(row, c16) * 8;
    }
    last = kChunks % kThreads == 0 || static_cast<int>(threadIdx.x) < kChunks % kThreads;
  }
  // Issues this thread's copies into `stage` when `more`, and advances every source by one group.
  __device__ __forceinline__ void copy(T* stage, bool more) {
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      cp_async16_zfill_if(stage + dst[i], src[i], valid[i], more && (i + 1 < kPerThread || last));
      src[i] += SPA_W4_GROUP;
    }
  }
};

// The cp.async ring of kStages one-group stages, unrolled so that group
// base + s lives in stage s and every shared offset is a constant: the first
// kStages - 1 groups are issued, then each group waits for its stage, refills
// the stage freed last (when more groups remain) and computes. With
// kUnguarded, the steady state runs first while every group of the ring
// computes and refills (no guards; fewer instructions per group).
// A stage is loaded in two parts: load_fixed(stage, more) the operands no
// kernel writes (weights, scales, metadata), load_acts(stage, more) the
// activations. The first kStages - 1 stages' fixed parts are issued before
// the grid dependency wait (they overlap the kernel before, with PDL), their
// activations after it; all those fixed copies join the first commit group,
// which the first stage waits for (they were issued first).
template <int kStages, bool kUnguarded, typename LoadFixed, typename LoadActs, typename Compute>
__device__ __forceinline__ void run_stage_ring(int g_count, LoadFixed& load_fixed, LoadActs& load_acts,
                                               Compute& compute) {
  allow_dependent_launch();
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) load_fixed(s, s < g_count);
  grid_dependency_wait();
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    load_acts(s, s < g_count);
    cp_async_commit();
  }
  auto step = [&](int s, bool more) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // stage s landed for all threads; the stage computed last is free
    const int refill = (s + kStages - 1) % kStages;
    load_fixed(refill, more);
    load_acts(refill, more);
    cp_async_commit();
    compute(s);
  };
  int base = 0;
  if constexpr (kUnguarded) {
    for (; base + 2 * kStages - 1 <= g_count; base += kStages) {
#pragma unroll
      for (int s = 0; s < kStages; ++s) step(s, true);
    }
  }
  for (; base < g_count; base += kStages) {
#pragma unroll
    for (int s = 0; s < kStages; ++s)
      if (base + s < g_count) step(s, base + s + kStages - 1 < g_count);  // uniform over the block
  }
  cp_async_wait<0>();
}

// Zeroes the accumulators of MT 8-token tiles (4 C fragment registers each).
template <int MT>
__device__ __forceinline__ void zero_tiles(float (&acc)[MT][4]) {
#pragma unroll
  for (int j = 0; j < MT; ++j)
#pragma unroll
    for (int r = 0; r < 4; ++r) acc[j][r] = 0.f;
}

// Adds one 8-token tile's group sums (kChains partial chains), scaled, to
// its accumulators: rows g and g + 8 of the tile (C fragment registers 0, 1
// and 2, 3) have their own scale. The kernels scale each tile as soon as its
// group is summed, so one tile's partial sums are live at a time (summing
// every tile first held MT x 4 more registers: at MT = 8 the split kernel
// rematerialised addresses and spilled).
template <int kChains>
__device__ __forceinline__ void add_scaled(float (&acc)[4], const float (&part)[kChains][4], float scale_lo,
                                           float scale_hi) {
#pragma unroll
  for (int c = 0; c < kChains; ++c) {
    acc[0] += part[c][0] * scale_lo;
    acc[1] += part[c][1] * scale_lo;
    acc[2] += part[c][2] * scale_hi;
    acc[3] += part[c][3] * scale_hi;
  }
}

// Stores a tile's C fragments into Y: c0,c1 -> (n = col_lo, tokens 2t, 2t+1);
// c2,c3 -> n = col_lo + 8.
template <typename T, int MT>
__device__ __forceinline__ void store_tile(const float (&acc)[MT][4], T* y, int M, int N, int col_lo,
                                           int thread_in_group) {
  expect_dependency_resolved("an output store");
#pragma unroll
  for (int j = 0; j < MT; ++j) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      int m = j * 8 + thread_in_group * 2 + (r & 1);
      int n = col_lo + (r >> 1) * 8;
      if (m < M) y[static_cast<size_t>(m) * N + n] = Elem<T>::from_float(acc[j][r]);
    }
  }
}

// Split-K reduced inside the kernel (w4a16, w4_sp24): no memset of the sums, no FP32
// atomics, no finalize launch. Each split stores its FP32 sums to its own
// slab of the workspace with plain stores; the CTA that arrives last at its
// column block's counter (an integer atomic after a fence) sums the slabs in
// split order (up to MT = 4 its own split's term from its registers, the
// same values), so Y has the same bits whatever order the CTAs finished in,
// converts once to T and puts the counter back to 0 for the next launch.
// Every thread of the CTA calls it (it has barriers); `valid`: this warp owns
// a real tile. `flag` is a free int of shared memory (the stages are done).
template <typename T, int MT>
__device__ __forceinline__ void store_split(const float (&acc)[MT][4], T* y, float* slabs, int* counter, int* flag,
                                            bool valid, int M, int N, int col_lo, int thread_in_group) {
  expect_dependency_resolved("a split-K slab store");
  const size_t slab = static_cast<size_t>(M) * N;
  if (valid) {
#pragma unroll
    for (int j = 0; j < MT; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int m = j * 8 + thread_in_group * 2 + (r & 1);
        if (m < M) slabs[blockIdx.y * slab + static_cast<size_t>(m) * N + col_lo + (r >> 1) * 8] = acc[j][r];
      }
  }
  __threadfence();  // this CTA's sums are visible device-wide before it counts itself
  __syncthreads();
  if (threadIdx.x == 0) *flag = atomicAdd(counter, 1) == static_cast<int>(gridDim.y) - 1;
  __syncthreads();
  if (*flag == 0) return;
  __threadfence();
  if (valid) {
#pragma unroll
    for (int j = 0; j < MT; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int m = j * 8 + thread_in_group * 2 + (r & 1);
        if (m >= M) continue;
        const size_t index = static_cast<size_t>(m) * N + col_lo + (r >> 1) * 8;
        // Up to MT = 4 its own split's sums come from its registers (the
        // same FP32 values its slab holds): only the other splits' slabs are
        // read back. At MT = 8 keeping them live to here cost the main loop
        // 4 % more instructions (ptxas at the 128-register cap): read back.
        float sum = 0.0f;
        for (unsigned s = 0; s < gridDim.y; ++s) {
          if constexpr (MT <= 4)
            sum += s == blockIdx.y ? acc[j][r] : __ldcg(slabs + s * slab + index);  // L2: other SMs wrote it
          else
            sum += __ldcg(slabs + s * slab + index);
        }
        y[index] = Elem<T>::from_float(sum);
      }
  }
  if (threadIdx.x == 0) *counter = 0;
}

// A tile's sums to Y: directly, or (kSplit) through this split's slab and the
// last CTA's sum (store_split). Every thread of the CTA calls it (the split
// path has barriers); `valid`: this warp owns a real tile.
template <typename T, int MT, bool kSplit>
__device__ __forceinline__ void finish_tile(const float (&acc)[MT][4], T* y, float* slabs, int* counter, int* flag,
                                            bool valid, int M, int N, int col_lo, int thread_in_group) {
  if constexpr (kSplit)
    store_split<T, MT>(acc, y, slabs, counter, flag, valid, M, N, col_lo, thread_in_group);
  else if (valid)
    store_tile<T, MT>(acc, y, M, N, col_lo, thread_in_group);
}

// A CTA's share of its launch's rows: its column block and the first row and
// count of its rows. A launch gives each column block one CTA up to 32 rows
// (and up to 64 where row_halves says one), two CTAs of 32 rows (MT = 4) for
// 33-64 rows where row_halves says two (blockIdx.x = 2 x block + half:
// neighbours), and above 64 rows ceil(M / 64) CTAs of 64 (MT = 8;
// with_row_tiles: every row in one launch). Those run in groups of
// kChunkGroup column blocks, each group's CTAs chunk by chunk (blockIdx.x =
// (group x chunks + chunk) x width + block in group), so the CTAs resident
// at one time share a few blocks' weights and a few chunks' activations
// through L2: each weight is read from HBM about once per resident wave of
// chunks, not once per chunk. Instantiations of 8 or 16 rows are never
// shared, nor split ones of 64 (only launches of up to 64 rows are split),
// at compile time: no registers spent on it.

constexpr int kChunkGroup = 8;
struct RowShare {
  int block, m0, rows;
};
template <bool kSplit, int kRows>
__device__ __forceinline__ RowShare row_share(int M, int N) {
  if constexpr (kRows == 32) {
    if (M > kRows) {
      const int half = static_cast<int>(blockIdx.x & 1u);
      return RowShare{static_cast<int>(blockIdx.x >> 1), half * kRows, half == 0 ? kRows : M - kRows};
    }
  } else if constexpr (kRows == 64 && !kSplit) {
    if (M > kRows) {
      const int chunks = (M + kRows - 1) / kRows, blocks = split_column_blocks(N);
      const int index = static_cast<int>(blockIdx.x), span = kChunkGroup * chunks;
      const int group = index / span, in_group = index % span;
      const int width = min(kChunkGroup, blocks - group * kChunkGroup);  // the last group may be narrower
      const int chunk = in_group / width, m0 = chunk * kRows;
      return RowShare{group * kChunkGroup + in_group % width, m0, min(kRows, M - m0)};
    }
  }
  return RowShare{static_cast<int>(blockIdx.x), 0, M};
}

// Moves a kernel's pointers and M to its share of the rows: A and Y by m0
// rows, the split's slabs past the first half's (splits x kRows x N floats,
// m0 = kRows; only launches of up to 64 rows are split), M to its own rows;
// returns its column block.
template <bool kSplit, int kRows, typename T>
__device__ __forceinline__ int take_rows(const T* __restrict__& a, T* __restrict__& y, float* __restrict__& slabs,
                                         int& M, int K, int N) {
  const RowShare share = row_share<kSplit, kRows>(M, N);
  if constexpr (kRows >= 32) {
    a += static_cast<size_t>(share.m0) * K;
    y += static_cast<size_t>(share.m0) * N;
    if constexpr (kSplit) slabs += static_cast<size_t>(share.m0) * gridDim.y * N;
    M = share.rows;
  }
  return share.block;
}

}  // namespace spa
