// W4A16 group-128 GEMM: Y[M, N] = A[M, K] @ W[K, N], W INT4 (signed, stored
// u = q + 8) with one FP16 scale per 128 rows of K per output column.
//
// Design (Marlin-class, see plugins/README.md for the numbers it aims at):
// * Offline repacking (spa/plugins/repack.py) stores W^T in 16x16 tiles,
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
// * The INT4 values are exact in FP16/BF16; each group is accumulated in FP32
//   and scaled once in FP32 (no rounding of q*s to 16 bits), so the only
//   16-bit rounding is the output's own (emulated: FP16 4.5e-4, BF16 3.8e-3
//   of max|Y|; plugins/emu/README.md).
// * Split-K over groups when N/16 tiles give fewer than 4 warps per SM (a
//   4096-wide layer has 256 tiles for 132 SMs). Partial sums go to an FP32
//   workspace with atomicAdd and a finalize kernel converts them.
#include <algorithm>

#include "spa_device.cuh"

namespace spa {

namespace {
thread_local const char* g_last_error = "no error";
}

void set_error(const char* message) { g_last_error = message; }

namespace w4a16 {

constexpr int kWarps = 4;             // one 16-column tile per warp
constexpr int kThreads = kWarps * 32;
// Pipeline depth in groups of 128 k: deeper where the activation tile is small
// (decode), so one warp keeps 5 KB of weights in flight.
__host__ __device__ constexpr int stages_for(int mt) { return mt <= 2 ? 6 : 4; }
constexpr int kTilesPerGroup = SPA_W4_GROUP / 16;  // 8 k16 tiles
constexpr int kLda = SPA_W4_GROUP + 8;             // padded smem row: conflict-free B loads

template <int MT>
constexpr int smem_bytes() {
  return stages_for(MT) * (kWarps * kTilesPerGroup * 32 * 4 + MT * 8 * kLda * 2);
}

// MT: number of 8-token tiles (M rows handled: MT * 8, the rest zero-filled).
template <typename T, int MT>
__global__ void __launch_bounds__(kThreads)
    gemm_kernel(const T* __restrict__ a_ptr,         // [M, K]
                const uint32_t* __restrict__ packed, // [N/16, K/16, 32]
                const __half* __restrict__ scales,   // [K/128, N]
                T* __restrict__ y,                   // [M, N] (split == 1)
                float* __restrict__ partial,         // [M, N] FP32 (split > 1)
                int M, int N, int K, int groups_per_split) {
  constexpr int kStages = stages_for(MT);
  SPA_DYNAMIC_SMEM(smem);
  uint32_t* w_smem = reinterpret_cast<uint32_t*>(smem);
  T* a_smem = reinterpret_cast<T*>(smem + kStages * kWarps * kTilesPerGroup * 32 * 4);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group_id = lane / 4, thread_in_group = lane % 4;
  const int n_tiles = N / 16, k_tiles = K / 16, n_groups = K / SPA_W4_GROUP;
  const int tile = blockIdx.x * kWarps + warp;
  const bool tile_valid = tile < n_tiles;
  const int g_begin = blockIdx.y * groups_per_split;
  const int g_end = min(n_groups, g_begin + groups_per_split);
  if (g_begin >= g_end) return;  // uniform over the block
  const uint64_t policy = evict_first_policy();

  auto load_stage = [&](int stage, int group) {
    if (tile_valid) {
      // 8 tiles x 32 words = 1 KB contiguous: 64 chunks of 16 B, two per lane.
      const uint32_t* src = packed + (static_cast<size_t>(tile) * k_tiles + group * kTilesPerGroup) * 32;
      uint32_t* dst = w_smem + (stage * kWarps + warp) * kTilesPerGroup * 32;
#pragma unroll
      for (int c = lane; c < kTilesPerGroup * 32 / 4; c += 32) cp_async16_evict_first(dst + c * 4, src + c * 4, policy);
    }
    // Activations: MT*8 rows x 128 halves = 16 chunks per row.
    T* a_dst = a_smem + stage * MT * 8 * kLda;
    for (int c = threadIdx.x; c < MT * 8 * 16; c += kThreads) {
      int row = c / 16, col = (c % 16) * 8;
      bool valid = row < M;
      const T* src = a_ptr + (valid ? static_cast<size_t>(row) * K + group * SPA_W4_GROUP + col : 0);
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
    if (g_begin + s < g_end) load_stage(s, g_begin + s);
    cp_async_commit();
  }

  const int col_lo = tile * 16 + group_id;  // rows g and g+8 of the W^T tile
  for (int group = g_begin, it = 0; group < g_end; ++group, ++it) {
    float scale_lo = 0.f, scale_hi = 0.f;
    if (tile_valid) {
      scale_lo = __half2float(scales[static_cast<size_t>(group) * N + col_lo]);
      scale_hi = __half2float(scales[static_cast<size_t>(group) * N + col_lo + 8]);
    }
    cp_async_wait<kStages - 2>();
    __syncthreads();  // stage `it` landed for all threads; stage it-1 is free
    int next = group + kStages - 1;
    if (next < g_end) load_stage((it + kStages - 1) % kStages, next);
    cp_async_commit();
    // A warp past the last tile (partial block) loaded no weights: its mma
    // would read uninitialised shared memory (invalid mma.sp metadata is
    // undefined behaviour), so it only keeps the block's barriers.
    if (!tile_valid) continue;

    const int stage = it % kStages;
    const uint32_t* w_tile = w_smem + (stage * kWarps + warp) * kTilesPerGroup * 32;
    const T* a_stage = a_smem + stage * MT * 8 * kLda;
    float part[MT][4];
#pragma unroll
    for (int j = 0; j < MT; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) part[j][r] = 0.f;
#pragma unroll
    for (int kt = 0; kt < kTilesPerGroup; ++kt) {
      uint32_t frag[4];
      dequant8<T>(w_tile[kt * 32 + lane], frag);
#pragma unroll
      for (int j = 0; j < MT; ++j) {
        const T* b = a_stage + (j * 8 + group_id) * kLda + kt * 16 + thread_in_group * 2;
        uint32_t b0 = *reinterpret_cast<const uint32_t*>(b);
        uint32_t b1 = *reinterpret_cast<const uint32_t*>(b + 8);
        mma_16816<T>(part[j], frag, b0, b1);
      }
    }
#pragma unroll
    for (int j = 0; j < MT; ++j) {
      acc[j][0] += part[j][0] * scale_lo;
      acc[j][1] += part[j][1] * scale_lo;
      acc[j][2] += part[j][2] * scale_hi;
      acc[j][3] += part[j][3] * scale_hi;
    }
  }
  cp_async_wait<0>();
  if (!tile_valid) return;

  // C fragment: c0,c1 -> (n = col_lo, tokens 2t, 2t+1); c2,c3 -> n = col_lo + 8.
#pragma unroll
  for (int j = 0; j < MT; ++j) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      int m = j * 8 + thread_in_group * 2 + (r & 1);
      int n = col_lo + (r >> 1) * 8;
      if (m >= M) continue;
      size_t index = static_cast<size_t>(m) * N + n;
      if (partial != nullptr)
        atomicAdd(partial + index, acc[j][r]);
      else
        y[index] = Elem<T>::from_float(acc[j][r]);
    }
  }
}

template <typename T, int MT>
cudaError_t launch(const T* a, const uint32_t* packed, const __half* scales, T* y, float* partial,
                   int M, int N, int K, int splits, int groups_per_split, cudaStream_t stream) {
  constexpr int bytes = smem_bytes<MT>();
  auto kernel = gemm_kernel<T, MT>;
  SPA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  dim3 grid((N / 16 + kWarps - 1) / kWarps, splits);
  SPA_LAUNCH(grid, kThreads, bytes, stream, kernel)(a, packed, scales, y, partial, M, N, K, groups_per_split);
  return cudaGetLastError();
}

template <typename T>
cudaError_t dispatch(const T* a, const uint32_t* packed, const __half* scales, T* y, float* partial,
                     int M, int N, int K, int splits, int gps, cudaStream_t stream) {
  if (M <= 8) return launch<T, 1>(a, packed, scales, y, partial, M, N, K, splits, gps, stream);
  if (M <= 16) return launch<T, 2>(a, packed, scales, y, partial, M, N, K, splits, gps, stream);
  if (M <= 32) return launch<T, 4>(a, packed, scales, y, partial, M, N, K, splits, gps, stream);
  return launch<T, 8>(a, packed, scales, y, partial, M, N, K, splits, gps, stream);
}

template <typename T>
cudaError_t run(const void* a_ptr, const int32_t* packed_ptr, const uint16_t* scales_ptr,
                void* y_ptr, int M, int N, int K, void* workspace, int split_k,
                cudaStream_t stream) {
  const T* a = static_cast<const T*>(a_ptr);
  const uint32_t* packed = reinterpret_cast<const uint32_t*>(packed_ptr);
  const __half* scales = reinterpret_cast<const __half*>(scales_ptr);
  T* y = static_cast<T*>(y_ptr);
  const int n_groups = K / SPA_W4_GROUP;
  int splits = split_k;
  if (splits <= 0) {
    // Memory bound at small M: aim for >= 4 streaming warps (16-column tiles)
    // per SM and split K only when the tiles alone fall short (a split costs a
    // memset and a finalize launch); at least 4 groups per split keep the
    // pipeline primed.
    int target_warps = 4 * sm_count();
    int n_tiles = N / 16;
    splits = std::max(1, std::min((target_warps + n_tiles - 1) / n_tiles, n_groups / 4));
  }
  splits = std::min(splits, n_groups);
  int gps = (n_groups + splits - 1) / splits;
  splits = (n_groups + gps - 1) / gps;
  float* partial = splits > 1 ? static_cast<float*>(workspace) : nullptr;
  if (partial != nullptr)
    SPA_CHECK(cudaMemsetAsync(partial, 0, sizeof(float) * static_cast<size_t>(M) * N, stream));
  for (int m0 = 0; m0 < M; m0 += SPA_MAX_M_PER_LAUNCH) {
    int rows = std::min(SPA_MAX_M_PER_LAUNCH, M - m0);
    SPA_CHECK(dispatch<T>(a + static_cast<size_t>(m0) * K, packed, scales,
                          y + static_cast<size_t>(m0) * N,
                          partial ? partial + static_cast<size_t>(m0) * N : nullptr, rows, N, K,
                          splits, gps, stream));
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

extern "C" cudaError_t spa_w4a16_gemm(const void* A, const int32_t* packed, const uint16_t* scales,
                                      void* Y, int M, int N, int K, SpaDtype dtype,
                                      void* workspace, size_t workspace_bytes, int split_k,
                                      cudaStream_t stream) {
  SPA_REQUIRE(A && packed && scales && Y, "w4a16: a data pointer is NULL");
  SPA_REQUIRE(M >= 1 && N >= 16 && K >= SPA_W4_GROUP, "w4a16: M, N or K too small");
  SPA_REQUIRE(K % SPA_W4_GROUP == 0, "w4a16: K must be a multiple of 128");
  SPA_REQUIRE(N % 16 == 0, "w4a16: N must be a multiple of 16");
  SPA_REQUIRE(dtype == SPA_FP16 || dtype == SPA_BF16, "w4a16: dtype must be SPA_FP16 or SPA_BF16");
  if (workspace == nullptr || workspace_bytes < spa_w4a16_workspace_size(M, N, K)) {
    if (split_k != 1) {
      split_k = 1;  // no room for FP32 partial sums: run without split-K
    }
  }
  if (dtype == SPA_FP16)
    return spa::w4a16::run<__half>(A, packed, scales, Y, M, N, K, workspace, split_k, stream);
  return spa::w4a16::run<__nv_bfloat16>(A, packed, scales, Y, M, N, K, workspace, split_k, stream);
}
