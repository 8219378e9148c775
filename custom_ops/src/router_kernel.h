// Row kernel of com.mbq::RouterCounts (contract: custom_ops/README.md, "RouterCounts").
// Included by router_counts.cpp (portable build flags, loops auto-vectorised) and router_counts_avx2.cpp
// (-mavx2 -mfma, MBQ_ROUTER_AVX2: the W1 product with intrinsics). Internal linkage only: no AVX2 code
// can leak into the portable path.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "router_counts.h"

#ifdef MBQ_ROUTER_AVX2
#include <immintrin.h>
#endif

namespace {

#ifdef MBQ_ROUTER_AVX2
// Sum of each of 8 vectors, as one vector [sum(a0), ..., sum(a7)].
inline __m256 hsum8(__m256 a0, __m256 a1, __m256 a2, __m256 a3, __m256 a4, __m256 a5, __m256 a6, __m256 a7) {
  const __m256 s0123 = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  const __m256 s4567 = _mm256_hadd_ps(_mm256_hadd_ps(a4, a5), _mm256_hadd_ps(a6, a7));
  return _mm256_add_ps(_mm256_permute2f128_ps(s0123, s4567, 0x20), _mm256_permute2f128_ps(s0123, s4567, 0x31));
}
#endif

// h[j] = W1^T[j] . xp for j < H (W1^T is [H][Kp], Kp a multiple of 8, zero-padded like xp).
inline void w1_product(const float* __restrict w1t, int Kp, const float* __restrict xp, int H, float* __restrict h) {
  int j = 0;
#ifdef MBQ_ROUTER_AVX2
  // 8 rows at a time: one load of xp, 8 independent FMA chains.
  for (; j + 8 <= H; j += 8) {
    const float* w = w1t + static_cast<size_t>(j) * Kp;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    for (int k = 0; k < Kp; k += 8) {
      const __m256 xv = _mm256_loadu_ps(xp + k);
      a0 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w + k), a0);
      a1 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w + Kp + k), a1);
      a2 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w + 2 * static_cast<size_t>(Kp) + k), a2);
      a3 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w + 3 * static_cast<size_t>(Kp) + k), a3);
      a4 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w + 4 * static_cast<size_t>(Kp) + k), a4);
      a5 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w + 5 * static_cast<size_t>(Kp) + k), a5);
      a6 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w + 6 * static_cast<size_t>(Kp) + k), a6);
      a7 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w + 7 * static_cast<size_t>(Kp) + k), a7);
    }
    _mm256_storeu_ps(h + j, hsum8(a0, a1, a2, a3, a4, a5, a6, a7));
  }
#endif
  // One row at a time, 8 lanes (vectorisable without reassociation; wider row tiles spilled with GCC 12).
  for (; j < H; ++j) {
    const float* __restrict w = w1t + static_cast<size_t>(j) * Kp;
    float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    for (int k = 0; k < Kp; k += 8)
      for (int l = 0; l < 8; ++l) acc[l] += xp[k + l] * w[k + l];
    h[j] = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  }
}

// Counts for rows [r0, r1) of x ([rows, K] row-major); scratch holds w.scratch_floats() floats.
inline void router_rows_impl(const mbq::RouterWeights& w, const float* thr, const float* x, size_t r0, size_t r1,
                             int64_t* out, float* scratch) {
  const int K = w.K, Kp = w.Kp, H = w.H, M = w.M, S1 = w.S1, C = M * S1;
  const float* __restrict w1t = w.w1t.data();  // [H][Kp]
  const float* __restrict b1 = w.b1.data();
  const float* __restrict w2 = w.w2.data();  // [H][C]
  const float* __restrict b2 = w.b2.data();
  float* __restrict xp = scratch;  // [x, pad, 0...] (Kp)
  float* __restrict h = scratch + Kp;
  float* __restrict logits = h + H;
  for (size_t r = r0; r < r1; ++r) {
    const float* __restrict xr = x + r * static_cast<size_t>(K);
    std::copy(xr, xr + K, xp);
    xp[K] = w.pad;
    std::fill(xp + K + 1, xp + Kp, 0.f);
    // ||xp||^2 with 8 partial sums.
    float part[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    for (int k = 0; k < Kp; k += 8)
      for (int l = 0; l < 8; ++l) part[l] += xp[k + l] * xp[k + l];
    const float ss = ((part[0] + part[4]) + (part[1] + part[5])) + ((part[2] + part[6]) + (part[3] + part[7]));
    // h = xp @ W1, normalised afterwards: (xp / ||xp||) @ W1 == (xp @ W1) / ||xp||. Norm 0 -> xn = 0.
    w1_product(w1t, Kp, xp, H, h);
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
