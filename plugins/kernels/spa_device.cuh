// Device helpers shared by the spa kernels: cp.async with L2 cache hints,
// INT4 -> 16-bit dequantisation, mma.sync / mma.sp wrappers, error plumbing.
// Internal to plugins/kernels (not part of the C API in spa_kernels.h).
#pragma once

#ifdef SPA_EMULATE  // host emulation for CPU tests (plugins/emu/README.md)
#include "../emu/spa_emu.h"
#endif

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include <algorithm>
#include <cstdlib>
#include <type_traits>

#include "spa_kernels.h"

namespace spa {

// ---- error plumbing --------------------------------------------------------
// The last validation failure on this host thread, returned by
// spa_kernel_error_string(); defined in w4a16.cu.
void set_error(const char* message);

#define SPA_REQUIRE(condition, message)          \
  do {                                           \
    if (!(condition)) {                          \
      ::spa::set_error(message);                 \
      return cudaErrorInvalidValue;              \
    }                                            \
  } while (0)

#define SPA_CHECK(expression)                    \
  do {                                           \
    cudaError_t spa_status_ = (expression);      \
    if (spa_status_ != cudaSuccess) return spa_status_; \
  } while (0)

// ---- launches and dynamic shared memory -------------------------------------
// SPA_LAUNCH(grid, block, smem, stream, kernel)(args...) is kernel<<<...>>>(args...);
// under SPA_EMULATE it runs the kernel on the host instead (plugins/emu/spa_emu.h).
#ifdef SPA_EMULATE
#define SPA_LAUNCH(grid, block, smem, stream, ...) ::spa_emu::launch(grid, block, smem, stream, __VA_ARGS__)
#define SPA_DYNAMIC_SMEM(name) \
  unsigned char* name = static_cast<unsigned char*>(::spa_emu::dynamic_smem())
#else
#define SPA_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#define SPA_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

// ---- 16-bit element traits -------------------------------------------------
template <typename T> struct Elem;
template <> struct Elem<__half> {
  using pair = __half2;
  // (x & 0x000f000f) | kMagic gives two values 1024 + nibble (exact in fp16);
  // subtracting kBias = 1024 + 8 leaves the signed value nibble - 8, exactly.
  static constexpr uint32_t kMagic = 0x64006400u;
  static constexpr uint32_t kBias = 0x64086408u;  // half2(1032, 1032)
  static __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half from_float(float v) { return __float2half_rn(v); }
  static __device__ __forceinline__ __half2 sub(uint32_t a, uint32_t b) {
    __half2 x = *reinterpret_cast<__half2*>(&a);
    __half2 y = *reinterpret_cast<__half2*>(&b);
    return __hsub2(x, y);
  }
};
template <> struct Elem<__nv_bfloat16> {
  using pair = __nv_bfloat162;
  // Same trick in bf16: 0x4300 is 128.0 and 128 + nibble is exact (spacing 1).
  static constexpr uint32_t kMagic = 0x43004300u;
  static constexpr uint32_t kBias = 0x43084308u;  // bf162(136, 136)
  static __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
  static __device__ __forceinline__ __nv_bfloat162 sub(uint32_t a, uint32_t b) {
    __nv_bfloat162 x = *reinterpret_cast<__nv_bfloat162*>(&a);
    __nv_bfloat162 y = *reinterpret_cast<__nv_bfloat162*>(&b);
    return __hsub2(x, y);
  }
};

// A 32-bit word holds 8 INT4 values v0..v7 in "dequant order": nibble p holds
// v[2p] for p < 4 and v[2(p-4)+1] for p >= 4, so (word >> 4j) & 0x000f000f puts
// the pair (v[2j], v[2j+1]) in the low nibble of each 16-bit half. One AND, one
// OR and one SUB per pair; no int->float conversion instructions.
template <typename T>
__device__ __forceinline__ void dequant8(uint32_t word, uint32_t (&out)[4]) {
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    uint32_t bits = ((word >> (4 * j)) & 0x000f000fu) | Elem<T>::kMagic;
    auto pair = Elem<T>::sub(bits, Elem<T>::kBias);
    out[j] = *reinterpret_cast<uint32_t*>(&pair);
  }
}

#ifdef SPA_EMULATE
// The PTX below, emulated (plugins/emu/spa_emu.h states the fragment layouts).
inline uint64_t evict_first_policy() { return 0; }
inline void cp_async16_evict_first(void* smem, const void* gmem, uint64_t) {
  spa_emu::cp_async16(smem, gmem, false);
}
// The zero-filling copies are the activation copies: never before the grid dependency wait.
inline void cp_async16_zfill(void* smem, const void* gmem, bool valid) {
  spa_emu::require_dependency("an activation copy (cp.async zero-fill)");
  spa_emu::cp_async16(smem, gmem, !valid);
}
// Predicated forms: nothing is issued when `pred` is false (a guarded
// instruction, no branch, on the GPU).
inline void cp_async16_evict_first_if(void* smem, const void* gmem, uint64_t, bool pred) {
  if (pred) spa_emu::cp_async16(smem, gmem, false);
}
inline void cp_async16_zfill_if(void* smem, const void* gmem, bool valid, bool pred) {
  spa_emu::require_dependency("an activation copy (cp.async zero-fill)");
  if (pred) spa_emu::cp_async16(smem, gmem, !valid);
}
inline void cp_async4_if(void* smem, const void* gmem, bool pred) {
  if (pred) spa_emu::cp_async(smem, gmem, 4, false);
}inline void cp_async_commit() { spa_emu::cp_async_commit(); }
template <int N>
void cp_async_wait() {
  spa_emu::cp_async_wait(N);
}
template <typename T>
void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  spa_emu::mma_m16n8k16<T>(d, a, b0, b1);
}
template <typename T>
void mma_sp_16832(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[4], uint32_t meta) {
  spa_emu::mma_sp_m16n8k32<T>(d, a, b, meta);
}
#else
// ---- cp.async --------------------------------------------------------------
// Weights are read exactly once per launch: stream them with an L2 evict-first
// policy so they do not push the (reused) activations and scales out of L2.
__device__ __forceinline__ uint64_t evict_first_policy() {
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
  return policy;
}

__device__ __forceinline__ void cp_async16_evict_first(void* smem, const void* gmem,
                                                       uint64_t policy) {
  uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;\n" ::"r"(dst),
               "l"(gmem), "l"(policy));
}

// Zero-fills the 16 bytes when `valid` is false (rows of A past M).
__device__ __forceinline__ void cp_async16_zfill(void* smem, const void* gmem, bool valid) {
  uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem),
               "r"(src_bytes));
}

// Predicated forms: nothing is issued when `pred` is false (a guarded
// instruction, no branch).
__device__ __forceinline__ void cp_async16_evict_first_if(void* smem, const void* gmem, uint64_t policy,
                                                          bool pred) {
  uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %0, 0;\n"
      " @p cp.async.cg.shared.global.L2::cache_hint [%1], [%2], 16, %3;\n}\n" ::"r"(static_cast<int>(pred)),
      "r"(dst), "l"(gmem), "l"(policy));
}

__device__ __forceinline__ void cp_async16_zfill_if(void* smem, const void* gmem, bool valid, bool pred) {
  uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  int src_bytes = valid ? 16 : 0;
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %0, 0;\n"
      " @p cp.async.cg.shared.global [%1], [%2], 16, %3;\n}\n" ::"r"(static_cast<int>(pred)),
      "r"(dst), "l"(gmem), "r"(src_bytes));
}

// 4 B (a word of w4_gqsa_tile's positions) through L1 (cp.async.cg takes 16 B only).
__device__ __forceinline__ void cp_async4_if(void* smem, const void* gmem, bool pred) {
  uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %0, 0;\n"
      " @p cp.async.ca.shared.global [%1], [%2], 4;\n}\n" ::"r"(static_cast<int>(pred)),
      "r"(dst), "l"(gmem));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// ---- tensor-core mma -------------------------------------------------------
// D(16x8, f32) += A(16x16) * B(16x8). A is the weight tile W^T (rows = output
// columns n, cols = k), B the activations (k x tokens): small M fills the n8
// side, wasting at most 7 of 8 token slots instead of 15 of 16.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                          uint32_t b1);
template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4],
                                                  uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4],
                                                         uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Sparse D(16x8) += A(16x32, 2:4 along k, 16 kept) * B(32x8) (ordered
// metadata: the two indices of each chunk ascending, as PTX 8.5+ advises); `meta` is the
// metadata word of this lane, sparsity selector 0 (lanes 4g and 4g+1 of each
// quad supply metadata; README "w4_sp24" documents the word layout).
template <typename T>
__device__ __forceinline__ void mma_sp_16832(float (&d)[4], const uint32_t (&a)[4],
                                             const uint32_t (&b)[4], uint32_t meta);
template <>
__device__ __forceinline__ void mma_sp_16832<__half>(float (&d)[4], const uint32_t (&a)[4],
                                                     const uint32_t (&b)[4], uint32_t meta) {
  asm volatile(
      "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, 0x0;\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]),
        "r"(meta));
}
template <>
__device__ __forceinline__ void mma_sp_16832<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4],
                                                            const uint32_t (&b)[4],
                                                            uint32_t meta) {
  asm volatile(
      "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, 0x0;\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]),
        "r"(meta));
}

#endif  // SPA_EMULATE

// ---- programmatic dependent launch (PDL) -------------------------------------
// On sm_90 and later the launchers let each kernel start while the kernel
// before it on the stream is still running (launch_kernel below). A kernel
// then works in two parts: before grid_dependency_wait() it may read only
// what no kernel writes (weights, scales, metadata, indices) and compute
// addresses, so its launch, its first weight stages and the fill of its
// pipeline overlap the tail of the kernel before; from the wait on (which
// returns once every kernel it depends on has completed and its writes are
// visible) it reads activations and writes outputs, slabs and counters.
// allow_dependent_launch() lets the kernel after it start the same way once
// every CTA of this one has started (or exited). Without the launch
// attribute, or before sm_90, both do nothing. The emulation checks the
// first part's rule (expect_dependency_resolved at every activation copy and
// output store).
#ifdef SPA_EMULATE
inline void allow_dependent_launch() {}
inline void grid_dependency_wait() { spa_emu::griddepcontrol_wait(); }
inline void expect_dependency_resolved(const char* what) { spa_emu::require_dependency(what); }
#else
__device__ __forceinline__ void allow_dependent_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void grid_dependency_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void expect_dependency_resolved(const char*) {}
#endif

// ---- shared by w4a16 and w4_sp24 (W^T tiles as the mma A operand) ------------
// dequant8 with fewer instructions (specialised below for FP16 and BF16).
template <typename T>
__device__ __forceinline__ void dequant8_fast(uint32_t word, uint32_t (&out)[4]);
// (x & mask) | magic in one LOP3 (the compiler emits an AND and an OR when
// both constants are immediates).
template <uint32_t kMask, uint32_t kMagic>
__device__ __forceinline__ uint32_t and_or(uint32_t x) {
#ifdef SPA_EMULATE
  return (x & kMask) | kMagic;
#else
  uint32_t out;
  asm("lop3.b32 %0, %1, %2, %3, 0xea;\n" : "=r"(out) : "r"(x), "n"(kMask), "n"(kMagic));
  return out;
#endif
}

template <>
__device__ __forceinline__ void dequant8_fast<__nv_bfloat16>(uint32_t word, uint32_t (&out)[4]) {
  // BF16: one shift, one LOP3 and one subtraction per pair.
  uint32_t bits[4] = {and_or<0x000f000fu, 0x43004300u>(word), and_or<0x000f000fu, 0x43004300u>(word >> 4),
                      and_or<0x000f000fu, 0x43004300u>(word >> 8), and_or<0x000f000fu, 0x43004300u>(word >> 12)};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    auto pair = Elem<__nv_bfloat16>::sub(bits[j], Elem<__nv_bfloat16>::kBias);
    out[j] = *reinterpret_cast<uint32_t*>(&pair);
  }
}

// FP16: two pairs per shift with the 0x00f000f0 mask (Marlin's trick): the
// second pair comes out as 1024 + 16 v and one HFMA2 (x / 16 - 72) gives
// v - 8, exactly. (In BF16, 16 v does not fit the 7-bit mantissa.)
template <>
__device__ __forceinline__ void dequant8_fast<__half>(uint32_t word, uint32_t (&out)[4]) {
  const uint32_t hi = word >> 8;
  uint32_t lo0 = and_or<0x000f000fu, 0x64006400u>(word), lo1 = and_or<0x00f000f0u, 0x64006400u>(word);
  uint32_t hi0 = and_or<0x000f000fu, 0x64006400u>(hi), hi1 = and_or<0x00f000f0u, 0x64006400u>(hi);
  uint32_t bias = 0x64086408u, sixteenth = 0x2c002c00u, minus72 = 0xd480d480u;  // 1032, 1/16, -72
  auto h2 = [](uint32_t& bits) -> __half2& { return *reinterpret_cast<__half2*>(&bits); };
  __half2 r0 = __hsub2(h2(lo0), h2(bias)), r1 = __hfma2(h2(lo1), h2(sixteenth), h2(minus72));
  __half2 r2 = __hsub2(h2(hi0), h2(bias)), r3 = __hfma2(h2(hi1), h2(sixteenth), h2(minus72));
  out[0] = *reinterpret_cast<uint32_t*>(&r0);
  out[1] = *reinterpret_cast<uint32_t*>(&r1);
  out[2] = *reinterpret_cast<uint32_t*>(&r2);
  out[3] = *reinterpret_cast<uint32_t*>(&r3);
}

// 16-B shared-memory load at a 32-bit address (the shared window's own
// address on the GPU, the byte offset from the dynamic shared memory under
// the emulation). Loop-invariant addresses are made opaque (`pin`), so that
// the compiler keeps them in registers instead of recomputing them from the
// thread index in every pass of the loop.
#ifdef SPA_EMULATE
inline uint32_t smem_address(const void* base, const void* p) {
  return static_cast<uint32_t>(static_cast<const unsigned char*>(p) - static_cast<const unsigned char*>(base));
}
inline void pin(uint32_t&) {}
inline uint4 lds128(const void* base, uint32_t address) {
  return *reinterpret_cast<const uint4*>(static_cast<const unsigned char*>(base) + address);
}
inline uint2 lds64(const void* base, uint32_t address) {
  return *reinterpret_cast<const uint2*>(static_cast<const unsigned char*>(base) + address);
}
inline uint32_t lds32(const void* base, uint32_t address) {
  return *reinterpret_cast<const uint32_t*>(static_cast<const unsigned char*>(base) + address);
}
#else
__device__ __forceinline__ uint32_t smem_address(const void*, const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void pin(uint32_t& value) { asm volatile("" : "+r"(value)); }
__device__ __forceinline__ uint4 lds128(const void*, uint32_t address) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(address));
  return v;
}
__device__ __forceinline__ uint2 lds64(const void*, uint32_t address) {
  uint2 v;
  asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];\n" : "=r"(v.x), "=r"(v.y) : "r"(address));
  return v;
}
__device__ __forceinline__ uint32_t lds32(const void*, uint32_t address) {
  uint32_t v;
  asm volatile("ld.shared.u32 %0, [%1];\n" : "=r"(v) : "r"(address));
  return v;
}
#endif

// ldmatrix.x4: four 8x8 matrices of 16-bit values; lanes 8i..8i+7 give the
// shared addresses (16-B aligned) of the 8 rows of matrix i, and lane l gets
// in r[i] the 32 bits at bytes 4 (l % 4) of row l / 4 of matrix i. Any 32-bit
// data moves this way: a row is 16 B, the lanes' words come from 8 rows.
#ifdef SPA_EMULATE
inline void ldmatrix_x4(uint32_t (&r)[4], const void* base, uint32_t address) {
  spa_emu::ldmatrix_x4(r, static_cast<const unsigned char*>(base), address);
}
#else
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void*, uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}
#endif

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
// Column blocks of the 8-warp kernels (8 tiles of 16 columns each): one
// arrival counter each.
__host__ __device__ inline int split_column_blocks(int N) { return (N / 16 + 7) / 8; }

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

// The workspace of an in-kernel split: `counters` ints (256-B padded), then
// `splits` FP32 slabs of rows x N.
inline size_t split_counter_bytes(int counters) {
  return (sizeof(int) * static_cast<size_t>(counters) + 255) / 256 * 256;
}
inline size_t split_workspace_bytes(int counters, int splits, int rows, int N) {
  return split_counter_bytes(counters) + sizeof(float) * static_cast<size_t>(splits) * rows * N;
}

inline int sm_count() {
  int device = 0, count = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 108;
  if (cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess)
    return 108;
  return count;
}

// Row halves: above 32 rows a column block's rows can go to two CTAs (rows
// 0-31 and 32-63 of the launch, each at MT = 4) instead of one at MT = 8:
// twice the CTAs, so half the K splits fill the same wave (half the slab
// traffic, and the last CTA of each half sums a quarter of the slabs one
// 64-row CTA summed), at MT = 4's cheaper loop (no rematerialised addresses
// at the 128-register cap: 175.0 against 322.7 static instructions per KB,
// split, FP16). The two halves of a block are neighbours in blockIdx.x, so
// they stream the same weights at the same time and the second read is
// served by L2. Only where the halved grid still fits in one wave unsplit
// (column blocks <= SMs, 2 CTAs per SM): at N = 28672 (224 blocks) the
// halves would take a second wave, and one CTA of 64 rows stays.
// SPA_ROW_HALVES=1 or 2 in the environment forces one or two CTAs per block
// above 32 rows (the GPU harness times both: row_halves.json); unset, the rule.
inline int row_halves(int M, int n_tiles, int sms) {
  if (M <= 32) return 1;
  const char* forced = std::getenv("SPA_ROW_HALVES");
  if (forced != nullptr && (forced[0] == '1' || forced[0] == '2') && forced[1] == '\0') return forced[0] - '0';
  return (n_tiles + 7) / 8 <= sms ? 2 : 1;
}

// How a launcher divides K at this size (forced values, from the _ex launchers, win).
// The table comes from the H200 sweep (plugins/bench/split_sweep.json,
// diagnosis.md §2.6, Table L1): in-block slices never won by more than 0.4 %
// and lost up to 2.3x (each slice stages its own activation copy: more shared
// memory, fewer blocks per SM, more instructions), while splits across blocks
// won even with their memset and finalize launch, because each warp's 128-k
// group costs a fixed ~0.74 us of latency: more resident warps with fewer
// groups each. So: slices = 1 unless forced, and
//   M <= 8:     splits = min(8, K / 512)                (8 on every swept shape)
//   M = 9..16:  splits = pow2floor(27.2 x SMs / (N/16)) in [1, 8]
//               (N = 4096/5120 -> 8; 8192..13824 -> 4; 28672 -> 2 on 132 SMs)
//   M > 16:     splits = floor(2 x SMs / ceil(N/128)) in [1, 8] (not swept yet:
//               one wave of the 8-warp CTAs; the rule written for 4-warp
//               blocks, ceil(4 x SMs / (N/16)), left half the SMs idle)
// each split keeping >= 4 groups so the pipeline stays primed; one split
// without a workspace. Those rules were swept for the 4-warp kernels. For the
// 8-warp kernels at M <= 16 the launchers pass their resident CTAs per SM
// (ctas_per_sm, from the occupancy API) and wave_splits chooses instead: the
// table's 8 splits gave 4096x11008 two waves of CTAs (688 on 3 x 132 slots)
// where 4 fit in one. plugins/bench/model.py mirrors this function.
struct SplitPlan {
  int slices, splits, groups_per_split;
};

// The K splits (1..8, >= 4 groups each) whose 8-warp CTAs (8 tiles each) fill
// whole waves best: least ceil(CTAs x splits / resident slots) x groups per
// split (the serial work of the slowest CTA), fewer splits on a tie (less
// slab traffic). Not used above M = 16, where each split's slab (4 B per
// output) weighs as much as the weights it saves streaming twice.
inline int wave_splits(int n_tiles, int n_groups, int ctas_per_sm, int sms) {
  const long long slots = static_cast<long long>(ctas_per_sm) * sms, ctas = (n_tiles + 7) / 8;
  int best = 1;
  long long best_cost = -1;
  for (int wanted = 1; wanted <= std::max(1, std::min(8, n_groups / 4)); ++wanted) {
    const int gps = (n_groups + wanted - 1) / wanted, splits = (n_groups + gps - 1) / gps;
    const long long cost = (ctas * splits + slots - 1) / slots * gps;
    if (best_cost < 0 || cost < best_cost) {
      best = splits;
      best_cost = cost;
    }
  }
  return best;
}

inline SplitPlan plan_split(int M, int n_tiles, int n_groups, int slices_wanted, int split_k, bool has_workspace,
                            int ctas_per_sm = 0) {
  const int sms = sm_count();
  const int slices = M <= 16 && slices_wanted > 0 ? slices_wanted : 1;
  int splits = split_k;
  if (splits <= 0 && ctas_per_sm > 0 && M <= 16) {
    splits = has_workspace ? wave_splits(n_tiles, n_groups, ctas_per_sm, sms) : 1;
  } else if (splits <= 0) {
    if (M <= 8) {
      splits = std::min(8, n_groups / 4);
    } else if (M <= 16) {
      const int wanted = std::min(8, 272 * sms / 10 / n_tiles);
      splits = 1;
      while (splits * 2 <= wanted) splits *= 2;
    } else {
      // Not swept: one full wave of 8-warp CTAs (8 tiles each, twice as many
      // where the rows are halved: row_halves) at the 2 CTAs per SM their
      // launch bounds guarantee from MT = 4 on.
      splits = std::min(8, 2 * sms / ((n_tiles + 7) / 8 * row_halves(M, n_tiles, sms)));
    }
    splits = std::max(1, std::min(splits, n_groups / 4));
    if (!has_workspace) splits = 1;
  }
  splits = std::max(1, std::min(splits, n_groups));
  const int gps = (n_groups + splits - 1) / splits;
  return SplitPlan{slices, (n_groups + gps - 1) / gps, gps};
}

// w4_gqsa's rows per pass: 8, halved while the pass's activations (rows x K,
// gathered through L1 by every column) exceed 100000 elements (200 KB in
// FP16 or BF16, L1 holds 256 KB). The 2026-12-04 H200 run (results.json,
// g = 16): at K = 28672 one pass of 8 rows took 996 us, of 4 rows 464, of 2
// rows 187 (four passes of 2: 749); at K = 13824 one of 8 took 204, of 4 88
// (two: 177); at K <= 11008 8 rows were best or level. This rule picks 2, 4
// and 8 there.
inline int gqsa_pass_rows(int K) {
  int rows = 8;
  while (rows > 1 && static_cast<long long>(rows) * K > 100000) rows /= 2;
  return rows;
}

// Programmatic dependent launch (the kernels' side: "programmatic dependent
// launch" above): on where the device has it (compute capability 9.0 and
// later); SPA_PDL=0 in the environment launches without it (the GPU harness
// times both: pdl.json). The attribute is safe after any kernel: one that
// never calls griddepcontrol.launch_dependents triggers as its CTAs exit, and
// ours wait for its completion before touching what it may write.
inline bool pdl_enabled() {
  const char* forced = std::getenv("SPA_PDL");
  if (forced != nullptr && forced[0] == '0' && forced[1] == '\0') return false;
  int device = 0, major = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess)
    return false;
  return major >= 9;
}

// kernel<<<grid, block, smem, stream>>>(args...), with programmatic stream
// serialization where pdl_enabled(); returns the launch's error.
template <typename... Params, typename... Args>
inline cudaError_t launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                                 Args... args) {
#ifdef SPA_EMULATE
  SPA_LAUNCH(grid, block, smem, stream, kernel)(args...);
  return cudaGetLastError();
#else
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = attribute;
  config.numAttrs = pdl_enabled() ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, static_cast<Params>(args)...);
#endif
}



// The 8-warp kernels' CTAs for a launch of M rows and N columns: calls
// f(std::integral_constant<int, MT>{}, chunks), `chunks` CTAs per column
// block (row_share) of MT = 1, 2, 4, 8 8-token tiles each: for up to 8, 16,
// 32, 64 rows one CTA (33-64 rows: two of 32 where row_halves says so), and
// above 64 rows ceil(M / 64) CTAs of 64.
template <typename F>
inline auto with_row_tiles(int M, int N, F&& f) -> decltype(f(std::integral_constant<int, 1>{}, 1)) {
  if (M > SPA_MAX_M_PER_LAUNCH) return f(std::integral_constant<int, 8>{}, (M + 63) / 64);
  const int halves = row_halves(M, N / 16, sm_count());
  M = (M + halves - 1) / halves;
  if (M <= 8) return f(std::integral_constant<int, 1>{}, halves);
  if (M <= 16) return f(std::integral_constant<int, 2>{}, halves);
  if (M <= 32) return f(std::integral_constant<int, 4>{}, halves);
  return f(std::integral_constant<int, 8>{}, halves);
}

// The arrival counters of an in-kernel split: one per CTA of a split, that
// is per column block and row half (row_halves: at most 2).
inline int split_counter_count(int N) { return 2 * split_column_blocks(N); }

// Launches an 8-warp kernel over split_column_blocks(N) x chunks x splits
// CTAs (blockIdx.x: a column block and a chunk of rows, in row_share's
// order; blockIdx.y the split) with `bytes` of dynamic shared memory: its
// split-K instantiation (reduced in the kernel) when splits > 1, else the
// plain one.
template <typename... Params, typename... Args>
inline cudaError_t launch_column_blocks(void (*plain)(Params...), void (*split)(Params...), int bytes, int N,
                                        int chunks, int splits, cudaStream_t stream, Args... args) {
  auto kernel = splits > 1 ? split : plain;
  SPA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  dim3 grid(split_column_blocks(N) * chunks, splits);
  return launch_kernel(kernel, grid, 256, bytes, stream, args...);
}

// CTAs of `kernel` (256 threads, `bytes` of dynamic shared memory) resident
// per SM, as the occupancy API counts them (registers included); 0 when it
// cannot say, which leaves the launch table's swept rules in charge.
template <typename... Params>
inline int resident_ctas(void (*kernel)(Params...), int bytes) {
  int ctas = 0;
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) != cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&ctas, kernel, 256, bytes) != cudaSuccess)
    return 0;
  return ctas;
}

// The workspace of an 8-warp kernel: room for the launch table's splits and
// for at least 8 (the split_k an _ex launcher may force; more than fit are
// reduced to what fits).
inline size_t split_workspace_size(int M, int N, int K) {
  const SplitPlan plan = plan_split(M, N / 16, K / SPA_W4_GROUP, 0, 0, true);
  return split_workspace_bytes(split_counter_count(N), std::max(plan.splits, 8), std::min(M, SPA_MAX_M_PER_LAUNCH), N);
}

// Whether `workspace_bytes` hold one split's slab (else the launcher runs unsplit).
inline bool split_workspace_usable(const void* workspace, size_t workspace_bytes, int M, int N) {
  return workspace != nullptr &&
         workspace_bytes >= split_workspace_bytes(split_counter_count(N), 2, std::min(M, SPA_MAX_M_PER_LAUNCH), N);
}

// Runs an 8-warp kernel. Above 64 rows, where its 64-row chunks make at
// least half a wave of CTAs (column blocks x chunks x 2 >= resident slots):
// one unsplit launch of every row (with_row_tiles, row_share), which reads
// each weight from HBM about once per resident wave and pays the launch
// once. Otherwise (up to 64 rows, or a few column blocks) 64 rows per
// launch, one after the other on the stream, K split by the launch table to
// fill the GPU (fewer splits where the workspace holds fewer slabs than a
// forced split_k asks); the arrival counters are zeroed once where the
// caller does not keep them, each launch reuses the slabs, and the last CTAs
// leave the counters at 0.
// `kept_counters` (spa_split_counters_size, zeroed by the caller before its
// first use and left at 0 by every completed launch) replaces the workspace's
// counters and their memset: one launch per call instead of two.
// launch(m0, rows, slabs, counters, splits, groups_per_split) issues one;
// ctas_per_sm: the split instantiation's resident CTAs (resident_ctas; 0 if unknown).
template <typename Launch>
inline cudaError_t run_split(int M, int N, int K, void* workspace, size_t workspace_bytes, int split_k,
                             int* kept_counters, int ctas_per_sm, cudaStream_t stream, Launch&& launch) {
  if (M > SPA_MAX_M_PER_LAUNCH &&  // (the SM count is asked only above 64 rows)
      2LL * split_column_blocks(N) * ((M + SPA_MAX_M_PER_LAUNCH - 1) / SPA_MAX_M_PER_LAUNCH) >=
          static_cast<long long>(ctas_per_sm > 0 ? ctas_per_sm : 2) * sm_count())
    return launch(0, M, nullptr, nullptr, 1, K / SPA_W4_GROUP);
  if (!split_workspace_usable(workspace, workspace_bytes, M, N)) {  // no room for one split's slab: unsplit
    workspace = nullptr;
    workspace_bytes = 0;
    if (split_k > 1) split_k = 1;
  }
  const SplitPlan plan = plan_split(M, N / 16, K / SPA_W4_GROUP, 0, split_k, workspace != nullptr, ctas_per_sm);
  int splits = plan.splits, gps = plan.groups_per_split;  // no in-block slices in these kernels
  const int n_counters = split_counter_count(N), rows = std::min(M, SPA_MAX_M_PER_LAUNCH);
  while (splits > 1 && split_workspace_bytes(n_counters, splits, rows, N) > workspace_bytes) {
    --splits;
    gps = (K / SPA_W4_GROUP + splits - 1) / splits;
    splits = (K / SPA_W4_GROUP + gps - 1) / gps;
  }
  int* counters = splits == 1 ? nullptr : kept_counters != nullptr ? kept_counters : static_cast<int*>(workspace);
  float* slabs =
      splits > 1 ? reinterpret_cast<float*>(static_cast<char*>(workspace) + split_counter_bytes(n_counters)) : nullptr;
  if (counters != nullptr && kept_counters == nullptr)
    SPA_CHECK(cudaMemsetAsync(counters, 0, sizeof(int) * n_counters, stream));
  for (int m0 = 0; m0 < M; m0 += SPA_MAX_M_PER_LAUNCH)
    SPA_CHECK(launch(m0, std::min(SPA_MAX_M_PER_LAUNCH, M - m0), slabs, counters, splits, gps));
  return cudaSuccess;
}

}  // namespace spa
