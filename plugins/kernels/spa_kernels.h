/* spa plugin kernels: launcher prototypes, dtypes and error codes.
 *
 * Pure C interface (no TensorRT types) shared by the TensorRT wrappers in
 * plugins/trt/ and the benchmark harness in plugins/bench/. Every launcher
 * validates its arguments, launches on `stream`, checks the launch and returns
 * the first cudaError_t it met (cudaSuccess when the work was queued).
 *
 * Common conventions (see plugins/README.md for the packed layouts, which
 * spa/trt/repack.py writes and tests against a NumPy reference):
 *   Y[M, N] = A[M, K] @ W[K, N], A and Y row-major in `dtype`,
 *   W given in a kernel-specific packed INT4 layout with FP16 scales.
 *   `workspace` is device memory of at least *_workspace_size() bytes, any
 *   contents (w4a16, w4_sp24: arrival counters, zeroed by the launcher, and
 *   one FP32 slab of partial sums per split). w4a16 and w4_sp24 run without
 *   splitting K across blocks when it is NULL or too small; w4_gqsa needs
 *   none (size 0).
 *   A and Y must be 16-byte aligned (cudaMalloc'd buffers are).
 *   Kept counters (w4a16, w4_sp24 `_ex`): a launch split across blocks
 *   counts each 128-column block's arriving CTAs in an int. By default the
 *   counters live in the workspace and the launcher zeroes them with a
 *   memset per call (a second launch, one more node in a CUDA graph). A
 *   caller that keeps device memory of spa_split_counters_size(N) bytes,
 *   zeroed once before its first call, passes it as `counters`: every
 *   completed call leaves it at 0, so no memset is issued. Calls sharing one
 *   counters buffer must not overlap (one stream, or ordered by events); after
 *   a failed launch zero it again. NULL: the workspace's counters.
 *   Programmatic dependent launch: on devices of compute capability 9.0 and
 *   later every kernel is launched with programmatic stream serialization.
 *   It may start while the kernel before it on the stream is still running,
 *   reads only its weights (and their scales, metadata, indices) until that
 *   kernel has completed and its writes are visible (griddepcontrol.wait),
 *   and lets the kernel after it start the same way. This is safe after any
 *   kernel, PDL-aware or not, and needs nothing from the caller; calls on
 *   one stream still complete in order (so kept counters are safe as
 *   above). Weights must not be written by a kernel still running on the
 *   stream. SPA_PDL=0 in the environment launches without it.
 */
#ifndef SPA_KERNELS_H
#define SPA_KERNELS_H

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Activation / output element type. */
typedef enum SpaDtype { SPA_FP16 = 0, SPA_BF16 = 1 } SpaDtype;

/* Error codes: the launchers return cudaError_t. Argument problems map to
 * these CUDA codes so callers need only one error path:
 *   cudaErrorInvalidValue         a shape is not supported (see the launcher's
 *                                 requirements) or a pointer is NULL
 *   anything else                 the CUDA runtime's own error (launch, memset)
 * spa_kernel_error_string() names the problem of the last failed validation on
 * the calling host thread (a static string, never NULL). */
const char* spa_kernel_error_string(void);

/* Group size of the W4A16 and W4+2:4 scales along K. */
#define SPA_W4_GROUP 128
/* Most activation rows one CTA of w4a16, w4_sp24 and w4_gqsa_tile handles
 * (and the most a launch splits K for). Larger M runs in one unsplit launch
 * of chunks of this many rows where the chunks make half a wave of CTAs,
 * else in launches of this many rows. */
#define SPA_MAX_M_PER_LAUNCH 64

/* ---- w4a16: INT4 weights, group 128 along K, FP16/BF16 activations -------
 * packed  : int32 [N/16, K/16, 32], read as [N/16, K/128, 32 lanes, 8 words]
 *           (plugins/README.md, "w4a16")
 * scales  : fp16  [K/128, N]
 * Requires K % 128 == 0, N % 16 == 0, M >= 1.
 * split_k : 0 = choose from M, N, K and the device's SM count (the launch
 *           table in spa_launch.cuh, plan_split), else the number of K splits
 *           across blocks; one warp per 16-column tile either way. A launch
 *           of more than SPA_MAX_M_PER_LAUNCH rows (above) is never split
 *           (the split_k asked for does not apply to it).
 * The _ex launchers take both choices: slices (warps per tile within a block:
 * 0 = choose (always 1 now), or 1, 2, 4; used at M <= 16 only; w4a16 has no
 * in-block slices and ignores it) and split_k (0 = choose, else the number of
 * splits across blocks); the harness's tuning sweep uses them. */
size_t spa_w4a16_workspace_size(int M, int N, int K);
size_t spa_split_counters_size(int N); /* bytes of kept counters for N output columns */
cudaError_t spa_w4a16_gemm(const void* A, const int32_t* packed, const uint16_t* scales,
                           void* Y, int M, int N, int K, SpaDtype dtype, void* workspace,
                           size_t workspace_bytes, int split_k, cudaStream_t stream);
cudaError_t spa_w4a16_gemm_ex(const void* A, const int32_t* packed, const uint16_t* scales,
                              void* Y, int M, int N, int K, SpaDtype dtype, void* workspace,
                              size_t workspace_bytes, int slices, int split_k, int* counters,
                              cudaStream_t stream);

/* ---- w4_sp24: INT4 weights with 2:4 sparsity along K (mma.sp) -------------
 * values  : int32  [N/16, K/32, 32]  kept values, tile order (README "w4_sp24")
 * meta    : uint32 [N/16, K/32, 16]  mma.sp metadata words
 * scales  : fp16   [K/128, N]
 * Requires K % 128 == 0, N % 16 == 0. */
size_t spa_w4_sp24_workspace_size(int M, int N, int K);
cudaError_t spa_w4_sp24_gemm(const void* A, const int32_t* values, const uint32_t* meta,
                             const uint16_t* scales, void* Y, int M, int N, int K,
                             SpaDtype dtype, void* workspace, size_t workspace_bytes,
                             int split_k, cudaStream_t stream);
cudaError_t spa_w4_sp24_gemm_ex(const void* A, const int32_t* values, const uint32_t* meta,
                                const uint16_t* scales, void* Y, int M, int N, int K,
                                SpaDtype dtype, void* workspace, size_t workspace_bytes,
                                int slices, int split_k, int* counters, cudaStream_t stream);

/* ---- w4_gqsa: INT4 group-sparse BSR (GQSA) --------------------------------
 * values  : uint32 [nnz, g/8]  kept groups, nibbles in dequant order (README "w4_gqsa")
 * group_idx : uint16 [nnz]     group index b of each entry (k in [b*g, (b+1)*g))
 * row_ptr : int32  [N+1]       entries of output column n: row_ptr[n] .. row_ptr[n+1]-1
 * scales  : fp16   [nnz]
 * Requires g in {8, 16, 32, 64}, K % g == 0, K/g <= 65536, values aligned to
 * min(16, g/2) bytes (cudaMalloc's 256 B are). Each column is
 * summed by one warp and written directly: the workspace size is 0 and the
 * workspace arguments are ignored (kept for a uniform plugin interface). */
size_t spa_w4_gqsa_workspace_size(int M, int N, int K);
cudaError_t spa_w4_gqsa_gemm(const void* A, const uint32_t* values, const uint16_t* group_idx,
                             const int32_t* row_ptr, const uint16_t* scales, void* Y, int M,
                             int N, int K, int group_size, int nnz, SpaDtype dtype,
                             void* workspace, size_t workspace_bytes, cudaStream_t stream);

/* ---- w4_gqsa_tile: tile-shared GQSA on tensor cores ------------------------
 * g = 16; the 16 columns of each tile keep the same `keep` groups of every
 * 128-k slab (docs/formats.md (c), "Tile-shared GQSA"); keep is 2 or 4.
 * Slabs padded to whole 256-k stages: S = 2 * ceil(K/256) (empty slabs).
 * values    : uint32 [N/16, S, keep*32]   lane l's keep words at l*keep: its
 *             mma A fragment of each kept group, dequant order, k permuted
 *             (plugins/README.md "w4_gqsa_tile")
 * positions : uint32 [N/16, S]            byte j: slab position (0..7) of kept group j
 * scales    : fp16   [N/16, S, 8, keep, 2] [g][j][h]: kept group j of column 16 tile + g + 8h
 * Requires K % 128 == 0, N % 16 == 0. Workspace, split_k and counters as
 * w4a16's _ex launcher (split-K reduced in the kernel; NULL counters: the
 * workspace's, zeroed by a memset). */
size_t spa_w4_gqsa_tile_workspace_size(int M, int N, int K);
cudaError_t spa_w4_gqsa_tile_gemm(const void* A, const uint32_t* values, const uint32_t* positions,
                                  const uint16_t* scales, void* Y, int M, int N, int K, int keep,
                                  SpaDtype dtype, void* workspace, size_t workspace_bytes, int split_k,
                                  int* counters, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* SPA_KERNELS_H */
