// CPU-only check (no GPU needed): the harness's layout readers
// (harness_util.cuh, the same __host__ __device__ code the harness runs on
// the GPU as its reference) reproduce, bit for bit, the FP32 weights spa's
// Python repackers wrote with `python -m spa.trt.bench_cases DIR`.
//
//   layout_check DIR      exit 0 when every case matches
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "harness_util.cuh"

template <typename T>
static std::vector<T> load(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) { std::fprintf(stderr, "cannot read %s\n", path.c_str()); std::exit(2); }
  std::vector<T> data(static_cast<size_t>(in.tellg()) / sizeof(T));
  in.seekg(0);
  in.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(data.size() * sizeof(T)));
  return data;
}

int main(int argc, char** argv) {
  if (argc != 2) { std::fprintf(stderr, "usage: layout_check DIR\n"); return 2; }
  std::string dir = argv[1];
  std::ifstream manifest(dir + "/cases.txt");
  std::string line, kernel, prefix;
  int failures = 0, cases = 0;
  while (std::getline(manifest, line)) {
    std::istringstream fields(line);
    int K, N, g, nnz;
    if (!(fields >> kernel >> K >> N >> g >> nnz >> prefix)) continue;
    std::string base = dir + "/" + prefix;
    std::vector<float> want = load<float>(base + ".wref.bin"), got(static_cast<size_t>(K) * N, 0.f);
    std::vector<uint32_t> a = load<uint32_t>(base + ".a.bin");
    std::vector<__half> scales = load<__half>(base + ".scales.bin");
    if (kernel == "w4a16") {
      for (int k = 0; k < K; ++k)
        for (int n = 0; n < N; ++n) got[static_cast<size_t>(k) * N + n] = w4a16_element(a.data(), scales.data(), K, N, k, n);
    } else if (kernel == "w4_sp24") {
      std::vector<uint32_t> meta = load<uint32_t>(base + ".b.bin");
      for (int k = 0; k < K; ++k)
        for (int n = 0; n < N; ++n)
          got[static_cast<size_t>(k) * N + n] = w4_sp24_element(a.data(), meta.data(), scales.data(), K, N, k, n);
    } else if (kernel == "w4_gqsa_tile") {  // nnz holds keep, .b.bin the positions
      std::vector<uint32_t> positions = load<uint32_t>(base + ".b.bin");
      for (int k = 0; k < K; ++k)
        for (int n = 0; n < N; ++n)
          got[static_cast<size_t>(k) * N + n] =
              w4_gqsa_tile_element(a.data(), positions.data(), scales.data(), K, nnz, k, n);
    } else {
      std::vector<uint16_t> idx = load<uint16_t>(base + ".idx.bin");
      std::vector<int32_t> rows = load<int32_t>(base + ".rows.bin");
      for (int n = 0; n < N; ++n)
        for (int e = rows[n]; e < rows[n + 1]; ++e) w4_gqsa_entry(a.data(), idx.data(), scales.data(), got.data(), N, g, e, n);
    }
    size_t bad = 0;
    for (size_t i = 0; i < got.size(); ++i) bad += got[i] != want[i];
    ++cases;
    failures += bad != 0;
    std::printf("%s | %s K=%d N=%d g=%d: %zu of %zu weights differ\n", bad ? "FAILED" : "PASSED", kernel.c_str(), K, N, g, bad, got.size());
  }
  std::printf("%d cases, %d failed\n", cases, failures);
  return failures || cases == 0 ? 1 : 0;
}
