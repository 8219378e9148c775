// ARM NEON (AArch64 Advanced SIMD, ARMv8.0) kernels for MixedBitMatMul.
//
// All paths rebuild the truncated codes qk of a 32-value block in two uint8x16 registers by
// OR-ing the used sub-planes (kernel_neon.h; each sub-plane expands with one load, a lane shift
// and an AND), so a row with k slices reads only the sub-planes of slices 1..k.
//   GEMV (decode, float32): y[n] = sum_g scale[n,g] * sum_{i in g} a_i * qk_i + offset term; the
//        code dot product runs in float32 FMAs (u8 -> f32 widening), four output channels at a
//        time to reuse the activation loads.
//   GEMM (prefill): dequantize a 16-channel x 256-value block of weights to float32 (L1), then
//        4-row x 4-channel register tiles of FMAs over it, accumulating across K blocks.
//   GEMV int8 (accuracy_level=4): kernel_neon.h's gemv_q8 with widening 8x8-bit multiplies
//        (kernel_neon_dotprod.cpp: the same with SDOT).
// Compiled only for AArch64 (MBQ_HAVE_NEON); NEON is mandatory there, so no run-time check.
#include <algorithm>

#include "kernel_neon.h"

namespace mbq {

namespace {

constexpr int kTileM = 4;  // activation rows per GEMM register tile

// Signed 8-bit dot product of 16 pairs into 4 int32 lanes, ARMv8.0: widening multiplies + pairwise adds
// (|a * q| <= 127 * 128 fits int16).
struct DotMull {
  static int32x4_t dot16(int32x4_t acc, int8x16_t a, int8x16_t q) {
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(q)));
    return vpadalq_s16(acc, vmull_high_s8(a, q));
  }
};

// acc += a[0..16) * float(q[0..16)).
inline void fma_chunk(float32x4_t acc[4], const float* a, uint8x16_t q) {
  const uint16x8_t q0 = vmovl_u8(vget_low_u8(q));
  const uint16x8_t q1 = vmovl_u8(vget_high_u8(q));
  acc[0] = vfmaq_f32(acc[0], vld1q_f32(a + 0), vcvtq_f32_u32(vmovl_u16(vget_low_u16(q0))));
  acc[1] = vfmaq_f32(acc[1], vld1q_f32(a + 4), vcvtq_f32_u32(vmovl_u16(vget_high_u16(q0))));
  acc[2] = vfmaq_f32(acc[2], vld1q_f32(a + 8), vcvtq_f32_u32(vmovl_u16(vget_low_u16(q1))));
  acc[3] = vfmaq_f32(acc[3], vld1q_f32(a + 12), vcvtq_f32_u32(vmovl_u16(vget_high_u16(q1))));
}

// y[n0 .. n0+nc) for nc <= kTileN channels sharing the activation loads.
template <int NC>
void gemv_tile(const PackedWeights& w, int k, const float* a, const float* asum, float* y, int n0) {
  const int end = w.subplane_end[k];
  const int nchunks = (w.K + kChunk - 1) / kChunk;  // chunks past K are padding (q = 0, a = 0)
  const int chunks_per_group = w.group_size / kChunk;
  float32x4_t total[NC], acc[NC][4];
  for (int c = 0; c < NC; ++c) {
    total[c] = vdupq_n_f32(0.f);
    for (auto& v : acc[c]) v = vdupq_n_f32(0.f);
  }
  for (int chunk = 0; chunk < nchunks; chunk += 2) {
    const int blk = chunk / 2;
    uint8x16_t lo[NC], hi[NC];
    for (int c = 0; c < NC; ++c) block_codes(w, end, n0 + c, blk, lo[c], hi[c]);
    for (int half = 0; half < 2 && chunk + half < nchunks; ++half) {
      const int ch = chunk + half;
      const float* ap = a + static_cast<size_t>(ch) * kChunk;
      for (int c = 0; c < NC; ++c) fma_chunk(acc[c], ap, half ? hi[c] : lo[c]);
      if ((ch + 1) % chunks_per_group == 0 || ch + 1 == nchunks) {  // group complete: apply its scale
        const int g = ch / chunks_per_group;
        for (int c = 0; c < NC; ++c) {
          const float s = w.scales[static_cast<size_t>(n0 + c) * w.G + g];
          const float32x4_t sum = vaddq_f32(vaddq_f32(acc[c][0], acc[c][1]), vaddq_f32(acc[c][2], acc[c][3]));
          total[c] = vfmaq_n_f32(total[c], sum, s);
          for (auto& v : acc[c]) v = vdupq_n_f32(0.f);
        }
      }
    }
  }
  for (int c = 0; c < NC; ++c) y[n0 + c] = vaddvq_f32(total[c]) + offset_term(w, k, n0 + c, asum);
}

// Dequantized weights w_k[n, i0 .. i0+len) into `dst` (i0, len multiples of 32; zero past the last
// chunk of K, where a ragged last group of 16 would have no scale).
void dequant_range(const PackedWeights& w, int k, int n, int i0, int len, float* dst) {
  const int end = w.subplane_end[k];
  const int nchunks = (w.K + kChunk - 1) / kChunk;
  const float* sc = w.scales + static_cast<size_t>(n) * w.G;
  const float* zr = w.zeros + static_cast<size_t>(n) * w.G;
  const float off = w.offset[k];
  for (int i = 0; i < len; i += kBlock) {
    const int chunk = (i0 + i) / kChunk;
    uint8x16_t q[2];
    block_codes(w, end, n, (i0 + i) / kBlock, q[0], q[1]);
    for (int half = 0; half < 2; ++half) {
      float* d = dst + i + half * kChunk;
      const int ch = chunk + half;
      if (ch >= nchunks) {
        std::fill(d, d + kChunk, 0.f);
        continue;
      }
      const int g = ch * kChunk / w.group_size;
      const float32x4_t s = vdupq_n_f32(sc[g]);
      const float32x4_t bias = vdupq_n_f32(off - zr[g]);  // w = s * (q + off - zero)
      const uint16x8_t q0 = vmovl_u8(vget_low_u8(q[half]));
      const uint16x8_t q1 = vmovl_u8(vget_high_u8(q[half]));
      const uint32x4_t parts[4] = {vmovl_u16(vget_low_u16(q0)), vmovl_u16(vget_high_u16(q0)),
                                   vmovl_u16(vget_low_u16(q1)), vmovl_u16(vget_high_u16(q1))};
      for (int t = 0; t < 4; ++t) vst1q_f32(d + 4 * t, vmulq_f32(s, vaddq_f32(vcvtq_f32_u32(parts[t]), bias)));
    }
  }
}

// Y[r0 .. r0+MR, n .. n+nc) (+)= A[r, i0 .. i0+len) . W[c, 0 .. len) for the kTileN channel rows
// `wr` (stride ldw); `accumulate` adds to Y instead of overwriting it.
template <int MR>
void gemm_tile(const float* wr, int ldw, int len, const float* a, size_t lda, int r0, int i0, float* y, size_t ldy,
               int n, int nc, bool accumulate) {
  float32x4_t acc[MR][kTileN];
  for (auto& row : acc)
    for (auto& v : row) v = vdupq_n_f32(0.f);
  const float* ar[MR];
  for (int r = 0; r < MR; ++r) ar[r] = a + static_cast<size_t>(r0 + r) * lda + i0;
  for (int i = 0; i < len; i += 4) {
    float32x4_t wv[kTileN];
    for (int c = 0; c < kTileN; ++c) wv[c] = vld1q_f32(wr + c * ldw + i);
    for (int r = 0; r < MR; ++r) {
      const float32x4_t av = vld1q_f32(ar[r] + i);
      for (int c = 0; c < kTileN; ++c) acc[r][c] = vfmaq_f32(acc[r][c], av, wv[c]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    float* yr = y + static_cast<size_t>(r0 + r) * ldy + n;
    for (int c = 0; c < nc; ++c) yr[c] = (accumulate ? yr[c] : 0.f) + vaddvq_f32(acc[r][c]);
  }
}

}  // namespace

void neon_gemv_f32(const PackedWeights& w, int k, const float* a, const float* asum, float* y, int n0, int n1) {
  int n = n0;
  for (; n + kTileN <= n1; n += kTileN) gemv_tile<kTileN>(w, k, a, asum, y, n);
  for (; n < n1; ++n) gemv_tile<1>(w, k, a, asum, y, n);
}

// Cache blocking: kGemmN channels x kGemmK values of dequantized weights (16 KiB, L1) are reused by
// every 4-row tile of A, so A (M x K) is streamed N / kGemmN times, one kGemmK-wide panel at a time.
constexpr int kGemmN = 16;
constexpr int kGemmK = 256;

void neon_gemm_f32(const PackedWeights& w, int k, const float* a, size_t lda, int m, float* y, size_t ldy, int n0,
                   int n1, float* /*scratch*/) {
  thread_local float tls_tile[kGemmN * kGemmK];
  float* const wtile = tls_tile;  // [channel][k] of the current block (one TLS lookup per call)
  for (int nb = n0; nb < n1; nb += kGemmN) {
    const int nbc = std::min(kGemmN, n1 - nb);
    for (int i0 = 0; i0 < w.Kp; i0 += kGemmK) {
      const int len = std::min(kGemmK, w.Kp - i0);
      for (int c = 0; c < kGemmN; ++c) {
        float* dst = wtile + c * kGemmK;
        if (c < nbc) {
          dequant_range(w, k, nb + c, i0, len, dst);
        } else {
          std::fill(dst, dst + len, 0.f);
        }
      }
      for (int nt = 0; nt < nbc; nt += kTileN) {
        const float* wr = wtile + nt * kGemmK;
        const int nc = std::min(kTileN, nbc - nt);
        int r = 0;
        for (; r + kTileM <= m; r += kTileM)
          gemm_tile<kTileM>(wr, kGemmK, len, a, lda, r, i0, y, ldy, nb + nt, nc, i0 > 0);
        for (; r < m; ++r) gemm_tile<1>(wr, kGemmK, len, a, lda, r, i0, y, ldy, nb + nt, nc, i0 > 0);
      }
    }
  }
}

namespace {
const KernelTable kNeon = [] {
  KernelTable t;
  t.name = "neon";
  t.gemv = neon_gemv_f32;
  t.gemm = neon_gemm_f32;
  t.n_align = kTileN;
  t.gemv_q8 = gemv_q8<DotMull>;
  return t;
}();
}  // namespace

const KernelTable* kernels_neon() { return &kNeon; }

}  // namespace mbq
