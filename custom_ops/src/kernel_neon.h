// Building blocks shared by the AArch64 kernels (kernel_neon.cpp, kernel_neon_dotprod.cpp).
//
// Everything here has internal linkage on purpose: kernel_neon_dotprod.cpp is compiled with
// -march=armv8.2-a+dotprod, and an inline function with external linkage compiled in both files
// could be merged by the linker into the dotprod copy and then run on a CPU without dotprod.
#pragma once

#include <arm_neon.h>

#include <cstring>

#include "mbq_kernels.h"

namespace mbq {

// Float32-activation kernels of kernel_neon.cpp (plain ARMv8.0 NEON), reused by the dotprod table.
void neon_gemv_f32(const PackedWeights& w, int k, const float* a, const float* asum, float* y, int n0, int n1);
void neon_gemm_f32(const PackedWeights& w, int k, const float* a, size_t lda, int m, float* y, size_t ldy, int n0,
                   int n1, float* scratch);

namespace {  // NOLINT(google-build-namespaces): see the note at the top of the file

constexpr int kChunk = 16;  // values per accumulation step (a group is a multiple of 16 values)
constexpr int kTileN = 4;   // output channels per register tile

// Values 0..15 (lo) and 16..31 (hi) of block `src` of a sub-plane of width w (mbq_kernels.h).
inline void expand_block(const uint8_t* src, int w, uint8x16_t& lo, uint8x16_t& hi) {
  switch (w) {
    case 8:
      lo = vld1q_u8(src);
      hi = vld1q_u8(src + 16);
      break;
    case 4: {  // byte t: value t (low nibble), t + 16 (high nibble)
      const uint8x16_t x = vld1q_u8(src);
      lo = vandq_u8(x, vdupq_n_u8(0x0F));
      hi = vshrq_n_u8(x, 4);
      break;
    }
    case 2: {  // byte t (t < 8): values t, t+8, t+16, t+24 in bit pairs 0..3
      const uint8x8_t x = vld1_u8(src);
      const uint8x16_t m = vdupq_n_u8(0x03);
      lo = vandq_u8(vcombine_u8(x, vshr_n_u8(x, 2)), m);
      hi = vandq_u8(vcombine_u8(vshr_n_u8(x, 4), vshr_n_u8(x, 6)), m);
      break;
    }
    default: {  // w == 1; byte t (t < 4): values t, t+4, ..., t+28 in bits 0..7
      uint32_t word;
      std::memcpy(&word, src, 4);
      const uint8x16_t x = vreinterpretq_u8_u32(vdupq_n_u32(word));
      static const int8_t kLo[16] = {0, 0, 0, 0, -1, -1, -1, -1, -2, -2, -2, -2, -3, -3, -3, -3};
      static const int8_t kHi[16] = {-4, -4, -4, -4, -5, -5, -5, -5, -6, -6, -6, -6, -7, -7, -7, -7};
      const uint8x16_t one = vdupq_n_u8(1);
      lo = vandq_u8(vshlq_u8(x, vld1q_s8(kLo)), one);
      hi = vandq_u8(vshlq_u8(x, vld1q_s8(kHi)), one);
      break;
    }
  }
}

// Truncated codes qk of block `blk` of output channel n, built from sub-planes [0, end) only.
inline void block_codes(const PackedWeights& w, int end, int n, int blk, uint8x16_t& lo, uint8x16_t& hi) {
  lo = vdupq_n_u8(0);
  hi = vdupq_n_u8(0);
  for (int p = 0; p < end; ++p) {
    const SubPlane& sp = w.sub[p];
    const uint8_t* src = sp.data + static_cast<size_t>(n) * sp.row_bytes + static_cast<size_t>(blk) * 4 * sp.bits;
    uint8x16_t vlo, vhi;
    expand_block(src, sp.bits, vlo, vhi);
    const int8x16_t sh = vdupq_n_s8(static_cast<int8_t>(sp.shift));
    lo = vorrq_u8(lo, vshlq_u8(vlo, sh));
    hi = vorrq_u8(hi, vshlq_u8(vhi, sh));
  }
}

// sum_g scale[n,g] * (off_k - zero[n,g] + extra) * asum[g]: the part of y[n] that does not touch codes.
inline float offset_term(const PackedWeights& w, int k, int n, const float* asum, float extra = 0.f) {
  const float* sc = w.scales + static_cast<size_t>(n) * w.G;
  const float* zr = w.zeros + static_cast<size_t>(n) * w.G;
  const float off = w.offset[k] + extra;
  float t = 0.f;
  for (int g = 0; g < w.G; ++g) t += sc[g] * (off - zr[g]) * asum[g];
  return t;
}

// Int8-activation GEMV for up to kTileN channels: y[n] = sum over 16-value chunks of
// qscale[blk] * scale[n,g] * sum(qa * qk) + offset_term. Codes are made signed with qk ^ 0x80
// (= qk - 128) so that a signed 8x8-bit dot product applies to every width up to 8 bits; the
// dropped 128 * sum(qa * qscale) over a group is exactly 128 * qasum[g], added back in the
// offset term. `Dot` accumulates sum(a * q) of 16 int8 pairs into four int32 lanes.
template <class Dot, int NC>
inline void gemv_q8_tile(const PackedWeights& w, int k, const int8_t* qa, const float* qscale, const float* qasum,
                         float* y, int n0) {
  const int end = w.subplane_end[k];
  const int nblocks = (w.K + kBlock - 1) / kBlock;  // blocks past K are all padding
  const bool split = w.group_size == kChunk;        // the two halves of a block are different groups
  const uint8x16_t sign = vdupq_n_u8(0x80);
  float32x4_t total[NC];
  for (auto& t : total) t = vdupq_n_f32(0.f);
  for (int blk = 0; blk < nblocks; ++blk) {
    const int8x16_t a_lo = vld1q_s8(qa + blk * kBlock), a_hi = vld1q_s8(qa + blk * kBlock + kChunk);
    const float qs = qscale[blk];
    const int g0 = blk * kBlock / w.group_size;
    for (int c = 0; c < NC; ++c) {
      uint8x16_t lo, hi;
      block_codes(w, end, n0 + c, blk, lo, hi);
      const int8x16_t q_lo = vreinterpretq_s8_u8(veorq_u8(lo, sign));
      const int8x16_t q_hi = vreinterpretq_s8_u8(veorq_u8(hi, sign));
      const float* sc = w.scales + static_cast<size_t>(n0 + c) * w.G;
      if (!split) {
        const int32x4_t d = Dot::dot16(Dot::dot16(vdupq_n_s32(0), a_lo, q_lo), a_hi, q_hi);
        total[c] = vfmaq_n_f32(total[c], vcvtq_f32_s32(d), qs * sc[g0]);
      } else {
        total[c] = vfmaq_n_f32(total[c], vcvtq_f32_s32(Dot::dot16(vdupq_n_s32(0), a_lo, q_lo)), qs * sc[g0]);
        if (g0 + 1 < w.G)
          total[c] = vfmaq_n_f32(total[c], vcvtq_f32_s32(Dot::dot16(vdupq_n_s32(0), a_hi, q_hi)), qs * sc[g0 + 1]);
      }
    }
  }
  for (int c = 0; c < NC; ++c) y[n0 + c] = vaddvq_f32(total[c]) + offset_term(w, k, n0 + c, qasum, 128.f);
}

template <class Dot>
void gemv_q8(const PackedWeights& w, int k, const int8_t* qa, const float* qscale, const float* qasum, float* y,
             int n0, int n1) {
  int n = n0;
  for (; n + kTileN <= n1; n += kTileN) gemv_q8_tile<Dot, kTileN>(w, k, qa, qscale, qasum, y, n);
  for (; n < n1; ++n) gemv_q8_tile<Dot, 1>(w, k, qa, qscale, qasum, y, n);
}

}  // namespace

}  // namespace mbq
