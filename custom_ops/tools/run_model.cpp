// mbq_run_model: run ONNX models with libmbq_ops registered, inputs/outputs as .npy files.
//
// A small, dependency-free C++ driver for the ORT C++ API, used to run the kernel tests where
// Python cannot go (e.g. the cross-built linux-aarch64 library under qemu-user).
//
//   mbq_run_model [--ops LIB.so] [--threads N] [--outputs NAME] [--repeat R] [--mark] CASE_DIR...
//
// Each CASE_DIR holds `model.onnx` and `inputs/<input name>.npy` (one per graph input).
// The runner writes `<NAME>/<output name>.npy` (NAME defaults to `outputs`), or `<NAME>/error.txt`
// with the ORT error message when loading or running the case fails, and goes on with the next case.
// It prints one line per case, `<dir>: ok` or `<dir>: error: <message>`, then a summary.
// Exit status: 0 when every case ran (or failed with a recorded ORT error), 2 on usage or I/O
// errors. (The op library's kernel choice follows env MBQ_KERNEL; see custom_ops/README.md.)
//
// --repeat R runs each case's session R times (outputs come from the last run). --mark brackets every
// run with marker system calls for the instruction-counting QEMU plugin (custom_ops/tools/
// insn_count_plugin.c, used by tools/bench_arm_insn.py): begin/end with tag = case index * 65536 + run
// index, and once, before the first case, the executable address ranges of the op library (range id 1)
// and of libonnxruntime (id 2). Without the plugin the marker calls just fail with ENOSYS.
//
// Supported .npy dtypes: float32, float64, int64, int32, uint8, int8, bool; C order, little endian.

#include <sys/stat.h>
#if defined(__linux__)
#include <link.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "onnxruntime_cxx_api.h"

namespace {

struct DType {
  const char* descr;  // numpy descr
  ONNXTensorElementDataType onnx;
  size_t size;
};

constexpr DType kDTypes[] = {
    {"<f4", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, 4}, {"<f8", ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE, 8},
    {"<i8", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, 8}, {"<i4", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, 4},
    {"|u1", ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, 1}, {"|i1", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8, 1},
    {"|b1", ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL, 1},
};

const DType& dtype_from_descr(const std::string& descr, const std::string& path) {
  for (const auto& d : kDTypes)
    if (descr == d.descr) return d;
  throw std::runtime_error(path + ": unsupported .npy dtype '" + descr + "'");
}

const DType& dtype_from_onnx(ONNXTensorElementDataType t) {
  for (const auto& d : kDTypes)
    if (t == d.onnx) return d;
  throw std::runtime_error("output element type " + std::to_string(static_cast<int>(t)) +
                           " cannot be written as .npy");
}

struct Array {
  const DType* dtype = nullptr;
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;
};

// Value of key `'key':` in a .npy header dict, up to the next top-level comma.
std::string header_field(const std::string& header, const std::string& key, const std::string& path) {
  const auto pos = header.find("'" + key + "'");
  if (pos == std::string::npos) throw std::runtime_error(path + ": .npy header lacks '" + key + "'");
  auto p = header.find(':', pos);
  if (p == std::string::npos) throw std::runtime_error(path + ": malformed .npy header");
  ++p;
  while (p < header.size() && header[p] == ' ') ++p;
  if (p < header.size() && header[p] == '(') return header.substr(p, header.find(')', p) - p + 1);
  return header.substr(p, header.find(',', p) - p);
}

Array read_npy(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error(path + ": cannot open");
  char magic[8];
  if (!f.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0)
    throw std::runtime_error(path + ": not a .npy file");
  uint32_t header_len = 0;
  if (magic[6] == 1) {
    uint8_t b[2];
    f.read(reinterpret_cast<char*>(b), 2);
    header_len = b[0] | (b[1] << 8);
  } else {
    uint8_t b[4];
    f.read(reinterpret_cast<char*>(b), 4);
    header_len = b[0] | (b[1] << 8) | (b[2] << 16) | (static_cast<uint32_t>(b[3]) << 24);
  }
  std::string header(header_len, '\0');
  if (!f.read(header.data(), header_len)) throw std::runtime_error(path + ": truncated .npy header");

  Array a;
  std::string descr = header_field(header, "descr", path);
  descr = descr.substr(1, descr.size() - 2);  // strip quotes
  a.dtype = &dtype_from_descr(descr, path);
  if (header_field(header, "fortran_order", path).find("True") != std::string::npos)
    throw std::runtime_error(path + ": Fortran-order arrays are not supported");
  const std::string shape = header_field(header, "shape", path);
  size_t count = 1;
  for (size_t i = 1; i < shape.size();) {  // "(2, 3)" / "(5,)" / "()"
    while (i < shape.size() && (shape[i] == ' ' || shape[i] == ',')) ++i;
    if (i >= shape.size() || shape[i] == ')') break;
    size_t used = 0;
    const long long dim = std::stoll(shape.substr(i), &used);
    a.shape.push_back(dim);
    count *= static_cast<size_t>(dim);
    i += used;
  }
  a.data.resize(count * a.dtype->size);
  if (!a.data.empty() && !f.read(reinterpret_cast<char*>(a.data.data()), a.data.size()))
    throw std::runtime_error(path + ": truncated .npy data");
  return a;
}

// Writes `path` atomically (temporary file, then rename).
void write_npy(const std::string& path, const DType& dtype, const std::vector<int64_t>& shape,
               const void* data, size_t nbytes) {
  std::ostringstream dict;
  dict << "{'descr': '" << dtype.descr << "', 'fortran_order': False, 'shape': (";
  for (size_t i = 0; i < shape.size(); ++i) dict << shape[i] << (shape.size() == 1 || i + 1 < shape.size() ? "," : "");
  dict << "), }";
  std::string header = dict.str();
  const size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary);
    const char preamble[8] = {'\x93', 'N', 'U', 'M', 'P', 'Y', 1, 0};
    const uint16_t len = static_cast<uint16_t>(header.size());
    const char len_le[2] = {static_cast<char>(len & 0xff), static_cast<char>(len >> 8)};
    f.write(preamble, 8).write(len_le, 2).write(header.data(), header.size());
    f.write(static_cast<const char*>(data), static_cast<std::streamsize>(nbytes));
    if (!f) throw std::runtime_error(tmp + ": write failed");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw std::runtime_error(path + ": rename failed");
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path);
  f << text << "\n";
}

bool make_dir(const std::string& path) { return ::mkdir(path.c_str(), 0755) == 0 || errno == EEXIST; }

// Marker system calls for custom_ops/tools/insn_count_plugin.c (a number Linux does not define: ENOSYS).
constexpr long kMarkSyscall = 0x4d4251;
enum MarkCommand : long { kMarkBegin = 1, kMarkEnd = 2, kMarkRange = 3 };

void mark(long command, unsigned long a, unsigned long b = 0, unsigned long c = 0) {
#if defined(__linux__)
  syscall(kMarkSyscall, command, a, b, c);
#else
  (void)command, (void)a, (void)b, (void)c;
#endif
}

// Declares the executable segments of every loaded object whose path contains "libmbq_ops" (id 1) or
// "libonnxruntime" (id 2).
void mark_library_ranges() {
#if defined(__linux__)
  dl_iterate_phdr(
      [](struct dl_phdr_info* info, size_t, void*) {
        const char* name = info->dlpi_name ? info->dlpi_name : "";
        const unsigned long id = std::strstr(name, "libmbq_ops") ? 1 : std::strstr(name, "libonnxruntime") ? 2 : 0;
        if (!id) return 0;
        for (int i = 0; i < info->dlpi_phnum; ++i) {
          const auto& ph = info->dlpi_phdr[i];
          if (ph.p_type == PT_LOAD && (ph.p_flags & PF_X))
            mark(kMarkRange, id, info->dlpi_addr + ph.p_vaddr, info->dlpi_addr + ph.p_vaddr + ph.p_memsz);
        }
        return 0;
      },
      nullptr);
#endif
}

struct RunConfig {
  std::string outputs = "outputs";
  int repeat = 1;
  bool marks = false;
};

void run_case(Ort::Env& env, const Ort::SessionOptions& options, const std::string& dir, const RunConfig& config,
              unsigned long case_index) {
  const std::string& outputs = config.outputs;
  const std::string out_dir = dir + "/" + outputs;
  if (!make_dir(out_dir)) throw std::runtime_error(out_dir + ": cannot create");
  std::remove((out_dir + "/error.txt").c_str());
  try {
    Ort::Session session(env, (dir + "/model.onnx").c_str(), options);
    Ort::AllocatorWithDefaultOptions alloc;
    const auto mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);

    std::vector<std::string> in_names, out_names;
    std::vector<Array> arrays;
    std::vector<Ort::Value> inputs;
    for (size_t i = 0; i < session.GetInputCount(); ++i) {
      in_names.emplace_back(session.GetInputNameAllocated(i, alloc).get());
      arrays.push_back(read_npy(dir + "/inputs/" + in_names.back() + ".npy"));
    }
    for (auto& a : arrays)
      inputs.push_back(Ort::Value::CreateTensor(mem, a.data.data(), a.data.size(), a.shape.data(), a.shape.size(),
                                                a.dtype->onnx));
    for (size_t i = 0; i < session.GetOutputCount(); ++i)
      out_names.emplace_back(session.GetOutputNameAllocated(i, alloc).get());

    std::vector<const char*> in_ptrs, out_ptrs;
    for (auto& n : in_names) in_ptrs.push_back(n.c_str());
    for (auto& n : out_names) out_ptrs.push_back(n.c_str());
    std::vector<Ort::Value> results;
    for (int r = 0; r < config.repeat; ++r) {
      results.clear();
      const unsigned long tag = case_index * 65536 + static_cast<unsigned long>(r);
      if (config.marks) mark(kMarkBegin, tag);
      results = session.Run(Ort::RunOptions{nullptr}, in_ptrs.data(), inputs.data(), inputs.size(), out_ptrs.data(),
                            out_ptrs.size());
      if (config.marks) mark(kMarkEnd, tag);
    }
    for (size_t i = 0; i < results.size(); ++i) {
      auto info = results[i].GetTensorTypeAndShapeInfo();
      const DType& dt = dtype_from_onnx(info.GetElementType());
      write_npy(out_dir + "/" + out_names[i] + ".npy", dt, info.GetShape(), results[i].GetTensorRawData(),
                info.GetElementCount() * dt.size);
    }
  } catch (const Ort::Exception& e) {
    write_text(out_dir + "/error.txt", e.what());
    throw;
  }
}

int usage(const char* argv0) {
  std::cerr << "usage: " << argv0 << " [--ops LIB.so] [--threads N] [--outputs NAME] [--repeat R] [--mark] CASE_DIR...\n"
            << "  CASE_DIR holds model.onnx and inputs/<name>.npy; outputs go to CASE_DIR/NAME/"
            << " (default: outputs)\n"
            << "  --repeat R: run each case R times; --mark: marker syscalls for insn_count_plugin\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string ops_lib;
  RunConfig config;
  int threads = 1;
  std::vector<std::string> cases;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--ops" && i + 1 < argc) {
      ops_lib = argv[++i];
    } else if (arg == "--outputs" && i + 1 < argc) {
      config.outputs = argv[++i];
    } else if (arg == "--repeat" && i + 1 < argc) {
      config.repeat = std::atoi(argv[++i]);
    } else if (arg == "--mark") {
      config.marks = true;
    } else if (arg == "--threads" && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
    } else if (arg == "-h" || arg == "--help" || arg.rfind("--", 0) == 0) {
      return usage(argv[0]);
    } else {
      cases.push_back(arg);
    }
  }
  if (cases.empty() || threads < 1 || config.repeat < 1 || config.outputs.empty() ||
      config.outputs.find('/') != std::string::npos) {
    return usage(argv[0]);
  }

  try {
    Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "mbq_run_model");
    Ort::SessionOptions options;
    options.SetIntraOpNumThreads(threads);
    if (!ops_lib.empty()) options.RegisterCustomOpsLibrary(ops_lib.c_str());
    if (config.marks) mark_library_ranges();
    int failed = 0;
    for (size_t c = 0; c < cases.size(); ++c) {
      const std::string& dir = cases[c];
      try {
        run_case(env, options, dir, config, c);
        std::cout << dir << ": ok\n";
      } catch (const Ort::Exception& e) {
        ++failed;
        std::cout << dir << ": error: " << e.what() << "\n";
      }
    }
    std::cout << "done: " << cases.size() - failed << " ok, " << failed << " error\n";
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  }
  return 0;
}
