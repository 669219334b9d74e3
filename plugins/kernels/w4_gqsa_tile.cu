// Tile-shared GQSA on tensor cores: Y[M, N] = A[M, K] @ W[K, N], W INT4 in
// groups of 16 along K (signed, stored u = q + 8), one FP16 scale per kept
// group and column; the 16 columns of each tile keep the same KEEP groups of
// every 128-k slab (docs/formats.md (c), "Tile-shared GQSA").
//
// Because a tile's columns share their kept groups, they share activations:
// the weight tile is the A operand of mma.m16n8k16 as in w4a16, one step per
// kept group. The skeleton is w4a16's (spa_device.cuh): 8-warp CTAs, one
// 16-column tile per warp, all on the same K range, a cp.async ring whose
// stages hold two 128-k slabs (256 k: each stage costs a fixed latency, so a
// stage carries about as many bytes as w4a16's 128-k group) and one
// activation tile the 8 warps share, w4a16's launch table with whole stages
// per split, split-K reduced in the kernel (finish_tile). Per slab a warp
// streams KEEP x 128 B of fragments, KEEP x 32 B of scales and a 4-B word of
// positions (plugins/README.md, "w4_gqsa_tile"); the layout pads the slab
// count to whole stages, S = 2 ceil(K/256), with empty slabs:
// * values [N/16, S, KEEP * 32]: lane l's KEEP words at l * KEEP, word j
//   its A fragment of kept group j in dequant order, with the k order inside
//   a group permuted so that the lane's B fragments of a step (mma rows 2t,
//   2t + 1, 2t + 8, 2t + 9) are the 4 consecutive k from 4t: one 8-B shared
//   load per step and 8 tokens;
// * positions [N/16, S]: byte j is the slab position p (0..7) of kept
//   group j, so its activations are k = 16 p .. 16 p + 15 of the slab (a
//   shift, a mask and an add give the shared address);
// * scales [N/16, S, 8, KEEP, 2]: lane (g, t) reads its KEEP pairs
//   (columns g and g + 8) with one load.
// Activation rows are padded to 272 elements, so the 8-B loads of a
// half-warp (4 rows) hit 32 distinct banks without a per-lane swizzle.
// FP16: the fragments are scaled in FP16 before the mma (4 HMUL2 per group:
// one more rounding, of q * s, relative 2^-11) and the mma accumulates in
// FP32. BF16 (2^-8 there): each group's mma starts from zero and is scaled
// into the FP32 sums, so its only 16-bit rounding is the output's own.
// Bytes per column and 128 k at KEEP = 4: 32 + 8 + 0.25 = 40.25 B against
// w4a16's 66 B (1.64x fewer); KEEP = 2: 20.25 B (3.26x).
#include <algorithm>
#include <type_traits>

#include "spa_launch.cuh"
#include "spa_tile.cuh"

namespace spa {
namespace gqsa_tile {

constexpr int kWarps = 8;  // 8 tiles of 16 columns per CTA
constexpr int kThreads = kWarps * 32;
static_assert(kWarps == 8, "split_column_blocks and launch_column_blocks (spa_device.cuh) count 8 tiles per CTA");
constexpr int kSlab = SPA_W4_GROUP;            // 128 k: 8 groups of 16, KEEP of them kept
constexpr int kSlabs = 2;                      // slabs per pipeline stage (256 k)
constexpr int kRowStride = kSlabs * kSlab + 16;  // 544 B: rows 4 apart land 8 banks apart (below)
// Pipeline depth in stages of 256 k, as deep as 2 CTAs per SM allow.
__host__ __device__ constexpr int stages_for(int mt) { return mt <= 1 ? 5 : mt == 2 ? 4 : mt == 4 ? 3 : 2; }
// One stage: 8 warps' fragments of 2 slabs, MT x 8 padded activation rows, scales, positions.
template <int KEEP, int MT>
constexpr int stage_bytes() {
  return kWarps * kSlabs * (KEEP * 128 + KEEP * 32 + 4) + MT * 8 * kRowStride * 2;
}
template <int KEEP, int MT>
constexpr int smem_bytes() { return stages_for(MT) * stage_bytes<KEEP, MT>(); }

// KEEP kept groups per slab (2 or 4); MT 8-token tiles; kSplit: K split across
// blocks (gridDim.y > 1), reduced in the kernel. Launch bounds as w4a16.
template <typename T, int KEEP, int MT, bool kSplit>
__global__ void __launch_bounds__(kThreads, MT == 1 ? 3 : 2)
    gemm_kernel(const T* __restrict__ a_ptr,              // [M, K]
                const uint32_t* __restrict__ values,      // [N/16, S, KEEP * 32], S = 2 ceil(K / 256)
                const uint32_t* __restrict__ positions,   // [N/16, S]
                const __half* __restrict__ scales,        // [N/16, S, 8, KEEP, 2]
                T* __restrict__ y,                        // [M, N] (split == 1)
                float* __restrict__ slabs,                // [splits, M, N] FP32 (split > 1)
                int* __restrict__ counters,               // [2 N / 128] arrival counts (block, half), 0 on entry
                int M, int N, int K, int units_per_split) {
  constexpr int kStages = stages_for(MT);
  constexpr int kRows = MT * 8;
  constexpr int kWChunks = kSlabs * KEEP * 8;  // 16-B chunks of fragments per warp and stage
  constexpr int kSChunks = kSlabs * KEEP * 2;  // and of scales
  constexpr int kWStage = kWarps * kWChunks;   // uint4 per stage
  constexpr int kSStage = kWarps * kSChunks;
  constexpr int kAStage = kRows * kRowStride;  // activation elements per stage
  constexpr int kAPerThread = kRows / kWarps;  // activation chunks per thread: row warp + 8 i, chunk lane
  static_assert(kWChunks % 32 == 0 || kWChunks == 16, "fragment chunks per lane");
  SPA_DYNAMIC_SMEM(smem);
  uint4* w_smem = reinterpret_cast<uint4*>(smem);                               // [stage][warp][slab][KEEP * 8]
  T* a_smem = reinterpret_cast<T*>(w_smem + kStages * kWStage);                // [stage][row][256 k + pad]
  uint4* s_smem = reinterpret_cast<uint4*>(a_smem + kStages * kAStage);        // [stage][warp][slab][KEEP * 2]
  uint32_t* p_smem = reinterpret_cast<uint32_t*>(s_smem + kStages * kSStage);  // [stage][warp][slab]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group_id = lane / 4, thread_in_group = lane % 4;
  const int n_tiles = N / 16, n_slabs = K / kSlab, n_units = (n_slabs + kSlabs - 1) / kSlabs;
  // This CTA's rows (a column block's rows may go to several CTAs: row_share).
  const int block = take_rows<kSplit, kRows>(a_ptr, y, slabs, M, K, N);
  const int tile = block * kWarps + warp;
  const bool tile_valid = tile < n_tiles;  // uniform over the warp
  const int u_begin = blockIdx.y * units_per_split;
  const int units = min(n_units, u_begin + units_per_split) - u_begin;
  if (units <= 0) return;  // uniform over the block
  const int g_begin = u_begin * kSlabs;
  const uint64_t policy = evict_first_policy();

  // Copy plan, computed once. Each lane copies fragment chunks lane (+ 32),
  // lanes < kSChunks a scale chunk, lanes 30 and 31 a positions word (the
  // layout pads K to whole stages with empty slabs: no guard). Activations
  // past K (the padded slab) are zero-filled. A warp past the last tile
  // streams tile 0 and stores nothing.
  const size_t first = static_cast<size_t>(tile_valid ? tile : 0) * n_units * kSlabs + g_begin;  // (tile, slab)
  const uint4* w_src = reinterpret_cast<const uint4*>(values + first * KEEP * 32) + lane;
  uint4* const w_dst = w_smem + warp * kWChunks + lane;
  const uint4* s_src = reinterpret_cast<const uint4*>(scales + first * KEEP * 16) + lane;
  uint4* const s_dst = s_smem + warp * kSChunks + lane;
  const bool copies_s = lane < kSChunks;
  const int p_slab = lane - 30;  // lanes 30, 31
  const uint32_t* p_src = positions + first + (p_slab > 0 ? p_slab : 0);
  uint32_t* const p_dst = p_smem + warp * kSlabs + (p_slab > 0 ? p_slab : 0);
  // Activations: row warp + 8 i, chunk `lane` of the row's 32 (slab lane / 16).
  const T* a_src = a_ptr + static_cast<size_t>(g_begin) * kSlab + lane * 8;
  const int a_dst = warp * kRowStride + lane * 8;
  // This lane's activation chunk is in the stage's second slab, which is past K in the last stage of an odd slab count.
  const int a_slab = lane / 16;
  int next = g_begin;  // first slab of the next stage to load (stages load in order)
  // The next stage's fragments, scales and positions; its activations (run_stage_ring).
  auto load_fixed = [&](int stage, bool more) {
#pragma unroll
    for (int c = 0; c < kWChunks; c += 32)
      cp_async16_evict_first_if(w_dst + stage * kWStage + c, w_src + c, policy, more && c + lane < kWChunks);
    cp_async16_evict_first_if(s_dst + stage * kSStage, s_src, policy, more && copies_s);
    cp_async4_if(p_dst + stage * kWarps * kSlabs, p_src, more && p_slab >= 0);
    w_src += kWChunks;
    s_src += kSChunks;
    p_src += kSlabs;
  };
  auto load_acts = [&](int stage, bool more) {
    const bool in_k = next + a_slab < n_slabs;
#pragma unroll
    for (int i = 0; i < kAPerThread; ++i) {
      const int row = warp + 8 * i;
      const bool valid = row < M && in_k;
      cp_async16_zfill_if(a_smem + stage * kAStage + a_dst + 8 * i * kRowStride,
                          a_src + (valid ? static_cast<size_t>(row) * K : 0), valid, more);
    }
    a_src += kSlabs * kSlab;
    next += kSlabs;
  };

  // Shared addresses, computed once: the lane's fragments and scales, its
  // activations (row g, 8 B at k = 4t of a group), the warp's positions.
  // Lane (g, t) of a half-warp reads words 136 g + 8 p + 2t, +1 (+ 64 for
  // slab 1): banks 8 g + 2t (+1) + 8 p, 32 distinct.
  uint32_t w_read = smem_address(smem, reinterpret_cast<const uint32_t*>(w_smem + warp * kWChunks) + lane * KEEP);
  uint32_t s_read = smem_address(smem, reinterpret_cast<const __half*>(s_smem + warp * kSChunks) + group_id * KEEP * 2);
  uint32_t a_read = smem_address(smem, a_smem + group_id * kRowStride) + 8 * thread_in_group;
  uint32_t p_read = smem_address(smem, p_smem + warp * kSlabs);
  pin(w_read);
  pin(s_read);
  pin(a_read);
  pin(p_read);

  float acc[MT][4];
  zero_tiles(acc);

  auto compute = [&](int stage) {
    const uint2 pos2 = lds64(smem, p_read + stage * kWarps * kSlabs * 4);
#pragma unroll
    for (int slab = 0; slab < kSlabs; ++slab) {
      const uint32_t pos = slab ? pos2.y : pos2.x;
      uint32_t words[KEEP];
      uint32_t pairs[KEEP];  // (scale of column g, of column g + 8) per kept group
      const uint32_t w_at = w_read + (stage * kWStage + slab * KEEP * 8) * 16;
      const uint32_t s_at = s_read + (stage * kSStage + slab * KEEP * 2) * 16;
      if constexpr (KEEP == 4) {
        const uint4 w = lds128(smem, w_at), s = lds128(smem, s_at);
        words[0] = w.x, words[1] = w.y, words[2] = w.z, words[3] = w.w;
        pairs[0] = s.x, pairs[1] = s.y, pairs[2] = s.z, pairs[3] = s.w;
      } else {
        static_assert(KEEP == 2, "KEEP is 2 or 4");
        const uint2 w = lds64(smem, w_at), s = lds64(smem, s_at);
        words[0] = w.x, words[1] = w.y;
        pairs[0] = s.x, pairs[1] = s.y;
      }
#pragma unroll
      for (int j = 0; j < KEEP; ++j) {
        uint32_t frag[4];
        dequant8_fast<T>(words[j], frag);
        const uint32_t a_group = a_read + ((pos >> (8 * j)) & 0xffu) * 32;  // k = 16 p + 4t of row g
        const __half2 pair = *reinterpret_cast<const __half2*>(&pairs[j]);
        if constexpr (std::is_same_v<T, __half>) {
          // Rows g (fragment registers 0, 2) and g + 8 (1, 3) of the tile, each by its column's scale.
          const __half2 lo = __low2half2(pair), hi = __high2half2(pair);
#pragma unroll
          for (int r = 0; r < 4; ++r) {
            __half2 v = __hmul2(*reinterpret_cast<const __half2*>(&frag[r]), r % 2 ? hi : lo);
            frag[r] = *reinterpret_cast<uint32_t*>(&v);
          }
#pragma unroll
          for (int t = 0; t < MT; ++t) {
            const uint2 b = lds64(smem, a_group + (stage * kAStage + t * 8 * kRowStride + slab * kSlab) * 2);
            mma_16816<T>(acc[t], frag, b.x, b.y);
          }
        } else {
          const float scale_lo = __low2float(pair), scale_hi = __high2float(pair);
#pragma unroll
          for (int t = 0; t < MT; ++t) {
            const uint2 b = lds64(smem, a_group + (stage * kAStage + t * 8 * kRowStride + slab * kSlab) * 2);
            float part[1][4] = {{0.f, 0.f, 0.f, 0.f}};
            mma_16816<T>(part[0], frag, b.x, b.y);
            add_scaled<1>(acc[t], part, scale_lo, scale_hi);
          }
        }
      }
    }
  };

  run_stage_ring<kStages, MT == 1>(units, load_fixed, load_acts, compute);
  finish_tile<T, MT, kSplit>(acc, y, slabs, counters + blockIdx.x, reinterpret_cast<int*>(smem), tile_valid, M, N,
                             tile * 16 + group_id, thread_in_group);
}

template <typename T, int KEEP>
cudaError_t dispatch(const T* a, const uint32_t* values, const uint32_t* positions, const __half* scales, T* y,
                     float* slabs, int* counters, int M, int N, int K, int splits, int sps, cudaStream_t stream) {
  return with_row_tiles(M, N, [&](auto mt, int chunks) {
    constexpr int MT = decltype(mt)::value;
    return launch_column_blocks(gemm_kernel<T, KEEP, MT, false>, gemm_kernel<T, KEEP, MT, true>,
                                smem_bytes<KEEP, MT>(), N, chunks, splits, stream, a, values, positions, scales, y,
                                slabs, counters, M, N, K, sps);
  });
}

template <typename T>
cudaError_t run(const void* a_ptr, const uint32_t* values, const uint32_t* positions, const uint16_t* scales_ptr,
                void* y_ptr, int M, int N, int K, int keep, void* workspace, size_t workspace_bytes, int split_k,
                int* kept_counters, cudaStream_t stream) {
  const T* a = static_cast<const T*>(a_ptr);
  const __half* scales = reinterpret_cast<const __half*>(scales_ptr);
  T* y = static_cast<T*>(y_ptr);
  // The launch table plans in 128-k groups, as for w4a16; a split then takes
  // whole stages: ceil(groups / 2) stages of 256 k each (fewer splits where
  // that covers K sooner).
  const int n_units = (K / kSlab + kSlabs - 1) / kSlabs;
  // the first launch's instantiation: its occupancy
  const int ctas = with_row_tiles(std::min(M, SPA_MAX_M_PER_LAUNCH), N, [keep](auto mt, int) {
    constexpr int MT = decltype(mt)::value;
    return keep == 4 ? resident_ctas(gemm_kernel<T, 4, MT, true>, smem_bytes<4, MT>())
                     : resident_ctas(gemm_kernel<T, 2, MT, true>, smem_bytes<2, MT>());
  });
  return run_split(M, N, K, workspace, workspace_bytes, split_k, kept_counters, ctas, stream,
                   [&](int m0, int rows, float* slabs, int* counters, int splits, int gps) {
                     const int ups = (gps + kSlabs - 1) / kSlabs;
                     splits = std::min(splits, (n_units + ups - 1) / ups);
                     const T* a0 = a + static_cast<size_t>(m0) * K;
                     T* y0 = y + static_cast<size_t>(m0) * N;
                     return keep == 4 ? dispatch<T, 4>(a0, values, positions, scales, y0, slabs, counters, rows, N,
                                                       K, splits, ups, stream)
                                      : dispatch<T, 2>(a0, values, positions, scales, y0, slabs, counters, rows, N,
                                                       K, splits, ups, stream);
                   });
}

}  // namespace gqsa_tile
}  // namespace spa

extern "C" size_t spa_w4_gqsa_tile_workspace_size(int M, int N, int K) { return spa::split_workspace_size(M, N, K); }

extern "C" cudaError_t spa_w4_gqsa_tile_gemm(const void* A, const uint32_t* values, const uint32_t* positions,
                                             const uint16_t* scales, void* Y, int M, int N, int K, int keep,
                                             SpaDtype dtype, void* workspace, size_t workspace_bytes, int split_k,
                                             int* counters, cudaStream_t stream) {
  SPA_REQUIRE(A && values && positions && scales && Y, "w4_gqsa_tile: a data pointer is NULL");
  SPA_REQUIRE(M >= 1 && N >= 16 && K >= SPA_W4_GROUP, "w4_gqsa_tile: M, N or K too small");
  SPA_REQUIRE(K % SPA_W4_GROUP == 0, "w4_gqsa_tile: K must be a multiple of 128");
  SPA_REQUIRE(N % 16 == 0, "w4_gqsa_tile: N must be a multiple of 16");
  SPA_REQUIRE(keep == 2 || keep == 4, "w4_gqsa_tile: keep (groups kept per 128-k slab) must be 2 or 4");
  SPA_REQUIRE(dtype == SPA_FP16 || dtype == SPA_BF16, "w4_gqsa_tile: dtype must be SPA_FP16 or SPA_BF16");
  if (dtype == SPA_FP16)
    return spa::gqsa_tile::run<__half>(A, values, positions, scales, Y, M, N, K, keep, workspace, workspace_bytes,
                                       split_k, counters, stream);
  return spa::gqsa_tile::run<__nv_bfloat16>(A, values, positions, scales, Y, M, N, K, keep, workspace,
                                            workspace_bytes, split_k, counters, stream);
}
