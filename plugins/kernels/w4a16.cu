// W4A16 group-128 GEMM: Y[M, N] = A[M, K] @ W[K, N], W INT4 (signed, stored
// u = q + 8) with one FP16 scale per 128 rows of K per output column.
//
// Design (Marlin-class; plugins/README.md states the goals and what is measured):
// * Offline repacking (spa/trt/repack.py) stores W^T per 16-column tile and
//   128-k group as 32 lanes x 8 words: lane l's 8 words (32 contiguous bytes)
//   are its mma.m16n8k16 A fragments of the group's 8 k16 steps, nibbles in
//   "dequant order" (spa_device.cuh). The k order inside a group is permuted
//   so that lane 4g + t's activations (B fragments) for all 8 steps are the
//   32 consecutive k from 32t: per group a lane reads its weights with two
//   16-B loads and its activations with four 16-B loads per 8-token tile.
// * The weight is the A operand (W^T, m16) and the activations the B operand
//   (n8): at decode sizes M <= 8 only one n8 tile is issued per k16 step.
// * A CTA is 8 warps, one 16-column tile each (128 columns), all on the same
//   K range: they share one staged activation tile per pipeline stage (no
//   private copies; A/W traffic 4 M / 128). Only the M valid rows are copied;
//   the pad rows of every stage are zeroed once before the loop.
// * cp.async pipeline, 6/5/4 stages of one group (MT = 1 / 2 / >= 4),
//   weights and scales with an L2 evict-first policy (read once), in one
//   commit group per stage: nothing in the loop waits on a global load. The
//   stage ring is unrolled so every shared-memory offset is a constant, and
//   every global pointer is computed once and advanced by a fixed stride.
// * The INT4 values are exact in FP16/BF16; each group is accumulated in FP32
//   (two mma chains, even and odd k16 steps, at MT <= 2) and scaled once in
//   FP32, so the only 16-bit rounding is the output's own.
// * K is split across blocks by the launch table in spa_device.cuh
//   (plan_split) and reduced inside the kernel (store_split): each split
//   stores its FP32 sums to its own workspace slab, the last CTA of a column
//   block to arrive sums the slabs in split order and writes Y. One small
//   memset of the arrival counters per call, none when the caller keeps them
//   (spa_split_counters_size); no finalize launch, no FP32
//   atomics, the same bits whatever order the CTAs finish in. There are no
//   in-block slices any more (they lost on the H200: each slice staged its
//   own activation copy); the _ex launcher's `slices` argument is accepted
//   and ignored.
#include <algorithm>

#include "spa_launch.cuh"
#include "spa_tile.cuh"

namespace spa {

namespace {
thread_local const char* g_last_error = "no error";
}

void set_error(const char* message) { g_last_error = message; }

namespace w4a16 {

constexpr int kWarps = 8;  // 8 tiles of 16 columns per CTA
constexpr int kThreads = kWarps * 32;
static_assert(kWarps == 8, "split_column_blocks and launch_column_blocks (spa_device.cuh) count 8 tiles per CTA");
constexpr int kSteps = SPA_W4_GROUP / 16;          // 8 k16 mma steps per group
constexpr int kWordsPerGroup = kSteps * 32;        // one tile's group: 1 KB
// Pipeline depth in groups: deeper where the stage's activation tile is small.
__host__ __device__ constexpr int stages_for(int mt) { return mt <= 1 ? 6 : mt == 2 ? 5 : 4; }
// Two mma accumulators (even and odd k16 steps) halve the dependent HMMA chain; MT <= 2 only.
__host__ __device__ constexpr int chains_for(int mt) { return mt <= 2 ? 2 : 1; }
// One stage: 8 warps' weights, MT x 8 activation rows of 128 elements, 8 x 16 scales.
template <int MT>
constexpr int stage_bytes() { return kWarps * kWordsPerGroup * 4 + MT * 8 * SPA_W4_GROUP * 2 + kWarps * 16 * 2; }
template <int MT>
constexpr int smem_bytes() { return stages_for(MT) * stage_bytes<MT>(); }

// Where chunk c16 (16 B = 8 elements, 0..15) of activation row `row` lives in
// a stage: the four lanes t of a row read chunks 4t + i for the same i, and a
// 16-B access phase covers two rows (g, g + 1): the XOR spreads those 8 reads
// over the 8 distinct 16-B bank groups (no conflicts).
__host__ __device__ constexpr int a_chunk_slot(int row, int c16) { return c16 ^ ((c16 >> 3) & 1) ^ ((row & 1) << 1); }

// MT: number of 8-token tiles (M rows handled: MT * 8; rows >= M read zeros).
// At least 2 CTAs per SM (3 at MT = 1): caps registers at 128 (85) per thread.
// kSplit: K split across blocks (gridDim.y > 1), reduced in the kernel. Its
// own instantiation, so the unsplit kernel's registers and loop are those of
// a kernel without the reduction (sharing one body cost 25 % more
// instructions in the MT = 8 loop: addresses rematerialised).
template <typename T, int MT, bool kSplit>
__global__ void __launch_bounds__(kThreads, MT == 1 ? 3 : 2)
    gemm_kernel(const T* __restrict__ a_ptr,         // [M, K]
                const uint32_t* __restrict__ packed, // [N/16, K/128, 32, 8]
                const __half* __restrict__ scales,   // [K/128, N]
                T* __restrict__ y,                   // [M, N] (split == 1)
                float* __restrict__ slabs,           // [splits, M, N] FP32 (split > 1)
                int* __restrict__ counters,          // [2 N / 128] arrival counts (block, half), 0 on entry
                int M, int N, int K, int groups_per_split) {
  constexpr int kStages = stages_for(MT);
  constexpr int kRows = MT * 8;
  constexpr int kWStage = kWarps * kWordsPerGroup / 4;  // uint4 per stage
  constexpr int kAStage = kRows * SPA_W4_GROUP;         // elements per stage
  constexpr int kSStage = kWarps * 16;                  // scales per stage
  SPA_DYNAMIC_SMEM(smem);
  uint4* w_smem = reinterpret_cast<uint4*>(smem);  // [stage][warp][half h][lane]
  T* a_smem = reinterpret_cast<T*>(smem + kStages * kWStage * 16);       // [stage][row][slot]
  __half* s_smem = reinterpret_cast<__half*>(a_smem + kStages * kAStage);  // [stage][warp][16]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group_id = lane / 4, thread_in_group = lane % 4;
  const int n_tiles = N / 16, n_groups = K / SPA_W4_GROUP;
  // This CTA's rows (a column block's rows may go to several CTAs: row_share).
  const int block = take_rows<kSplit, kRows>(a_ptr, y, slabs, M, K, N);
  const int tile = block * kWarps + warp;
  const bool tile_valid = tile < n_tiles;  // uniform over the warp
  const int g_begin = blockIdx.y * groups_per_split;
  const int g_count = min(n_groups, g_begin + groups_per_split) - g_begin;
  if (g_count <= 0) return;  // uniform over the block
  const uint64_t policy = evict_first_policy();

  // Copy plan, computed once. Weights: this lane's 32 B of its tile's group
  // (2 x 16 B) to [warp][h][lane]; scales: lanes 0 and 1, 16 B each. A warp
  // past the last tile (partial CTA) streams tile 0's weights and scales,
  // computes on them and stores nothing: no branch in the loop.
  const int src_tile = tile_valid ? tile : 0;
  const uint4* w_src = reinterpret_cast<const uint4*>(
      packed + (static_cast<size_t>(src_tile) * n_groups + g_begin) * kWordsPerGroup) + lane * 2;
  uint4* const w_dst = w_smem + warp * 64 + lane;
  const __half* s_src = scales + static_cast<size_t>(g_begin) * N + src_tile * 16 + (lane & 1) * 8;
  __half* const s_dst = s_smem + warp * 16 + (lane & 1) * 8;
  const bool copies_scales = lane < 2;
  const size_t s_stride = static_cast<size_t>(N);
  ActivationCopy<T, kRows, kThreads> acts(a_ptr, M, K, g_begin, [](int row, int c16) { return a_chunk_slot(row, c16); });
  // Issue the next group's copies into `stage` when `more` (weights and
  // scales; activations) and advance their sources by one group.
  auto load_fixed = [&](int stage, bool more) {
    cp_async16_evict_first_if(w_dst + stage * kWStage, w_src, policy, more);
    cp_async16_evict_first_if(w_dst + stage * kWStage + 32, w_src + 1, policy, more);
    w_src += kWordsPerGroup / 4;
    cp_async16_evict_first_if(s_dst + stage * kSStage, s_src, policy, more && copies_scales);
    s_src += s_stride;
  };
  auto load_acts = [&](int stage, bool more) { acts.copy(a_smem + stage * kAStage, more); };

  // Reads: lane (g, t) takes row j * 8 + g, chunks 4t + i (i = 0..3), from these offsets.
  const int x = (thread_in_group >> 1) ^ ((group_id & 1) << 1);
  uint32_t a_read[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    a_read[i] = smem_address(smem, a_smem + group_id * SPA_W4_GROUP + (4 * thread_in_group + (i ^ x)) * 8);
    pin(a_read[i]);
  }
  uint32_t w_read = smem_address(smem, w_smem + warp * 64 + lane);
  pin(w_read);
  const int s_read = warp * 16 + group_id;

  float acc[MT][4];
  zero_tiles(acc);

  auto compute = [&](int stage) {
    const uint4 w0 = lds128(smem, w_read + stage * kWStage * 16), w1 = lds128(smem, w_read + (stage * kWStage + 32) * 16);
    const uint32_t words[kSteps] = {w0.x, w0.y, w0.z, w0.w, w1.x, w1.y, w1.z, w1.w};
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
      uint4 b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i)
        b[i] = lds128(smem, a_read[i] + (stage * kAStage + j * 8 * SPA_W4_GROUP) * 2);
#pragma unroll
      for (int step = 0; step < kSteps; ++step) {
        const uint4& q = b[step / 2];
        const uint32_t b0 = step % 2 ? q.z : q.x, b1 = step % 2 ? q.w : q.y;
        mma_16816<T>(part[step % kChains], frag[step], b0, b1);
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
cudaError_t dispatch(const T* a, const uint32_t* packed, const __half* scales, T* y, float* slabs, int* counters,
                     int M, int N, int K, int splits, int gps, cudaStream_t stream) {
  return with_row_tiles(M, N, [&](auto mt, int chunks) {
    constexpr int MT = decltype(mt)::value;
    return launch_column_blocks(gemm_kernel<T, MT, false>, gemm_kernel<T, MT, true>, smem_bytes<MT>(), N, chunks,
                                splits, stream, a, packed, scales, y, slabs, counters, M, N, K, gps);
  });
}

template <typename T>
cudaError_t run(const void* a_ptr, const int32_t* packed_ptr, const uint16_t* scales_ptr, void* y_ptr, int M, int N,
                int K, void* workspace, size_t workspace_bytes, int split_k, int* kept_counters, cudaStream_t stream) {
  const T* a = static_cast<const T*>(a_ptr);
  const uint32_t* packed = reinterpret_cast<const uint32_t*>(packed_ptr);
  const __half* scales = reinterpret_cast<const __half*>(scales_ptr);
  T* y = static_cast<T*>(y_ptr);
  // the first launch's instantiation: its occupancy
  const int ctas = with_row_tiles(std::min(M, SPA_MAX_M_PER_LAUNCH), N, [](auto mt, int) {
    constexpr int MT = decltype(mt)::value;
    return resident_ctas(gemm_kernel<T, MT, true>, smem_bytes<MT>());
  });
  return run_split(M, N, K, workspace, workspace_bytes, split_k, kept_counters, ctas, stream,
                   [&](int m0, int rows, float* slabs, int* counters, int splits, int gps) {
                     return dispatch<T>(a + static_cast<size_t>(m0) * K, packed, scales,
                                        y + static_cast<size_t>(m0) * N, slabs, counters, rows, N, K, splits, gps,
                                        stream);
                   });
}

}  // namespace w4a16
}  // namespace spa

extern "C" const char* spa_kernel_error_string(void) { return spa::g_last_error; }

extern "C" size_t spa_w4a16_workspace_size(int M, int N, int K) { return spa::split_workspace_size(M, N, K); }

extern "C" size_t spa_split_counters_size(int N) {
  return N > 0 ? spa::split_counter_bytes(spa::split_counter_count(N)) : 0;
}

extern "C" cudaError_t spa_w4a16_gemm_ex(const void* A, const int32_t* packed, const uint16_t* scales,
                                         void* Y, int M, int N, int K, SpaDtype dtype,
                                         void* workspace, size_t workspace_bytes, int slices,
                                         int split_k, int* counters, cudaStream_t stream) {
  SPA_REQUIRE(A && packed && scales && Y, "w4a16: a data pointer is NULL");
  SPA_REQUIRE(M >= 1 && N >= 16 && K >= SPA_W4_GROUP, "w4a16: M, N or K too small");
  SPA_REQUIRE(K % SPA_W4_GROUP == 0, "w4a16: K must be a multiple of 128");
  SPA_REQUIRE(N % 16 == 0, "w4a16: N must be a multiple of 16");
  SPA_REQUIRE(dtype == SPA_FP16 || dtype == SPA_BF16, "w4a16: dtype must be SPA_FP16 or SPA_BF16");
  SPA_REQUIRE(slices == 0 || slices == 1 || slices == 2 || slices == 4, "w4a16: slices must be 0, 1, 2 or 4");
  if (dtype == SPA_FP16)
    return spa::w4a16::run<__half>(A, packed, scales, Y, M, N, K, workspace, workspace_bytes, split_k, counters,
                                   stream);
  return spa::w4a16::run<__nv_bfloat16>(A, packed, scales, Y, M, N, K, workspace, workspace_bytes, split_k,
                                        counters, stream);
}

extern "C" cudaError_t spa_w4a16_gemm(const void* A, const int32_t* packed, const uint16_t* scales,
                                      void* Y, int M, int N, int K, SpaDtype dtype,
                                      void* workspace, size_t workspace_bytes, int split_k,
                                      cudaStream_t stream) {
  return spa_w4a16_gemm_ex(A, packed, scales, Y, M, N, K, dtype, workspace, workspace_bytes,
                           split_k > 0 ? 1 : 0, split_k, nullptr, stream);
}
