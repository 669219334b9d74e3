// The launchers' host side: the launch table (K splits, row halves, w4_gqsa's
// rows per pass), the split workspace, programmatic dependent launch and the
// launch of the 8-warp kernels over column blocks, rows and splits. Internal
// to plugins/kernels; plugins/bench/model.py mirrors plan_split and the rules
// it calls (a test compares them through plugins/emu/plan_dump.cpp).
#pragma once

#include <algorithm>
#include <cstdlib>
#include <type_traits>

#include "spa_device.cuh"

namespace spa {

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
