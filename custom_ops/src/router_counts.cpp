// The com.mbq::RouterCounts ONNX Runtime custom op (contract: custom_ops/README.md, "RouterCounts"):
// one node per router group, replacing the Pad/LpNormalization/MatMul/…/ArgMin chain.
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "mbq_kernels.h"
#include "op_error.h"
#include "router_kernel.h"

namespace mbq {
void router_rows_ref(const RouterWeights& w, const float* thr, const float* x, size_t r0, size_t r1, int64_t* out,
                     float* scratch) {
  router_rows_impl(w, thr, x, r0, r1, out, scratch);
}
#ifndef MBQ_HAVE_AVX2
void router_rows_avx2(const RouterWeights& w, const float* thr, const float* x, size_t r0, size_t r1, int64_t* out,
                      float* scratch) {
  router_rows_impl(w, thr, x, r0, r1, out, scratch);
}
#endif
}  // namespace mbq

namespace {

using mbq::shape_str;
using mbq::type_name;

constexpr const char* kOpName = "RouterCounts";
constexpr int kInputs = 6;
const char* const kInputNames[kInputs] = {"X", "thresholds", "W1", "B1", "W2", "B2"};

template <typename... Ts>
[[noreturn]] void fail(const Ts&... parts) {
  mbq::op_fail(kOpName, parts...);
}

OrtStatusPtr to_status(const std::exception& e) {
  std::string msg = e.what();
  if (msg.rfind(kOpName, 0) != 0) msg = std::string(kOpName) + ": " + msg;
  return Ort::GetApi().CreateStatus(ORT_INVALID_ARGUMENT, msg.c_str());
}

// Shape of a float32 input, checked for dtype and rank (rank < 0: any rank >= 1).
template <typename Value>
std::vector<int64_t> float_shape(const Value& v, int index, int rank) {
  const auto info = v.GetTensorTypeAndShapeInfo();
  if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
    fail(kInputNames[index], " must be float32, got ", type_name(info.GetElementType()));
  std::vector<int64_t> s = info.GetShape();
  if (rank >= 0 && static_cast<int>(s.size()) != rank)
    fail(kInputNames[index], " must have rank ", rank, ", got shape ", shape_str(s));
  if (rank < 0 && s.empty()) fail(kInputNames[index], " must have rank >= 1, got a scalar");
  return s;
}

struct Attrs {
  float pad = 0.f;
  int members = 1;
  int combine = 0;
};

Attrs read_attrs(const Ort::ConstKernelInfo& info) {
  Attrs a;
  try {
    a.pad = info.GetAttribute<float>("pad");
  } catch (const Ort::Exception&) {
    fail("missing or non-float attribute 'pad'");
  }
  int64_t members = 0, combine = 0;
  try {
    members = info.GetAttribute<int64_t>("members");
  } catch (const Ort::Exception&) {
    fail("missing or non-integer attribute 'members'");
  }
  try {
    combine = info.GetAttribute<int64_t>("combine");
  } catch (const Ort::Exception&) {
    combine = 0;  // optional
  }
  if (members < 1 || members > (1 << 20)) fail("attribute members is ", members, ", expected >= 1");
  if (combine != 0 && combine != 1) fail("attribute combine is ", combine, ", expected 0 (per member) or 1 (max)");
  a.members = static_cast<int>(members);
  a.combine = static_cast<int>(combine);
  return a;
}

// Checks W1, B1, W2, B2 against each other and the attributes and copies them into `out`.
template <typename Value>
void load_weights(const Attrs& at, const Value& W1, const Value& B1, const Value& W2, const Value& B2,
                  mbq::RouterWeights& out) {
  const auto s1 = float_shape(W1, 2, 2), sb1 = float_shape(B1, 3, 1), s2 = float_shape(W2, 4, 2),
             sb2 = float_shape(B2, 5, 1);
  if (s1[0] < 1) fail("W1 has shape ", shape_str(s1), ", expected [K+1, H] with K >= 0");
  if (s1[1] < 1) fail("W1 has shape ", shape_str(s1), ", expected [K+1, H] with H >= 1");
  if (s1[0] > (int64_t{1} << 30) || s1[1] > (int64_t{1} << 24)) fail("W1 shape ", shape_str(s1), " is too large");
  const int64_t H = s1[1];
  if (sb1[0] != H) fail("B1 has shape ", shape_str(sb1), ", expected [", H, "] (W1 is ", shape_str(s1), ")");
  if (s2[0] != H) fail("W2 has shape ", shape_str(s2), ", expected ", H, " rows (W1 is ", shape_str(s1), ")");
  const int64_t C = s2[1];
  if (C < 1 || C % at.members != 0 || C > (int64_t{1} << 24))
    fail("W2 has width ", C, ", expected a positive multiple of members=", at.members, " (members*(S+1))");
  if (sb2[0] != C) fail("B2 has shape ", shape_str(sb2), ", expected [", C, "] (the width of W2)");
  out.K = static_cast<int>(s1[0] - 1);
  out.H = static_cast<int>(H);
  out.M = at.members;
  out.S1 = static_cast<int>(C / at.members);
  out.combine = at.combine;
  out.pad = at.pad;
  auto copy = [](const Value& v, size_t n, std::vector<float>& dst) {
    const float* p = v.template GetTensorData<float>();
    dst.assign(p, p + n);
  };
  out.Kp = static_cast<int>((s1[0] + 7) / 8 * 8);
  out.w1t.assign(static_cast<size_t>(H) * out.Kp, 0.f);  // W1^T, rows zero-padded to Kp
  const float* w1 = W1.template GetTensorData<float>();
  for (int64_t k = 0; k < s1[0]; ++k)
    for (int64_t j = 0; j < H; ++j) out.w1t[static_cast<size_t>(j) * out.Kp + k] = w1[static_cast<size_t>(k) * H + j];
  copy(B1, static_cast<size_t>(H), out.b1);
  copy(W2, static_cast<size_t>(H) * C, out.w2);
  copy(B2, static_cast<size_t>(C), out.b2);
  out.framed = true;
  for (int64_t c = 0; c < C && out.framed; ++c) {
    const int64_t j = c % out.S1;
    const bool edge = j == 0 || j == out.S1 - 1;
    const float want = j == 0 ? INFINITY : -INFINITY;
    for (int64_t r = 0; r < H && out.framed; ++r) {
      const float v = out.w2[static_cast<size_t>(r) * C + c];
      out.framed = edge ? v == 0.f : std::isfinite(v);
    }
    out.framed = out.framed && (edge ? out.b2[c] == want : std::isfinite(out.b2[c]));
  }
}

// The count every row gets when the thresholds decide it without the MLP (docs: custom_ops/README.md,
// "Decided by the thresholds"), else -1: column 0 on (threshold < +inf), then columns at -inf are on
// for any finite logit and the first at +inf is off.
int64_t threshold_count(const mbq::RouterWeights& w, const float* thr) {
  if (!w.framed || !(thr[0] < INFINITY)) return -1;
  int j = 1;
  while (j < w.S1 - 1 && thr[j] == -INFINITY) ++j;
  if (j == w.S1 - 1 || thr[j] == INFINITY) return j;
  return -1;
}

struct Job {
  const mbq::RouterWeights* w;
  mbq::RouterRowsFn fn;
  const float* thr;
  const float* x;
  int64_t* out;
  size_t rows, chunk;
};

void run_chunk(const Job& j, size_t r0, size_t r1) {
  thread_local std::vector<float> scratch;
  const size_t need = j.w->scratch_floats();
  if (scratch.size() < need) scratch.resize(need);
  j.fn(*j.w, j.thr, j.x, r0, r1, j.out, scratch.data());
}

void run_job(void* data, size_t index) {
  const Job& j = *static_cast<const Job*>(data);
  const size_t r0 = index * j.chunk, r1 = std::min(j.rows, r0 + j.chunk);
  if (r0 < r1) run_chunk(j, r0, r1);
}

struct Kernel {
  Attrs attrs;
  mbq::RouterRowsFn fn = mbq::router_rows_ref;
  std::shared_ptr<const mbq::RouterWeights> constant_weights;  // set when W1..B2 are initializers

  explicit Kernel(const OrtKernelInfo* raw) {
    Ort::ConstKernelInfo info(raw);
    attrs = read_attrs(info);
    if (info.GetInputCount() != kInputs)
      fail("expects 6 inputs (X, thresholds, W1, B1, W2, B2), got ", info.GetInputCount());
    const char* err = nullptr;
    const mbq::KernelTable* table = mbq::select_kernels(std::getenv("MBQ_KERNEL"), &err);
    if (!table) fail(err ? err : "no kernel available");
#ifdef MBQ_HAVE_AVX2
    if (std::strncmp(table->name, "avx", 3) == 0) fn = mbq::router_rows_avx2;  // avx2, avx512_vnni: AVX2+FMA CPU
#endif
    int c[kInputs] = {};
    Ort::ConstValue v[4];
    for (int i = 2; i < kInputs; ++i) v[i - 2] = info.GetTensorConstantInput(i, &c[i]);
    if (c[2] && c[3] && c[4] && c[5]) {
      auto w = std::make_shared<mbq::RouterWeights>();
      load_weights(attrs, v[0], v[1], v[2], v[3], *w);
      constant_weights = std::move(w);
    }
  }

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

void Kernel::Compute(OrtKernelContext* raw) const {
  Ort::KernelContext ctx(raw);
  if (ctx.GetInputCount() != kInputs)
    fail("expects 6 inputs (X, thresholds, W1, B1, W2, B2), got ", ctx.GetInputCount());
  const Ort::ConstValue X = ctx.GetInput(0), T = ctx.GetInput(1);
  const std::vector<int64_t> xs = float_shape(X, 0, -1), ts = float_shape(T, 1, 1);
  std::shared_ptr<const mbq::RouterWeights> w = constant_weights;
  if (!w) {
    auto fresh = std::make_shared<mbq::RouterWeights>();
    load_weights(attrs, ctx.GetInput(2), ctx.GetInput(3), ctx.GetInput(4), ctx.GetInput(5), *fresh);
    w = std::move(fresh);
  }
  if (xs.back() != w->K)
    fail("X has last dim ", xs.back(), " but W1 has ", w->K + 1, " rows (expected K+1 = ", xs.back() + 1, ")");
  if (ts[0] != w->S1)
    fail("thresholds has shape ", shape_str(ts), ", expected [", w->S1, "] (S+1 = W2 width ", w->M * w->S1,
         " / members ", w->M, ")");
  std::vector<int64_t> ys(xs.begin(), xs.end() - 1);
  size_t rows = 1;
  for (int64_t d : ys) rows *= static_cast<size_t>(d);
  if (!attrs.combine && w->M > 1) ys.push_back(w->M);
  Ort::UnownedValue Y = ctx.GetOutput(0, ys);
  if (rows == 0) return;
  int64_t* out = Y.GetTensorMutableData<int64_t>();
  if (const int64_t decided = threshold_count(*w, T.GetTensorData<float>()); decided >= 0) {
    std::fill(out, out + rows * (!attrs.combine && w->M > 1 ? w->M : 1), decided);  // forced, τ = 0 or 1
    return;
  }
  Job job{w.get(), fn, T.GetTensorData<float>(), X.GetTensorData<float>(), out, rows, rows};
  const double work = static_cast<double>(rows) * (static_cast<double>(w->K + 1) * w->H + static_cast<double>(w->H) * w->M * w->S1);
  if (rows == 1 || work < 262144.0) {  // decode: no pool dispatch (below ~10 us the pool costs more)
    run_chunk(job, 0, rows);
    return;
  }
  const size_t tasks = std::min<size_t>(rows, 16);
  job.chunk = (rows + tasks - 1) / tasks;
  ctx.ParallelFor(run_job, (rows + job.chunk - 1) / job.chunk, 0, &job);
}

struct RouterCountsOp : Ort::CustomOpBase<RouterCountsOp, Kernel, true> {
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
  size_t GetInputTypeCount() const { return kInputs; }
  // Any dtype is accepted here so that Compute can name a wrong one clearly.
  ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED; }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64; }
};

}  // namespace

namespace mbq {
const OrtCustomOp* router_counts_op() {
  static RouterCountsOp op;
  return &op;
}
}  // namespace mbq
