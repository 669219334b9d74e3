// spa.GroupSparseQuantMatMul (layout "w4_gqsa") -> spa_w4_gqsa_gemm (contracts/w4_gqsa.json).
#include "spa_plugin.h"

namespace spa_trt {
namespace {

std::string check_fields(const OpFields& f) {
  if (f.layout != "w4_gqsa") return "layout must be \"w4_gqsa\": run the gqsa-to-plugin pass before spa build";
  if (f.bits != 4) return "bits must be 4";
  if (f.group_size != 8 && f.group_size != 16 && f.group_size != 32 && f.group_size != 64)
    return "group_size must be 8, 16, 32 or 64";
  if (f.K <= 0 || f.K % f.group_size) return "K must be a positive multiple of group_size";
  if (f.K / f.group_size > 65536) return "K / group_size must be <= 65536";
  if (f.N <= 0) return "N must be positive";
  return "";
}

std::string check_weights(const OpFields& f, const PluginTensorDesc* in) {
  int64_t nnz = volume(in[4].dims);  // scales [nnz]: one per kept group
  std::string of_nnz = " with nnz = the number of scales (" + std::to_string(nnz) + ")";
  if (nnz < 0) return "scales must be FP16 [nnz] with a known nnz";
  if (volume(in[1].dims) != nnz * f.group_size / 8) return "values must be INT32 [nnz, group_size/8]" + of_nnz;
  if (volume(in[2].dims) != (nnz + 1) / 2) return "group_idx must be INT32 [ceil(nnz/2)]" + of_nnz;
  if (volume(in[3].dims) != static_cast<int64_t>(f.N) + 1) return "row_ptr must be INT32 [N+1]";
  return "";
}

cudaError_t launch(const OpFields& f, const PluginTensorDesc* in, const void* const* inputs, void* output,
                   int64_t M, SpaDtype dtype, void* workspace, size_t workspace_bytes, int*, cudaStream_t stream) {
  return spa_w4_gqsa_gemm(inputs[0], static_cast<const uint32_t*>(inputs[1]), static_cast<const uint16_t*>(inputs[2]),
                          static_cast<const int32_t*>(inputs[3]), static_cast<const uint16_t*>(inputs[4]), output,
                          static_cast<int>(M), f.N, f.K, f.group_size, static_cast<int>(volume(in[4].dims)), dtype,
                          workspace, workspace_bytes, stream);
}

}  // namespace

const OpTraits kGroupSparseTraits = {"GroupSparseQuantMatMul", 5, true, check_fields, check_weights, launch,
                                   spa_w4_gqsa_workspace_size, nullptr};

}  // namespace spa_trt
