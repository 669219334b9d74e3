// W4 + group sparsity (GQSA): Y[M, N] = A[M, K] @ W[K, N] where every output
// column n keeps a few groups of g consecutive k (block-sparse-row over W^T,
// docs/formats.md section (c)) and each kept group is INT4 with one FP16 scale.
//
// Kernel layout (spa/trt/repack.py, README "w4_gqsa"): values as uint32
// words [nnz, g/8] in dequant order, group_idx uint16 [nnz] (the ONNX op's
// int32 col_idx, halved: 2 B instead of 4 per 8-B group keeps the floor at
// 0.75 B per kept weight for g = 16), row_ptr int32 [N+1], scales fp16 [nnz].
//
// Work-balanced scheduling without atomics: warp w is given the entries
// [w E, (w + 1) E) (E = 128) and owns, whole, every column whose first entry
// falls there, so warps get equal shares of nnz up to one column, and no
// column is split between warps. The warp walks its columns' entries 32 at a
// time, one entry per lane (384 B per step for g = 16, coalesced, read with
// the streaming hint); the warp finds its columns with a 32-way search (3
// dependent loads where a binary search took 14) and the column of its first
// entry by a binary search over its own few columns; in a step where a column
// ends the lanes walk row_ptr from there. A segmented warp scan sums lanes of
// one column, a carry takes a column across steps, and the lane holding a
// column's last entry writes
// Y directly: no workspace, no memset, no finalize launch. A step whose 32
// entries lie inside one column and do not end it (most steps: a column of
// C entries takes C / 32) skips the scan: each lane adds to its own sums,
// which join the column's carry at the next step a column ends in. Activations are
// gathered through L1 (a pass's rows of A, reused by every column: 8 rows,
// fewer where 8 x K would overflow L1, gqsa_pass_rows).
// FP16 multiplies in half2 (pre-scaled weights, chains of 16 products, sums
// in FP32: fp16_products); BF16 in FP32.
#include <algorithm>
#include <climits>
#include <type_traits>

#include "spa_device.cuh"
#include "spa_launch.cuh"

namespace spa {
namespace gqsa {

constexpr int kThreads = 256;
constexpr int kEntriesPerWarp = 128;           // a warp's share of nnz

template <typename T>
__device__ __forceinline__ void load8(const T* p, float (&out)[8]) {
  uint4 raw = *reinterpret_cast<const uint4*>(p);  // 16-B aligned: K % 8 == 0, g % 8 == 0
  const T* h = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) out[i] = Elem<T>::to_float(h[i]);
}

// Row of entry e: the largest r in [lo, hi] with row_ptr[r] <= e (rows may
// be empty). The caller narrows [lo, hi] to the warp's own columns.
__device__ __forceinline__ int find_row(const int32_t* __restrict__ row_ptr, int lo, int hi, int e) {
  while (lo < hi) {
    int mid = (lo + hi + 1) / 2;
    if (__ldg(row_ptr + mid) <= e) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// The first columns n in [0, N] with row_ptr[n] >= e0 and >= e1 (N when
// none), searched by the 32 lanes together: each round every lane probes the
// last column of its 32nd of the open range (one load per search), and a
// ballot keeps the first 32nd whose probe reaches e. The range shrinks 32x
// per round: 3 dependent loads for N <= 32768 where a binary search takes
// log2(N) (14 at N = 11008). Both searches share the rounds. Uniform over the
// warp: every lane passes the same e0, e1 and gets the same answers.
__device__ __forceinline__ void first_columns_from(const int32_t* __restrict__ row_ptr, int N, long long e0,
                                                   long long e1, int lane, int& n0, int& n1) {
  int lo[2] = {0, 0}, hi[2] = {N, N};  // the answer is in [lo, hi]; hi is N or reaches e
  const long long e[2] = {e0, e1};
  while (lo[0] < hi[0] || lo[1] < hi[1]) {  // uniform
    unsigned hits[2];
    int step[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      step[i] = (hi[i] - lo[i] + 31) / 32;
      const int first = lo[i] + lane * step[i];
      const int probe = min(first + step[i], hi[i]) - 1;
      const bool hit = lo[i] < hi[i] && first < hi[i] && __ldg(row_ptr + probe) >= e[i];
      hits[i] = __ballot_sync(0xffffffffu, hit);
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      if (lo[i] >= hi[i]) continue;
      if (hits[i] == 0) {
        lo[i] = hi[i];  // no column in [lo, hi) reaches e: the answer is hi
      } else {
        const int j = __ffs(static_cast<int>(hits[i])) - 1;
        const int first = lo[i] + j * step[i];
        hi[i] = min(first + step[i], hi[i]) - 1;
        lo[i] = first;
      }
    }
  }
  n0 = lo[0];
  n1 = lo[1];
}

// FP16 products of one entry (G weights) with MB tokens, added to acc[m]:
// the entry's pairs are dequantized (exact) and scaled once (HMUL2: q * s
// rounded once to FP16, as the tile kernel does), then each token's products
// run in half2 FMA chains of at most 16 weights (8 per half), each chain
// widened to FP32 and added there. 8 HFMA2 per 16 weights and token where
// FP32 took 16 conversions and 16 FFMA. The products are the real w * x
// (not q * x), so a chain overflows only where 8 of them sum past 65504.
template <int MB, typename Fetched>
__device__ __forceinline__ void fp16_products(const Fetched& f, const __half* a_group, const int (&a_row)[MB],
                                              float (&acc)[MB]) {
  constexpr int kWords = sizeof(f.words) / sizeof(f.words[0]);
  constexpr int kChain = kWords < 2 ? kWords : 2;  // words per FP16 chain (16 weights)
  const __half2 s2 = __half2half2(f.scale);
#pragma unroll
  for (int c = 0; c < kWords; c += kChain) {  // one chain's weights live at a time (registers at g = 64)
    __half2 w[kChain][4];
#pragma unroll
    for (int i = 0; i < kChain; ++i) {
      uint32_t pairs[4];
      dequant8_fast<__half>(f.words[c + i], pairs);
#pragma unroll
      for (int p = 0; p < 4; ++p) w[i][p] = __hmul2(*reinterpret_cast<const __half2*>(&pairs[p]), s2);
    }
#pragma unroll
    for (int m = 0; m < MB; ++m) {
      __half2 h = __float2half2_rn(0.f);
#pragma unroll
      for (int i = 0; i < kChain; ++i) {
        const uint4 raw = *reinterpret_cast<const uint4*>(a_group + a_row[m] + (c + i) * 8);
        const __half2* x = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
        for (int p = 0; p < 4; ++p) h = __hfma2(w[i][p], x[p], h);
      }
      const float2 sum = __half22float2(h);
      acc[m] += sum.x + sum.y;
    }
  }
}

// BF16 products of one entry, added to acc[m]: the magic-number dequant of
// w4a16 (exact 16-bit pairs, no I2F), each pair widened to FP32 (a shift),
// FP32 FMAs, the entry's scale applied once per token (BF16 products summed
// in BF16 would keep 8 bits).
template <typename T, int MB, typename Fetched>
__device__ __forceinline__ void fp32_products(const Fetched& f, const T* a_group, const int (&a_row)[MB],
                                              float (&acc)[MB]) {
  constexpr int kWords = sizeof(f.words) / sizeof(f.words[0]);
  float sum[MB];
#pragma unroll
  for (int m = 0; m < MB; ++m) sum[m] = 0.f;
#pragma unroll
  for (int w = 0; w < kWords; ++w) {
    uint32_t pairs[4];
    dequant8<T>(f.words[w], pairs);
    float q[8];
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      const T* h = reinterpret_cast<const T*>(&pairs[p]);
      q[2 * p] = Elem<T>::to_float(h[0]);
      q[2 * p + 1] = Elem<T>::to_float(h[1]);
    }
#pragma unroll
    for (int m = 0; m < MB; ++m) {
      float x[8];
      load8<T>(a_group + a_row[m] + w * 8, x);
#pragma unroll
      for (int i = 0; i < 8; ++i) sum[m] = fmaf(q[i], x[i], sum[m]);
    }
  }
  const float scale = __half2float(f.scale);
#pragma unroll
  for (int m = 0; m < MB; ++m) acc[m] = fmaf(sum[m], scale, acc[m]);
}

// An entry's value words (G / 8 of them, contiguous): one 4-, 8- or 16-B
// load each (the entry's words are aligned to their size: spa_w4_gqsa_gemm
// checks the pointer).
template <int kWords>
__device__ __forceinline__ void load_words(const uint32_t* __restrict__ p, uint32_t (&out)[kWords]) {
  if constexpr (kWords == 1) {
    out[0] = __ldcs(p);
  } else if constexpr (kWords == 2) {
    const uint2 v = __ldcs(reinterpret_cast<const uint2*>(p));
    out[0] = v.x;
    out[1] = v.y;
  } else {
#pragma unroll
    for (int i = 0; i < kWords / 4; ++i) {
      const uint4 v = __ldcs(reinterpret_cast<const uint4*>(p) + i);
      out[4 * i] = v.x;
      out[4 * i + 1] = v.y;
      out[4 * i + 2] = v.z;
      out[4 * i + 3] = v.w;
    }
  }
}

// Resident CTAs per SM each instantiation is compiled for (registers <=
// 65536 / (256 x this)): the gathered activations are latency-bound, so at
// g <= 16 the narrow passes keep about the residency of the measured kernel
// (6 / 5 / 3 / 2 CTAs at 1 / 2 / 4 / 8 rows; it had 6 / 5 / 4 / 4 at 37-64
// registers); left free, ptxas spent up to 90 registers at one row (2 CTAs).
// Larger groups hold more words per entry in flight: one CTA less per step
// of g (32, 64), never under 2, where the tighter cap spilled.
template <int G, int MB>
constexpr int kMinBlocks =
    std::max(2, (MB == 1 ? 6 : MB == 2 ? 5 : MB == 4 ? 3 : 2) - (G >= 32 ? 1 : 0) - (G >= 64 ? 1 : 0));

template <typename T, int G, int MB>
__global__ void __launch_bounds__(kThreads, kMinBlocks<G, MB>)
    gemv_kernel(const T* __restrict__ a_ptr,             // [rows, K] (this pass)
                const uint32_t* __restrict__ values,     // [nnz, G/8]
                const uint16_t* __restrict__ group_idx,  // [nnz]
                const int32_t* __restrict__ row_ptr,     // [N+1]
                const __half* __restrict__ scales,       // [nnz]
                T* __restrict__ y,                       // [rows, N]
                int rows, int N, int K, int warps) {
  constexpr int kWords = G / 8;
  const unsigned full = 0xffffffffu;
  const int lane = threadIdx.x % 32;
  const long long warp = (static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x) / 32;
  // blockIdx.y: this block's pass of MB rows (one launch covers every full
  // pass; the launcher keeps gridDim.y * MB * K within int). A's rows are
  // offset in a_row below, so the loop's addressing is unchanged.
  const int pass = static_cast<int>(blockIdx.y);
  y += static_cast<size_t>(pass) * MB * N;
  allow_dependent_launch();  // (spa_device.cuh, PDL)
  if (warp >= warps) return;  // uniform over the warp
  // Columns owned: those whose first entry is in [warp E, (warp + 1) E); the
  // last warp also owns the empty columns at the end.
  int n_begin, n_end;
  first_columns_from(row_ptr, N, warp * kEntriesPerWarp, (warp + 1) * kEntriesPerWarp, lane, n_begin, n_end);
  if (warp == 0) n_begin = 0;
  if (warp + 1 == warps) n_end = N;
  if (n_begin >= n_end) return;
  const int e_begin = __ldg(row_ptr + n_begin), e_end = __ldg(row_ptr + n_end);

  // Each token's row of A, as an offset; rows past `rows` read the last row
  // again (their sums are never stored), so no token is guarded by a branch
  // and the compiler issues every token's loads before their math.
  // Pinned in registers: recomputed from the parameters, each cost the loop
  // five uniform instructions per token.
  int a_row[MB];
#pragma unroll
  for (int m = 0; m < MB; ++m) {
    uint32_t offset = static_cast<uint32_t>((pass * MB + min(m, rows - 1)) * K);
    pin(offset);
    a_row[m] = static_cast<int>(offset);
  }

  // Register prefetch, two steps in flight: each step's group index, scale
  // and value words are loaded during the step before it, so a step's only
  // wait is the activation gather that depends on its index. Two register
  // sets take turns (the loop body holds two steps): nothing is copied.
  struct Fetched {
    uint32_t words[kWords];
    int b;
    __half scale;
  };
  auto fetch = [&](Fetched& f, int e) {
    if (e < e_end) {
      f.b = __ldcs(group_idx + e);
      f.scale = __ldcs(scales + e);
      load_words<kWords>(values + static_cast<size_t>(e) * kWords, f.words);
    }
  };
  auto products = [&](const Fetched& f, float (&acc)[MB]) {
    expect_dependency_resolved("an activation read");
    const T* a_group = a_ptr + static_cast<size_t>(f.b) * G;
    if constexpr (std::is_same_v<T, __half>) {
      fp16_products<MB>(f, a_group, a_row, acc);
    } else {
      fp32_products<T, MB>(f, a_group, a_row, acc);
    }
  };

  // The open column: the column of the next step's first entry (uniform over
  // the warp). A step of 32 entries (one per lane) that lies inside it and
  // does not end it (base + 32 < open_end) is a fast step: each lane adds its
  // products to its own sums of that column (priv), no shuffle, no column
  // walk. The other steps (a column ends in them) run the segmented scan; the
  // lanes' private sums join the carry there, so each column costs one
  // reduction across the warp, not one per step (a column of C entries takes
  // about C / 32 steps, and a step with a column's end about one of them).
  int open_col = find_row(row_ptr, n_begin, n_end - 1, e_begin);
  int open_end = __ldg(row_ptr + open_col + 1);
  float priv[MB], carry[MB];
  int carry_key = -1;
#pragma unroll
  for (int m = 0; m < MB; ++m) priv[m] = carry[m] = 0.f;

  // A step in which a column ends: the 32 entries from `base`, one per lane.
  auto scan_step = [&](int base, const Fetched& f) {
    // The open column's private sums (every lane's fast steps) join its
    // carry first (their registers are free for the step's own sums).
    if (carry_key != open_col) {
#pragma unroll
      for (int m = 0; m < MB; ++m) carry[m] = 0.f;
    }
#pragma unroll
    for (int m = 0; m < MB; ++m) {
      float s = priv[m];
#pragma unroll
      for (int offset = 16; offset >= 1; offset /= 2) s += __shfl_xor_sync(full, s, offset);
      carry[m] += s;
      priv[m] = 0.f;
    }
    carry_key = open_col;
    const int e = base + lane;
    const bool valid = e < e_end;
    int row = open_col, last = open_end;  // one past the last entry of column `row`
    float acc[MB];
#pragma unroll
    for (int m = 0; m < MB; ++m) acc[m] = 0.f;
    if (valid) {
      while (last <= e) last = __ldg(row_ptr + ++row + 1);
      products(f, acc);
    }
    // Segmented inclusive scan over lanes of the same column (columns are
    // sorted, so equal keys are contiguous and sums never cross a segment).
    const int key = valid ? row : -1 - lane;
#pragma unroll
    for (int offset = 1; offset < 32; offset *= 2) {
      int other = __shfl_up_sync(full, key, offset);
#pragma unroll
      for (int m = 0; m < MB; ++m) {
        float v = __shfl_up_sync(full, acc[m], offset);
        if (lane >= offset && other == key) acc[m] += v;
      }
    }
    // The open column (lanes 0.. of it) adds the carry.
    if (key == carry_key) {
#pragma unroll
      for (int m = 0; m < MB; ++m) acc[m] += carry[m];
    }
    // The lane with a column's last entry holds its whole sum.
    if (valid && e + 1 == last) {
      expect_dependency_resolved("an output store");
#pragma unroll
      for (int m = 0; m < MB; ++m)
        if (m < rows) y[static_cast<size_t>(m) * N + row] = Elem<T>::from_float(acc[m]);
    }
    carry_key = __shfl_sync(full, key, 31);
#pragma unroll
    for (int m = 0; m < MB; ++m) carry[m] = __shfl_sync(full, acc[m], 31);
    open_col = __shfl_sync(full, row, 31);  // lane 31's column (the warp ends here if it is not valid)
    open_end = __shfl_sync(full, last, 31);
  };
  auto step = [&](int base, const Fetched& f) {
    while (open_end <= base) open_end = __ldg(row_ptr + ++open_col + 1);  // uniform
    if (base + 32 < open_end) {
      products(f, priv);
    } else {
      scan_step(base, f);
    }
  };

  Fetched even{}, odd{};
  fetch(even, e_begin + lane);
  // Up to here only what no kernel writes was read (row_ptr: the column
  // searches, chains of dependent loads; the first step's entries), so with
  // PDL all of it overlaps the kernel before. Activations and Y from here on.
  grid_dependency_wait();

  // Empty columns get zeros.
  for (int n = n_begin + lane; n < n_end; n += 32) {
    if (__ldg(row_ptr + n) == __ldg(row_ptr + n + 1)) {
      expect_dependency_resolved("an output store");
#pragma unroll
      for (int m = 0; m < MB; ++m)
        if (m < rows) y[static_cast<size_t>(m) * N + n] = Elem<T>::from_float(0.f);
    }
  }
  if (e_begin >= e_end) return;
  for (int base = e_begin; base < e_end; base += 64) {  // uniform over the warp
    // The steady state: pairs of fast steps while both lie inside the open column.
    while (base + 64 < open_end) {
      fetch(odd, base + 32 + lane);
      products(even, priv);
      fetch(even, base + 64 + lane);
      products(odd, priv);
      base += 64;
    }
    fetch(odd, base + 32 + lane);
    step(base, even);
    if (base + 32 >= e_end) break;
    fetch(even, base + 64 + lane);
    step(base + 32, odd);
  }
}

// Passes of gqsa_pass_rows(K) rows (8, fewer where a pass's activations
// would overflow L1): every full pass in one launch (gridDim.y passes, at
// most 65535 per launch), then the remaining rows in one launch of their own
// width: one or two launches for any M, where one launch per pass paid the
// launch cost M / 8 times.
template <typename T, int G>
cudaError_t launch_rows(int rows, dim3 grid, const T* a, const uint32_t* values, const uint16_t* group_idx,
                        const int32_t* row_ptr, const __half* scales, T* y, int valid_rows, int N, int K, int warps,
                        cudaStream_t stream) {
  if (rows <= 1)
    return launch_kernel(gemv_kernel<T, G, 1>, grid, kThreads, 0, stream, a, values, group_idx, row_ptr, scales, y,
                         valid_rows, N, K, warps);
  if (rows <= 2)
    return launch_kernel(gemv_kernel<T, G, 2>, grid, kThreads, 0, stream, a, values, group_idx, row_ptr, scales, y,
                         valid_rows, N, K, warps);
  if (rows <= 4)
    return launch_kernel(gemv_kernel<T, G, 4>, grid, kThreads, 0, stream, a, values, group_idx, row_ptr, scales, y,
                         valid_rows, N, K, warps);
  return launch_kernel(gemv_kernel<T, G, 8>, grid, kThreads, 0, stream, a, values, group_idx, row_ptr, scales, y,
                       valid_rows, N, K, warps);
}

template <typename T, int G>
cudaError_t launch_g(const T* a, const uint32_t* values, const uint16_t* group_idx, const int32_t* row_ptr,
                     const __half* scales, T* y, int M, int N, int K, int nnz, cudaStream_t stream) {
  const long long warps = std::max(1LL, (static_cast<long long>(nnz) + kEntriesPerWarp - 1) / kEntriesPerWarp);
  const unsigned blocks = static_cast<unsigned>((warps * 32 + kThreads - 1) / kThreads);
  const int w = static_cast<int>(warps);
  const int width = gqsa_pass_rows(K);
  // gridDim.y <= 65535, and every row offset of a launch (a_row) fits an int
  const int max_passes = static_cast<int>(std::min<long long>(65535, INT_MAX / (static_cast<long long>(width) * K)));
  int m0 = 0;
  while (M - m0 >= width) {
    const int passes = std::min(max_passes, (M - m0) / width);
    SPA_CHECK((launch_rows<T, G>(width, dim3(blocks, static_cast<unsigned>(passes)), a + static_cast<size_t>(m0) * K,
                                 values, group_idx, row_ptr, scales, y + static_cast<size_t>(m0) * N, width, N, K, w,
                                 stream)));
    m0 += passes * width;
  }
  const int rows = M - m0;  // 0 .. width - 1 rows left
  if (rows == 0) return cudaSuccess;
  return launch_rows<T, G>(rows, dim3(blocks), a + static_cast<size_t>(m0) * K, values, group_idx, row_ptr, scales,
                           y + static_cast<size_t>(m0) * N, rows, N, K, w, stream);
}

template <typename T>
cudaError_t run(const void* a_ptr, const uint32_t* values, const uint16_t* group_idx,
                const int32_t* row_ptr, const uint16_t* scales_ptr, void* y_ptr, int M, int N, int K,
                int group_size, int nnz, cudaStream_t stream) {
  const T* a = static_cast<const T*>(a_ptr);
  T* y = static_cast<T*>(y_ptr);
  const __half* scales = reinterpret_cast<const __half*>(scales_ptr);
  switch (group_size) {
    case 8: return launch_g<T, 8>(a, values, group_idx, row_ptr, scales, y, M, N, K, nnz, stream);
    case 16: return launch_g<T, 16>(a, values, group_idx, row_ptr, scales, y, M, N, K, nnz, stream);
    case 32: return launch_g<T, 32>(a, values, group_idx, row_ptr, scales, y, M, N, K, nnz, stream);
    default: return launch_g<T, 64>(a, values, group_idx, row_ptr, scales, y, M, N, K, nnz, stream);
  }
}

}  // namespace gqsa
}  // namespace spa

extern "C" size_t spa_w4_gqsa_workspace_size(int M, int N, int K) {
  (void)M;
  (void)N;
  (void)K;
  return 0;  // each column is summed by one warp: no FP32 partial sums
}

extern "C" cudaError_t spa_w4_gqsa_gemm(const void* A, const uint32_t* values,
                                        const uint16_t* group_idx, const int32_t* row_ptr,
                                        const uint16_t* scales, void* Y, int M, int N, int K,
                                        int group_size, int nnz, SpaDtype dtype, void* workspace,
                                        size_t workspace_bytes, cudaStream_t stream) {
  (void)workspace;
  (void)workspace_bytes;
  SPA_REQUIRE(A && row_ptr && Y, "w4_gqsa: a data pointer is NULL");
  SPA_REQUIRE(nnz == 0 || (values && group_idx && scales), "w4_gqsa: a data pointer is NULL");
  SPA_REQUIRE(M >= 1 && N >= 1 && K >= 1 && nnz >= 0, "w4_gqsa: M, N, K must be >= 1");
  SPA_REQUIRE(group_size == 8 || group_size == 16 || group_size == 32 || group_size == 64,
              "w4_gqsa: group_size must be 8, 16, 32 or 64");
  SPA_REQUIRE(K % group_size == 0, "w4_gqsa: K must be a multiple of group_size");
  SPA_REQUIRE(K / group_size <= 65536, "w4_gqsa: K / group_size must be <= 65536 (uint16 group index)");
  SPA_REQUIRE(reinterpret_cast<uintptr_t>(values) % std::min(16, group_size / 2) == 0,
              "w4_gqsa: values must be aligned to min(16, group_size / 2) bytes (an entry's words are one load)");
  SPA_REQUIRE(dtype == SPA_FP16 || dtype == SPA_BF16, "w4_gqsa: dtype must be SPA_FP16 or SPA_BF16");
  if (dtype == SPA_FP16)
    return spa::gqsa::run<__half>(A, values, group_idx, row_ptr, scales, Y, M, N, K, group_size, nnz, stream);
  return spa::gqsa::run<__nv_bfloat16>(A, values, group_idx, row_ptr, scales, Y, M, N, K, group_size, nnz,
                                       stream);
}
