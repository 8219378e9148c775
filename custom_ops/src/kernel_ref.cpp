// Portable C++ reference kernel: decodes one block at a time, accumulates in double.
// Slow but simple; it is the fallback on CPUs without a SIMD table and the cross-check for them.
#include <algorithm>

#include "mbq_kernels.h"

namespace mbq {

namespace {

// Truncated codes qk of block `blk` of output channel n.
inline void block_codes(const PackedWeights& w, int k, int n, int blk, unsigned q[kBlock]) {
  uint8_t v[kBlock];
  std::fill(q, q + kBlock, 0u);
  for (int p = 0; p < w.subplane_end[k]; ++p) {
    expand_block_scalar(w.sub[p], n, blk, v);
    for (int i = 0; i < kBlock; ++i) q[i] |= static_cast<unsigned>(v[i]) << w.sub[p].shift;
  }
}

double dot_row(const PackedWeights& w, int k, int n, const float* a) {
  const float* sc = w.scales + static_cast<size_t>(n) * w.G;
  const float* zr = w.zeros + static_cast<size_t>(n) * w.G;
  const double off = w.offset[k];
  unsigned q[kBlock];
  double y = 0.0;
  for (int blk = 0; blk * kBlock < w.K; ++blk) {
    block_codes(w, k, n, blk, q);
    const int i_end = std::min(kBlock, w.K - blk * kBlock);
    for (int i = 0; i < i_end; ++i) {
      const int g = (blk * kBlock + i) / w.group_size;
      y += static_cast<double>(a[blk * kBlock + i]) * sc[g] * (q[i] + off - zr[g]);
    }
  }
  return y;
}

void gemv_ref(const PackedWeights& w, int k, const float* a, const float* /*asum*/, float* y, int n0, int n1) {
  for (int n = n0; n < n1; ++n) y[n] = static_cast<float>(dot_row(w, k, n, a));
}

void gemm_ref(const PackedWeights& w, int k, const float* a, size_t lda, int m, float* y, size_t ldy, int n0,
              int n1, float* /*scratch*/) {
  for (int r = 0; r < m; ++r) gemv_ref(w, k, a + r * lda, nullptr, y + r * ldy, n0, n1);
}

void gemv_q8_ref(const PackedWeights& w, int k, const int8_t* qa, const float* qscale, const float* qasum, float* y,
                 int n0, int n1) {
  unsigned q[kBlock];
  for (int n = n0; n < n1; ++n) {
    const float* sc = w.scales + static_cast<size_t>(n) * w.G;
    const float* zr = w.zeros + static_cast<size_t>(n) * w.G;
    double acc = 0.0;
    for (int blk = 0; blk * kBlock < w.Kp; ++blk) {
      block_codes(w, k, n, blk, q);
      for (int half = 0; half < 2; ++half) {  // 16-value halves never straddle a group
        const int i0 = blk * kBlock + half * 16, g = i0 / w.group_size;
        if (g >= w.G) break;
        int64_t dot = 0;
        for (int i = 0; i < 16; ++i) dot += static_cast<int64_t>(q[half * 16 + i]) * qa[i0 + i];
        acc += static_cast<double>(sc[g]) * qscale[blk] * static_cast<double>(dot);
      }
    }
    for (int g = 0; g < w.G; ++g) acc += static_cast<double>(sc[g]) * (w.offset[k] - zr[g]) * qasum[g];
    y[n] = static_cast<float>(acc);
  }
}

void gemm_q8_ref(const PackedWeights& w, int k, const int8_t* qa, size_t qa_stride, const float* qscale,
                 const float* qasum, int m, float* y, size_t ldy, int n0, int n1) {
  const size_t nqs = static_cast<size_t>(w.Kp / kBlock), G = static_cast<size_t>(w.G);
  for (int r = 0; r < m; ++r)
    gemv_q8_ref(w, k, qa + r * qa_stride, qscale + r * nqs, qasum + r * G, y + r * ldy, n0, n1);
}

// The reference has the int8 prefill too, so that every table with one can be checked against it.
const KernelTable kRef = [] {
  KernelTable t;
  t.name = "ref";
  t.gemv = gemv_ref;
  t.gemm = gemm_ref;
  t.n_align = 1;
  t.gemv_q8 = gemv_q8_ref;
  t.gemm_q8 = gemm_q8_ref;
  return t;
}();

}  // namespace

const KernelTable* kernels_ref() { return &kRef; }

}  // namespace mbq
