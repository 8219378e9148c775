// Row kernel of com.mbq::RouterCounts (contract: custom_ops/README.md, "RouterCounts").
// Included by router_counts.cpp (portable build flags) and router_counts_avx2.cpp (-mavx2 -mfma), each
// instantiating it in its own namespace, so the loops below are auto-vectorised for each ISA. Internal
// linkage only: no AVX2 code can leak into the portable path.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "router_counts.h"

namespace {

// Counts for rows [r0, r1) of x ([rows, K] row-major); scratch holds H + C floats.
inline void router_rows_impl(const mbq::RouterWeights& w, const float* thr, const float* x, size_t r0, size_t r1,
                             int64_t* out, float* scratch) {
  const int K = w.K, H = w.H, M = w.M, S1 = w.S1, C = M * S1;
  const float* __restrict w1 = w.w1.data();  // [K+1][H]
  const float* __restrict b1 = w.b1.data();
  const float* __restrict w2 = w.w2.data();  // [H][C]
  const float* __restrict b2 = w.b2.data();
  float* __restrict h = scratch;
  float* __restrict logits = scratch + H;
  for (size_t r = r0; r < r1; ++r) {
    const float* __restrict xr = x + r * static_cast<size_t>(K);
    // ||[x, pad]||^2 with 8 partial sums (vectorisable without reassociation flags).
    float part[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    int k = 0;
    for (; k + 8 <= K; k += 8)
      for (int l = 0; l < 8; ++l) part[l] += xr[k + l] * xr[k + l];
    float ss = w.pad * w.pad;
    for (; k < K; ++k) ss += xr[k] * xr[k];
    for (int l = 0; l < 8; ++l) ss += part[l];
    // h = [x, pad] @ W1 (axpy over the K+1 rows: the inner loop runs along H, contiguous).
    for (int j = 0; j < H; ++j) h[j] = w.pad * w1[static_cast<size_t>(K) * H + j];
    for (k = 0; k < K; ++k) {
      const float xk = xr[k];
      const float* __restrict row = w1 + static_cast<size_t>(k) * H;
      for (int j = 0; j < H; ++j) h[j] += xk * row[j];
    }
    // Normalising after the product: (xp / ||xp||) @ W1 == (xp @ W1) / ||xp||. Norm 0 -> xn = 0.
    const float norm = std::sqrt(ss);
    const float inv = norm > 0.f ? 1.f / norm : 0.f;
    for (int j = 0; j < H; ++j) {
      const float pre = h[j] * inv + b1[j];
      h[j] = pre / (1.f + std::exp(-pre));  // silu
    }
    for (int c = 0; c < C; ++c) logits[c] = 0.f;
    for (int j = 0; j < H; ++j) {
      const float hj = h[j];
      const float* __restrict row = w2 + static_cast<size_t>(j) * C;
      for (int c = 0; c < C; ++c) logits[c] += hj * row[c];
    }
    int64_t best = 0;
    for (int m = 0; m < M; ++m) {
      const float* lm = logits + m * S1;
      const float* bm = b2 + m * S1;
      int64_t count = 0;  // ArgMin of an all-ones row is 0 (first minimal index)
      for (int s = 0; s < S1; ++s) {
        if (!(lm[s] + bm[s] > thr[s])) {
          count = s;
          break;
        }
      }
      if (w.combine) {
        best = std::max(best, count);
      } else {
        out[r * static_cast<size_t>(M) + m] = count;
      }
    }
    if (w.combine) out[r] = best;
  }
}

}  // namespace
