// Contract errors shared by the library's ops: one exception type, messages "<Op>: <what>", and the
// formatting helpers the messages use. Each op wraps `op_fail` with its own name (see `fail` in the .cpp).
#pragma once

#include <onnxruntime_cxx_api.h>

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace mbq {

// Thrown for contract violations; turned into an ORT status "<Op>: <what>".
struct OpError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <typename... Ts>
[[noreturn]] void op_fail(const char* op, const Ts&... parts) {
  std::ostringstream os;
  os << op << ": ";
  (os << ... << parts);
  throw OpError(os.str());
}

inline std::string shape_str(const std::vector<int64_t>& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

inline const char* type_name(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return "uint8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return "int8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "float64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16: return "uint16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16: return "int16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL: return "bool";
    default: return "another type";
  }
}

}  // namespace mbq
