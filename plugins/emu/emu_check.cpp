// Runs every spa kernel, through its C launcher, on the host emulation
// (spa_emu.h) against an FP64 GEMM of the dense weight that spa's Python
// repackers wrote (`python -m spa.trt.bench_cases DIR`), the same cases
// the GPU harness checks.
//
//   emu_check DIR [--kernels w4a16,w4_sp24,w4_gqsa,w4_gqsa_tile] [--m 1,2,4] [--splits 1,2,0,-1]
//             [--slices 0,1,2,4] [--tolerance 2e-3] [--tolerance-bf16 5.9e-3]
//
// For each case, dtype (FP16, BF16), M and, for w4a16 / w4_sp24, in-block
// slices (0 = the launcher's choice; the _ex launchers) and, for every kernel
// but w4_gqsa, the split-K setting (0 = the launcher's choice, -1 = no
// workspace): one line
// "PASSED|FAILED | kernel dtype K N g M slices split: max_rel_err"; exit 0 when all pass.
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "spa_emu.h"
#include "../kernels/spa_kernels.h"

namespace {

template <typename T>
std::vector<T> load(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) {
    std::fprintf(stderr, "cannot read %s\n", path.c_str());
    std::exit(2);
  }
  std::vector<T> data(static_cast<size_t>(in.tellg()) / sizeof(T));
  in.seekg(0);
  in.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(data.size() * sizeof(T)));
  return data;
}

std::vector<int> parse_list(const std::string& text) {
  std::vector<int> values;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ',')) values.push_back(std::stoi(item));
  return values;
}

struct Case {
  std::string kernel, prefix;
  int K = 0, N = 0, g = 0, nnz = 0;
  std::vector<uint32_t> a, meta;
  std::vector<uint16_t> scales, idx;
  std::vector<int32_t> rows;
  std::vector<float> wref;
};

// Activations rounded to `dtype` (16-bit patterns) and their FP32 values.
void activations(int M, int K, SpaDtype dtype, unsigned seed, std::vector<uint16_t>& bits,
                 std::vector<float>& values) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uniform(-1.f, 1.f);
  bits.resize(static_cast<size_t>(M) * K);
  values.resize(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) {
    float x = uniform(rng);
    if (dtype == SPA_FP16) {
      __half h = __float2half_rn(x);
      bits[i] = __half_raw(h).x;
      values[i] = __half2float(h);
    } else {
      __nv_bfloat16 h = __float2bfloat16_rn(x);
      bits[i] = __nv_bfloat16_raw(h).x;
      values[i] = __bfloat162float(h);
    }
  }
}

float to_float(uint16_t bits, SpaDtype dtype) {
  if (dtype == SPA_FP16) {
    __half_raw raw;
    raw.x = bits;
    return __half2float(__half(raw));
  }
  __nv_bfloat16_raw raw;
  raw.x = bits;
  return __bfloat162float(__nv_bfloat16(raw));
}

// Returns max|Y - Y_ref| / max|Y_ref| (NaN output counts as infinite error), or -1 on a launch error.
// counters: kept split-K counters (spa_split_counters_size, zero before the first call), or NULL for the
// workspace's; a kept buffer must be left at 0 by every call (checked).
double run(const Case& c, SpaDtype dtype, int M, int slices, int split, std::vector<int>* counters,
           std::string& error) {
  std::vector<uint16_t> a_bits;
  std::vector<float> a;
  activations(M, c.K, dtype, 1234u + static_cast<unsigned>(M), a_bits, a);
  std::vector<uint16_t> y(static_cast<size_t>(M) * c.N, 0x7fffu);  // NaN until written
  size_t workspace_bytes = 0;
  if (c.kernel == "w4a16") workspace_bytes = spa_w4a16_workspace_size(M, c.N, c.K);
  if (c.kernel == "w4_sp24") workspace_bytes = spa_w4_sp24_workspace_size(M, c.N, c.K);
  if (c.kernel == "w4_gqsa") workspace_bytes = spa_w4_gqsa_workspace_size(M, c.N, c.K);
  if (c.kernel == "w4_gqsa_tile") workspace_bytes = spa_w4_gqsa_tile_workspace_size(M, c.N, c.K);
  std::vector<float> workspace(workspace_bytes / sizeof(float), std::nanf(""));
  void* ws = split < 0 ? nullptr : workspace.data();
  size_t ws_bytes = split < 0 ? 0 : workspace_bytes;
  int split_k = split < 0 ? 0 : split;
  const int32_t* packed = reinterpret_cast<const int32_t*>(c.a.data());
  cudaError_t status;
  int* kept = counters != nullptr ? counters->data() : nullptr;
  // the plain launchers where nothing calls for _ex (their own entry points stay covered)
  const bool ex = slices != 0 || kept != nullptr;
  if (c.kernel == "w4a16")
    status = ex ? spa_w4a16_gemm_ex(a_bits.data(), packed, c.scales.data(), y.data(), M, c.N, c.K, dtype, ws,
                                    ws_bytes, slices, split_k, kept, nullptr)
                : spa_w4a16_gemm(a_bits.data(), packed, c.scales.data(), y.data(), M, c.N, c.K, dtype, ws, ws_bytes,
                                 split_k, nullptr);
  else if (c.kernel == "w4_sp24")
    status = ex ? spa_w4_sp24_gemm_ex(a_bits.data(), packed, c.meta.data(), c.scales.data(), y.data(), M, c.N, c.K,
                                      dtype, ws, ws_bytes, slices, split_k, kept, nullptr)
                : spa_w4_sp24_gemm(a_bits.data(), packed, c.meta.data(), c.scales.data(), y.data(), M, c.N, c.K,
                                   dtype, ws, ws_bytes, split_k, nullptr);
  else if (c.kernel == "w4_gqsa_tile")  // nnz holds its keep; meta its positions
    status = spa_w4_gqsa_tile_gemm(a_bits.data(), c.a.data(), c.meta.data(), c.scales.data(), y.data(), M, c.N, c.K,
                                   c.nnz, dtype, ws, ws_bytes, split_k, kept, nullptr);
  else
    status = spa_w4_gqsa_gemm(a_bits.data(), c.a.data(), c.idx.data(), c.rows.data(), c.scales.data(),
                              y.data(), M, c.N, c.K, c.g, c.nnz, dtype, ws, ws_bytes, nullptr);
  if (status == cudaSuccess) status = cudaGetLastError();
  if (status != cudaSuccess) {
    error = "launcher returned " + std::to_string(static_cast<int>(status)) + ": " + spa_emu::last_fault() +
            " / " + spa_kernel_error_string();
    return -1;
  }
  if (counters != nullptr)
    for (int value : *counters)
      if (value != 0) {
        error = "a kept split-K counter was left at " + std::to_string(value) + " (must be 0 after every call)";
        return -1;
      }
  double max_err = 0, max_ref = 0;
  for (int m = 0; m < M; ++m) {
    for (int n = 0; n < c.N; ++n) {
      double ref = 0;
      for (int k = 0; k < c.K; ++k)
        ref += static_cast<double>(a[static_cast<size_t>(m) * c.K + k]) * c.wref[static_cast<size_t>(k) * c.N + n];
      double got = to_float(y[static_cast<size_t>(m) * c.N + n], dtype);
      double err = std::isfinite(got) ? std::fabs(got - ref) : INFINITY;
      max_err = std::max(max_err, err);
      max_ref = std::max(max_ref, std::fabs(ref));
    }
  }
  return max_ref > 0 ? max_err / max_ref : max_err;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: emu_check DIR [--kernels a,b] [--m 1,2,4] [--splits 1,2,0,-1] [--slices 0,1,2,4] "
                         "[--dtypes fp16,bf16] [--tolerance 2e-3] [--tolerance-bf16 5.9e-3] [--kept-counters 0|1|2]\n");
    return 2;
  }
  std::string dir = argv[1];
  std::vector<int> ms = {1, 2, 3, 4, 8, 16, 32, 64, 70};
  std::vector<int> splits = {1, 2, 0, -1};
  std::vector<int> slice_list = {0};
  double tolerance = 2e-3, tolerance_bf16 = 2e-3 + 1.0 / 256;  // plugins/trt/contracts/*.json
  std::string kernels = "w4a16,w4_sp24,w4_gqsa,w4_gqsa_tile";
  std::string dtypes = "fp16,bf16";
  // 1: w4a16/w4_sp24 get counters kept across every run of a case, zeroed once; 2: the same, left at 1 by a
  // "previous call" (a stale buffer: the runs must fail, which shows the kernels read the kept counters)
  int kept_counters = 0;
  for (int i = 2; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag == "--m") ms = parse_list(argv[i + 1]);
    else if (flag == "--splits") splits = parse_list(argv[i + 1]);
    else if (flag == "--slices") slice_list = parse_list(argv[i + 1]);
    else if (flag == "--tolerance") tolerance = std::stod(argv[i + 1]);
    else if (flag == "--tolerance-bf16") tolerance_bf16 = std::stod(argv[i + 1]);
    else if (flag == "--kernels") kernels = argv[i + 1];
    else if (flag == "--dtypes") dtypes = argv[i + 1];
    else if (flag == "--kept-counters") kept_counters = std::stoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "unknown option %s\n", flag.c_str());
      return 2;
    }
  }
  std::ifstream manifest(dir + "/cases.txt");
  if (!manifest) {
    std::fprintf(stderr, "no %s/cases.txt (write it with: python -m spa.trt.bench_cases %s)\n", dir.c_str(),
                 dir.c_str());
    return 2;
  }
  int runs = 0, failures = 0;
  std::string line;
  while (std::getline(manifest, line)) {
    Case c;
    std::istringstream fields(line);
    if (!(fields >> c.kernel >> c.K >> c.N >> c.g >> c.nnz >> c.prefix)) continue;
    if (("," + kernels + ",").find("," + c.kernel + ",") == std::string::npos) continue;
    std::string base = dir + "/" + c.prefix;
    c.a = load<uint32_t>(base + ".a.bin");
    c.scales = load<uint16_t>(base + ".scales.bin");
    c.wref = load<float>(base + ".wref.bin");
    if (c.kernel == "w4_sp24" || c.kernel == "w4_gqsa_tile") c.meta = load<uint32_t>(base + ".b.bin");
    if (c.kernel == "w4_gqsa") {
      c.idx = load<uint16_t>(base + ".idx.bin");
      c.rows = load<int32_t>(base + ".rows.bin");
    }
    const bool has_split = c.kernel != "w4_gqsa";  // w4_gqsa_tile: splits and kept counters, no slices
    const bool has_slices = c.kernel == "w4a16" || c.kernel == "w4_sp24";
    // zeroed once per case, then shared by all its runs: each must leave it at 0 for the next
    std::vector<int> counters(spa_split_counters_size(c.N) / sizeof(int), kept_counters == 2 ? 1 : 0);
    std::vector<int>* kept = kept_counters && has_split ? &counters : nullptr;
    for (SpaDtype dtype : {SPA_FP16, SPA_BF16}) {
      if (("," + dtypes + ",").find(dtype == SPA_FP16 ? ",fp16," : ",bf16,") == std::string::npos) continue;
      for (int M : ms) {
        for (int slices : has_slices ? slice_list : std::vector<int>{0})
        for (int split : has_split ? splits : std::vector<int>{0}) {
          std::string error;
          double err = run(c, dtype, M, slices, split, kept, error);
          bool ok = err >= 0 && err <= (dtype == SPA_FP16 ? tolerance : tolerance_bf16);
          ++runs;
          failures += ok ? 0 : 1;
          std::printf("%s | %s %s K=%d N=%d g=%d M=%d slices=%d split=%d: ", ok ? "PASSED" : "FAILED",
                      c.kernel.c_str(), dtype == SPA_FP16 ? "fp16" : "bf16", c.K, c.N, c.g, M, slices, split);
          if (err < 0) std::printf("%s\n", error.c_str());
          else std::printf("max_rel_err=%.3e\n", err);
        }
      }
    }
  }
  std::printf("%d runs, %d failed\n", runs, failures);
  return failures || runs == 0 ? 1 : 0;
}
