// Host-side check of the spa TensorRT plugin library with the real TensorRT
// headers and no libnvinfer: the program plays TensorRT's part up to the GPU
// boundary. It dlopens the library (as TensorRT does), hands it a logger
// through setLoggerFinder, and drives every creator and plugin through the
// IPluginV3 calls a build and a runtime make, with good and bad fields, types,
// formats and shapes. Every rejection must come back as null / non-zero with a
// logged reason, never an abort. enqueue runs on tiny buffers: without a GPU
// the CUDA runtime fails and the plugin must return non-zero with a reason;
// with one, the buffers are device memory and enqueue must succeed.
//
// Build (tests/test_plugins.py does this in a temporary folder):
//   g++ -std=c++17 -O1 -I$TensorRT_ROOT/include -I/usr/local/cuda/include
//       plugins/bench/trt_host_check.cpp -o trt_host_check
//       -L/usr/local/cuda/lib64 -lcudart -ldl
// Run: trt_host_check path/to/libspa_trt_plugins.so > report.json
// Output: one JSON document (what each creator reports, the types and formats
// each plugin accepts, the shapes it uses, and a list of checks with ok flags),
// read by tests/test_plugins.py against plugins/trt/contracts/*.json.
// Exit status: 0 when every check passed, 1 when one failed, 2 on a load error.
#include <NvInferRuntime.h>
#include <NvInferVersion.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

using namespace nvinfer1;

namespace {

// ---- a minimal JSON writer ---------------------------------------------------

std::string quote(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buffer[8];
          std::snprintf(buffer, sizeof(buffer), "\\u%04x", c);
          out += buffer;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

template <typename T, typename F>
std::string json_list(const std::vector<T>& items, F&& render) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + render(items[i]);
  return out + "]";
}

std::string json_strings(const std::vector<std::string>& items) {
  return json_list(items, [](const std::string& s) { return quote(s); });
}

std::string json_dims(const Dims& dims) {
  std::string out = "[";
  for (int32_t i = 0; i < dims.nbDims; ++i) out += (i ? ", " : "") + std::to_string(dims.d[i]);
  return out + "]";
}

// ---- names of TensorRT enums -----------------------------------------------

const char* type_name(DataType type) {
  switch (type) {
    case DataType::kFLOAT: return "FLOAT";
    case DataType::kHALF: return "FLOAT16";
    case DataType::kBF16: return "BFLOAT16";
    case DataType::kINT8: return "INT8";
    case DataType::kINT32: return "INT32";
    case DataType::kINT64: return "INT64";
    case DataType::kBOOL: return "BOOL";
    case DataType::kUINT8: return "UINT8";
    default: return "OTHER";
  }
}

const DataType kAllTypes[] = {DataType::kFLOAT, DataType::kHALF, DataType::kBF16, DataType::kINT8,
                              DataType::kINT32, DataType::kINT64, DataType::kBOOL, DataType::kUINT8};

const char* field_type_name(PluginFieldType type) {
  switch (type) {
    case PluginFieldType::kFLOAT16: return "kFLOAT16";
    case PluginFieldType::kFLOAT32: return "kFLOAT32";
    case PluginFieldType::kFLOAT64: return "kFLOAT64";
    case PluginFieldType::kINT8: return "kINT8";
    case PluginFieldType::kINT16: return "kINT16";
    case PluginFieldType::kINT32: return "kINT32";
    case PluginFieldType::kCHAR: return "kCHAR";
    case PluginFieldType::kDIMS: return "kDIMS";
    case PluginFieldType::kUNKNOWN: return "kUNKNOWN";
    case PluginFieldType::kBF16: return "kBF16";
    case PluginFieldType::kINT64: return "kINT64";
    default: return "other";
  }
}

const char* severity_name(ILogger::Severity severity) {
  switch (severity) {
    case ILogger::Severity::kINTERNAL_ERROR: return "INTERNAL_ERROR";
    case ILogger::Severity::kERROR: return "ERROR";
    case ILogger::Severity::kWARNING: return "WARNING";
    case ILogger::Severity::kINFO: return "INFO";
    default: return "VERBOSE";
  }
}

// ---- the logger TensorRT would hand over ----------------------------------

struct Message {
  ILogger::Severity severity;
  std::string text;
};

class CollectingLogger : public ILogger {
 public:
  void log(Severity severity, const char* message) noexcept override {
    messages.push_back({severity, message ? message : ""});
  }
  std::vector<Message> messages;
};

class Finder : public ILoggerFinder {
 public:
  explicit Finder(ILogger* logger) : mLogger(logger) {}
  ILogger* findLogger() override { return mLogger; }

 private:
  ILogger* mLogger;
};

// ---- IExprBuilder: constants fold, anything else is an unknown (-1) --------

class Expr : public IDimensionExpr {
 public:
  Expr(bool constant, int64_t value, bool size_tensor) : mState(constant, value, size_tensor) { mImpl = &mState; }
  ~Expr() noexcept override = default;

 private:
  struct State : apiv::VDimensionExpr {
    State(bool c, int64_t v, bool s) : constant(c), value(v), size_tensor(s) {}
    bool isConstant() const override { return constant; }
    int64_t getConstantValue() const override { return constant ? value : -1; }
    bool isSizeTensor() const override { return size_tensor; }
    bool constant;
    int64_t value;
    bool size_tensor;
  } mState;
};

class ExprBuilder : public IExprBuilder {
 public:
  ExprBuilder() { mImpl = &mState; }
  ~ExprBuilder() noexcept override = default;
  const IDimensionExpr* unknown() { return mState.make(false, -1, false); }

 private:
  struct State : apiv::VExprBuilder {
    const IDimensionExpr* make(bool constant, int64_t value, bool size_tensor) {
      exprs.push_back(std::make_unique<Expr>(constant, value, size_tensor));
      return exprs.back().get();
    }
    const IDimensionExpr* constant(int64_t value) override { return make(true, value, false); }
    const IDimensionExpr* operation(DimensionOperation op, const IDimensionExpr& a,
                                    const IDimensionExpr& b) override {
      if (!a.isConstant() || !b.isConstant()) return make(false, -1, false);
      int64_t x = a.getConstantValue(), y = b.getConstantValue();
      switch (op) {
        case DimensionOperation::kSUM: return make(true, x + y, false);
        case DimensionOperation::kPROD: return make(true, x * y, false);
        case DimensionOperation::kMAX: return make(true, x > y ? x : y, false);
        case DimensionOperation::kMIN: return make(true, x < y ? x : y, false);
        case DimensionOperation::kSUB: return make(true, x - y, false);
        case DimensionOperation::kEQUAL: return make(true, x == y, false);
        case DimensionOperation::kLESS: return make(true, x < y, false);
        case DimensionOperation::kFLOOR_DIV:
          if (y == 0) return nullptr;
          return make(true, x / y - ((x % y != 0) && ((x < 0) != (y < 0))), false);
        case DimensionOperation::kCEIL_DIV:
          if (y == 0) return nullptr;
          return make(true, x / y + ((x % y != 0) && ((x < 0) == (y < 0))), false);
      }
      return nullptr;
    }
    const IDimensionExpr* declareSizeTensor(int32_t, const IDimensionExpr&, const IDimensionExpr&) override {
      return make(false, -1, true);
    }
    std::deque<std::unique_ptr<Expr>> exprs;
  } mState;
};

// ---- plugin fields ---------------------------------------------------------

struct Value {
  PluginFieldType type;
  int64_t number = 0;
  std::string text;
  int32_t length = -1;  // -1: natural length (1 for numbers, size + 1 for text)
};

using FieldMap = std::vector<std::pair<std::string, Value>>;

Value int32_value(int64_t v) { return Value{PluginFieldType::kINT32, v, "", -1}; }
Value text_value(const std::string& s) { return Value{PluginFieldType::kCHAR, 0, s, -1}; }

// Owns the storage behind one PluginFieldCollection.
class FieldStore {
 public:
  explicit FieldStore(const FieldMap& fields) {
    for (const auto& [name, value] : fields) {
      mNames.push_back(name);
      const void* data = nullptr;
      int32_t length = value.length;
      switch (value.type) {
        case PluginFieldType::kINT32:
          mInt32.push_back(static_cast<int32_t>(value.number));
          data = &mInt32.back();
          break;
        case PluginFieldType::kINT64:
          mInt64.push_back(value.number);
          data = &mInt64.back();
          break;
        case PluginFieldType::kINT8:
          mInt8.push_back(static_cast<int8_t>(value.number));
          data = &mInt8.back();
          break;
        case PluginFieldType::kFLOAT32:
          mFloat.push_back(static_cast<float>(value.number));
          data = &mFloat.back();
          break;
        case PluginFieldType::kCHAR:
          mText.push_back(value.text);
          data = mText.back().c_str();
          if (length < 0) length = static_cast<int32_t>(value.text.size() + 1);
          break;
        default: break;
      }
      if (length < 0) length = 1;
      mFields.emplace_back(mNames.back().c_str(), data, value.type, length);
    }
    mCollection.nbFields = static_cast<int32_t>(mFields.size());
    mCollection.fields = mFields.data();
  }
  const PluginFieldCollection* get() const { return &mCollection; }

 private:
  std::deque<std::string> mNames, mText;
  std::deque<int32_t> mInt32;
  std::deque<int64_t> mInt64;
  std::deque<int8_t> mInt8;
  std::deque<float> mFloat;
  std::vector<PluginField> mFields;
  PluginFieldCollection mCollection{};
};

// A serialized collection rendered as text ("K:kINT32=256;...") to compare plugins.
std::string render_fields(const PluginFieldCollection* fc) {
  if (fc == nullptr) return "<null>";
  std::ostringstream out;
  for (int32_t i = 0; i < fc->nbFields; ++i) {
    const PluginField& f = fc->fields[i];
    out << (f.name ? f.name : "<null>") << ":" << field_type_name(f.type) << "=";
    if (f.data == nullptr) {
      out << "<null>";
    } else if (f.type == PluginFieldType::kINT32) {
      out << *static_cast<const int32_t*>(f.data);
    } else if (f.type == PluginFieldType::kINT64) {
      out << *static_cast<const int64_t*>(f.data);
    } else if (f.type == PluginFieldType::kCHAR) {
      out << std::string(static_cast<const char*>(f.data), strnlen(static_cast<const char*>(f.data), f.length));
    } else {
      out << "?";
    }
    out << ";";
  }
  return out.str();
}

// ---- what is checked per op ------------------------------------------------

struct BadField {
  std::string what;
  std::function<void(FieldMap&)> mutate;
  std::string reason;  // a substring the logged error must contain
};

struct OpSpec {
  std::string name;
  FieldMap fields;                                   // a valid set
  std::map<std::string, int64_t> shape_vars;         // K, N, group_size, nnz, keep
  std::vector<std::pair<std::string, Dims>> weights;  // inputs 1.. (name, dims)
  std::vector<BadField> bad_fields;
};

Dims dims_of(std::initializer_list<int64_t> values) {
  Dims dims{};
  dims.nbDims = static_cast<int32_t>(values.size());
  int32_t i = 0;
  for (int64_t v : values) dims.d[i++] = v;
  return dims;
}

void set_field(FieldMap& fields, const std::string& name, Value value) {
  for (auto& [n, v] : fields) {
    if (n == name) {
      v = value;
      return;
    }
  }
  fields.emplace_back(name, value);
}

void drop_field(FieldMap& fields, const std::string& name) {
  for (auto it = fields.begin(); it != fields.end(); ++it) {
    if (it->first == name) {
      fields.erase(it);
      return;
    }
  }
}

std::function<void(FieldMap&)> set_to(const std::string& name, Value value) {
  return [name, value](FieldMap& f) { set_field(f, name, value); };
}
std::function<void(FieldMap&)> drop(const std::string& name) {
  return [name](FieldMap& f) { drop_field(f, name); };
}

// Cases shared by the two group-128 ops (W4A16, W4 + 2:4).
std::vector<BadField> group128_bad_fields() {
  return {
      {"K not a multiple of 128", set_to("K", int32_value(200)), "K must be"},
      {"K zero", set_to("K", int32_value(0)), "K must be"},
      {"K negative", set_to("K", int32_value(-256)), "K must be"},
      {"N not a multiple of 16", set_to("N", int32_value(24)), "N must be"},
      {"N negative", set_to("N", int32_value(-32)), "N must be"},
      {"group_size 64", set_to("group_size", int32_value(64)), "group_size"},
      {"K missing", drop("K"), "K"},
      {"N missing", drop("N"), "N"},
      {"group_size missing", drop("group_size"), "group_size"},
      {"K given as kFLOAT32", set_to("K", Value{PluginFieldType::kFLOAT32, 256, "", -1}), "K"},
      {"K given as kCHAR", set_to("K", text_value("256")), "K"},
      {"K with length 0", set_to("K", Value{PluginFieldType::kINT32, 256, "", 0}), "K"},
      {"K out of int32 range (kINT64)", set_to("K", Value{PluginFieldType::kINT64, (1LL << 32) + 256, "", -1}),
       "K"},
  };
}

std::vector<OpSpec> op_specs() {
  std::vector<OpSpec> specs;
  {
    OpSpec s;
    s.name = "W4A16MatMul";
    s.fields = {{"K", int32_value(256)}, {"N", int32_value(32)}, {"group_size", int32_value(128)}};
    s.shape_vars = {{"K", 256}, {"N", 32}, {"group_size", 128}};
    s.weights = {{"packed", dims_of({2, 16, 32})}, {"scales", dims_of({2, 32})}};
    s.bad_fields = group128_bad_fields();
    specs.push_back(s);
  }
  {
    OpSpec s;
    s.name = "W4Sparse24MatMul";
    s.fields = {{"K", int32_value(256)}, {"N", int32_value(32)}, {"group_size", int32_value(128)}};
    s.shape_vars = {{"K", 256}, {"N", 32}, {"group_size", 128}};
    s.weights = {{"values", dims_of({2, 8, 32})}, {"meta", dims_of({2, 8, 16})}, {"scales", dims_of({2, 32})}};
    s.bad_fields = group128_bad_fields();
    specs.push_back(s);
  }
  {
    OpSpec s;
    s.name = "GroupSparseQuantMatMul";
    s.fields = {{"K", int32_value(256)},
                {"N", int32_value(32)},
                {"group_size", int32_value(16)},
                {"bits", int32_value(4)},
                {"layout", text_value("w4_gqsa")}};
    s.shape_vars = {{"K", 256}, {"N", 32}, {"group_size", 16}, {"nnz", 41}};
    s.weights = {{"values", dims_of({41, 2})},
                 {"group_idx", dims_of({21})},
                 {"row_ptr", dims_of({33})},
                 {"scales", dims_of({41})}};
    s.bad_fields = {
        {"layout of another kernel", set_to("layout", text_value("w4a16")), "layout"},
        {"layout \"w4_gqsa_x\" (length 9)", set_to("layout", text_value("w4_gqsa_x")), "layout"},
        {"layout missing", drop("layout"), "layout"},
        {"layout given as kINT32", set_to("layout", int32_value(7)), "layout"},
        {"bits 8", set_to("bits", int32_value(8)), "bits"},
        {"bits missing", drop("bits"), "bits"},
        {"group_size 12", set_to("group_size", int32_value(12)), "group_size"},
        {"group_size 128", set_to("group_size", int32_value(128)), "group_size"},
        {"group_size missing", drop("group_size"), "group_size"},
        {"K not a multiple of group_size", set_to("K", int32_value(250)), "K must be"},
        {"K / group_size > 65536", set_to("K", int32_value(16 * 65537)), "65536"},
        {"N zero", set_to("N", int32_value(0)), "N must be"},
        {"K missing", drop("K"), "K"},
        {"N missing", drop("N"), "N"},
        {"K given as kFLOAT32", set_to("K", Value{PluginFieldType::kFLOAT32, 256, "", -1}), "K"},
    };
    specs.push_back(s);
  }
  {
    OpSpec s;
    s.name = "GroupSparseTileMatMul";
    s.fields = {{"K", int32_value(384)}, {"N", int32_value(32)}, {"group_size", int32_value(16)}, {"keep", int32_value(4)}};
    s.shape_vars = {{"K", 384}, {"N", 32}, {"group_size", 16}, {"keep", 4}};
    // K = 384: 3 slabs padded to 4 (whole 256-k stages).
    s.weights = {{"values", dims_of({2, 4, 128})}, {"positions", dims_of({2, 4})}, {"scales", dims_of({2, 4, 8, 4, 2})}};
    s.bad_fields = {
        {"keep 3", set_to("keep", int32_value(3)), "keep"},
        {"keep missing", drop("keep"), "keep"},
        {"group_size 128", set_to("group_size", int32_value(128)), "group_size"},
        {"K not a multiple of 128", set_to("K", int32_value(200)), "K must be"},
        {"N not a multiple of 16", set_to("N", int32_value(24)), "N must be"},
        {"K missing", drop("K"), "K"},
        {"keep given as kCHAR", set_to("keep", text_value("4")), "keep"},
    };
    specs.push_back(s);
  }
  return specs;
}

// ---- the run ---------------------------------------------------------------

struct Check {
  std::string op, name;
  bool ok;
  std::string detail;
  std::vector<std::string> logged;
};

class Checker {
 public:
  explicit Checker(CollectingLogger& logger) : mLogger(logger) {}

  size_t mark() const { return mLogger.messages.size(); }

  // Messages logged since `from`, as "SEVERITY: text".
  std::vector<std::string> since(size_t from) const {
    std::vector<std::string> out;
    for (size_t i = from; i < mLogger.messages.size(); ++i)
      out.push_back(std::string(severity_name(mLogger.messages[i].severity)) + ": " + mLogger.messages[i].text);
    return out;
  }

  // True when an error naming `op` and containing `reason` was logged since `from`.
  bool logged_error(size_t from, const std::string& op, const std::string& reason,
                    ILogger::Severity severity = ILogger::Severity::kERROR) const {
    for (size_t i = from; i < mLogger.messages.size(); ++i) {
      const Message& m = mLogger.messages[i];
      if (m.severity == severity && m.text.find(op) != std::string::npos && m.text.find(reason) != std::string::npos)
        return true;
    }
    return false;
  }

  void record(const std::string& op, const std::string& name, bool ok, const std::string& detail, size_t from) {
    checks.push_back({op, name, ok, detail, since(from)});
    if (!ok) ++failed;
  }

  std::vector<Check> checks;
  int failed = 0;

 private:
  CollectingLogger& mLogger;
};

std::string check_json(const Check& c) {
  return "{\"op\": " + quote(c.op) + ", \"check\": " + quote(c.name) + ", \"ok\": " + (c.ok ? "true" : "false") +
         ", \"detail\": " + quote(c.detail) + ", \"logged\": " + json_strings(c.logged) + "}";
}

// Tensor descriptions of one valid configuration: A [2, 3, K] (max [4, 3, K]), weights, Y.
struct Io {
  std::vector<DynamicPluginTensorDesc> dyn;  // inputs then the output
  std::vector<PluginTensorDesc> desc;
  int32_t nb_inputs = 0;

  Io(const OpSpec& spec, DataType a_type) {
    int64_t K = spec.shape_vars.at("K"), N = spec.shape_vars.at("N");
    auto add = [this](Dims dims, Dims min, Dims max, DataType type) {
      DynamicPluginTensorDesc d{};
      d.desc.dims = dims;
      d.desc.type = type;
      d.desc.format = TensorFormat::kLINEAR;
      d.desc.scale = 1.0F;
      d.min = min;
      d.opt = dims;
      d.max = max;
      dyn.push_back(d);
    };
    add(dims_of({-1, 3, K}), dims_of({1, 3, K}), dims_of({4, 3, K}), a_type);
    for (size_t i = 0; i < spec.weights.size(); ++i) {
      bool scales = i + 1 == spec.weights.size();
      const Dims& w = spec.weights[i].second;
      add(w, w, w, scales ? DataType::kHALF : DataType::kINT32);
    }
    nb_inputs = static_cast<int32_t>(dyn.size());
    add(dims_of({-1, 3, N}), dims_of({1, 3, N}), dims_of({4, 3, N}), a_type);
    for (auto& d : dyn) desc.push_back(d.desc);
    desc[0].dims = dims_of({2, 3, K});  // runtime shapes
    desc.back().dims = dims_of({2, 3, N});
  }
};

struct Plugin {
  IPluginV3* v3 = nullptr;
  IPluginV3OneCore* core = nullptr;
  IPluginV3OneBuild* build = nullptr;
  IPluginV3OneRuntime* runtime = nullptr;
};

Plugin capabilities(IPluginV3* plugin) {
  Plugin p;
  p.v3 = plugin;
  if (plugin == nullptr) return p;
  p.core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
  p.build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
  p.runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
  return p;
}

std::string serialized(IPluginV3* plugin) {
  if (plugin == nullptr) return "<null plugin>";
  auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
  return runtime ? render_fields(runtime->getFieldsToSerialize()) : "<no runtime capability>";
}

struct OpReport {
  std::string name, version, nspace, interface_kind;
  int32_t interface_major = 0;
  std::vector<std::string> field_names, field_types;
  std::map<std::string, std::vector<std::string>> formats_fp16, formats_bf16;  // pos -> accepted types
  std::string output_type_fp16, output_type_bf16, output_type_fp32;
  std::string output_shape, output_shape_symbolic;
  size_t workspace = 0;
  std::string workspace_max_dims;
  std::string serialized_fields;
  std::vector<std::pair<std::string, std::string>> inputs;  // name, dims
  std::map<std::string, int64_t> shape_vars;
};

// Runs every check on one creator.
OpReport check_creator(IPluginCreatorV3One* creator, const OpSpec& spec, Checker& c, bool have_gpu) {
  OpReport r;
  const std::string op = spec.name;
  r.name = creator->getPluginName();
  r.version = creator->getPluginVersion();
  r.nspace = creator->getPluginNamespace();
  r.shape_vars = spec.shape_vars;
  r.inputs.emplace_back("A", "[-1, 3, " + std::to_string(spec.shape_vars.at("K")) + "]");
  for (const auto& [name, dims] : spec.weights) r.inputs.emplace_back(name, json_dims(dims));

  size_t from = c.mark();
  const PluginFieldCollection* names = creator->getFieldNames();
  bool names_ok = names != nullptr && names->nbFields >= 0 && (names->nbFields == 0 || names->fields != nullptr);
  for (int32_t i = 0; names_ok && i < names->nbFields; ++i) {
    r.field_names.push_back(names->fields[i].name ? names->fields[i].name : "<null>");
    r.field_types.push_back(field_type_name(names->fields[i].type));
  }
  c.record(op, "getFieldNames lists the fields", names_ok && !r.field_names.empty(),
           json_strings(r.field_names), from);

  // createPlugin with bad fields: null + a logged reason, for both phases.
  for (const BadField& bad : spec.bad_fields) {
    for (TensorRTPhase phase : {TensorRTPhase::kBUILD, TensorRTPhase::kRUNTIME}) {
      FieldMap fields = spec.fields;
      bad.mutate(fields);
      FieldStore store(fields);
      from = c.mark();
      IPluginV3* plugin = creator->createPlugin(op.c_str(), store.get(), phase);
      bool ok = plugin == nullptr && c.logged_error(from, op, bad.reason);
      c.record(op, "createPlugin rejects: " + bad.what + (phase == TensorRTPhase::kBUILD ? " (kBUILD)" : " (kRUNTIME)"),
               ok, plugin ? "a plugin was created: " + serialized(plugin) : "null", from);
      delete plugin;
    }
  }
  {
    from = c.mark();
    IPluginV3* plugin = creator->createPlugin(op.c_str(), nullptr, TensorRTPhase::kBUILD);
    c.record(op, "createPlugin rejects a null field collection", plugin == nullptr && c.logged_error(from, op, ""),
             plugin ? "a plugin was created" : "null", from);
    delete plugin;
  }
  {  // an unknown field is ignored with a warning (the ONNX parser passes every attribute)
    FieldMap fields = spec.fields;
    set_field(fields, "alpha", int32_value(1));
    FieldStore store(fields);
    from = c.mark();
    IPluginV3* plugin = creator->createPlugin(op.c_str(), store.get(), TensorRTPhase::kBUILD);
    c.record(op, "createPlugin warns about an unknown field",
             plugin != nullptr && c.logged_error(from, op, "alpha", ILogger::Severity::kWARNING),
             plugin ? "created" : "null", from);
    delete plugin;
  }
  {  // INT attributes as kINT64 are accepted and equal to kINT32 ones
    FieldMap fields = spec.fields;
    for (auto& [name, value] : fields)
      if (value.type == PluginFieldType::kINT32) value.type = PluginFieldType::kINT64;
    FieldStore store(fields), reference(spec.fields);
    from = c.mark();
    IPluginV3* plugin = creator->createPlugin(op.c_str(), store.get(), TensorRTPhase::kBUILD);
    IPluginV3* expected = creator->createPlugin(op.c_str(), reference.get(), TensorRTPhase::kBUILD);
    c.record(op, "createPlugin accepts kINT64 fields", plugin != nullptr && serialized(plugin) == serialized(expected),
             serialized(plugin), from);
    delete plugin;
    delete expected;
  }

  for (const auto& [name, value] : spec.fields) {
    if (value.type != PluginFieldType::kCHAR) continue;
    // The ONNX parser passes a STRING attribute as its bytes, length = size, no NUL:
    // the plugin must read `length` bytes, not up to a NUL.
    FieldMap fields = spec.fields;
    set_field(fields, name, Value{PluginFieldType::kCHAR, 0, value.text + "_x", static_cast<int32_t>(value.text.size())});
    FieldStore store(fields), reference(spec.fields);
    from = c.mark();
    IPluginV3* plugin = creator->createPlugin(op.c_str(), store.get(), TensorRTPhase::kBUILD);
    IPluginV3* expected = creator->createPlugin(op.c_str(), reference.get(), TensorRTPhase::kBUILD);
    c.record(op, "createPlugin reads a kCHAR field " + name + " up to its length (no NUL)",
             plugin != nullptr && serialized(plugin) == serialized(expected), serialized(plugin), from);
    delete plugin;
    delete expected;
  }

  FieldStore store(spec.fields);
  from = c.mark();
  IPluginV3* plugin = creator->createPlugin(op.c_str(), store.get(), TensorRTPhase::kBUILD);
  c.record(op, "createPlugin(kBUILD) with valid fields", plugin != nullptr && c.since(from).empty(),
           render_fields(store.get()), from);
  if (plugin == nullptr) return r;

  // Capabilities.
  from = c.mark();
  Plugin p = capabilities(plugin);
  std::string kinds;
  bool caps_ok = p.core && p.build && p.runtime;
  if (caps_ok) {
    kinds = std::string(plugin->getInterfaceInfo().kind) + " " + p.core->getInterfaceInfo().kind + " " +
            p.build->getInterfaceInfo().kind + " " + p.runtime->getInterfaceInfo().kind;
    caps_ok = kinds == "PLUGIN PLUGIN_V3ONE_CORE PLUGIN_V3ONE_BUILD PLUGIN_V3ONE_RUNTIME";
  }
  c.record(op, "getCapabilityInterface(kCORE, kBUILD, kRUNTIME)", caps_ok, kinds, from);
  from = c.mark();
  c.record(op, "getCapabilityInterface of an unknown type is null",
           plugin->getCapabilityInterface(static_cast<PluginCapabilityType>(42)) == nullptr, "", from);
  if (!caps_ok) {
    delete plugin;
    return r;
  }
  from = c.mark();
  c.record(op, "core name/version/namespace equal the creator's",
           r.name == p.core->getPluginName() && r.version == p.core->getPluginVersion() &&
               r.nspace == p.core->getPluginNamespace(),
           std::string(p.core->getPluginName()) + " " + p.core->getPluginVersion(), from);
  from = c.mark();
  c.record(op, "getNbOutputs == 1", p.build->getNbOutputs() == 1, std::to_string(p.build->getNbOutputs()), from);

  // getOutputDataTypes.
  const int32_t nb_inputs = static_cast<int32_t>(spec.weights.size()) + 1;
  auto output_type = [&](DataType a, int32_t nb_outputs, int32_t* status) {
    std::vector<DataType> in(static_cast<size_t>(nb_inputs), DataType::kINT32);
    in[0] = a;
    in.back() = DataType::kHALF;
    DataType out[2] = {DataType::kBOOL, DataType::kBOOL};
    *status = p.build->getOutputDataTypes(out, nb_outputs, in.data(), nb_inputs);
    return out[0];
  };
  int32_t status = 0;
  for (auto [a, slot] : {std::pair<DataType, std::string*>{DataType::kHALF, &r.output_type_fp16},
                         {DataType::kBF16, &r.output_type_bf16},
                         {DataType::kFLOAT, &r.output_type_fp32}}) {
    from = c.mark();
    DataType out = output_type(a, 1, &status);
    *slot = status == 0 ? type_name(out) : "rejected";
    // FP32 may pass through (weakly typed networks declare FP32; supportsFormatCombination
    // then picks FP16/BF16) or be rejected with a reason; FP16/BF16 must map to themselves.
    bool ok = a == DataType::kFLOAT ? (status == 0 ? out == a : c.logged_error(from, op, ""))
                                    : (status == 0 && out == a);
    c.record(op, std::string("getOutputDataTypes(") + type_name(a) + ")", ok, *slot, from);
  }
  for (DataType bad : {DataType::kINT32, DataType::kINT8}) {
    from = c.mark();
    output_type(bad, 1, &status);
    c.record(op, std::string("getOutputDataTypes rejects A ") + type_name(bad), status != 0 && c.logged_error(from, op, ""),
             std::to_string(status), from);
  }
  from = c.mark();
  output_type(DataType::kHALF, 2, &status);
  c.record(op, "getOutputDataTypes rejects 2 outputs", status != 0, std::to_string(status), from);

  // getOutputShapes with constants and with a symbolic batch dim.
  {
    ExprBuilder builder;
    int64_t K = spec.shape_vars.at("K"), N = spec.shape_vars.at("N");
    std::vector<DimsExprs> in(static_cast<size_t>(nb_inputs));
    auto set_expr = [&](DimsExprs& e, const Dims& d) {
      e.nbDims = d.nbDims;
      for (int32_t i = 0; i < d.nbDims; ++i) e.d[i] = builder.constant(d.d[i]);
    };
    set_expr(in[0], dims_of({2, 3, K}));
    for (size_t i = 0; i < spec.weights.size(); ++i) set_expr(in[i + 1], spec.weights[i].second);
    DimsExprs out[1]{};
    from = c.mark();
    status = p.build->getOutputShapes(in.data(), nb_inputs, nullptr, 0, out, 1, builder);
    auto render = [](const DimsExprs& e) {
      std::string s = "[";
      for (int32_t i = 0; i < e.nbDims; ++i)
        s += (i ? ", " : "") + (e.d[i] && e.d[i]->isConstant() ? std::to_string(e.d[i]->getConstantValue()) : "?");
      return s + "]";
    };
    r.output_shape = status == 0 ? render(out[0]) : "error";
    c.record(op, "getOutputShapes [2, 3, K] -> [2, 3, N]",
             status == 0 && r.output_shape == "[2, 3, " + std::to_string(N) + "]", r.output_shape, from);
    in[0].d[0] = builder.unknown();
    DimsExprs out2[1]{};
    from = c.mark();
    status = p.build->getOutputShapes(in.data(), nb_inputs, nullptr, 0, out2, 1, builder);
    r.output_shape_symbolic = status == 0 ? render(out2[0]) : "error";
    c.record(op, "getOutputShapes [?, 3, K] -> [?, 3, N]",
             status == 0 && r.output_shape_symbolic == "[?, 3, " + std::to_string(N) + "]", r.output_shape_symbolic,
             from);
    std::vector<DimsExprs> wrong_k = in;
    wrong_k[0].d[2] = builder.constant(K + 8);
    from = c.mark();
    status = p.build->getOutputShapes(wrong_k.data(), nb_inputs, nullptr, 0, out2, 1, builder);
    c.record(op, "getOutputShapes rejects A [?, 3, K+8] with a logged reason",
             status != 0 && c.logged_error(from, op, "K="), std::to_string(status), from);
    from = c.mark();
    status = p.build->getOutputShapes(in.data(), nb_inputs - 1, nullptr, 0, out2, 1, builder);
    c.record(op, "getOutputShapes rejects a missing input", status != 0, std::to_string(status), from);
    DimsExprs scalar[1]{};
    scalar[0].nbDims = 0;
    std::vector<DimsExprs> in0 = in;
    in0[0] = scalar[0];
    from = c.mark();
    status = p.build->getOutputShapes(in0.data(), nb_inputs, nullptr, 0, out2, 1, builder);
    c.record(op, "getOutputShapes rejects a rank-0 A", status != 0, std::to_string(status), from);
  }

  // supportsFormatCombination: which types each position accepts (kLINEAR), given A's type.
  for (DataType a : {DataType::kHALF, DataType::kBF16}) {
    Io io(spec, a);
    auto& table = a == DataType::kHALF ? r.formats_fp16 : r.formats_bf16;
    from = c.mark();
    int32_t total = io.nb_inputs + 1;
    for (int32_t pos = 0; pos < total; ++pos) {
      std::vector<std::string> accepted;
      for (DataType t : kAllTypes) {
        std::vector<DynamicPluginTensorDesc> inout = io.dyn;
        inout[pos].desc.type = t;
        if (p.build->supportsFormatCombination(pos, inout.data(), io.nb_inputs, 1)) accepted.push_back(type_name(t));
      }
      std::string key = pos == io.nb_inputs ? "Y" : pos == 0 ? "A" : spec.weights[pos - 1].first;
      table[key] = accepted;
    }
    // Non-linear formats are refused at every position.
    bool nonlinear_refused = true;
    for (int32_t pos = 0; pos < total; ++pos) {
      for (TensorFormat f : {TensorFormat::kCHW32, TensorFormat::kHWC8, TensorFormat::kCHW2}) {
        std::vector<DynamicPluginTensorDesc> inout = io.dyn;
        inout[pos].desc.format = f;
        if (p.build->supportsFormatCombination(pos, inout.data(), io.nb_inputs, 1)) nonlinear_refused = false;
      }
    }
    c.record(op, std::string("supportsFormatCombination refuses non-linear formats (A ") + type_name(a) + ")",
             nonlinear_refused, "", from);
    from = c.mark();
    bool out_of_range = p.build->supportsFormatCombination(total, io.dyn.data(), io.nb_inputs, 1) ||
                        p.build->supportsFormatCombination(-1, io.dyn.data(), io.nb_inputs, 1);
    c.record(op, std::string("supportsFormatCombination refuses positions out of range (A ") + type_name(a) + ")",
             !out_of_range, "", from);
  }

  // configurePlugin: good, then each kind of bad description.
  {
    Io io(spec, DataType::kHALF);
    from = c.mark();
    status = p.build->configurePlugin(io.dyn.data(), io.nb_inputs, &io.dyn.back(), 1);
    c.record(op, "configurePlugin with valid descriptions", status == 0 && c.since(from).empty(),
             std::to_string(status), from);
    struct Bad {
      std::string what, reason;
      std::function<void(Io&)> mutate;
      int32_t drop_inputs;
    };
    std::vector<Bad> bads = {
        {"A FP32", "A must be", [](Io& x) { x.dyn[0].desc.type = DataType::kFLOAT; }, 0},
        {"A INT8", "A must be", [](Io& x) { x.dyn[0].desc.type = DataType::kINT8; }, 0},
        {"A last dim != K", "K=", [](Io& x) { x.dyn[0].desc.dims.d[2] += 8; }, 0},
        {"Y BF16 with A FP16", "Y", [](Io& x) { x.dyn.back().desc.type = DataType::kBF16; }, 0},
        {"Y last dim != N", "N=", [](Io& x) { x.dyn.back().desc.dims.d[2] += 16; }, 0},
        {"one input missing", "inputs", [](Io&) {}, 1},
    };
    for (size_t i = 0; i < spec.weights.size(); ++i) {
      std::string name = spec.weights[i].first;
      bads.push_back({name + " first dim + 1", name, [i](Io& x) { x.dyn[i + 1].desc.dims.d[0] += 1; }, 0});
    }
    for (Bad& bad : bads) {
      Io x(spec, DataType::kHALF);
      bad.mutate(x);
      from = c.mark();
      status = p.build->configurePlugin(x.dyn.data(), x.nb_inputs - bad.drop_inputs, &x.dyn.back(), 1);
      c.record(op, "configurePlugin rejects: " + bad.what, status != 0 && c.logged_error(from, op, bad.reason),
               std::to_string(status), from);
    }
  }

  // getWorkspaceSize over the profile's max shape.
  {
    Io io(spec, DataType::kHALF);
    from = c.mark();
    r.workspace = p.build->getWorkspaceSize(io.dyn.data(), io.nb_inputs, &io.dyn.back(), 1);
    r.workspace_max_dims = json_dims(io.dyn[0].max);
    // w4a16 / w4_sp24 / w4_gqsa_tile reserve FP32 split-K sums; w4_gqsa needs none (the test compares with the contracts).
    const bool needs_workspace = std::string(op) != "GroupSparseQuantMatMul";
    c.record(op, "getWorkspaceSize", needs_workspace ? r.workspace > 0 : r.workspace == 0, std::to_string(r.workspace), from);
  }

  // Serialization round trip, clone, attachToContext.
  from = c.mark();
  r.serialized_fields = render_fields(p.runtime->getFieldsToSerialize());
  std::string given = render_fields(store.get());
  c.record(op, "getFieldsToSerialize equals the fields given", r.serialized_fields == given,
           r.serialized_fields + " vs " + given, from);
  {
    from = c.mark();
    IPluginV3* copy = creator->createPlugin(op.c_str(), p.runtime->getFieldsToSerialize(), TensorRTPhase::kRUNTIME);
    c.record(op, "createPlugin(kRUNTIME) from getFieldsToSerialize round-trips",
             copy != nullptr && serialized(copy) == r.serialized_fields, serialized(copy), from);
    delete copy;
  }
  IPluginV3* clone = plugin->clone();
  from = c.mark();
  c.record(op, "clone", clone != nullptr && clone != plugin && serialized(clone) == r.serialized_fields,
           serialized(clone), from);
  // The clone is independent: destroying the original leaves it intact.
  delete plugin;
  plugin = nullptr;
  Plugin q = capabilities(clone);
  if (clone == nullptr || q.runtime == nullptr) return r;
  from = c.mark();
  IPluginV3* attached = q.runtime->attachToContext(nullptr);
  c.record(op, "attachToContext(nullptr)", attached != nullptr && serialized(attached) == r.serialized_fields,
           serialized(attached), from);
  delete clone;
  if (attached == nullptr) return r;
  Plugin a = capabilities(attached);

  // onShapeChange with runtime shapes.
  {
    Io io(spec, DataType::kHALF);
    from = c.mark();
    status = a.runtime->onShapeChange(io.desc.data(), io.nb_inputs, &io.desc.back(), 1);
    c.record(op, "onShapeChange with valid shapes", status == 0 && c.since(from).empty(), std::to_string(status),
             from);
    io.desc[0].dims.d[2] = 1;
    from = c.mark();
    status = a.runtime->onShapeChange(io.desc.data(), io.nb_inputs, &io.desc.back(), 1);
    c.record(op, "onShapeChange rejects A [2, 3, 1]", status != 0 && c.logged_error(from, op, "K="),
             std::to_string(status), from);
  }

  // enqueue on tiny buffers.
  {
    Io io(spec, DataType::kHALF);
    std::vector<size_t> bytes;
    for (int32_t i = 0; i <= io.nb_inputs; ++i) {
      int64_t count = 1;
      for (int32_t d = 0; d < io.desc[i].dims.nbDims; ++d) count *= io.desc[i].dims.d[d];
      size_t element = io.desc[i].type == DataType::kINT32 ? 4 : 2;
      bytes.push_back(static_cast<size_t>(count) * element);
    }
    std::vector<std::vector<uint8_t>> host;
    std::vector<void*> device;
    std::vector<const void*> inputs;
    void* output = nullptr;
    void* workspace = nullptr;
    for (size_t i = 0; i < bytes.size(); ++i) host.emplace_back(bytes[i], 0);
    // Zero weights and scales (Y = 0), but well-formed indices: a valid BSR row_ptr
    // and ordered 2:4 metadata (i0 = 0, i1 = 1 in every nibble).
    for (size_t i = 1; i < spec.weights.size() + 1; ++i) {
      auto* words = reinterpret_cast<int32_t*>(host[i].data());
      size_t count = host[i].size() / 4;
      if (spec.weights[i - 1].first == "meta")
        for (size_t w = 0; w < count; ++w) words[w] = 0x44444444;
      if (spec.weights[i - 1].first == "row_ptr") {
        int64_t nnz = spec.shape_vars.at("nnz");
        for (size_t n = 0; n < count; ++n) words[n] = static_cast<int32_t>(nnz * static_cast<int64_t>(n) / (count - 1));
      }
    }
    if (have_gpu) {
      for (size_t i = 0; i < bytes.size(); ++i) {
        void* ptr = nullptr;
        cudaMalloc(&ptr, bytes[i]);
        cudaMemcpy(ptr, host[i].data(), bytes[i], cudaMemcpyHostToDevice);
        device.push_back(ptr);
      }
      cudaMalloc(&workspace, r.workspace);
      for (int32_t i = 0; i < io.nb_inputs; ++i) inputs.push_back(device[i]);
      output = device.back();
    } else {
      static std::vector<uint8_t> host_workspace;
      host_workspace.assign(r.workspace, 0);
      workspace = host_workspace.data();
      for (int32_t i = 0; i < io.nb_inputs; ++i) inputs.push_back(host[i].data());
      output = host.back().data();
    }
    void* outputs[1] = {output};
    from = c.mark();
    status = a.runtime->enqueue(io.desc.data(), &io.desc.back(), inputs.data(), outputs, workspace, nullptr);
    if (have_gpu) {
      cudaError_t sync = cudaDeviceSynchronize();
      std::vector<uint8_t> y(bytes.back(), 0xff);
      cudaMemcpy(y.data(), device.back(), y.size(), cudaMemcpyDeviceToHost);
      bool zero = true;
      for (size_t b = 0; b < y.size(); b += 2) zero = zero && (y[b] == 0 && (y[b + 1] & 0x7f) == 0);  // +-0
      c.record(op, "enqueue on device buffers succeeds (zero weights -> Y = 0)", status == 0 && sync == cudaSuccess && zero,
               std::to_string(status) + " " + cudaGetErrorName(sync), from);
    } else {
      c.record(op, "enqueue without a GPU returns non-zero with a logged CUDA error",
               status != 0 && c.logged_error(from, op, "cuda"), std::to_string(status), from);
    }
    // A null data pointer: the launcher's validation refuses it before any CUDA call.
    std::vector<const void*> with_null = inputs;
    with_null[0] = nullptr;
    from = c.mark();
    status = a.runtime->enqueue(io.desc.data(), &io.desc.back(), with_null.data(), outputs, workspace, nullptr);
    c.record(op, "enqueue with a null A returns non-zero with a logged reason",
             status != 0 && c.logged_error(from, op, "NULL"), std::to_string(status), from);
    // Zero rows: nothing to do, no CUDA call.
    Io empty(spec, DataType::kHALF);
    empty.desc[0].dims.d[0] = 0;
    empty.desc.back().dims.d[0] = 0;
    from = c.mark();
    status = a.runtime->enqueue(empty.desc.data(), &empty.desc.back(), inputs.data(), outputs, workspace, nullptr);
    c.record(op, "enqueue with 0 rows returns 0", status == 0 && c.since(from).empty(), std::to_string(status), from);
    for (void* ptr : device) cudaFree(ptr);
    if (have_gpu) cudaFree(workspace);
  }
  delete attached;
  return r;
}

std::string formats_json(const std::map<std::string, std::vector<std::string>>& table) {
  std::string out = "{";
  bool first = true;
  for (const auto& [key, types] : table) {
    out += (first ? "" : ", ") + quote(key) + ": " + json_strings(types);
    first = false;
  }
  return out + "}";
}

std::string report_json(const OpReport& r) {
  std::ostringstream o;
  o << "{\"name\": " << quote(r.name) << ", \"version\": " << quote(r.version) << ", \"namespace\": " << quote(r.nspace)
    << ", \"interface\": " << quote(r.interface_kind) << ", \"interface_major\": " << r.interface_major
    << ", \"fields\": " << json_strings(r.field_names) << ", \"field_types\": " << json_strings(r.field_types)
    << ", \"shape_vars\": {";
  bool first = true;
  for (const auto& [k, v] : r.shape_vars) {
    o << (first ? "" : ", ") << quote(k) << ": " << v;
    first = false;
  }
  o << "}, \"inputs\": " << json_list(r.inputs, [](const std::pair<std::string, std::string>& in) {
    return "{\"name\": " + quote(in.first) + ", \"dims\": " + in.second + "}";
  });
  o << ", \"formats_fp16\": " << formats_json(r.formats_fp16) << ", \"formats_bf16\": " << formats_json(r.formats_bf16)
    << ", \"output_types\": {\"FLOAT16\": " << quote(r.output_type_fp16) << ", \"BFLOAT16\": " << quote(r.output_type_bf16)
    << ", \"FLOAT\": " << quote(r.output_type_fp32) << "}, \"output_shape\": " << quote(r.output_shape)
    << ", \"output_shape_symbolic\": " << quote(r.output_shape_symbolic) << ", \"workspace_bytes\": " << r.workspace
    << ", \"workspace_max_dims\": " << r.workspace_max_dims << ", \"serialized\": " << quote(r.serialized_fields) << "}";
  return o.str();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s LIBSPA_TRT_PLUGINS.so\n", argv[0]);
    return 2;
  }
  void* library = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (library == nullptr) {
    std::fprintf(stderr, "error: cannot load %s: %s\n", argv[1], dlerror());
    return 2;
  }
  using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);
  using SetLoggerFinder = void (*)(ILoggerFinder*);
  auto get_creators = reinterpret_cast<GetCreators>(dlsym(library, "getCreators"));
  auto set_logger_finder = reinterpret_cast<SetLoggerFinder>(dlsym(library, "setLoggerFinder"));
  if (get_creators == nullptr || set_logger_finder == nullptr) {
    std::fprintf(stderr, "error: %s does not export getCreators and setLoggerFinder\n", argv[1]);
    return 2;
  }
  CollectingLogger logger;
  Finder finder(&logger);
  Checker c(logger);

  // Only the two entry points are visible.
  size_t from = c.mark();
  std::vector<std::string> leaked;
  for (const char* symbol : {"spa_w4a16_gemm", "spa_w4_sp24_gemm", "spa_w4_gqsa_gemm", "spa_w4_gqsa_tile_gemm",
                             "spa_kernel_error_string",
                             "getPluginCreators", "initLibNvInferPlugins"})
    if (dlsym(library, symbol) != nullptr) leaked.push_back(symbol);
  c.record("library", "exports only getCreators and setLoggerFinder", leaked.empty(), json_strings(leaked), from);

  int32_t count = -1;
  IPluginCreatorInterface* const* creators = get_creators(count);
  from = c.mark();
  c.record("library", "getCreators returns creators", creators != nullptr && count > 0, std::to_string(count), from);
  if (creators == nullptr || count <= 0) count = 0;

  // Before setLoggerFinder: a bad createPlugin returns null without a logger and without crashing.
  std::vector<OpSpec> specs = op_specs();
  if (count > 0 && std::strcmp(creators[0]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0) {
    auto* first = static_cast<IPluginCreatorV3One*>(creators[0]);
    FieldStore empty(FieldMap{});
    from = c.mark();
    IPluginV3* plugin = first->createPlugin("x", empty.get(), TensorRTPhase::kBUILD);
    c.record("library", "createPlugin with bad fields and no logger returns null", plugin == nullptr, "", from);
    delete plugin;
  }
  set_logger_finder(&finder);

  std::vector<OpReport> reports;
  std::vector<std::string> seen;
  int have_gpu_count = 0;
  bool have_gpu = cudaGetDeviceCount(&have_gpu_count) == cudaSuccess && have_gpu_count > 0;
  cudaGetLastError();
  for (int32_t i = 0; i < count; ++i) {
    IPluginCreatorInterface* base = creators[i];
    InterfaceInfo info = base->getInterfaceInfo();
    from = c.mark();
    bool v3 = std::strcmp(info.kind, "PLUGIN CREATOR_V3ONE") == 0 && info.major == 1;
    c.record("library", "creator " + std::to_string(i) + " is an IPluginCreatorV3One", v3,
             std::string(info.kind) + " " + std::to_string(info.major), from);
    if (!v3) continue;
    auto* creator = static_cast<IPluginCreatorV3One*>(base);
    std::string name = creator->getPluginName();
    seen.push_back(name);
    const OpSpec* spec = nullptr;
    for (const OpSpec& s : specs)
      if (s.name == name) spec = &s;
    from = c.mark();
    c.record("library", "creator " + name + " has a check table here", spec != nullptr, "", from);
    if (spec == nullptr) continue;
    OpReport report = check_creator(creator, *spec, c, have_gpu);
    report.interface_kind = info.kind;
    report.interface_major = info.major;
    reports.push_back(report);
  }
  for (const OpSpec& s : specs) {
    bool found = false;
    for (const std::string& name : seen) found = found || name == s.name;
    from = c.mark();
    c.record("library", "getCreators includes " + s.name, found, "", from);
  }
  set_logger_finder(nullptr);

  std::ostringstream out;
  out << "{\"tensorrt_headers\": " << quote(std::to_string(NV_TENSORRT_MAJOR) + "." + std::to_string(NV_TENSORRT_MINOR) +
                                            "." + std::to_string(NV_TENSORRT_PATCH))
      << ",\n \"gpu\": " << (have_gpu ? "true" : "false") << ",\n \"creators\": "
      << json_list(reports, report_json) << ",\n \"checks\": [\n  ";
  for (size_t i = 0; i < c.checks.size(); ++i) out << (i ? ",\n  " : "") << check_json(c.checks[i]);
  out << "],\n \"passed\": " << (c.checks.size() - static_cast<size_t>(c.failed)) << ",\n \"failed\": " << c.failed
      << "}\n";
  std::fputs(out.str().c_str(), stdout);
  return c.failed == 0 ? 0 : 1;
}
