// spa.W4Sparse24MatMul -> spa_w4_sp24_gemm_ex with kept counters (contracts/w4_sp24.json).
#include "spa_plugin.h"

namespace spa_trt {
namespace {

std::string check_fields(const OpFields& f) {
  if (f.group_size != SPA_W4_GROUP) return "group_size must be 128";
  if (f.K <= 0 || f.K % SPA_W4_GROUP) return "K must be a positive multiple of 128";
  if (f.N <= 0 || f.N % 16) return "N must be a positive multiple of 16";
  return "";
}

std::string check_weights(const OpFields& f, const PluginTensorDesc* in) {
  int64_t tiles = static_cast<int64_t>(f.N / 16) * (f.K / 32);
  if (volume(in[1].dims) != tiles * 32) return "values must be INT32 [N/16, K/32, 32]";
  if (volume(in[2].dims) != tiles * 16) return "meta must be INT32 [N/16, K/32, 16]";
  if (volume(in[3].dims) != static_cast<int64_t>(f.K / SPA_W4_GROUP) * f.N) return "scales must be FP16 [K/128, N]";
  return "";
}

cudaError_t launch(const OpFields& f, const PluginTensorDesc*, const void* const* inputs, void* output,
                   int64_t M, SpaDtype dtype, void* workspace, size_t workspace_bytes, int* counters,
                   cudaStream_t stream) {
  return spa_w4_sp24_gemm_ex(inputs[0], static_cast<const int32_t*>(inputs[1]),
                             static_cast<const uint32_t*>(inputs[2]), static_cast<const uint16_t*>(inputs[3]), output,
                             static_cast<int>(M), f.N, f.K, dtype, workspace, workspace_bytes, 0, 0, counters, stream);
}

}  // namespace

const OpTraits kW4Sparse24Traits = {"W4Sparse24MatMul", 4, false, check_fields, check_weights, launch,
                                   spa_w4_sp24_workspace_size, spa_split_counters_size};

}  // namespace spa_trt
