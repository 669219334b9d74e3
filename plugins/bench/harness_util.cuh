// Helpers for the benchmark harness: checked CUDA/cuBLAS calls, device
// buffers, deterministic random data, and device-side dequantizers of the
// three kernel layouts (FP32 dense W[K, N]) used as the correctness reference.
#pragma once
// Included by harness.cu only (one translation unit), so the kernels need no `inline`.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#define CHECK_CUDA(call)                                                                   \
  do {                                                                                     \
    cudaError_t status_ = (call);                                                          \
    if (status_ != cudaSuccess) {                                                          \
      std::fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorName(status_),      \
                   __FILE__, __LINE__, cudaGetErrorString(status_));                       \
      std::exit(2);                                                                        \
    }                                                                                      \
  } while (0)

template <typename T>
struct DeviceBuffer {
  T* ptr = nullptr;
  size_t count = 0;
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) : count(n) {
    CHECK_CUDA(cudaMalloc(&ptr, sizeof(T) * (n ? n : 1)));
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& other) noexcept : ptr(other.ptr), count(other.count) {
    other.ptr = nullptr;
  }
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
      if (ptr) cudaFree(ptr);
      ptr = other.ptr;
      count = other.count;
      other.ptr = nullptr;
    }
    return *this;
  }
  ~DeviceBuffer() {
    if (ptr) cudaFree(ptr);
  }
  size_t bytes() const { return sizeof(T) * count; }
  void upload(const std::vector<T>& host) {
    CHECK_CUDA(cudaMemcpy(ptr, host.data(), sizeof(T) * host.size(), cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    std::vector<T> host(count);
    CHECK_CUDA(cudaMemcpy(host.data(), ptr, bytes(), cudaMemcpyDeviceToHost));
    return host;
  }
};

__host__ __device__ inline uint32_t mix32(uint64_t x) {
  x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL; x ^= x >> 33;
  return static_cast<uint32_t>(x);
}

// Random words (packed INT4 values).
__global__ void fill_words(uint32_t* out, size_t count, uint64_t seed) {
  size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i < count) out[i] = mix32(seed * 0x9E3779B97F4A7C15ULL + i);
}

// Scales in [lo, hi) as fp16.
__global__ void fill_scales(__half* out, size_t count, uint64_t seed, float lo, float hi) {
  size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i < count) out[i] = __float2half(lo + (hi - lo) * (mix32(seed + i * 7919ULL) / 4294967296.0f));
}

// Activations uniform in [-1, 1) as T, also kept as FP32 for the reference.
template <typename T>
__global__ void fill_activations(T* out, float* out_f32, size_t count, uint64_t seed) {
  size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i >= count) return;
  float v = 2.0f * (mix32(seed * 31ULL + i) / 4294967296.0f) - 1.0f;
  T t = static_cast<T>(v);
  out[i] = t;
  out_f32[i] = static_cast<float>(t);
}

// mma.sp metadata: every nibble an ascending pair of positions in 0..3.
__global__ void fill_meta(uint32_t* out, size_t count, uint64_t seed) {
  const uint32_t pairs[6] = {0x4, 0x8, 0xC, 0x9, 0xD, 0xE};  // (0,1) (0,2) (0,3) (1,2) (1,3) (2,3)
  size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i >= count) return;
  uint32_t word = 0;
  for (int p = 0; p < 8; ++p) word |= pairs[mix32(seed + i * 8 + p) % 6] << (4 * p);
  out[i] = word;
}

// GQSA structure: `keep` groups per column, b_j = 2j + random bit (ascending).
__global__ void fill_gqsa_structure(int32_t* row_ptr, uint16_t* group_idx, int N, int keep,
                                           uint64_t seed) {
  int n = blockIdx.x * blockDim.x + threadIdx.x;
  if (n > N) return;
  row_ptr[n] = n * keep;
  if (n == N) return;
  for (int j = 0; j < keep; ++j)
    group_idx[static_cast<size_t>(n) * keep + j] = static_cast<uint16_t>(2 * j + (mix32(seed + n * 131ULL + j) & 1));
}

// Tile-shared GQSA positions: per (tile, 128-k slab), `keep` of the 8 groups
// (ascending), byte j = position of kept group j.
__global__ void fill_tile_positions(uint32_t* positions, size_t count, int keep, uint64_t seed) {
  size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i >= count) return;
  uint32_t word = 0;
  for (int p = 0, j = 0; p < 8 && j < keep; ++p)
    if (8 - p == keep - j || (mix32(seed + i * 8 + p) & 1)) word |= static_cast<uint32_t>(p) << (8 * j++);
  positions[i] = word;
}

// Nibble position of v[i] in a dequant-order word (plugins/README.md).
__host__ __device__ inline int nibble_shift(int i) { return (i & 1) ? 16 + 4 * (i >> 1) : 4 * (i >> 1); }

// Element (k, n) of W from the w4a16 layout (host and device: the CPU test
// plugins/bench/layout_check.cu runs the same code against spa's Python side).
__host__ __device__ inline float w4a16_element(const uint32_t* packed, const __half* scales, int K,
                                               int N, int k, int n) {
  // Word s of lane 4g + t in (tile, group) holds k = 32t + 4s + j of the group,
  // j = 2 * (mma column / 8) + mma column % 2 (plugins/README.md, "w4a16").
  int nt = n / 16, r = n % 16, group = k / 128, kk = k % 128;
  int t = kk / 32, s = kk % 32 / 4, j = kk % 4;
  int i = (j >> 1) * 4 + (r >= 8 ? 2 : 0) + (j & 1);
  int lane = 4 * (r % 8) + t;
  uint32_t word = packed[(static_cast<size_t>(nt) * (K / 128) + group) * 256 + lane * 8 + s];
  int q = static_cast<int>((word >> nibble_shift(i)) & 15u) - 8;
  return q * __half2float(scales[static_cast<size_t>(k / 128) * N + n]);
}

__host__ __device__ inline float w4_sp24_element(const uint32_t* values, const uint32_t* meta,
                                                 const __half* scales, int K, int N, int k, int n) {
  int nt = n / 16, r = n % 16, kt = k / 32, c = k % 32;
  int chunk = c / 4, pos = c % 4;
  size_t tile = static_cast<size_t>(nt) * (K / 32) + kt;
  int slot = 2 * (r % 8) + chunk / 4;
  int shift = 4 * (chunk % 4) + (r >= 8 ? 16 : 0);
  uint32_t nib = (meta[tile * 16 + slot] >> shift) & 15u;
  int which = pos == static_cast<int>(nib & 3u) ? 0 : (pos == static_cast<int>(nib >> 2) ? 1 : -1);
  if (which < 0) return 0.f;
  int part = (chunk >= 4 ? 2 : 0) + (r >= 8 ? 1 : 0);
  int lane = 4 * (r % 8) + chunk % 4;
  uint32_t word = values[tile * 32 + lane];
  int q = static_cast<int>((word >> nibble_shift(2 * part + which)) & 15u) - 8;
  return q * __half2float(scales[static_cast<size_t>(k / 128) * N + n]);
}

// Slabs of 128 k per tile in the w4_gqsa_tile layout: K/128 padded to whole 256-k stages.
__host__ __device__ inline int tile_slabs(int K) { return 2 * ((K + 255) / 256); }

// Element (k, n) of W from the w4_gqsa_tile layout (plugins/README.md,
// "w4_gqsa_tile"): kept group j of the slab at position p = byte j of the
// positions word; inside the group, k offset kk is mma column c with
// kk = 4 (c % 8 / 2) + 2 (c / 8) + c % 2.
__host__ __device__ inline float w4_gqsa_tile_element(const uint32_t* values, const uint32_t* positions,
                                                      const __half* scales, int K, int keep, int k, int n) {
  int nt = n / 16, r = n % 16, slab = k / 128, p = k % 128 / 16, kk = k % 16;
  size_t record = static_cast<size_t>(nt) * tile_slabs(K) + slab;
  int j = -1;
  for (int i = 0; i < keep; ++i)
    if (static_cast<int>((positions[record] >> (8 * i)) & 0xffu) == p) j = i;
  if (j < 0) return 0.f;
  int c = (kk % 4 / 2) * 8 + (kk / 4) * 2 + kk % 2;  // the mma column holding k offset kk
  int lane = 4 * (r % 8) + (c % 8) / 2;
  int i = 4 * (c / 8) + 2 * (r / 8) + c % 2;  // value index in the lane's word (a0..a3 pairs)
  uint32_t word = values[record * keep * 32 + lane * keep + j];
  int q = static_cast<int>((word >> nibble_shift(i)) & 15u) - 8;
  return q * __half2float(scales[(record * 8 + r % 8) * keep * 2 + j * 2 + r / 8]);
}

// Writes the g values of GQSA entry e (column `row`) into the zeroed dense W.
__host__ __device__ inline void w4_gqsa_entry(const uint32_t* values, const uint16_t* group_idx,
                                              const __half* scales, float* w, int N, int g, int e,
                                              int row) {
  int b = group_idx[e];
  float s = __half2float(scales[e]);
  for (int j = 0; j < g; ++j) {
    uint32_t word = values[static_cast<size_t>(e) * (g / 8) + j / 8];
    int q = static_cast<int>((word >> nibble_shift(j % 8)) & 15u) - 8;
    w[static_cast<size_t>(b * g + j) * N + row] = q * s;
  }
}

#ifdef __CUDACC__
__global__ void dequant_w4a16(const uint32_t* packed, const __half* scales, float* w, int K, int N) {
  size_t idx = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (idx >= static_cast<size_t>(K) * N) return;
  w[idx] = w4a16_element(packed, scales, K, N, static_cast<int>(idx / N), static_cast<int>(idx % N));
}

__global__ void dequant_w4_sp24(const uint32_t* values, const uint32_t* meta, const __half* scales,
                                float* w, int K, int N) {
  size_t idx = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (idx >= static_cast<size_t>(K) * N) return;
  w[idx] = w4_sp24_element(values, meta, scales, K, N, static_cast<int>(idx / N), static_cast<int>(idx % N));
}

__global__ void dequant_w4_gqsa_tile(const uint32_t* values, const uint32_t* positions, const __half* scales,
                                     float* w, int K, int N, int keep) {
  size_t idx = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (idx >= static_cast<size_t>(K) * N) return;
  w[idx] = w4_gqsa_tile_element(values, positions, scales, K, keep, static_cast<int>(idx / N),
                                static_cast<int>(idx % N));
}

// One thread per entry; W must be zeroed first.
__global__ void dequant_w4_gqsa(const uint32_t* values, const uint16_t* group_idx, const int32_t* row_ptr,
                                const __half* scales, float* w, int K, int N, int g, int nnz) {
  int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= nnz) return;
  int lo = 0, hi = N - 1;
  while (lo < hi) { int mid = (lo + hi + 1) / 2; if (row_ptr[mid] <= e) lo = mid; else hi = mid - 1; }
  w4_gqsa_entry(values, group_idx, scales, w, N, g, e, lo);
}
#endif

inline unsigned blocks_for(size_t count, int threads = 256) {
  return static_cast<unsigned>((count + threads - 1) / threads);
}
