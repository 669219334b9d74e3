// W4A16 group-128 GEMM: Y[M, N] = A[M, K] @ W[K, N], W INT4 (signed, stored
// u = q + 8) with one FP16 scale per 128 rows of K per output column.
//
// Design (Marlin-class, see plugins/README.md for the numbers it aims at):
// * Offline repacking (spa/trt/repack.py) stores W^T in 16x16 tiles,
//   int32 [N/16, K/16, 32]: the 32 words of a tile are exactly the A-operand
//   fragments of one mma.m16n8k16 (lane l's word), nibbles in "dequant order"
//   (spa_device.cuh), so a warp turns 4 bytes per lane into tensor-core
//   operands with 4 LOP3/SUB pairs and no shuffles. One warp owns one
//   16-column tile and streams its K range contiguously (1 KB per group).
// * The weight is the A operand (W^T, m16) and the activations the B operand
//   (n8): at decode sizes M <= 8 only one n8 tile is issued per k16 step.
// * cp.async multi-stage pipeline (6 groups of 128 k per warp at M <= 16, 4
//   above), weights with an L2 evict-first policy (read once), activations
//   zero-filled past M.
//   The group's 16 scales travel in the same cp.async group as its weights
//   (stage_scales), so nothing in the loop waits on a global load; two mma
//   accumulators (even / odd k16) halve the dependent HMMA chain at MT <= 2.
//   The H200 run measured a fixed ~0.74 us per group per warp while the scale
//   was loaded in the loop (plugins/bench/RESULTS.md); the effect of staging
//   it is not measured yet.
// * The INT4 values are exact in FP16/BF16; each group is accumulated in FP32
//   and scaled once in FP32 (no rounding of q*s to 16 bits), so the only
//   16-bit rounding is the output's own (emulated: FP16 4.5e-4, BF16 3.8e-3
//   of max|Y|; plugins/emu/README.md).
// * K is split across blocks by the launch table in spa_device.cuh
//   (plan_split, from the H200 sweep): partial sums go to an FP32 workspace
//   with atomicAdd and a finalize kernel converts them. Two or four warps of
//   a block can also share a tile, each on a slice of K, adding up in shared
//   memory (SLICES); the table no longer chooses them (they lost on the
//   H200: each slice stages its own activation copy), only the _ex
//   launchers' forced values do.
#include <algorithm>

#include "spa_device.cuh"

namespace spa {

namespace {
thread_local const char* g_last_error = "no error";
}

void set_error(const char* message) { g_last_error = message; }

namespace w4a16 {

constexpr int kWarps = 4;             // 4 / SLICES 16-column tiles per block
constexpr int kThreads = kWarps * 32;
// Pipeline depth in groups of 128 k: deeper where the stage's activation
// tiles (SLICES x MT x 8 rows) are small (decode), so one warp keeps 5 KB of
// weights in flight; shallower where they are large, so that two or more
// blocks still fit on an SM (MT = 2, SLICES = 4: 86 KB).
__host__ __device__ constexpr int stages_for(int mt, int slices) { return mt * slices <= 2 ? 6 : 4; }
constexpr int kTilesPerGroup = SPA_W4_GROUP / 16;  // 8 k16 tiles
constexpr int kLda = SPA_W4_GROUP + 8;             // padded smem row: conflict-free B loads

constexpr int kScaleBytes = 16 * 2;               // one tile's scales for one group
// Two independent mma accumulators (even and odd k16 steps) halve the
// dependent HMMA chain of a group; only at MT <= 2, where registers are spare.
__host__ __device__ constexpr int chains_for(int mt) { return mt <= 2 ? 2 : 1; }

template <int MT, int SLICES>
constexpr int smem_bytes() {
  return stages_for(MT, SLICES) *
         (kWarps * kTilesPerGroup * 32 * 4 + SLICES * MT * 8 * kLda * 2 + kWarps * kScaleBytes);
}

// MT: number of 8-token tiles (M rows handled: MT * 8, the rest zero-filled).
// SLICES: warps per 16-column tile (in-block split-K). The block's 4 warps
// cover 4 / SLICES tiles; the warps of one tile take contiguous slices of the
// block's groups and add their sums through shared memory at the end, so a
// layer with few tiles keeps every SM streaming without a memset, atomics or
// a second launch.
template <typename T, int MT, int SLICES>
__global__ void __launch_bounds__(kThreads)
    gemm_kernel(const T* __restrict__ a_ptr,         // [M, K]
                const uint32_t* __restrict__ packed, // [N/16, K/16, 32]
                const __half* __restrict__ scales,   // [K/128, N]
                T* __restrict__ y,                   // [M, N] (split == 1)
                float* __restrict__ partial,         // [M, N] FP32 (split > 1)
                int M, int N, int K, int groups_per_split) {
  static_assert(kWarps % SLICES == 0, "SLICES must divide the block's warps");
  constexpr int kStages = stages_for(MT, SLICES);
  constexpr int kTilesPerBlock = kWarps / SLICES;
  SPA_DYNAMIC_SMEM(smem);
  uint32_t* w_smem = reinterpret_cast<uint32_t*>(smem);
  T* a_smem = reinterpret_cast<T*>(smem + kStages * kWarps * kTilesPerGroup * 32 * 4);
  __half* s_smem = reinterpret_cast<__half*>(a_smem + kStages * SLICES * MT * 8 * kLda);  // [stage][warp][16]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group_id = lane / 4, thread_in_group = lane % 4;
  const int slice = warp % SLICES;
  const int n_tiles = N / 16, k_tiles = K / 16, n_groups = K / SPA_W4_GROUP;
  const int tile = blockIdx.x * kTilesPerBlock + warp / SLICES;
  const bool tile_valid = tile < n_tiles;
  const int g_begin = blockIdx.y * groups_per_split;
  const int g_end = min(n_groups, g_begin + groups_per_split);
  if (g_begin >= g_end) return;  // uniform over the block
  // Slice j of the block's groups: [g_begin + j * per, min(g_end, g_begin + (j + 1) * per)).
  const int per = (g_end - g_begin + SLICES - 1) / SLICES;
  const uint64_t policy = evict_first_policy();

  // Stage `stage` holds iteration `it` of every slice: each warp's weights,
  // and one activation tile per slice.
  auto load_stage = [&](int stage, int it) {
    const int group = g_begin + slice * per + it;
    if (tile_valid && it < per && group < g_end) {
      // 8 tiles x 32 words = 1 KB contiguous: 64 chunks of 16 B, two per lane.
      const uint32_t* src = packed + (static_cast<size_t>(tile) * k_tiles + group * kTilesPerGroup) * 32;
      uint32_t* dst = w_smem + (stage * kWarps + warp) * kTilesPerGroup * 32;
#pragma unroll
      for (int c = lane; c < kTilesPerGroup * 32 / 4; c += 32) cp_async16_evict_first(dst + c * 4, src + c * 4, policy);
      stage_scales(s_smem + (stage * kWarps + warp) * 16, scales, group, N, tile, lane, policy);
    }
    // Activations: SLICES x MT*8 rows x 128 halves = 16 chunks per row.
    for (int c = threadIdx.x; c < SLICES * MT * 8 * 16; c += kThreads) {
      const int j = c / (MT * 8 * 16), row = c / 16 % (MT * 8), col = (c % 16) * 8;
      const int group_j = g_begin + j * per + it;
      const bool valid = row < M && group_j < g_end;
      T* a_dst = a_smem + (stage * SLICES + j) * MT * 8 * kLda;
      const T* src = a_ptr + (valid ? static_cast<size_t>(row) * K + group_j * SPA_W4_GROUP + col : 0);
      cp_async16_zfill(a_dst + row * kLda + col, src, valid);
    }
  };

  float acc[MT][4];
#pragma unroll
  for (int j = 0; j < MT; ++j)
#pragma unroll
    for (int r = 0; r < 4; ++r) acc[j][r] = 0.f;

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < per) load_stage(s, s);
    cp_async_commit();
  }

  const int col_lo = tile * 16 + group_id;  // rows g and g+8 of the W^T tile
  for (int it = 0; it < per; ++it) {
    const int group = g_begin + slice * per + it;
    const bool active = tile_valid && group < g_end;  // uniform over the warp
    cp_async_wait<kStages - 2>();
    __syncthreads();  // stage `it` landed for all threads; stage it-1 is free
    int next = it + kStages - 1;
    if (next < per) load_stage(next % kStages, next);
    cp_async_commit();
    // A warp past the last tile (partial block) or past its slice's groups
    // loaded no weights: its mma would read uninitialised shared memory, so
    // it only keeps the block's barriers.
    if (!active) continue;

    const int stage = it % kStages;
    const uint32_t* w_tile = w_smem + (stage * kWarps + warp) * kTilesPerGroup * 32;
    const T* a_stage = a_smem + (stage * SLICES + slice) * MT * 8 * kLda;
    const __half* s_tile = s_smem + (stage * kWarps + warp) * 16;
    constexpr int kChains = chains_for(MT);
    float part[kChains][MT][4];
#pragma unroll
    for (int c = 0; c < kChains; ++c)
#pragma unroll
      for (int j = 0; j < MT; ++j)
#pragma unroll
        for (int r = 0; r < 4; ++r) part[c][j][r] = 0.f;
#pragma unroll
    for (int kt = 0; kt < kTilesPerGroup; ++kt) {
      uint32_t frag[4];
      dequant8<T>(w_tile[kt * 32 + lane], frag);
#pragma unroll
      for (int j = 0; j < MT; ++j) {
        const T* b = a_stage + (j * 8 + group_id) * kLda + kt * 16 + thread_in_group * 2;
        uint32_t b0 = *reinterpret_cast<const uint32_t*>(b);
        uint32_t b1 = *reinterpret_cast<const uint32_t*>(b + 8);
        mma_16816<T>(part[kt % kChains][j], frag, b0, b1);
      }
    }
    // Rows g and g + 8 of the tile: columns col_lo and col_lo + 8.
    const float scale_lo = __half2float(s_tile[group_id]), scale_hi = __half2float(s_tile[group_id + 8]);
#pragma unroll
    for (int c = 0; c < kChains; ++c)
#pragma unroll
      for (int j = 0; j < MT; ++j) {
        acc[j][0] += part[c][j][0] * scale_lo;
        acc[j][1] += part[c][j][1] * scale_lo;
        acc[j][2] += part[c][j][2] * scale_hi;
        acc[j][3] += part[c][j][3] * scale_hi;
      }
  }
  cp_async_wait<0>();

  if (!reduce_slices<MT, SLICES>(acc, smem, warp, lane) || !tile_valid) return;
  store_tile<T, MT>(acc, y, partial, M, N, col_lo, thread_in_group);
}

template <typename T, int MT, int SLICES>
cudaError_t launch(const T* a, const uint32_t* packed, const __half* scales, T* y, float* partial,
                   int M, int N, int K, int splits, int groups_per_split, cudaStream_t stream) {
  constexpr int bytes = smem_bytes<MT, SLICES>();
  static_assert(bytes >= kWarps * MT * 4 * 32 * 4, "the slice reduction reuses the pipeline memory");
  auto kernel = gemm_kernel<T, MT, SLICES>;
  SPA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  constexpr int tiles_per_block = kWarps / SLICES;
  dim3 grid((N / 16 + tiles_per_block - 1) / tiles_per_block, splits);
  SPA_LAUNCH(grid, kThreads, bytes, stream, kernel)(a, packed, scales, y, partial, M, N, K, groups_per_split);
  return cudaGetLastError();
}

// In-block slices only at decode sizes (MT <= 2): their activation tiles
// multiply the pipeline's shared memory by SLICES.
template <typename T>
cudaError_t dispatch(const T* a, const uint32_t* packed, const __half* scales, T* y, float* partial,
                     int M, int N, int K, int slices, int splits, int gps, cudaStream_t stream) {
  if (M <= 8) {
    if (slices == 4) return launch<T, 1, 4>(a, packed, scales, y, partial, M, N, K, splits, gps, stream);
    if (slices == 2) return launch<T, 1, 2>(a, packed, scales, y, partial, M, N, K, splits, gps, stream);
    return launch<T, 1, 1>(a, packed, scales, y, partial, M, N, K, splits, gps, stream);
  }
  if (M <= 16) {
    if (slices == 4) return launch<T, 2, 4>(a, packed, scales, y, partial, M, N, K, splits, gps, stream);
    if (slices == 2) return launch<T, 2, 2>(a, packed, scales, y, partial, M, N, K, splits, gps, stream);
    return launch<T, 2, 1>(a, packed, scales, y, partial, M, N, K, splits, gps, stream);
  }
  if (M <= 32) return launch<T, 4, 1>(a, packed, scales, y, partial, M, N, K, splits, gps, stream);
  return launch<T, 8, 1>(a, packed, scales, y, partial, M, N, K, splits, gps, stream);
}

template <typename T>
cudaError_t run(const void* a_ptr, const int32_t* packed_ptr, const uint16_t* scales_ptr,
                void* y_ptr, int M, int N, int K, void* workspace, int slices_wanted, int split_k,
                cudaStream_t stream) {
  const T* a = static_cast<const T*>(a_ptr);
  const uint32_t* packed = reinterpret_cast<const uint32_t*>(packed_ptr);
  const __half* scales = reinterpret_cast<const __half*>(scales_ptr);
  T* y = static_cast<T*>(y_ptr);
  const SplitPlan plan = plan_split(M, N / 16, K / SPA_W4_GROUP, slices_wanted, split_k, workspace != nullptr);
  const int slices = plan.slices, splits = plan.splits, gps = plan.groups_per_split;
  float* partial = splits > 1 ? static_cast<float*>(workspace) : nullptr;
  if (partial != nullptr)
    SPA_CHECK(cudaMemsetAsync(partial, 0, sizeof(float) * static_cast<size_t>(M) * N, stream));
  for (int m0 = 0; m0 < M; m0 += SPA_MAX_M_PER_LAUNCH) {
    int rows = std::min(SPA_MAX_M_PER_LAUNCH, M - m0);
    SPA_CHECK(dispatch<T>(a + static_cast<size_t>(m0) * K, packed, scales,
                          y + static_cast<size_t>(m0) * N,
                          partial ? partial + static_cast<size_t>(m0) * N : nullptr, rows, N, K,
                          slices, splits, gps, stream));
  }
  if (partial != nullptr)
    return launch_finalize<T>(partial, y, static_cast<long long>(M) * N, stream);
  return cudaSuccess;
}

}  // namespace w4a16
}  // namespace spa

extern "C" const char* spa_kernel_error_string(void) { return spa::g_last_error; }

extern "C" size_t spa_w4a16_workspace_size(int M, int N, int K) {
  (void)K;
  return sizeof(float) * static_cast<size_t>(M) * static_cast<size_t>(N);
}

extern "C" cudaError_t spa_w4a16_gemm_ex(const void* A, const int32_t* packed, const uint16_t* scales,
                                         void* Y, int M, int N, int K, SpaDtype dtype,
                                         void* workspace, size_t workspace_bytes, int slices,
                                         int split_k, cudaStream_t stream) {
  SPA_REQUIRE(A && packed && scales && Y, "w4a16: a data pointer is NULL");
  SPA_REQUIRE(M >= 1 && N >= 16 && K >= SPA_W4_GROUP, "w4a16: M, N or K too small");
  SPA_REQUIRE(K % SPA_W4_GROUP == 0, "w4a16: K must be a multiple of 128");
  SPA_REQUIRE(N % 16 == 0, "w4a16: N must be a multiple of 16");
  SPA_REQUIRE(dtype == SPA_FP16 || dtype == SPA_BF16, "w4a16: dtype must be SPA_FP16 or SPA_BF16");
  SPA_REQUIRE(slices == 0 || slices == 1 || slices == 2 || slices == 4, "w4a16: slices must be 0, 1, 2 or 4");
  // No room for FP32 partial sums: no split across blocks (in-block slices need none).
  if (workspace == nullptr || workspace_bytes < spa_w4a16_workspace_size(M, N, K)) {
    workspace = nullptr;
    if (split_k > 1) split_k = 1;
  }
  if (dtype == SPA_FP16)
    return spa::w4a16::run<__half>(A, packed, scales, Y, M, N, K, workspace, slices, split_k, stream);
  return spa::w4a16::run<__nv_bfloat16>(A, packed, scales, Y, M, N, K, workspace, slices, split_k, stream);
}

extern "C" cudaError_t spa_w4a16_gemm(const void* A, const int32_t* packed, const uint16_t* scales,
                                      void* Y, int M, int N, int K, SpaDtype dtype,
                                      void* workspace, size_t workspace_bytes, int split_k,
                                      cudaStream_t stream) {
  return spa_w4a16_gemm_ex(A, packed, scales, Y, M, N, K, dtype, workspace, workspace_bytes,
                           split_k > 0 ? 1 : 0, split_k, stream);
}
