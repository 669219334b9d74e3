// The shared IPluginV3 implementation and the library entry points
// (getCreators, setLoggerFinder: the only exported symbols, see CMakeLists.txt).
#include "spa_plugin.h"

#include <algorithm>
#include <climits>
#include <exception>
#include <mutex>

namespace spa_trt {

namespace {
ILoggerFinder* gLoggerFinder = nullptr;
std::mutex gLoggerMutex;
}  // namespace

ILogger* logger() {
  std::lock_guard<std::mutex> lock(gLoggerMutex);
  return gLoggerFinder ? gLoggerFinder->findLogger() : nullptr;
}

void log(ILogger::Severity severity, const std::string& message) {
  if (ILogger* target = logger()) target->log(severity, ("spa plugin: " + message).c_str());
}

int64_t volume(const Dims& dims) {
  int64_t count = 1;
  for (int32_t i = 0; i < dims.nbDims; ++i) {
    if (dims.d[i] < 0) return -1;  // unknown
    count *= dims.d[i];
  }
  return count;
}

int64_t rows_of(const Dims& dims) {
  int64_t rows = 1;
  for (int32_t i = 0; i + 1 < dims.nbDims; ++i) {
    if (dims.d[i] < 0) return -1;
    rows *= dims.d[i];
  }
  return rows;
}

SpaDtype to_spa_dtype(DataType type) { return type == DataType::kBF16 ? SPA_BF16 : SPA_FP16; }

DataType OpTraits::weight_type(int32_t index) const {
  // The last input is always the FP16 scales; the others are INT32 words.
  return index == nb_inputs - 1 ? DataType::kHALF : DataType::kINT32;
}

SpaMatMulPlugin::SpaMatMulPlugin(const OpTraits& traits, const OpFields& fields)
    : mTraits(traits), mFields(fields) {}

SpaMatMulPlugin::~SpaMatMulPlugin() {
  if (mCounters != nullptr) cudaFree(mCounters);
}

void SpaMatMulPlugin::keep_counters() {
  if (mTraits.counters_size == nullptr || mCounters != nullptr) return;
  const size_t bytes = mTraits.counters_size(mFields.N);
  void* counters = nullptr;
  cudaError_t status = cudaMalloc(&counters, bytes);
  if (status == cudaSuccess) status = cudaMemset(counters, 0, bytes);
  if (status != cudaSuccess) {
    if (counters != nullptr) cudaFree(counters);
    (void)cudaGetLastError();
    log(ILogger::Severity::kWARNING, std::string(mTraits.name) + ": no kept split-K counters (" +
                                         cudaGetErrorName(status) + "): each call zeroes the workspace's (one memset more)");
    return;
  }
  mCounters = static_cast<int*>(counters);
}

IPluginCapability* SpaMatMulPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept {
  switch (type) {
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
  }
  return nullptr;
}

IPluginV3* SpaMatMulPlugin::clone() noexcept {
  try {
    return new SpaMatMulPlugin(mTraits, mFields);
  } catch (const std::exception& error) {
    log(ILogger::Severity::kERROR, error.what());
    return nullptr;
  }
}

bool SpaMatMulPlugin::check(const PluginTensorDesc* in, int32_t nbInputs, const PluginTensorDesc* out,
                            int32_t nbOutputs) const {
  std::string reason;
  if (nbInputs != mTraits.nb_inputs || nbOutputs != 1) {
    reason = "expects " + std::to_string(mTraits.nb_inputs) + " inputs and 1 output";
  } else if (in[0].type != DataType::kHALF && in[0].type != DataType::kBF16) {
    reason = "A must be FP16 or BF16 (build with --fp16 or cast the activations)";
  } else if (in[0].dims.nbDims < 1 || in[0].dims.d[in[0].dims.nbDims - 1] != mFields.K) {
    reason = "the last dim of A must equal K=" + std::to_string(mFields.K);
  } else if (out[0].type != in[0].type) {
    reason = "Y must have A's type";
  } else if (out[0].dims.nbDims != in[0].dims.nbDims ||
             (out[0].dims.d[out[0].dims.nbDims - 1] >= 0 && out[0].dims.d[out[0].dims.nbDims - 1] != mFields.N)) {
    reason = "Y must be [..., N] with N=" + std::to_string(mFields.N);
  } else {
    reason = mTraits.check_weights(mFields, in);
  }
  if (!reason.empty()) log(ILogger::Severity::kERROR, std::string(mTraits.name) + ": " + reason);
  return reason.empty();
}

int32_t SpaMatMulPlugin::configurePlugin(const DynamicPluginTensorDesc* in, int32_t nbInputs,
                                         const DynamicPluginTensorDesc* out, int32_t nbOutputs) noexcept {
  try {
    std::vector<PluginTensorDesc> inputs(static_cast<size_t>(std::max(nbInputs, 0)));
    for (int32_t i = 0; i < nbInputs; ++i) inputs[i] = in[i].desc;
    if (nbOutputs < 1) return -1;
    PluginTensorDesc output = out[0].desc;
    return check(inputs.data(), nbInputs, &output, nbOutputs) ? 0 : -1;
  } catch (const std::exception& error) {
    log(ILogger::Severity::kERROR, std::string(mTraits.name) + ": " + error.what());
    return -1;
  }
}

int32_t SpaMatMulPlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs,
                                            const DataType* inputTypes, int32_t nbInputs) const noexcept {
  if (nbOutputs != 1 || nbInputs != mTraits.nb_inputs) return -1;
  // FP16 and BF16 map to themselves. FP32 passes through: a weakly typed network
  // declares FP32 here and supportsFormatCombination then picks FP16 or BF16.
  DataType a = inputTypes[0];
  if (a != DataType::kHALF && a != DataType::kBF16 && a != DataType::kFLOAT) {
    log(ILogger::Severity::kERROR, std::string(mTraits.name) + ": A must be FP16 or BF16 (FP32 in a weakly typed network)");
    return -1;
  }
  outputTypes[0] = a;
  return 0;
}

int32_t SpaMatMulPlugin::getOutputShapes(const DimsExprs* inputs, int32_t nbInputs, const DimsExprs*,
                                         int32_t, DimsExprs* outputs, int32_t nbOutputs,
                                         IExprBuilder& exprBuilder) noexcept {
  if (nbInputs != mTraits.nb_inputs || nbOutputs != 1 || inputs[0].nbDims < 1) return -1;
  const IDimensionExpr* k = inputs[0].d[inputs[0].nbDims - 1];
  if (k != nullptr && k->isConstant() && k->getConstantValue() != mFields.K) {
    log(ILogger::Severity::kERROR,
        std::string(mTraits.name) + ": the last dim of A must equal K=" + std::to_string(mFields.K) + ", got " +
            std::to_string(k->getConstantValue()));
    return -1;
  }
  outputs[0] = inputs[0];  // [..., K] -> [..., N]
  outputs[0].d[inputs[0].nbDims - 1] = exprBuilder.constant(mFields.N);
  return 0;
}

bool SpaMatMulPlugin::supportsFormatCombination(int32_t pos, const DynamicPluginTensorDesc* inOut,
                                                int32_t nbInputs, int32_t nbOutputs) noexcept {
  if (inOut == nullptr || pos < 0 || pos >= nbInputs + nbOutputs || nbInputs != mTraits.nb_inputs) return false;
  const PluginTensorDesc& desc = inOut[pos].desc;
  if (desc.format != TensorFormat::kLINEAR) return false;
  if (pos == 0) return desc.type == DataType::kHALF || desc.type == DataType::kBF16;
  if (pos == nbInputs) return desc.type == inOut[0].desc.type;  // Y
  return desc.type == mTraits.weight_type(pos);
}

size_t SpaMatMulPlugin::getWorkspaceSize(const DynamicPluginTensorDesc* inputs, int32_t,
                                         const DynamicPluginTensorDesc*, int32_t) const noexcept {
  int64_t rows = rows_of(inputs[0].max);
  if (rows <= 0 || rows > INT32_MAX) return 0;
  return mTraits.workspace_size(static_cast<int>(rows), mFields.N, mFields.K);
}

int32_t SpaMatMulPlugin::onShapeChange(const PluginTensorDesc* in, int32_t nbInputs,
                                       const PluginTensorDesc* out, int32_t nbOutputs) noexcept {
  try {
    return check(in, nbInputs, out, nbOutputs) ? 0 : -1;
  } catch (const std::exception& error) {
    log(ILogger::Severity::kERROR, std::string(mTraits.name) + ": " + error.what());
    return -1;
  }
}

int32_t SpaMatMulPlugin::enqueue(const PluginTensorDesc* inputDesc, const PluginTensorDesc*,
                                 const void* const* inputs, void* const* outputs, void* workspace,
                                 cudaStream_t stream) noexcept {
  try {
    int64_t rows = rows_of(inputDesc[0].dims);
    if (rows == 0) return 0;
    if (rows < 0 || rows > INT32_MAX) {
      log(ILogger::Severity::kERROR, std::string(mTraits.name) + ": enqueue needs 1 to 2^31-1 rows of A");
      return -1;
    }
    // TensorRT allocated getWorkspaceSize() of the profile's max rows; these rows need no more.
    size_t workspace_bytes = workspace ? mTraits.workspace_size(static_cast<int>(rows), mFields.N, mFields.K) : 0;
    cudaError_t status = mTraits.launch(mFields, inputDesc, inputs, outputs[0], rows,
                                        to_spa_dtype(inputDesc[0].type), workspace, workspace_bytes, mCounters,
                                        stream);
    if (status != cudaSuccess) {
      // The launchers map their own argument checks to cudaErrorInvalidValue and name the problem
      // in spa_kernel_error_string(); any other code is the CUDA runtime's (no device, launch, ...).
      bool validation = status == cudaErrorInvalidValue;
      log(ILogger::Severity::kERROR, std::string(mTraits.name) + ": " + cudaGetErrorName(status) + ": " +
                                         (validation ? spa_kernel_error_string() : cudaGetErrorString(status)));
      return -1;
    }
    return 0;
  } catch (const std::exception& error) {
    log(ILogger::Severity::kERROR, std::string(mTraits.name) + ": " + error.what());
    return -1;
  }
}

IPluginV3* SpaMatMulPlugin::attachToContext(IPluginResourceContext*) noexcept {
  IPluginV3* attached = clone();
  if (attached != nullptr) static_cast<SpaMatMulPlugin*>(attached)->keep_counters();
  return attached;
}

const PluginFieldCollection* SpaMatMulPlugin::getFieldsToSerialize() noexcept {
  mSerialized.clear();
  mSerialized.emplace_back("K", &mFields.K, PluginFieldType::kINT32, 1);
  mSerialized.emplace_back("N", &mFields.N, PluginFieldType::kINT32, 1);
  mSerialized.emplace_back("group_size", &mFields.group_size, PluginFieldType::kINT32, 1);
  if (mTraits.has_bits_and_layout) {
    mSerialized.emplace_back("bits", &mFields.bits, PluginFieldType::kINT32, 1);
    mSerialized.emplace_back("layout", mFields.layout.c_str(), PluginFieldType::kCHAR,
                             static_cast<int32_t>(mFields.layout.size() + 1));
  }
  if (mTraits.has_keep) mSerialized.emplace_back("keep", &mFields.keep, PluginFieldType::kINT32, 1);
  mSerializedCollection.nbFields = static_cast<int32_t>(mSerialized.size());
  mSerializedCollection.fields = mSerialized.data();
  return &mSerializedCollection;
}

SpaMatMulCreator::SpaMatMulCreator(const OpTraits& traits) : mTraits(traits) {
  mFieldNames.emplace_back("K", nullptr, PluginFieldType::kINT32, 1);
  mFieldNames.emplace_back("N", nullptr, PluginFieldType::kINT32, 1);
  mFieldNames.emplace_back("group_size", nullptr, PluginFieldType::kINT32, 1);
  if (traits.has_bits_and_layout) {
    mFieldNames.emplace_back("bits", nullptr, PluginFieldType::kINT32, 1);
    mFieldNames.emplace_back("layout", nullptr, PluginFieldType::kCHAR, 0);
  }
  if (traits.has_keep) mFieldNames.emplace_back("keep", nullptr, PluginFieldType::kINT32, 1);
  mCollection.nbFields = static_cast<int32_t>(mFieldNames.size());
  mCollection.fields = mFieldNames.data();
}

namespace {

const char* field_type_name(PluginFieldType type) {
  switch (type) {
    case PluginFieldType::kINT8: return "kINT8";
    case PluginFieldType::kINT16: return "kINT16";
    case PluginFieldType::kINT32: return "kINT32";
    case PluginFieldType::kINT64: return "kINT64";
    case PluginFieldType::kCHAR: return "kCHAR";
    case PluginFieldType::kFLOAT16: return "kFLOAT16";
    case PluginFieldType::kFLOAT32: return "kFLOAT32";
    case PluginFieldType::kFLOAT64: return "kFLOAT64";
    default: return "a non-integer type";
  }
}

// Reads one INT field into `value`; returns "" or the reason. The ONNX parser
// passes INT attributes as kINT32; kINT8/16/64 are accepted where they fit.
std::string read_int(const PluginField& field, int32_t& value) {
  const std::string name = field.name;
  if (field.length < 1) return "field " + name + " is empty (an INT attribute holds one value)";
  int64_t wide = 0;
  switch (field.type) {
    case PluginFieldType::kINT8: wide = *static_cast<const int8_t*>(field.data); break;
    case PluginFieldType::kINT16: wide = *static_cast<const int16_t*>(field.data); break;
    case PluginFieldType::kINT32: wide = *static_cast<const int32_t*>(field.data); break;
    case PluginFieldType::kINT64: wide = *static_cast<const int64_t*>(field.data); break;
    default:
      return "field " + name + " must be an INT (kINT32), got " + field_type_name(field.type);
  }
  if (wide < INT32_MIN || wide > INT32_MAX) return "field " + name + " = " + std::to_string(wide) + " does not fit int32";
  value = static_cast<int32_t>(wide);
  return "";
}

}  // namespace

IPluginV3* SpaMatMulCreator::createPlugin(const char*, const PluginFieldCollection* fc,
                                          TensorRTPhase) noexcept {
  try {
    OpFields fields;
    std::vector<std::string> seen;
    std::string reason;
    for (int32_t i = 0; fc != nullptr && fc->fields != nullptr && i < fc->nbFields && reason.empty(); ++i) {
      const PluginField& field = fc->fields[i];
      std::string name = field.name ? field.name : "";
      bool known = false;
      for (const PluginField& wanted : mFieldNames) known = known || name == wanted.name;
      if (!known) {
        log(ILogger::Severity::kWARNING, std::string(mTraits.name) + ": ignoring unknown field \"" + name + "\"");
        continue;
      }
      if (field.data == nullptr) {
        reason = "field " + name + " has no data";
      } else if (name == "K") {
        reason = read_int(field, fields.K);
      } else if (name == "N") {
        reason = read_int(field, fields.N);
      } else if (name == "group_size") {
        reason = read_int(field, fields.group_size);
      } else if (name == "bits") {
        reason = read_int(field, fields.bits);
      } else if (name == "keep") {
        reason = read_int(field, fields.keep);
      } else if (name == "layout") {
        if (field.type != PluginFieldType::kCHAR) {
          reason = std::string("field layout must be a STRING (kCHAR), got ") + field_type_name(field.type);
        } else {
          fields.layout.assign(static_cast<const char*>(field.data),
                               strnlen(static_cast<const char*>(field.data), static_cast<size_t>(std::max(field.length, 0))));
        }
      }
      seen.push_back(name);
    }
    // Every field is required: the rewrite passes write them all.
    for (const PluginField& wanted : mFieldNames) {
      if (!reason.empty()) break;
      if (std::find(seen.begin(), seen.end(), wanted.name) == seen.end())
        reason = std::string("missing field ") + wanted.name + " (the ONNX attribute of the same name)";
    }
    if (reason.empty()) reason = mTraits.check_fields(fields);
    if (!reason.empty()) {
      log(ILogger::Severity::kERROR, std::string(mTraits.name) + ": " + reason);
      return nullptr;
    }
    return new SpaMatMulPlugin(mTraits, fields);
  } catch (const std::exception& error) {
    log(ILogger::Severity::kERROR, std::string(mTraits.name) + ": " + error.what());
    return nullptr;
  }
}

}  // namespace spa_trt

namespace {
spa_trt::SpaMatMulCreator gW4A16Creator(spa_trt::kW4A16Traits);
spa_trt::SpaMatMulCreator gW4Sparse24Creator(spa_trt::kW4Sparse24Traits);
spa_trt::SpaMatMulCreator gGroupSparseCreator(spa_trt::kGroupSparseTraits);
spa_trt::SpaMatMulCreator gGroupSparseTileCreator(spa_trt::kGroupSparseTileTraits);
nvinfer1::IPluginCreatorInterface* gCreators[] = {&gW4A16Creator, &gW4Sparse24Creator, &gGroupSparseCreator,
                                                  &gGroupSparseTileCreator};
}  // namespace

extern "C" __attribute__((visibility("default"))) void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
  std::lock_guard<std::mutex> lock(spa_trt::gLoggerMutex);
  spa_trt::gLoggerFinder = finder;
}

extern "C" __attribute__((visibility("default"))) nvinfer1::IPluginCreatorInterface* const* getCreators(
    int32_t& nbCreators) {
  nbCreators = static_cast<int32_t>(sizeof(gCreators) / sizeof(gCreators[0]));
  return gCreators;
}
