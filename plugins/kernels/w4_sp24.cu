// W4 + 2:4 GEMM with mma.sp: W[K, N] has 2 non-zeros in every 4 consecutive
// k of each output column (sparse along the reduction axis) and the kept
// values are INT4 (u = q + 8) with one FP16 scale per 128 k per column.
//
// Same skeleton as w4a16.cu (W^T is the tensor-core A operand, activations
// the B operand, cp.async pipeline with evict-first weights, FP32 per-group
// scaling, in-block K slices at M <= 16, split-K across blocks through an FP32
// workspace), with mma.sp.m16n8k32:
// * values int32 [N/16, K/32, 32]: lane l's word of a 16x32 tile holds its
//   eight kept values a0..a7 of the sparse A fragment, in dequant order;
// * meta uint32 [N/16, K/32, 16]: the metadata word of lane 4g + h (h = 0, 1;
//   sparsity selector 0) is stored at index 2g + h (README "w4_sp24").
// Per 512 weights a warp reads 128 B of values and 64 B of metadata against
// 256 B for w4a16: the memory floor is 0.75x of w4a16's.
#include <algorithm>

#include "spa_device.cuh"

namespace spa {
namespace sp24 {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
// Pipeline depth in groups of 128 k: deeper where the stage's activation
// tiles (SLICES x MT x 8 rows) are small (decode), so one warp keeps 5 KB of
// weights in flight; shallower where they are large, so that two or more
// blocks still fit on an SM (MT = 2, SLICES = 4: 86 KB).
__host__ __device__ constexpr int stages_for(int mt, int slices) { return mt * slices <= 2 ? 6 : 4; }
constexpr int kTilesPerGroup = SPA_W4_GROUP / 32;  // 4 k32 tiles
constexpr int kLda = SPA_W4_GROUP + 8;
constexpr int kValueWords = kTilesPerGroup * 32;   // per warp per group
constexpr int kMetaWords = kTilesPerGroup * 16;

constexpr int kScaleBytes = 16 * 2;                // one tile's scales for one group
// Two mma.sp accumulators (even and odd k32 steps) halve the dependent chain
// of a group; only at MT <= 2, where registers are spare.
__host__ __device__ constexpr int chains_for(int mt) { return mt <= 2 ? 2 : 1; }

template <int MT, int SLICES>
constexpr int smem_bytes() {
  return stages_for(MT, SLICES) *
         (kWarps * (kValueWords + kMetaWords) * 4 + SLICES * MT * 8 * kLda * 2 + kWarps * kScaleBytes);
}

// MT, SLICES: as in w4a16.cu (8-token tiles; warps per 16-column tile, each
// on a slice of the block's groups, summed through shared memory).
template <typename T, int MT, int SLICES>
__global__ void __launch_bounds__(kThreads)
    gemm_kernel(const T* __restrict__ a_ptr,          // [M, K]
                const uint32_t* __restrict__ values,  // [N/16, K/32, 32]
                const uint32_t* __restrict__ meta,    // [N/16, K/32, 16]
                const __half* __restrict__ scales,    // [K/128, N]
                T* __restrict__ y, float* __restrict__ partial, int M, int N, int K,
                int groups_per_split) {
  static_assert(kWarps % SLICES == 0, "SLICES must divide the block's warps");
  constexpr int kStages = stages_for(MT, SLICES);
  constexpr int kTilesPerBlock = kWarps / SLICES;
  SPA_DYNAMIC_SMEM(smem);
  uint32_t* v_smem = reinterpret_cast<uint32_t*>(smem);
  uint32_t* m_smem = v_smem + kStages * kWarps * kValueWords;
  T* a_smem = reinterpret_cast<T*>(m_smem + kStages * kWarps * kMetaWords);
  __half* s_smem = reinterpret_cast<__half*>(a_smem + kStages * SLICES * MT * 8 * kLda);  // [stage][warp][16]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group_id = lane / 4, thread_in_group = lane % 4;
  const int slice = warp % SLICES;
  const int n_tiles = N / 16, k_tiles = K / 32, n_groups = K / SPA_W4_GROUP;
  const int tile = blockIdx.x * kTilesPerBlock + warp / SLICES;
  const bool tile_valid = tile < n_tiles;
  const int g_begin = blockIdx.y * groups_per_split;
  const int g_end = min(n_groups, g_begin + groups_per_split);
  if (g_begin >= g_end) return;
  const int per = (g_end - g_begin + SLICES - 1) / SLICES;
  const uint64_t policy = evict_first_policy();

  auto load_stage = [&](int stage, int it) {
    const int group = g_begin + slice * per + it;
    if (tile_valid && it < per && group < g_end) {
      size_t first = static_cast<size_t>(tile) * k_tiles + group * kTilesPerGroup;
      const uint32_t* v_src = values + first * 32;   // 512 B: 32 chunks, one per lane
      const uint32_t* m_src = meta + first * 16;     // 256 B: 16 chunks
      uint32_t* v_dst = v_smem + (stage * kWarps + warp) * kValueWords;
      uint32_t* m_dst = m_smem + (stage * kWarps + warp) * kMetaWords;
      cp_async16_evict_first(v_dst + lane * 4, v_src + lane * 4, policy);
      if (lane < kMetaWords / 4) cp_async16_evict_first(m_dst + lane * 4, m_src + lane * 4, policy);
      stage_scales(s_smem + (stage * kWarps + warp) * 16, scales, group, N, tile, lane, policy);
    }
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

  const int col_lo = tile * 16 + group_id;
  // Lanes 4g and 4g+1 supply the metadata (selector 0); the others pass any word.
  const int meta_slot = group_id * 2 + (thread_in_group & 1);
  for (int it = 0; it < per; ++it) {
    const int group = g_begin + slice * per + it;
    const bool active = tile_valid && group < g_end;  // uniform over the warp
    cp_async_wait<kStages - 2>();
    __syncthreads();
    int next = it + kStages - 1;
    if (next < per) load_stage(next % kStages, next);
    cp_async_commit();
    // A warp past the last tile or past its slice's groups loaded no weights:
    // its mma.sp would read uninitialised metadata (undefined behaviour), so
    // it only keeps the block's barriers.
    if (!active) continue;

    const int stage = it % kStages;
    const uint32_t* v_tile = v_smem + (stage * kWarps + warp) * kValueWords;
    const uint32_t* m_tile = m_smem + (stage * kWarps + warp) * kMetaWords;
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
      dequant8<T>(v_tile[kt * 32 + lane], frag);
      uint32_t meta_word = m_tile[kt * 16 + meta_slot];
#pragma unroll
      for (int j = 0; j < MT; ++j) {
        // B fragment of m16n8k32: b_i holds k = 2t + 8i (+1), token = g.
        const T* b = a_stage + (j * 8 + group_id) * kLda + kt * 32 + thread_in_group * 2;
        uint32_t bfrag[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) bfrag[i] = *reinterpret_cast<const uint32_t*>(b + 8 * i);
        mma_sp_16832<T>(part[kt % kChains][j], frag, bfrag, meta_word);
      }
    }
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
cudaError_t launch(const T* a, const uint32_t* values, const uint32_t* meta, const __half* scales,
                   T* y, float* partial, int M, int N, int K, int splits, int gps,
                   cudaStream_t stream) {
  constexpr int bytes = smem_bytes<MT, SLICES>();
  static_assert(bytes >= kWarps * MT * 4 * 32 * 4, "the slice reduction reuses the pipeline memory");
  auto kernel = gemm_kernel<T, MT, SLICES>;
  SPA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  constexpr int tiles_per_block = kWarps / SLICES;
  dim3 grid((N / 16 + tiles_per_block - 1) / tiles_per_block, splits);
  SPA_LAUNCH(grid, kThreads, bytes, stream, kernel)(a, values, meta, scales, y, partial, M, N, K, gps);
  return cudaGetLastError();
}

template <typename T>
cudaError_t run(const void* a_ptr, const int32_t* values_ptr, const uint32_t* meta,
                const uint16_t* scales_ptr, void* y_ptr, int M, int N, int K, void* workspace,
                int slices_wanted, int split_k, cudaStream_t stream) {
  const T* a = static_cast<const T*>(a_ptr);
  const uint32_t* values = reinterpret_cast<const uint32_t*>(values_ptr);
  const __half* scales = reinterpret_cast<const __half*>(scales_ptr);
  T* y = static_cast<T*>(y_ptr);
  const SplitPlan plan = plan_split(M, N / 16, K / SPA_W4_GROUP, slices_wanted, split_k, workspace != nullptr);
  const int slices = plan.slices, splits = plan.splits, gps = plan.groups_per_split;
  float* partial = splits > 1 ? static_cast<float*>(workspace) : nullptr;
  if (partial != nullptr)
    SPA_CHECK(cudaMemsetAsync(partial, 0, sizeof(float) * static_cast<size_t>(M) * N, stream));
  for (int m0 = 0; m0 < M; m0 += SPA_MAX_M_PER_LAUNCH) {
    int rows = std::min(SPA_MAX_M_PER_LAUNCH, M - m0);
    const T* a0 = a + static_cast<size_t>(m0) * K;
    T* y0 = y + static_cast<size_t>(m0) * N;
    float* p0 = partial ? partial + static_cast<size_t>(m0) * N : nullptr;
    cudaError_t status;
    if (rows <= 8)
      status = slices == 4   ? launch<T, 1, 4>(a0, values, meta, scales, y0, p0, rows, N, K, splits, gps, stream)
               : slices == 2 ? launch<T, 1, 2>(a0, values, meta, scales, y0, p0, rows, N, K, splits, gps, stream)
                             : launch<T, 1, 1>(a0, values, meta, scales, y0, p0, rows, N, K, splits, gps, stream);
    else if (rows <= 16)
      status = slices == 4   ? launch<T, 2, 4>(a0, values, meta, scales, y0, p0, rows, N, K, splits, gps, stream)
               : slices == 2 ? launch<T, 2, 2>(a0, values, meta, scales, y0, p0, rows, N, K, splits, gps, stream)
                             : launch<T, 2, 1>(a0, values, meta, scales, y0, p0, rows, N, K, splits, gps, stream);
    else if (rows <= 32)
      status = launch<T, 4, 1>(a0, values, meta, scales, y0, p0, rows, N, K, splits, gps, stream);
    else
      status = launch<T, 8, 1>(a0, values, meta, scales, y0, p0, rows, N, K, splits, gps, stream);
    SPA_CHECK(status);
  }
  if (partial != nullptr)
    return launch_finalize<T>(partial, y, static_cast<long long>(M) * N, stream);
  return cudaSuccess;
}

}  // namespace sp24
}  // namespace spa

extern "C" size_t spa_w4_sp24_workspace_size(int M, int N, int K) {
  (void)K;
  return sizeof(float) * static_cast<size_t>(M) * static_cast<size_t>(N);
}

extern "C" cudaError_t spa_w4_sp24_gemm_ex(const void* A, const int32_t* values, const uint32_t* meta,
                                           const uint16_t* scales, void* Y, int M, int N, int K,
                                           SpaDtype dtype, void* workspace, size_t workspace_bytes,
                                           int slices, int split_k, cudaStream_t stream) {
  SPA_REQUIRE(A && values && meta && scales && Y, "w4_sp24: a data pointer is NULL");
  SPA_REQUIRE(M >= 1 && N >= 16 && K >= SPA_W4_GROUP, "w4_sp24: M, N or K too small");
  SPA_REQUIRE(K % SPA_W4_GROUP == 0, "w4_sp24: K must be a multiple of 128");
  SPA_REQUIRE(N % 16 == 0, "w4_sp24: N must be a multiple of 16");
  SPA_REQUIRE(dtype == SPA_FP16 || dtype == SPA_BF16, "w4_sp24: dtype must be SPA_FP16 or SPA_BF16");
  SPA_REQUIRE(slices == 0 || slices == 1 || slices == 2 || slices == 4, "w4_sp24: slices must be 0, 1, 2 or 4");
  // No room for FP32 partial sums: no split across blocks (in-block slices need none).
  if (workspace == nullptr || workspace_bytes < spa_w4_sp24_workspace_size(M, N, K)) {
    workspace = nullptr;
    if (split_k > 1) split_k = 1;
  }
  if (dtype == SPA_FP16)
    return spa::sp24::run<__half>(A, values, meta, scales, Y, M, N, K, workspace, slices, split_k, stream);
  return spa::sp24::run<__nv_bfloat16>(A, values, meta, scales, Y, M, N, K, workspace, slices, split_k,
                                       stream);
}

extern "C" cudaError_t spa_w4_sp24_gemm(const void* A, const int32_t* values, const uint32_t* meta,
                                        const uint16_t* scales, void* Y, int M, int N, int K,
                                        SpaDtype dtype, void* workspace, size_t workspace_bytes,
                                        int split_k, cudaStream_t stream) {
  return spa_w4_sp24_gemm_ex(A, values, meta, scales, Y, M, N, K, dtype, workspace, workspace_bytes,
                             split_k > 0 ? 1 : 0, split_k, stream);
}
