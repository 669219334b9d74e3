// TensorRT IPluginV3 wrappers of the spa kernels (TensorRT 10/11 API).
//
// One class template per op would repeat the same capability plumbing three
// times, so SpaMatMulPlugin implements IPluginV3 + OneCore + OneBuild +
// OneRuntime once and each op supplies a small OpTraits (name, inputs, shape
// rules, launcher call); see w4a16_plugin.cpp, w4_sp24_plugin.cpp,
// w4_gqsa_plugin.cpp, w4_gqsa_tile_plugin.cpp and the contract files in contracts/.
//
// Rules (STYLE.md, "From Marlin and TensorRT OSS plugins"): validate in
// configurePlugin / createPlugin and log why; never abort in enqueue (return
// non-zero with a logged reason instead).
#pragma once

#include <NvInferRuntime.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "../kernels/spa_kernels.h"

namespace spa_trt {

using namespace nvinfer1;

// The logger TensorRT hands over through setLoggerFinder (may be null).
ILogger* logger();
void log(ILogger::Severity severity, const std::string& message);

// Attributes shared by every spa plugin op (ONNX attributes = plugin fields).
struct OpFields {
  int32_t K = 0;
  int32_t N = 0;
  int32_t group_size = 0;
  int32_t bits = 4;
  std::string layout;
  int32_t keep = 0;  // GroupSparseTileMatMul: groups kept per 128-k slab
};

// What differs between the ops.
struct OpTraits {
  const char* name;                      // ONNX op_type = plugin name
  int32_t nb_inputs;                     // A + weight inputs
  bool has_bits_and_layout;              // GQSA carries bits and layout
  // Checks the fields (creator) and returns "" or the reason.
  std::string (*check_fields)(const OpFields&);
  // Checks the weight input dims (configurePlugin) and returns "" or the reason.
  std::string (*check_weights)(const OpFields&, const PluginTensorDesc* in);
  // Runs the kernel. M = rows of A; counters: the plugin's kept split-K
  // counters (NULL: the launcher zeroes the workspace's own per call).
  cudaError_t (*launch)(const OpFields&, const PluginTensorDesc* in, const void* const* inputs,
                        void* output, int64_t M, SpaDtype dtype, void* workspace,
                        size_t workspace_bytes, int* counters, cudaStream_t stream);
  // The kernel's workspace in bytes for M rows (spa_*_workspace_size).
  size_t (*workspace_size)(int M, int N, int K);
  // Bytes of kept split-K counters for N columns (spa_split_counters_size), or NULL.
  size_t (*counters_size)(int N);
  bool has_keep = false;  // GroupSparseTileMatMul carries keep
  DataType weight_type(int32_t index) const;  // input `index` >= 1
};

class SpaMatMulPlugin : public IPluginV3,
                        public IPluginV3OneCore,
                        public IPluginV3OneBuild,
                        public IPluginV3OneRuntime {
 public:
  SpaMatMulPlugin(const OpTraits& traits, const OpFields& fields);
  ~SpaMatMulPlugin() override;
  SpaMatMulPlugin(const SpaMatMulPlugin&) = delete;
  SpaMatMulPlugin& operator=(const SpaMatMulPlugin&) = delete;

  // IPluginV3
  IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override;
  IPluginV3* clone() noexcept override;

  // IPluginV3OneCore
  const char* getPluginName() const noexcept override { return mTraits.name; }
  const char* getPluginVersion() const noexcept override { return "1"; }
  const char* getPluginNamespace() const noexcept override { return ""; }

  // IPluginV3OneBuild
  int32_t configurePlugin(const DynamicPluginTensorDesc* in, int32_t nbInputs,
                          const DynamicPluginTensorDesc* out, int32_t nbOutputs) noexcept override;
  int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, const DataType* inputTypes,
                             int32_t nbInputs) const noexcept override;
  int32_t getOutputShapes(const DimsExprs* inputs, int32_t nbInputs, const DimsExprs* shapeInputs,
                          int32_t nbShapeInputs, DimsExprs* outputs, int32_t nbOutputs,
                          IExprBuilder& exprBuilder) noexcept override;
  bool supportsFormatCombination(int32_t pos, const DynamicPluginTensorDesc* inOut,
                                 int32_t nbInputs, int32_t nbOutputs) noexcept override;
  int32_t getNbOutputs() const noexcept override { return 1; }
  size_t getWorkspaceSize(const DynamicPluginTensorDesc* inputs, int32_t nbInputs,
                          const DynamicPluginTensorDesc* outputs,
                          int32_t nbOutputs) const noexcept override;

  // IPluginV3OneRuntime
  int32_t onShapeChange(const PluginTensorDesc* in, int32_t nbInputs, const PluginTensorDesc* out,
                        int32_t nbOutputs) noexcept override;
  int32_t enqueue(const PluginTensorDesc* inputDesc, const PluginTensorDesc* outputDesc,
                  const void* const* inputs, void* const* outputs, void* workspace,
                  cudaStream_t stream) noexcept override;
  IPluginV3* attachToContext(IPluginResourceContext* context) noexcept override;
  const PluginFieldCollection* getFieldsToSerialize() noexcept override;

 private:
  bool check(const PluginTensorDesc* in, int32_t nbInputs, const PluginTensorDesc* out,
             int32_t nbOutputs) const;

  // Kept split-K arrival counters of an attached plugin (one per execution
  // context, whose enqueues never overlap): zeroed once, left at 0 by every
  // launch, so a call is one kernel launch without a memset. NULL when the op
  // has none or the allocation failed (then the launcher zeroes its own).
  void keep_counters();

  const OpTraits& mTraits;
  OpFields mFields;
  int* mCounters = nullptr;
  std::vector<PluginField> mSerialized;
  PluginFieldCollection mSerializedCollection{};
};

class SpaMatMulCreator : public IPluginCreatorV3One {
 public:
  explicit SpaMatMulCreator(const OpTraits& traits);
  const char* getPluginName() const noexcept override { return mTraits.name; }
  const char* getPluginVersion() const noexcept override { return "1"; }
  const char* getPluginNamespace() const noexcept override { return ""; }
  const PluginFieldCollection* getFieldNames() noexcept override { return &mCollection; }
  IPluginV3* createPlugin(const char* name, const PluginFieldCollection* fc,
                          TensorRTPhase phase) noexcept override;

 private:
  const OpTraits& mTraits;
  std::vector<PluginField> mFieldNames;
  PluginFieldCollection mCollection{};
};

// Rows of A: the product of every dim but the last (-1 if any is unknown).
int64_t rows_of(const Dims& dims);
SpaDtype to_spa_dtype(DataType type);
int64_t volume(const Dims& dims);

extern const OpTraits kW4A16Traits;
extern const OpTraits kW4Sparse24Traits;
extern const OpTraits kGroupSparseTraits;
extern const OpTraits kGroupSparseTileTraits;

}  // namespace spa_trt
