// Which lane of a quad supplies which part of the mma.sp metadata? The one
// hardware fact spa's w4_sp24 layout assumes from a reading of the PTX ISA's
// figure (plugins/README.md, "w4_sp24"). This probe asks the tensor cores:
// one warp runs spa's own mma_sp_16832 (spa_device.cuh) on a 16x32 sparse
// tile whose metadata is written the way repack_w4_sp24 writes it, with B
// selecting 8 columns of A at a time, so D is A as the hardware decoded it.
// That is compared with the A each reading of the metadata would give:
//
//   H0 (spa's): lane 4g + h holds chunks 4h..4h+3 (columns 16h..16h+15);
//               bits 4c.. row g, bits 16 + 4c.. row g + 8
//   H1:         the same with the two lanes swapped
//   H2:         lane 4g holds row g (8 chunks, bits 4c..), lane 4g + 1 row g + 8
//
//   mma_sp_probe        exit 0: H0 holds; 3: another reading holds (the fix is
//                       printed); 1: none holds
//
// Built by plugins/bench/run_gpu.sh; the CPU tests build it for the host
// emulation (plugins/emu), where it must find H0 (the emulation implements H0).
#include <cstdio>
#include <cstring>
#include <vector>

#include "../kernels/spa_device.cuh"

namespace {

constexpr int kPairs[6][2] = {{0, 1}, {0, 2}, {0, 3}, {1, 2}, {1, 3}, {2, 3}};

// The kept positions and values of the probe tile: row r, chunk c (columns
// 4c..4c+3). Chosen so that every reading decodes a different A: chunks c and
// c + 4 of a row differ (H1), and chunk c + 4 of row g differs from chunk c of
// row g + 8 (H2).
int pair_of(int r, int c) { return (r + 2 * c + (c >= 4 ? 1 : 0)) % 6; }
float value_of(int r, int c, int s) { return static_cast<float>((r * 16 + c * 2 + s) % 61 + 1); }

uint16_t half_bits(float x) { return __half_raw(__float2half_rn(x)).x; }

__global__ void probe_kernel(const uint32_t* a_words, const uint32_t* meta, float* d) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  uint32_t a[4];
  for (int j = 0; j < 4; ++j) a[j] = a_words[lane * 4 + j];
  for (int range = 0; range < 4; ++range) {
    // B (32 x 8): B[k][n] = 1 where k = 8 range + n, so D[:, n] = A[:, 8 range + n].
    uint32_t b[4];
    for (int i = 0; i < 4; ++i) {
      const int k0 = 2 * t + 8 * i;
      const uint16_t lo = (k0 == 8 * range + g) ? 0x3c00u : 0u, hi = (k0 + 1 == 8 * range + g) ? 0x3c00u : 0u;
      b[i] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
    }
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    spa::mma_sp_16832<__half>(acc, a, b, meta[lane]);
    for (int i = 0; i < 4; ++i) d[(range * 32 + lane) * 4 + i] = acc[i];
  }
}

// Metadata word of `lane` the way spa writes it (H0).
uint32_t spa_meta(int lane) {
  const int g = lane / 4, h = lane % 4 & 1;  // lanes 4g+2, 4g+3 pass the same words (ignored)
  uint32_t word = 0;
  for (int c = 0; c < 4; ++c) {
    const int chunk = 4 * h + c;
    const int* lo = kPairs[pair_of(g, chunk)];
    const int* hi = kPairs[pair_of(g + 8, chunk)];
    word |= static_cast<uint32_t>(lo[0] | lo[1] << 2) << (4 * c);
    word |= static_cast<uint32_t>(hi[0] | hi[1] << 2) << (16 + 4 * c);
  }
  return word;
}

// The nibble a reading takes for (row, chunk) from the words spa wrote.
int nibble(int hypothesis, const std::vector<uint32_t>& meta, int row, int chunk) {
  const int g = row % 8, upper = row / 8;
  if (hypothesis == 0) return (meta[4 * g + chunk / 4] >> (16 * upper + 4 * (chunk % 4))) & 15;
  if (hypothesis == 1) return (meta[4 * g + 1 - chunk / 4] >> (16 * upper + 4 * (chunk % 4))) & 15;
  return (meta[4 * g + upper] >> (4 * chunk)) & 15;  // H2: one lane per row
}

}  // namespace

int main() {
  // A fragment (the dense m16n8k16 layout over the compressed 16x16): register
  // j of lane 4g + t holds the kept pair of (row g + 8 (j & 1), chunk t + 4 (j / 2)).
  std::vector<uint32_t> a_words(32 * 4), meta(32);
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    for (int j = 0; j < 4; ++j) {
      const int row = g + 8 * (j & 1), chunk = t + 4 * (j / 2);
      a_words[lane * 4 + j] = half_bits(value_of(row, chunk, 0)) | static_cast<uint32_t>(half_bits(value_of(row, chunk, 1))) << 16;
    }
    meta[lane] = spa_meta(lane);
  }
  std::vector<float> d(4 * 32 * 4);
  uint32_t *a_dev = nullptr, *meta_dev = nullptr;
  float* d_dev = nullptr;
  if (cudaMalloc(reinterpret_cast<void**>(&a_dev), a_words.size() * 4) != cudaSuccess ||
      cudaMalloc(reinterpret_cast<void**>(&meta_dev), meta.size() * 4) != cudaSuccess ||
      cudaMalloc(reinterpret_cast<void**>(&d_dev), d.size() * 4) != cudaSuccess) {
    std::printf("FAILED | mma.sp probe: cudaMalloc failed\n");
    return 1;
  }
  cudaMemcpy(a_dev, a_words.data(), a_words.size() * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(meta_dev, meta.data(), meta.size() * 4, cudaMemcpyHostToDevice);
  SPA_LAUNCH(1, 32, 0, nullptr, probe_kernel)(a_dev, meta_dev, d_dev);
  cudaError_t status = cudaGetLastError();
  if (status == cudaSuccess) status = cudaDeviceSynchronize();
  if (status != cudaSuccess) {
    std::printf("FAILED | mma.sp probe: %s\n", cudaGetErrorString(status));
    return 1;
  }
  cudaMemcpy(d.data(), d_dev, d.size() * 4, cudaMemcpyDeviceToHost);
  cudaFree(a_dev);
  cudaFree(meta_dev);
  cudaFree(d_dev);

  // D fragment: c_i of lane 4g + t is (row g + 8 (i / 2), column 2t + (i & 1)).
  float seen[16][32] = {};
  for (int range = 0; range < 4; ++range)
    for (int lane = 0; lane < 32; ++lane)
      for (int i = 0; i < 4; ++i)
        seen[lane / 4 + 8 * (i / 2)][8 * range + 2 * (lane % 4) + (i & 1)] = d[(range * 32 + lane) * 4 + i];

  const char* names[3] = {"H0 (spa's layout: lane 4g+h = columns 16h..16h+15, low 16 bits row g)",
                          "H1 (lanes 4g and 4g+1 swapped)", "H2 (lane 4g = row g, lane 4g+1 = row g+8)"};
  int match = -1;
  for (int h = 0; h < 3 && match < 0; ++h) {
    bool same = true;
    for (int row = 0; row < 16 && same; ++row) {
      for (int chunk = 0; chunk < 8 && same; ++chunk) {
        const int n = nibble(h, meta, row, chunk), i0 = n & 3, i1 = n >> 2;
        for (int k = 0; k < 4; ++k) {
          const float want = k == i0 ? value_of(row, chunk, 0) : k == i1 ? value_of(row, chunk, 1) : 0.f;
          if (i0 >= i1 || seen[row][4 * chunk + k] != want) same = false;
        }
      }
    }
    if (same) match = h;
  }
  if (match == 0) {
    std::printf("PASSED | mma.sp probe: the tensor cores read the metadata as %s\n", names[0]);
    return 0;
  }
  if (match > 0) {
    std::printf("FAILED | mma.sp probe: the tensor cores read the metadata as %s, not H0; change "
                "spa/trt/repack.py repack_w4_sp24 (and unpack_w4_sp24, plugins/emu/spa_emu.h "
                "mma_sp_m16n8k32, plugins/bench/harness_util.cuh) to that reading\n", names[match]);
    return 3;
  }
  std::printf("FAILED | mma.sp probe: no reading matches; row 0 as decoded:");
  for (int k = 0; k < 32; ++k) std::printf(" %g", seen[0][k]);
  std::printf("\n");
  return 1;
}
