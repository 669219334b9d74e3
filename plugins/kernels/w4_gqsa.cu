// W4 + group sparsity (GQSA): Y[M, N] = A[M, K] @ W[K, N] where every output
// column n keeps a few groups of g consecutive k (block-sparse-row over W^T,
// docs/formats.md section (c)) and each kept group is INT4 with one FP16 scale.
//
// Kernel layout (spa/plugins/repack.py, README "w4_gqsa"): values as uint32
// words [nnz, g/8] in dequant order, group_idx uint16 [nnz] (the ONNX op's
// int32 col_idx, halved: 2 B instead of 4 per 8-B group keeps the floor at
// 0.75 B per kept weight for g = 16), row_ptr int32 [N+1], scales fp16 [nnz].
//
// Work-balanced scheduling: warps take equal, contiguous slices of the nnz
// entries (not rows), so columns with more kept groups never make a warp
// straggle. A lane handles one entry per step (32 entries = 384 B per warp
// step, coalesced, read with the streaming/evict-first hint); its row comes
// from a binary search once and a forward walk of row_ptr afterwards. Lanes
// of one row are contiguous, so a segmented warp scan sums them and the last
// lane of each segment adds the row's partial sum to an FP32 workspace
// (atomicAdd); a finalize kernel converts to the output type. Activations are
// gathered through L1 (A is at most 8 x K per pass, reused by every column).
#include <algorithm>

#include "spa_device.cuh"

namespace spa {
namespace gqsa {

constexpr int kThreads = 256;
constexpr int kStepsPerWarp = 4;               // entries per warp = 32 * kStepsPerWarp
constexpr int kEntriesPerWarp = 32 * kStepsPerWarp;
constexpr int kTokensPerPass = 8;              // M is processed 8 rows at a time

template <typename T>
__device__ __forceinline__ void load8(const T* p, float (&out)[8]) {
  uint4 raw = *reinterpret_cast<const uint4*>(p);  // 16-B aligned: K % 8 == 0, g % 8 == 0
  const T* h = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) out[i] = Elem<T>::to_float(h[i]);
}

// Row of entry e: the largest r with row_ptr[r] <= e (rows may be empty).
__device__ __forceinline__ int find_row(const int32_t* __restrict__ row_ptr, int N, int e) {
  int lo = 0, hi = N - 1;
  while (lo < hi) {
    int mid = (lo + hi + 1) / 2;
    if (__ldg(row_ptr + mid) <= e) lo = mid; else hi = mid - 1;
  }
  return lo;
}

template <typename T, int G, int MB>
__global__ void __launch_bounds__(kThreads)
    gemv_kernel(const T* __restrict__ a_ptr,             // [rows, K] (this pass)
                const uint32_t* __restrict__ values,     // [nnz, G/8]
                const uint16_t* __restrict__ group_idx,  // [nnz]
                const int32_t* __restrict__ row_ptr,     // [N+1]
                const __half* __restrict__ scales,       // [nnz]
                float* __restrict__ partial,             // [rows, N] FP32
                int rows, int N, int K, int nnz) {
  constexpr int kWords = G / 8;
  const unsigned full = 0xffffffffu;
  const int lane = threadIdx.x % 32;
  const long long warp = (static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x) / 32;
  const long long begin = warp * kEntriesPerWarp;
  if (begin >= nnz) return;  // uniform over the warp
  const int end = static_cast<int>(min(static_cast<long long>(nnz), begin + kEntriesPerWarp));
  int row = find_row(row_ptr, N, min(static_cast<int>(begin) + lane, nnz - 1));

  for (int step = 0; step < kStepsPerWarp; ++step) {
    const int e = static_cast<int>(begin) + step * 32 + lane;
    const bool valid = e < end;
    float acc[MB];
#pragma unroll
    for (int m = 0; m < MB; ++m) acc[m] = 0.f;
    if (valid) {
      while (__ldg(row_ptr + row + 1) <= e) ++row;
      const int b = __ldcs(group_idx + e);
      const float scale = __half2float(__ldcs(scales + e));
      const T* a_group = a_ptr + static_cast<size_t>(b) * G;
#pragma unroll
      for (int w = 0; w < kWords; ++w) {
        const uint32_t word = __ldcs(values + static_cast<size_t>(e) * kWords + w);
        float q[8];
#pragma unroll
        for (int p = 0; p < 4; ++p) {
          q[2 * p] = static_cast<float>(static_cast<int>((word >> (4 * p)) & 15u) - 8);
          q[2 * p + 1] = static_cast<float>(static_cast<int>((word >> (4 * p + 16)) & 15u) - 8);
        }
#pragma unroll
        for (int m = 0; m < MB; ++m) {
          if (m < rows) {
            float x[8];
            load8<T>(a_group + static_cast<size_t>(m) * K + w * 8, x);
#pragma unroll
            for (int i = 0; i < 8; ++i) acc[m] = fmaf(q[i], x[i], acc[m]);
          }
        }
      }
#pragma unroll
      for (int m = 0; m < MB; ++m) acc[m] *= scale;
    }
    // Segmented inclusive scan over lanes of the same row (rows are sorted,
    // so equal keys are contiguous and sums never cross a segment).
    const int key = valid ? row : -1;
#pragma unroll
    for (int offset = 1; offset < 32; offset *= 2) {
      int other = __shfl_up_sync(full, key, offset);
#pragma unroll
      for (int m = 0; m < MB; ++m) {
        float v = __shfl_up_sync(full, acc[m], offset);
        if (lane >= offset && other == key) acc[m] += v;
      }
    }
    int next_key = __shfl_down_sync(full, key, 1);
    bool tail = lane == 31 || next_key != key;
    if (valid && tail) {
#pragma unroll
      for (int m = 0; m < MB; ++m)
        if (m < rows) atomicAdd(partial + static_cast<size_t>(m) * N + row, acc[m]);
    }
  }
}

template <typename T, int G>
cudaError_t launch_g(const T* a, const uint32_t* values, const uint16_t* group_idx,
                     const int32_t* row_ptr, const __half* scales, float* partial, int rows,
                     int N, int K, int nnz, cudaStream_t stream) {
  long long warps = (static_cast<long long>(nnz) + kEntriesPerWarp - 1) / kEntriesPerWarp;
  unsigned blocks = static_cast<unsigned>((warps * 32 + kThreads - 1) / kThreads);
  if (rows <= 1)
    SPA_LAUNCH(blocks, kThreads, 0, stream, gemv_kernel<T, G, 1>)(a, values, group_idx, row_ptr, scales, partial, rows, N, K, nnz);
  else if (rows <= 2)
    SPA_LAUNCH(blocks, kThreads, 0, stream, gemv_kernel<T, G, 2>)(a, values, group_idx, row_ptr, scales, partial, rows, N, K, nnz);
  else if (rows <= 4)
    SPA_LAUNCH(blocks, kThreads, 0, stream, gemv_kernel<T, G, 4>)(a, values, group_idx, row_ptr, scales, partial, rows, N, K, nnz);
  else
    SPA_LAUNCH(blocks, kThreads, 0, stream, gemv_kernel<T, G, 8>)(a, values, group_idx, row_ptr, scales, partial, rows, N, K, nnz);
  return cudaGetLastError();
}

template <typename T>
cudaError_t run(const void* a_ptr, const uint32_t* values, const uint16_t* group_idx,
                const int32_t* row_ptr, const uint16_t* scales_ptr, void* y, int M, int N, int K,
                int group_size, int nnz, float* partial, cudaStream_t stream) {
  const T* a = static_cast<const T*>(a_ptr);
  const __half* scales = reinterpret_cast<const __half*>(scales_ptr);
  SPA_CHECK(cudaMemsetAsync(partial, 0, sizeof(float) * static_cast<size_t>(M) * N, stream));
  if (nnz > 0) {
    for (int m0 = 0; m0 < M; m0 += kTokensPerPass) {
      int rows = std::min(kTokensPerPass, M - m0);
      const T* a0 = a + static_cast<size_t>(m0) * K;
      float* p0 = partial + static_cast<size_t>(m0) * N;
      cudaError_t status;
      switch (group_size) {
        case 8: status = launch_g<T, 8>(a0, values, group_idx, row_ptr, scales, p0, rows, N, K, nnz, stream); break;
        case 16: status = launch_g<T, 16>(a0, values, group_idx, row_ptr, scales, p0, rows, N, K, nnz, stream); break;
        case 32: status = launch_g<T, 32>(a0, values, group_idx, row_ptr, scales, p0, rows, N, K, nnz, stream); break;
        default: status = launch_g<T, 64>(a0, values, group_idx, row_ptr, scales, p0, rows, N, K, nnz, stream); break;
      }
      SPA_CHECK(status);
    }
  }
  return launch_finalize<T>(partial, y, static_cast<long long>(M) * N, stream);
}

}  // namespace gqsa
}  // namespace spa

extern "C" size_t spa_w4_gqsa_workspace_size(int M, int N, int K) {
  (void)K;
  return sizeof(float) * static_cast<size_t>(M) * static_cast<size_t>(N);
}

extern "C" cudaError_t spa_w4_gqsa_gemm(const void* A, const uint32_t* values,
                                        const uint16_t* group_idx, const int32_t* row_ptr,
                                        const uint16_t* scales, void* Y, int M, int N, int K,
                                        int group_size, int nnz, SpaDtype dtype, void* workspace,
                                        size_t workspace_bytes, cudaStream_t stream) {
  SPA_REQUIRE(A && row_ptr && Y, "w4_gqsa: a data pointer is NULL");
  SPA_REQUIRE(nnz == 0 || (values && group_idx && scales), "w4_gqsa: a data pointer is NULL");
  SPA_REQUIRE(M >= 1 && N >= 1 && K >= 1 && nnz >= 0, "w4_gqsa: M, N, K must be >= 1");
  SPA_REQUIRE(group_size == 8 || group_size == 16 || group_size == 32 || group_size == 64,
              "w4_gqsa: group_size must be 8, 16, 32 or 64");
  SPA_REQUIRE(K % group_size == 0, "w4_gqsa: K must be a multiple of group_size");
  SPA_REQUIRE(K / group_size <= 65536, "w4_gqsa: K / group_size must be <= 65536 (uint16 group index)");
  SPA_REQUIRE(dtype == SPA_FP16 || dtype == SPA_BF16, "w4_gqsa: dtype must be SPA_FP16 or SPA_BF16");
  if (workspace == nullptr || workspace_bytes < spa_w4_gqsa_workspace_size(M, N, K)) {
    spa::set_error("w4_gqsa: workspace smaller than spa_w4_gqsa_workspace_size()");
    return cudaErrorInvalidConfiguration;
  }
  float* partial = static_cast<float*>(workspace);
  if (dtype == SPA_FP16)
    return spa::gqsa::run<__half>(A, values, group_idx, row_ptr, scales, Y, M, N, K, group_size,
                                  nnz, partial, stream);
  return spa::gqsa::run<__nv_bfloat16>(A, values, group_idx, row_ptr, scales, Y, M, N, K,
                                       group_size, nnz, partial, stream);
}
