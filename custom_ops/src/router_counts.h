// Internal interface of com.mbq::RouterCounts (contract: custom_ops/README.md, "RouterCounts").
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

struct OrtCustomOp;

namespace mbq {

// The router weights as the kernel reads them (copied from the initializers at kernel creation).
struct RouterWeights {
  int K = 0;   // features of x (W1 has K+1 rows)
  int H = 0;   // hidden units (all members)
  int M = 1;   // members
  int S1 = 0;  // columns per member, S+1
  int combine = 0;
  float pad = 0.f;
  int Kp = 0;  // K+1 rounded up to a multiple of 8
  std::vector<float> w1t, b1, w2, b2;  // W1 transposed and zero-padded [H][Kp], [H], [H][M*S1], [M*S1]
  // Every member's column 0 is always on and column S always off (zero W2 columns, B2 +inf / -inf) and
  // columns 1..S-1 are finite: thresholds of ±inf then decide the count alone (threshold_count).
  bool framed = false;
  size_t scratch_floats() const { return static_cast<size_t>(Kp) + H + static_cast<size_t>(M) * S1; }
};

// Counts of rows [r0, r1) of x [rows, K]: out is [rows, M] (combine 0) or [rows] (combine 1);
// scratch holds scratch_floats() floats.
using RouterRowsFn = void (*)(const RouterWeights& w, const float* thresholds, const float* x, size_t r0, size_t r1,
                              int64_t* out, float* scratch);
void router_rows_ref(const RouterWeights&, const float*, const float*, size_t, size_t, int64_t*, float*);
void router_rows_avx2(const RouterWeights&, const float*, const float*, size_t, size_t, int64_t*, float*);

// The op, for RegisterCustomOps (mixed_bit_matmul.cpp).
const OrtCustomOp* router_counts_op();

}  // namespace mbq
