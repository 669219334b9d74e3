// Memory latency on the card: one thread chases a random cycle of pointers
// (each load's address is the previous load's value, so nothing overlaps).
// The kernels' pipelines are sized by Little's law (bytes in flight = rate x
// latency), and the loaded DRAM latency is what that needs: it is measured
// with the chase running while every other block of the same launch streams
// a large buffer (one launch, so the two certainly run together).
//
//   latency [--out latency.json]
//
// Prints one line per footprint (4 MB and 32 MB: L2; 1 GB: DRAM) and the
// loaded DRAM line, and writes them as JSON rows {card, footprint_mb, loaded,
// ns_per_load, cycles_per_load}.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#define CHECK_CUDA(call)                                                                      \
  do {                                                                                        \
    cudaError_t status_ = (call);                                                             \
    if (status_ != cudaSuccess) {                                                             \
      std::fprintf(stderr, "CUDA error %s at %s:%d\n", cudaGetErrorString(status_), __FILE__, \
                   __LINE__);                                                                 \
      std::exit(2);                                                                           \
    }                                                                                         \
  } while (0)

namespace {

constexpr int kLine = 64;  // bytes between chased pointers: one L2 sector pair, distinct lines

// Block 0, thread 0 chases `steps` pointers (ld.global.cg: L2, never L1) and
// records the elapsed SM cycles; every other block streams `flood` meanwhile
// until the chase is done (the `done` flag), keeping DRAM busy.
__global__ void chase_kernel(const unsigned* __restrict__ next, int steps, const uint4* flood,
                             size_t flood_count, volatile int* done, long long* cycles,
                             unsigned* sink) {
  if (blockIdx.x == 0) {
    if (threadIdx.x != 0) return;
    unsigned p = 0;
    for (int i = 0; i < 64; ++i) p = __ldcg(next + p);  // warm the TLB on the first pages
    long long start = clock64();
    for (int i = 0; i < steps; ++i) p = __ldcg(next + p);
    long long stop = clock64();
    *cycles = stop - start;
    *sink = p;
    __threadfence();
    *done = 1;
    return;
  }
  if (flood == nullptr) return;
  uint32_t acc = 0;
  const size_t stride = static_cast<size_t>(gridDim.x - 1) * blockDim.x;
  size_t i = (blockIdx.x - 1) * static_cast<size_t>(blockDim.x) + threadIdx.x;
  while (*done == 0) {
    uint4 v = __ldcs(flood + i);
    acc ^= v.x ^ v.w;
    i += stride;
    if (i >= flood_count) i -= flood_count;
  }
  if (acc == 0x12345678u) *sink = acc;
}

struct Sample { double mb; bool loaded; double ns, cycles; };

Sample measure(size_t bytes, bool loaded, int clock_khz, int sms) {
  const size_t count = bytes / sizeof(unsigned), lines = bytes / kLine, per_line = kLine / sizeof(unsigned);
  // A random cycle over all lines: order[i] -> order[i + 1].
  std::vector<unsigned> order(lines);
  std::iota(order.begin(), order.end(), 0u);
  std::shuffle(order.begin() + 1, order.end(), std::mt19937_64(42));
  std::vector<unsigned> next(count, 0u);
  for (size_t i = 0; i < lines; ++i)
    next[order[i] * per_line] = static_cast<unsigned>(order[(i + 1) % lines] * per_line);
  unsigned* d_next = nullptr;
  CHECK_CUDA(cudaMalloc(&d_next, bytes));
  CHECK_CUDA(cudaMemcpy(d_next, next.data(), bytes, cudaMemcpyHostToDevice));
  uint4* flood = nullptr;
  size_t flood_count = 0;
  if (loaded) {
    flood_count = (size_t(2) << 30) / sizeof(uint4);
    CHECK_CUDA(cudaMalloc(&flood, flood_count * sizeof(uint4)));
    CHECK_CUDA(cudaMemset(flood, 1, flood_count * sizeof(uint4)));
  }
  int* done = nullptr;
  long long* cycles = nullptr;
  unsigned* sink = nullptr;
  CHECK_CUDA(cudaMalloc(&done, sizeof(int)));
  CHECK_CUDA(cudaMalloc(&cycles, sizeof(long long)));
  CHECK_CUDA(cudaMalloc(&sink, sizeof(unsigned)));
  const int steps = 200000;
  // Two launches: the first pages the buffer in and warms L2 for the small footprints.
  float ms = 0;
  for (int rep = 0; rep < 2; ++rep) {
    CHECK_CUDA(cudaMemset(done, 0, sizeof(int)));
    cudaEvent_t start, stop;
    CHECK_CUDA(cudaEventCreate(&start));
    CHECK_CUDA(cudaEventCreate(&stop));
    CHECK_CUDA(cudaEventRecord(start));
    // One resident block per SM besides the chaser: the flood never delays block 0's start.
    chase_kernel<<<loaded ? sms : 1, 512>>>(d_next, steps, flood, flood_count, done, cycles, sink);
    CHECK_CUDA(cudaGetLastError());
    CHECK_CUDA(cudaEventRecord(stop));
    CHECK_CUDA(cudaEventSynchronize(stop));
    CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
  }
  long long host_cycles = 0;
  CHECK_CUDA(cudaMemcpy(&host_cycles, cycles, sizeof(long long), cudaMemcpyDeviceToHost));
  cudaFree(d_next); cudaFree(flood); cudaFree(done); cudaFree(cycles); cudaFree(sink);
  const double per_load = static_cast<double>(host_cycles) / steps;
  // clock64 counts SM cycles; the SM clock can boost above the reported
  // clockRate, so ns use the kernel's own wall time when it is all chase.
  const double ns = loaded ? per_load * 1e6 / clock_khz : 1e6 * ms / steps;
  return {bytes / 1048576.0, loaded, ns, per_load};
}

}  // namespace

int main(int argc, char** argv) {
  std::string out;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--out" && i + 1 < argc) out = argv[++i];
    else { std::fprintf(stderr, "usage: latency [--out latency.json]\n"); return 2; }
  }
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  int clock_khz = 0;
  CHECK_CUDA(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, 0));
  std::vector<Sample> samples;
  for (size_t mb : {4, 32, 1024}) samples.push_back(measure(mb << 20, false, clock_khz, prop.multiProcessorCount));
  samples.push_back(measure(size_t(1024) << 20, true, clock_khz, prop.multiProcessorCount));
  std::FILE* json = out.empty() ? nullptr : std::fopen(out.c_str(), "w");
  if (json) std::fprintf(json, "[\n");
  for (size_t i = 0; i < samples.size(); ++i) {
    const Sample& s = samples[i];
    std::printf("pointer chase %6.0f MB%s: %6.1f ns/load (%4.0f cycles/load)\n", s.mb,
                s.loaded ? " while the other SMs stream 2 GB" : "", s.ns, s.cycles);
    if (json)
      std::fprintf(json, "  {\"card\": \"%s\", \"footprint_mb\": %.0f, \"loaded\": %s, \"ns_per_load\": %.1f, \"cycles_per_load\": %.0f}%s\n",
                   prop.name, s.mb, s.loaded ? "true" : "false", s.ns, s.cycles, i + 1 < samples.size() ? "," : "");
  }
  if (json) { std::fprintf(json, "]\n"); std::fclose(json); }
  return 0;
}
