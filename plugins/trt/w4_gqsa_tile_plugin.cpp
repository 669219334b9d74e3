// spa.GroupSparseTileMatMul -> spa_w4_gqsa_tile_gemm with kept counters (contracts/w4_gqsa_tile.json).
#include "spa_plugin.h"

namespace spa_trt {
namespace {

// Slabs of 128 k in the layout: K/128 padded to whole 256-k stages.
int64_t slabs(const OpFields& f) { return 2 * ((static_cast<int64_t>(f.K) + 255) / 256); }

std::string check_fields(const OpFields& f) {
  if (f.group_size != 16) return "group_size must be 16";
  if (f.keep != 2 && f.keep != 4) return "keep (groups kept per 128-k slab) must be 2 or 4";
  if (f.K <= 0 || f.K % SPA_W4_GROUP) return "K must be a positive multiple of 128";
  if (f.N <= 0 || f.N % 16) return "N must be a positive multiple of 16";
  return "";
}

std::string check_weights(const OpFields& f, const PluginTensorDesc* in) {
  const int64_t records = static_cast<int64_t>(f.N / 16) * slabs(f);  // (tile, slab) pairs
  if (volume(in[1].dims) != records * f.keep * 32) return "values must be INT32 [N/16, 2*ceil(K/256), keep*32]";
  if (volume(in[2].dims) != records) return "positions must be INT32 [N/16, 2*ceil(K/256)]";
  if (volume(in[3].dims) != records * 8 * f.keep * 2) return "scales must be FP16 [N/16, 2*ceil(K/256), 8, keep, 2]";
  return "";
}

cudaError_t launch(const OpFields& f, const PluginTensorDesc*, const void* const* inputs, void* output,
                   int64_t M, SpaDtype dtype, void* workspace, size_t workspace_bytes, int* counters,
                   cudaStream_t stream) {
  return spa_w4_gqsa_tile_gemm(inputs[0], static_cast<const uint32_t*>(inputs[1]),
                               static_cast<const uint32_t*>(inputs[2]), static_cast<const uint16_t*>(inputs[3]),
                               output, static_cast<int>(M), f.N, f.K, f.keep, dtype, workspace, workspace_bytes, 0,
                               counters, stream);
}

}  // namespace

const OpTraits kGroupSparseTileTraits = {"GroupSparseTileMatMul", 4, false, check_fields, check_weights, launch,
                                         spa_w4_gqsa_tile_workspace_size, spa_split_counters_size, true};

}  // namespace spa_trt
