// The com.mbq::MixedBitMatMul ONNX Runtime custom op (contract: custom_ops/README.md), and the
// library entry point RegisterCustomOps (MixedBitMatMul + RouterCounts, router_counts.cpp).
// Validation and threading live here; the math lives in the per-ISA kernel tables.
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "mbq_kernels.h"
#include "op_error.h"
#include "router_counts.h"

namespace {

using mbq::shape_str;
using mbq::type_name;

constexpr const char* kOpName = "MixedBitMatMul";
constexpr const char* kDomain = "com.mbq";

template <typename... Ts>
[[noreturn]] void fail(const Ts&... parts) {
  mbq::op_fail(kOpName, parts...);
}

std::string bits_str(const std::vector<int>& b) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < b.size(); ++i) os << (i ? "," : "") << b[i];
  os << "]";
  return os.str();
}

struct Attrs {
  int K = 0, N = 0, group_size = 0;
  int accuracy_level = 0;  // 4: rows use int8 activations (like MatMulNBits)
  std::vector<int> bits;
  int G() const { return (K + group_size - 1) / group_size; }
  size_t packed_bytes() const {
    size_t s = 0;
    for (int b : bits) s += static_cast<size_t>(N) * G() * group_size * b / 8;
    return s;
  }
  std::string describe() const {
    std::ostringstream os;
    os << "N=" << N << " K=" << K << " group_size=" << group_size << " slice_bits=" << bits_str(bits);
    return os.str();
  }
};

int64_t int_attr(const Ort::ConstKernelInfo& info, const char* name) {
  try {
    return info.GetAttribute<int64_t>(name);
  } catch (const Ort::Exception&) {
    fail("missing or non-integer attribute '", name, "'");
  }
}

Attrs read_attrs(const Ort::ConstKernelInfo& info) {
  Attrs a;
  const int64_t K = int_attr(info, "K"), N = int_attr(info, "N"), gs = int_attr(info, "group_size");
  std::vector<int64_t> bits;
  try {
    bits = info.GetAttributes<int64_t>("slice_bits");
  } catch (const Ort::Exception&) {
    fail("missing or non-integer-list attribute 'slice_bits'");
  }
  if (K < 1 || K > (1 << 30)) fail("attribute K is ", K, ", expected 1..2^30");
  if (N < 1 || N > (1 << 30)) fail("attribute N is ", N, ", expected 1..2^30");
  if (gs < 16 || (gs & (gs - 1)) || gs > (1 << 20)) fail("attribute group_size is ", gs, ", expected a power of two >= 16");
  if (bits.empty()) fail("attribute slice_bits is empty, expected e.g. [4,2,2]");
  if (bits.size() > static_cast<size_t>(mbq::kMaxSlices)) fail("attribute slice_bits has ", bits.size(), " slices, at most 8 are supported");
  int64_t total = 0;
  for (int64_t b : bits) {
    if (b < 1 || b > 8) fail("attribute slice_bits has a width of ", b, " bits, each slice needs 1..8");
    total += b;
  }
  if (total > 8) fail("attribute slice_bits sums to ", total, " bits, at most 8 are supported");
  int64_t acc = 0;
  try {
    acc = info.GetAttribute<int64_t>("accuracy_level");
  } catch (const Ort::Exception&) {
    acc = 0;  // optional
  }
  if (acc != 0 && acc != 4) fail("attribute accuracy_level is ", acc, ", expected 0 (float) or 4 (int8 activations)");
  a.accuracy_level = static_cast<int>(acc);
  a.K = static_cast<int>(K);
  a.N = static_cast<int>(N);
  a.group_size = static_cast<int>(gs);
  for (int64_t b : bits) a.bits.push_back(static_cast<int>(b));
  return a;
}

// Checks the weight inputs (packed, scales, zeros) against the attributes and prepacks them.
template <typename Value>
void check_and_prepack(const Attrs& at, const Value& packed, const Value& scales, const Value& zeros,
                       mbq::PackedWeights& out, bool full_codes) {
  auto info_of = [](const Value& v) { return v.GetTensorTypeAndShapeInfo(); };
  const auto pi = info_of(packed), si = info_of(scales), zi = info_of(zeros);
  if (pi.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8)
    fail("packed must be uint8, got ", type_name(pi.GetElementType()));
  if (si.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
    fail("scales must be float32, got ", type_name(si.GetElementType()));
  if (zi.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8)
    fail("zeros must be uint8, got ", type_name(zi.GetElementType()));
  const auto ps = pi.GetShape(), ss = si.GetShape(), zs = zi.GetShape();
  if (ps.size() != 1) fail("packed must be 1-D, got shape ", shape_str(ps));
  const size_t expect = at.packed_bytes();
  if (static_cast<size_t>(ps[0]) != expect)
    fail("packed has ", ps[0], " bytes, expected ", expect, " for ", at.describe());
  const std::vector<int64_t> ng{at.N, at.G()};
  if (ss != ng) fail("scales has shape ", shape_str(ss), ", expected ", shape_str(ng), " for ", at.describe());
  if (zs != ng) fail("zeros has shape ", shape_str(zs), ", expected ", shape_str(ng), " for ", at.describe());
  int total = 0;
  for (int b : at.bits) total += b;
  const uint8_t* z = zeros.template GetTensorData<uint8_t>();
  const size_t nz = static_cast<size_t>(at.N) * at.G();
  for (size_t t = 0; t < nz; ++t) {
    if (total < 8 && z[t] >= (1u << total))
      fail("zeros value ", int(z[t]), " at channel ", t / at.G(), " group ", t % at.G(), " is outside 0..", (1 << total) - 1);
  }
  mbq::prepack(out, at.K, at.N, at.group_size, at.bits.data(), static_cast<int>(at.bits.size()),
               packed.template GetTensorData<uint8_t>(), scales.template GetTensorData<float>(), z, full_codes);
}

OrtStatusPtr to_status(const std::exception& e) {
  std::string msg = e.what();
  if (msg.rfind(kOpName, 0) != 0) msg = std::string(kOpName) + ": " + msg;
  return Ort::GetApi().CreateStatus(ORT_INVALID_ARGUMENT, msg.c_str());
}

struct Kernel {
  Attrs attrs;
  const mbq::KernelTable* table = nullptr;
  std::shared_ptr<const mbq::PackedWeights> constant_weights;  // set when inputs 2..4 are initializers

  explicit Kernel(const OrtKernelInfo* raw) {
    Ort::ConstKernelInfo info(raw);
    attrs = read_attrs(info);
    if (info.GetInputCount() != 5) fail("expects 5 inputs (A, slice_count, packed, scales, zeros), got ", info.GetInputCount());
    const char* err = nullptr;
    table = mbq::select_kernels(std::getenv("MBQ_KERNEL"), &err);
    if (!table) fail(err ? err : "no kernel available");
    int c2 = 0, c3 = 0, c4 = 0;
    Ort::ConstValue packed = info.GetTensorConstantInput(2, &c2);
    Ort::ConstValue scales = info.GetTensorConstantInput(3, &c3);
    Ort::ConstValue zeros = info.GetTensorConstantInput(4, &c4);
    if (c2 && c3 && c4) {
      auto w = std::make_shared<mbq::PackedWeights>();
      check_and_prepack(attrs, packed, scales, zeros, *w, wants_full_codes());
      constant_weights = std::move(w);
    }
  }

  // Full codes serve only the int8 decode of tables that use them (one extra byte per weight).
  bool wants_full_codes() const { return attrs.accuracy_level == 4 && table->full_codes; }

  void Compute(OrtKernelContext* raw) const;
  OrtStatusPtr ComputeV2(OrtKernelContext* raw) const {
    try {
      Compute(raw);
      return nullptr;
    } catch (const std::exception& e) {
      return to_status(e);
    }
  }
};

struct Task {
  const mbq::PackedWeights* w;
  const mbq::KernelTable* table;
  int k_slices;
  const float* a;  // [m][Kp]
  const float* asum;  // [G] (m == 1 only)
  int m;
  float* y;
  size_t ldy;
  int chunk;  // columns per ParallelFor index
  const int8_t* qa = nullptr;  // int8 path (accuracy_level 4): m rows of qa_stride bytes
  const float* qscale = nullptr;  // m rows of Kp / 32
  size_t qa_stride = 0;
};

void run_task(void* data, size_t index) {
  const Task& t = *static_cast<const Task*>(data);
  const int n0 = static_cast<int>(index) * t.chunk;
  const int n1 = std::min(t.w->N, n0 + t.chunk);
  if (n0 >= n1) return;
  if (t.qa && t.m == 1) {
    t.table->gemv_q8(*t.w, t.k_slices, t.qa, t.qscale, t.asum, t.y, n0, n1);
  } else if (t.qa) {
    t.table->gemm_q8(*t.w, t.k_slices, t.qa, t.qa_stride, t.qscale, t.asum, t.m, t.y, t.ldy, n0, n1);
  } else if (t.m == 1) {
    t.table->gemv(*t.w, t.k_slices, t.a, t.asum, t.y, n0, n1);
  } else {
    thread_local std::vector<float> scratch;
    const size_t need = mbq::gemm_scratch_floats(*t.w);
    if (scratch.size() < need) scratch.resize(need);
    t.table->gemm(*t.w, t.k_slices, t.a, static_cast<size_t>(t.w->Kp), t.m, t.y, t.ldy, n0, n1, scratch.data());
  }
}

void Kernel::Compute(OrtKernelContext* raw) const {
  Ort::KernelContext ctx(raw);
  if (ctx.GetInputCount() != 5) fail("expects 5 inputs (A, slice_count, packed, scales, zeros), got ", ctx.GetInputCount());
  const Ort::ConstValue A = ctx.GetInput(0), C = ctx.GetInput(1);
  const auto ai = A.GetTensorTypeAndShapeInfo(), ci = C.GetTensorTypeAndShapeInfo();
  if (ai.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) fail("A must be float32, got ", type_name(ai.GetElementType()));
  if (ci.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64)
    fail("slice_count must be int64, got ", type_name(ci.GetElementType()));
  const std::vector<int64_t> as = ai.GetShape(), cs = ci.GetShape();
  if (as.empty()) fail("A must have rank >= 1, got a scalar");
  if (as.back() != attrs.K) fail("A has last dim ", as.back(), " but attribute K is ", attrs.K);
  const std::vector<int64_t> lead(as.begin(), as.end() - 1);
  if (cs != lead) fail("slice_count has shape ", shape_str(cs), " but A has shape ", shape_str(as), " (expected ", shape_str(lead), ")");

  std::shared_ptr<const mbq::PackedWeights> w = constant_weights;
  if (!w) {
    auto fresh = std::make_shared<mbq::PackedWeights>();
    check_and_prepack(attrs, ctx.GetInput(2), ctx.GetInput(3), ctx.GetInput(4), *fresh, wants_full_codes());
    w = std::move(fresh);
  }

  std::vector<int64_t> ys = lead;
  ys.push_back(attrs.N);
  Ort::UnownedValue Y = ctx.GetOutput(0, ys);
  float* y = Y.GetTensorMutableData<float>();
  size_t m = 1;
  for (int64_t d : lead) m *= static_cast<size_t>(d);
  if (m == 0) return;

  const int64_t* counts = C.GetTensorData<int64_t>();
  const int S = static_cast<int>(attrs.bits.size());
  for (size_t r = 0; r < m; ++r) {
    if (counts[r] < 1 || counts[r] > S) fail("slice_count value ", counts[r], " at row ", r, " is outside 1..", S);
  }

  // Bucket rows by slice count so each bucket reads only its planes.
  const int K = attrs.K, N = attrs.N, Kp = w->Kp, G = w->G;
  // Per-thread buffers reused across calls (decode calls are small and frequent).
  struct Workspace {
    std::vector<size_t> order;
    std::vector<float> a_pad, y_tmp, asum, qscale, qasum;
    std::vector<int8_t> qa;
  };
  thread_local Workspace ws;
  ws.order.resize(m);
  size_t* order = ws.order.data();
  int bucket_start[mbq::kMaxSlices + 2] = {};
  for (size_t r = 0; r < m; ++r) ++bucket_start[counts[r] + 1];
  for (int k = 1; k <= S + 1; ++k) bucket_start[k] += bucket_start[k - 1];
  {
    int fill[mbq::kMaxSlices + 2];
    std::copy(bucket_start, bucket_start + S + 2, fill);
    for (size_t r = 0; r < m; ++r) order[fill[counts[r]]++] = r;
  }
  bool single_bucket = false;
  for (int k = 1; k <= S; ++k) single_bucket |= static_cast<size_t>(bucket_start[k + 1] - bucket_start[k]) == m;

  const float* a_in = A.GetTensorData<float>();
  ws.a_pad.resize(m * Kp);
  float* a_pad = ws.a_pad.data();
  for (size_t i = 0; i < m; ++i) {
    std::memcpy(a_pad + i * Kp, a_in + order[i] * K, sizeof(float) * K);
    std::fill(a_pad + i * Kp + K, a_pad + (i + 1) * Kp, 0.f);
  }
  float* y_sorted = y;
  if (!single_bucket) {
    ws.y_tmp.resize(m * N);
    y_sorted = ws.y_tmp.data();
  }

  ws.asum.assign(G, 0.f);
  float* asum = ws.asum.data();
  // accuracy_level=4: int8 activations for decode rows, and for prefill where the table has an int8 GEMM.
  const bool use_q8 = attrs.accuracy_level == 4 && table->gemv_q8 != nullptr;
  for (int k = 1; k <= S; ++k) {
    const int b0 = bucket_start[k], b1 = bucket_start[k + 1];
    if (b0 == b1) continue;
    const int rows = b1 - b0;
    Task t{w.get(), table, k, a_pad + static_cast<size_t>(b0) * Kp, nullptr, rows, y_sorted + static_cast<size_t>(b0) * N,
           static_cast<size_t>(N), 0};
    if (use_q8 && (rows == 1 || table->gemm_q8)) {  // quantize each row once, reuse it for every channel
      const size_t stride = table->q8_bytes ? std::max<size_t>(Kp, table->q8_bytes(*w)) : Kp;
      const size_t nqs = static_cast<size_t>(Kp / mbq::kBlock);
      ws.qa.resize(stride * rows);
      ws.qscale.resize(nqs * rows);
      ws.qasum.resize(static_cast<size_t>(G) * rows);
      for (int r = 0; r < rows; ++r) {
        int8_t* qa = ws.qa.data() + r * stride;
        const float* ar = t.a + static_cast<size_t>(r) * Kp;
        float* qs = ws.qscale.data() + r * nqs;
        float* qsum = ws.qasum.data() + static_cast<size_t>(r) * G;
        if (table->quantize_q8) {
          table->quantize_q8(*w, k, ar, qa, qs, qsum);
        } else {
          mbq::quantize_row_q8(*w, ar, qa, qs, qsum);
          if (table->q8_prepare) table->q8_prepare(*w, k, qa);
        }
      }
      t.qa = ws.qa.data();
      t.qa_stride = stride;
      t.qscale = ws.qscale.data();
      t.asum = ws.qasum.data();
    } else if (rows == 1) {
      for (int g = 0; g < G; ++g) {
        float s = 0.f;
        const int i1 = std::min(K, (g + 1) * attrs.group_size);
        for (int i = g * attrs.group_size; i < i1; ++i) s += t.a[i];
        asum[g] = s;
      }
      t.asum = asum;
    }
    // ~16 column chunks per call (multiples of the kernel's alignment), at least 16 columns each.
    const int align = std::max(1, table->n_align);
    int chunk = std::max(16, (N + 15) / 16);
    if (t.qa && rows > 1) {  // the GEMM re-reads the chunk's planes: keep them within ~256 KiB
      int bits = 0;
      for (int j = 0; j < k; ++j) bits += attrs.bits[j];
      const size_t per_channel = static_cast<size_t>(Kp) * bits / 8 + 1;
      chunk = std::min(chunk, std::max(16, static_cast<int>((size_t{256} << 10) / per_channel)));
    }
    chunk = (chunk + align - 1) / align * align;
    t.chunk = chunk;
    const size_t tasks = static_cast<size_t>((N + chunk - 1) / chunk);
    const double work = static_cast<double>(rows) * N * K;
    if (tasks == 1 || work < 262144.0) {  // below ~10 us of work the pool costs more than it saves
      for (size_t i = 0; i < tasks; ++i) run_task(&t, i);
    } else {
      ctx.ParallelFor(run_task, tasks, 0, &t);
    }
  }
  if (!single_bucket) {
    for (size_t i = 0; i < m; ++i) std::memcpy(y + order[i] * N, y_sorted + i * N, sizeof(float) * N);
  }
  constexpr size_t kKeep = size_t{1} << 22;  // keep at most 16 MiB per buffer between calls
  if (ws.a_pad.capacity() > kKeep) std::vector<float>().swap(ws.a_pad);
  if (ws.y_tmp.capacity() > kKeep) std::vector<float>().swap(ws.y_tmp);
  if (ws.qa.capacity() > 4 * kKeep) std::vector<int8_t>().swap(ws.qa);
}

struct MixedBitMatMulOp : Ort::CustomOpBase<MixedBitMatMulOp, Kernel, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& /*api*/, const OrtKernelInfo* info, void** op_kernel) const {
    try {
      *op_kernel = new Kernel(info);
      return nullptr;
    } catch (const std::exception& e) {
      return to_status(e);
    }
  }
  const char* GetName() const { return kOpName; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return 5; }
  // Any dtype is accepted by the schema so that Compute can name a wrong one clearly.
  ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED; }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options,
                                                                                             const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (!api) {
    // The runtime is older than the headers we were built with.
    const OrtApi* any = nullptr;
    for (uint32_t v = ORT_API_VERSION; v > 0 && !any; --v) any = api_base->GetApi(v);
    return any ? any->CreateStatus(ORT_FAIL, "MixedBitMatMul: onnxruntime is older than the ORT headers libmbq_ops was built with")
               : nullptr;
  }
  Ort::InitApi(api);
  static MixedBitMatMulOp op;
  static std::mutex mu;
  static std::vector<Ort::CustomOpDomain> domains;  // must outlive the sessions that use them
  try {
    std::lock_guard<std::mutex> lock(mu);
    Ort::CustomOpDomain domain(kDomain);
    domain.Add(&op);
    domain.Add(mbq::router_counts_op());
    Ort::UnownedSessionOptions so(options);
    so.Add(domain);
    domains.push_back(std::move(domain));
    return nullptr;
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  }
}
