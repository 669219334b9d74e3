// Device helpers shared by the spa kernels: cp.async with L2 cache hints,
// INT4 -> 16-bit dequantisation, mma.sync / mma.sp wrappers, shared-memory
// loads and ldmatrix, programmatic dependent launch (the kernels' side), error
// plumbing. The 8-warp kernels' skeleton is in spa_tile.cuh, the launchers'
// host side in spa_launch.cuh. Internal to plugins/kernels (not part of the C
// API in spa_kernels.h).
#pragma once

#ifdef SPA_EMULATE  // host emulation for CPU tests (plugins/emu/README.md)
#include "../emu/spa_emu.h"
#endif

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

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

// ---- geometry shared by the kernels and their launchers ---------------------
// Column blocks of the 8-warp kernels (8 tiles of 16 columns each): one
// arrival counter each.
__host__ __device__ inline int split_column_blocks(int N) { return (N / 16 + 7) / 8; }

}  // namespace spa
