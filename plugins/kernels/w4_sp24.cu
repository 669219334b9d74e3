// W4 + 2:4 GEMM with mma.sp: W[K, N] has 2 non-zeros in every 4 consecutive
// k of each output column (sparse along the reduction axis) and the kept
// values are INT4 (u = q + 8) with one FP16 scale per 128 k per column.
//
// The skeleton of w4a16.cu (W^T is the tensor-core A operand, activations the
// B operand; 8-warp CTAs, one 16-column tile per warp, sharing one staged
// activation tile per pipeline stage; cp.async ring of 6 / 5 / 4 groups with
// evict-first weights and scales, unrolled so every shared offset is a
// constant; FP32 per-group scaling; split-K across blocks reduced inside the
// kernel by store_split), with mma.sp.m16n8k32 (4 steps per 128-k group):
// * values int32 [N/16, K/32, 32]: lane l's word of a 16x32 step holds its
//   eight kept values a0..a7 of the sparse A fragment, in dequant order; a
//   group's 4 steps are 512 contiguous bytes, read from shared memory with
//   one ldmatrix.x4 (matrix i = step i's 128 B, so lane l gets word l of each);
// * meta uint32 [N/16, K/32, 16]: the metadata word of lane 4g + h (h = 0, 1;
//   sparsity selector 0) is stored at index 2g + h (README "w4_sp24");
// * activations: the B fragments of a step (k = 2t + 8i (+1), token g) are
//   four 8x8 matrices of the stage's [token][k] tile: one ldmatrix.x4 per
//   step and 8 tokens, conflict-free through an XOR swizzle of 16-B chunks.
// Per 512 weights a warp reads 128 B of values and 64 B of metadata against
// 256 B for w4a16: the memory floor is 0.75x of w4a16's.
#include <algorithm>

#include "spa_launch.cuh"
#include "spa_tile.cuh"

namespace spa {
namespace sp24 {

constexpr int kWarps = 8;  // 8 tiles of 16 columns per CTA
constexpr int kThreads = kWarps * 32;
static_assert(kWarps == 8, "split_column_blocks and launch_column_blocks (spa_device.cuh) count 8 tiles per CTA");
constexpr int kSteps = SPA_W4_GROUP / 32;           // 4 k32 mma.sp steps per group
constexpr int kValueWords = kSteps * 32;            // one tile's group: 512 B of values
constexpr int kMetaWords = kSteps * 16;             // and 256 B of metadata
constexpr int kTileWords = kValueWords + kMetaWords;
__host__ __device__ constexpr int stages_for(int mt) { return mt <= 1 ? 6 : mt == 2 ? 5 : 4; }
__host__ __device__ constexpr int chains_for(int mt) { return mt <= 2 ? 2 : 1; }
// One stage: 8 warps' values + metadata, MT x 8 activation rows of 128 elements, 8 x 16 scales.
template <int MT>
constexpr int stage_bytes() { return kWarps * kTileWords * 4 + MT * 8 * SPA_W4_GROUP * 2 + kWarps * 16 * 2; }
template <int MT>
constexpr int smem_bytes() { return stages_for(MT) * stage_bytes<MT>(); }

// Where 16-B chunk c16 (0..15) of activation row `row` lives in a stage. An
// ldmatrix phase reads one chunk of 8 consecutive rows: the XOR with row % 8
// puts them in 8 distinct 16-B bank groups.
__host__ __device__ constexpr int a_chunk_slot(int row, int c16) { return c16 ^ (row & 7); }

// MT, kSplit: as in w4a16.cu.
template <typename T, int MT, bool kSplit>
__global__ void __launch_bounds__(kThreads, MT == 1 ? 3 : 2)
    gemm_kernel(const T* __restrict__ a_ptr,          // [M, K]
                const uint32_t* __restrict__ values,  // [N/16, K/32, 32]
                const uint32_t* __restrict__ meta,    // [N/16, K/32, 16]
                const __half* __restrict__ scales,    // [K/128, N]
                T* __restrict__ y,                    // [M, N] (split == 1)
                float* __restrict__ slabs,            // [splits, M, N] FP32 (split > 1)
                int* __restrict__ counters,           // [2 N / 128] arrival counts (block, half), 0 on entry
                int M, int N, int K, int groups_per_split) {
  constexpr int kStages = stages_for(MT);
  constexpr int kRows = MT * 8;
  constexpr int kWStage = kWarps * kTileWords;  // words per stage
  constexpr int kAStage = kRows * SPA_W4_GROUP;  // elements per stage
  constexpr int kSStage = kWarps * 16;           // scales per stage
  SPA_DYNAMIC_SMEM(smem);
  uint32_t* w_smem = reinterpret_cast<uint32_t*>(smem);  // [stage][warp][values 128 | meta 64]
  T* a_smem = reinterpret_cast<T*>(w_smem + kStages * kWStage);                // [stage][row][slot]
  __half* s_smem = reinterpret_cast<__half*>(a_smem + kStages * kAStage);  // [stage][warp][16]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group_id = lane / 4, thread_in_group = lane % 4;
  const int n_tiles = N / 16, k_steps = K / 32, n_groups = K / SPA_W4_GROUP;
  // This CTA's rows (a column block's rows may go to several CTAs: row_share).
  const int block = take_rows<kSplit, kRows>(a_ptr, y, slabs, M, K, N);
  const int tile = block * kWarps + warp;
  const bool tile_valid = tile < n_tiles;  // uniform over the warp
  const int g_begin = blockIdx.y * groups_per_split;
  const int g_count = min(n_groups, g_begin + groups_per_split) - g_begin;
  if (g_count <= 0) return;  // uniform over the block
  const uint64_t policy = evict_first_policy();

  // Copy plan, computed once. Values: 16 B per lane; metadata: 16 B per lane
  // 0..15; scales: lanes 16 and 17, 16 B each. A warp past the last tile
  // streams tile 0 (valid metadata), computes and stores nothing.
  const int src_tile = tile_valid ? tile : 0;
  const size_t first_step = static_cast<size_t>(src_tile) * k_steps + static_cast<size_t>(g_begin) * kSteps;
  const uint4* v_src = reinterpret_cast<const uint4*>(values + first_step * 32) + lane;
  const uint4* m_src = reinterpret_cast<const uint4*>(meta + first_step * 16) + (lane & 15);
  uint32_t* const v_dst = w_smem + warp * kTileWords + lane * 4;
  uint32_t* const m_dst = w_smem + warp * kTileWords + kValueWords + (lane & 15) * 4;
  const bool copies_meta = lane < 16;
  const __half* s_src = scales + static_cast<size_t>(g_begin) * N + src_tile * 16 + (lane & 1) * 8;
  __half* const s_dst = s_smem + warp * 16 + (lane & 1) * 8;
  const bool copies_scales = lane == 16 || lane == 17;
  const size_t s_stride = static_cast<size_t>(N);
  ActivationCopy<T, kRows, kThreads> acts(a_ptr, M, K, g_begin, [](int row, int c16) { return a_chunk_slot(row, c16); });
  // Weights, metadata and scales of the next group; its activations (run_stage_ring).
  auto load_fixed = [&](int stage, bool more) {
    cp_async16_evict_first_if(v_dst + stage * kWStage, v_src, policy, more);
    v_src += kValueWords / 4;
    cp_async16_evict_first_if(m_dst + stage * kWStage, m_src, policy, more && copies_meta);
    m_src += kMetaWords / 4;
    cp_async16_evict_first_if(s_dst + stage * kSStage, s_src, policy, more && copies_scales);
    s_src += s_stride;
  };
  auto load_acts = [&](int stage, bool more) { acts.copy(a_smem + stage * kAStage, more); };

  // Reads. Values: lane 8i + r gives row r of matrix i (step i's 128 B).
  uint32_t v_read = smem_address(smem, w_smem + warp * kTileWords + (lane / 8) * 32 + (lane % 8) * 4);
  pin(v_read);
  // Metadata: lanes 4g and 4g + 1 read slot 2g + h of each step (the others, ignored, the same words).
  const int m_read = warp * kTileWords + kValueWords + group_id * 2 + (thread_in_group & 1);
  // Activations: lane 8i + r gives row r (token) of matrix i (k 8i..8i+7 of
  // the step): chunk 4 step + i, at slot (4 step + i) ^ r = 4 (step ^ (r / 4))
  // + (i ^ r % 4). Even and odd steps from two addresses, steps 2 and 3 128 B on.
  const int ldm_row = lane % 8, ldm_mat = lane / 8;
  uint32_t a_read[2];
#pragma unroll
  for (int p = 0; p < 2; ++p) {
    const int slot = 4 * (p ^ (ldm_row >> 2)) + (ldm_mat ^ (ldm_row & 3));
    a_read[p] = smem_address(smem, a_smem + ldm_row * SPA_W4_GROUP + slot * 8);
    pin(a_read[p]);
  }
  const int s_read = warp * 16 + group_id;

  float acc[MT][4];
  zero_tiles(acc);

  auto compute = [&](int stage) {
    uint32_t words[kSteps];
    ldmatrix_x4(words, smem, v_read + stage * kWStage * 4);
    uint32_t meta_word[kSteps];
#pragma unroll
    for (int step = 0; step < kSteps; ++step) meta_word[step] = w_smem[stage * kWStage + m_read + step * 16];
    uint32_t frag[kSteps][4];
#pragma unroll
    for (int step = 0; step < kSteps; ++step) dequant8_fast<T>(words[step], frag[step]);
    // Rows g and g + 8 of the tile: columns col_lo and col_lo + 8.
    const float scale_lo = __half2float(s_smem[stage * kSStage + s_read]);
    const float scale_hi = __half2float(s_smem[stage * kSStage + s_read + 8]);
    constexpr int kChains = chains_for(MT);
#pragma unroll
    for (int j = 0; j < MT; ++j) {  // one 8-token tile at a time: its group sums scaled before the next
      float part[kChains][4];
#pragma unroll
      for (int c = 0; c < kChains; ++c)
#pragma unroll
        for (int r = 0; r < 4; ++r) part[c][r] = 0.f;
#pragma unroll
      for (int step = 0; step < kSteps; ++step) {
        uint32_t b[4];
        ldmatrix_x4(b, smem, a_read[step % 2] + (step / 2) * 128 + (stage * kAStage + j * 8 * SPA_W4_GROUP) * 2);
        mma_sp_16832<T>(part[step % kChains], frag[step], b, meta_word[step]);
      }
      add_scaled<kChains>(acc[j], part, scale_lo, scale_hi);
    }
  };

  // The stage ring, unrolled; at MT = 1 its steady state runs unguarded (at
  // MT >= 2 that version needs more registers than 2 CTAs per SM allow).
  run_stage_ring<kStages, MT == 1>(g_count, load_fixed, load_acts, compute);
  finish_tile<T, MT, kSplit>(acc, y, slabs, counters + blockIdx.x, reinterpret_cast<int*>(smem), tile_valid, M, N,
                             tile * 16 + group_id, thread_in_group);
}

template <typename T>
cudaError_t dispatch(const T* a, const uint32_t* values, const uint32_t* meta, const __half* scales, T* y,
                     float* slabs, int* counters, int M, int N, int K, int splits, int gps, cudaStream_t stream) {
  return with_row_tiles(M, N, [&](auto mt, int chunks) {
    constexpr int MT = decltype(mt)::value;
    return launch_column_blocks(gemm_kernel<T, MT, false>, gemm_kernel<T, MT, true>, smem_bytes<MT>(), N, chunks,
                                splits, stream, a, values, meta, scales, y, slabs, counters, M, N, K, gps);
  });
}

template <typename T>
cudaError_t run(const void* a_ptr, const int32_t* values_ptr, const uint32_t* meta, const uint16_t* scales_ptr,
                void* y_ptr, int M, int N, int K, void* workspace, size_t workspace_bytes, int split_k,
                int* kept_counters, cudaStream_t stream) {
  const T* a = static_cast<const T*>(a_ptr);
  const uint32_t* values = reinterpret_cast<const uint32_t*>(values_ptr);
  const __half* scales = reinterpret_cast<const __half*>(scales_ptr);
  T* y = static_cast<T*>(y_ptr);
  // the first launch's instantiation: its occupancy
  const int ctas = with_row_tiles(std::min(M, SPA_MAX_M_PER_LAUNCH), N, [](auto mt, int) {
    constexpr int MT = decltype(mt)::value;
    return resident_ctas(gemm_kernel<T, MT, true>, smem_bytes<MT>());
  });
  return run_split(M, N, K, workspace, workspace_bytes, split_k, kept_counters, ctas, stream,
                   [&](int m0, int rows, float* slabs, int* counters, int splits, int gps) {
                     return dispatch<T>(a + static_cast<size_t>(m0) * K, values, meta, scales,
                                        y + static_cast<size_t>(m0) * N, slabs, counters, rows, N, K, splits, gps,
                                        stream);
                   });
}

}  // namespace sp24
}  // namespace spa

extern "C" size_t spa_w4_sp24_workspace_size(int M, int N, int K) { return spa::split_workspace_size(M, N, K); }

extern "C" cudaError_t spa_w4_sp24_gemm_ex(const void* A, const int32_t* values, const uint32_t* meta,
                                           const uint16_t* scales, void* Y, int M, int N, int K,
                                           SpaDtype dtype, void* workspace, size_t workspace_bytes,
                                           int slices, int split_k, int* counters, cudaStream_t stream) {
  SPA_REQUIRE(A && values && meta && scales && Y, "w4_sp24: a data pointer is NULL");
  SPA_REQUIRE(M >= 1 && N >= 16 && K >= SPA_W4_GROUP, "w4_sp24: M, N or K too small");
  SPA_REQUIRE(K % SPA_W4_GROUP == 0, "w4_sp24: K must be a multiple of 128");
  SPA_REQUIRE(N % 16 == 0, "w4_sp24: N must be a multiple of 16");
  SPA_REQUIRE(dtype == SPA_FP16 || dtype == SPA_BF16, "w4_sp24: dtype must be SPA_FP16 or SPA_BF16");
  SPA_REQUIRE(slices == 0 || slices == 1 || slices == 2 || slices == 4, "w4_sp24: slices must be 0, 1, 2 or 4");
  // `slices` is accepted and ignored: there are no in-block slices any more, as in w4a16.
  if (dtype == SPA_FP16)
    return spa::sp24::run<__half>(A, values, meta, scales, Y, M, N, K, workspace, workspace_bytes, split_k, counters,
                                  stream);
  return spa::sp24::run<__nv_bfloat16>(A, values, meta, scales, Y, M, N, K, workspace, workspace_bytes, split_k,
                                       counters, stream);
}

extern "C" cudaError_t spa_w4_sp24_gemm(const void* A, const int32_t* values, const uint32_t* meta,
                                        const uint16_t* scales, void* Y, int M, int N, int K,
                                        SpaDtype dtype, void* workspace, size_t workspace_bytes,
                                        int split_k, cudaStream_t stream) {
  return spa_w4_sp24_gemm_ex(A, values, meta, scales, Y, M, N, K, dtype, workspace, workspace_bytes,
                             split_k > 0 ? 1 : 0, split_k, nullptr, stream);
}
