// x86-64 AVX-512 (F/BW/VL) + VNNI kernels. This file alone is compiled with
// -mavx512f -mavx512bw -mavx512vl -mavx512vnni; the dispatcher calls it only after checking the CPU.
//
// Int8-activation GEMV and GEMM (accuracy_level=4) with vpdpbusd (u8 weight codes x s8 activations,
// 64 multiply-adds per instruction). The prepacked sub-planes are not expanded into in-order codes:
// each byte of a w-bit sub-plane holds 8/w values ("parts") at bit offsets 0, w, 2w, ... (see
// mbq_kernels.h). One rotate (to the part's target bit position) and one AND per part yield bytes
// whose dot product with a matching *permutation* of the activations is the part's contribution. The
// permutations depend only on the activation row, so q8_prepare builds them once per call and every
// output channel reuses them. Sub-planes of equal width share the permutation and are merged
// (vpternlog) before the dot product, so [2,2,2,2] with 4 slices costs as many dot products as with 1.
//
// Units of 128 values (4 prepacked blocks) are the loop step; the per-unit int32 sums are converted
// to float once per unit and scaled by scale[n, g] * activation_scale[unit]. This needs group_size
// >= 128 and sub-plane widths in {2, 4, 8}; other shapes and the float paths use the AVX2 kernels.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "mbq_kernels.h"

namespace mbq {

namespace {

constexpr int kUnit = 128;  // values per unit (4 blocks of 32)

size_t units_padded(const PackedWeights& w) { return (static_cast<size_t>(w.Kp) + kUnit - 1) / kUnit * kUnit; }

// Activation buffer: [in-order (Ku)][4-bit-part order (Ku)][2-bit-part order (Ku)], Ku = Kp rounded up
// to 128, zero padded. The quantizer fills the first Kp bytes; q8_prepare the parts a row with k
// slices reads (none when it reads the full codes).
size_t q8_bytes_avx512(const PackedWeights& w) { return 3 * units_padded(w); }

// Sub-plane widths (4 and 2) whose activation orders a row with k slices needs.
void part_orders(const PackedWeights& w, int k, bool* need4, bool* need2) {
  *need4 = *need2 = false;
  if (k == w.num_slices && w.codes.data) return;  // full codes: in-order activations
  for (int p = 0; p < w.subplane_end[k]; ++p) {
    *need4 |= w.sub[p].bits == 4;
    *need2 |= w.sub[p].bits == 2;
  }
}

void q8_prepare_avx512(const PackedWeights& w, int k, int8_t* qa) {
  const size_t Ku = units_padded(w);
  std::memset(qa + w.Kp, 0, Ku - static_cast<size_t>(w.Kp));
  bool need4, need2;
  part_orders(w, k, &need4, &need2);
  int8_t* a4 = qa + Ku;
  int8_t* a2 = qa + 2 * Ku;
  // 2-bit order: qword 4b + p of a unit (block b, values 8p .. 8p + 7) moves to qword 4p + b.
  const __m512i t0 = _mm512_setr_epi64(0, 4, 8, 12, 1, 5, 9, 13), t1 = _mm512_setr_epi64(2, 6, 10, 14, 3, 7, 11, 15);
  for (size_t u = 0; u < Ku / kUnit; ++u) {
    const __m512i x0 = _mm512_loadu_si512(qa + u * kUnit), x1 = _mm512_loadu_si512(qa + u * kUnit + 64);
    if (need4) {  // 4-bit sub-plane: byte t of block b holds value t (bits 0-3) and t + 16 (bits 4-7)
      _mm512_storeu_si512(a4 + u * kUnit, _mm512_shuffle_i64x2(x0, x1, 0x88));
      _mm512_storeu_si512(a4 + u * kUnit + 64, _mm512_shuffle_i64x2(x0, x1, 0xDD));
    }
    if (need2) {  // 2-bit sub-plane: byte t of block b holds values t + 8p at bits 2p (part p = 0..3)
      _mm512_storeu_si512(a2 + u * kUnit, _mm512_permutex2var_epi64(x0, t0, x1));
      _mm512_storeu_si512(a2 + u * kUnit + 64, _mm512_permutex2var_epi64(x0, t1, x1));
    }
  }
}

// quantize_row_q8 (same values bit for bit: the same float operations, and vcvtps2dq rounds to
// nearest even like its 1.5 * 2^23 trick) vectorized, then q8_prepare.
void quantize_q8_avx512(const PackedWeights& w, int k, const float* a, int8_t* qa, float* qscale, float* qasum) {
  const int qb = q8_block(w), gs = w.group_size;
  if (gs < 32) {  // a quantization block covers more than one group: the scalar quantizer
    quantize_row_q8(w, a, qa, qscale, qasum);
    return q8_prepare_avx512(w, k, qa);
  }
  std::fill(qasum, qasum + w.G, 0.f);
  for (int b0 = 0; b0 < w.Kp; b0 += qb) {  // block lengths are multiples of 32
    const int b1 = std::min(w.Kp, b0 + qb);
    __m512 m = _mm512_setzero_ps();
    for (int i = b0; i < b1; i += 16) m = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(a + i)), m);  // NaN: keeps m, like std::max
    const float amax = _mm512_reduce_max_ps(m);
    const float s = amax / 127.f, inv = amax > 0.f ? 127.f / amax : 0.f;
    for (int blk = b0 / kBlock; blk < b1 / kBlock; ++blk) qscale[blk] = s;
    const __m512 vinv = _mm512_set1_ps(inv);
    __m512i sum = _mm512_setzero_si512();
    for (int i = b0; i < b1; i += 16) {
      const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(a + i), vinv));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(qa + i), _mm512_cvtepi32_epi8(q));
      sum = _mm512_add_epi32(sum, q);
    }
    const int g = b0 / gs;  // qb <= gs: the block lies in one group
    if (g < w.G) {  // multiply, then add: no FMA contraction (the scalar quantizer rounds twice)
      const __m128 t = _mm_mul_ss(_mm_set_ss(s), _mm_set_ss(static_cast<float>(_mm512_reduce_add_epi32(sum))));
      qasum[g] = _mm_cvtss_f32(_mm_add_ss(_mm_set_ss(qasum[g]), t));
    }
  }
  q8_prepare_avx512(w, k, qa);
}

struct PlaneRef {
  const uint8_t* data;
  size_t row_bytes;
  int shift;  // target bit position of the sub-plane's value in the truncated code
};

// Sum of the four 128-bit lanes of v (element c: channel c of an interleaved quad).
inline __m128 quad_sum(__m512 v) {
  v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, 0x4E));  // + the other 256-bit half
  v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, 0xB1));  // + the neighbouring 128-bit lane
  return _mm512_castps512_ps128(v);
}

// acc | (x & m)
inline __m512i or_masked(__m512i acc, __m512i x, __m512i m) { return _mm512_ternarylogic_epi32(acc, x, m, 0xF8); }

// Rotating a 32-bit lane left by (to - from) mod 32 moves bit `from` of every byte to bit `to` of the
// same byte (bits that wrap come from other bytes and are masked off), so one vprold places any part.
inline int rot(int from, int to) { return (to - from + 32) & 31; }

// Per-call constants: where each part of each sub-plane goes (rotation counts) and its mask.
struct Plan {
  __m512i rot4[2][2], mask4[2];  // [plane][part]
  __m512i rot2[4][2], mask2[4];  // [plane][part pair]: parts 2h (low 256 bits) and 2h + 1 (high 256 bits)
  // GEMM rows with k < S slices read the full codes as qk = code >> base(k) (0: the codes as they are).
  int rshift8 = 0;
  __m128i rshift8_count;
  __m512i mask8;
};

// The 8-bit parts of a unit, truncated to the row's k slices when the plan says so.
__attribute__((always_inline)) inline void load8(const Plan& plan, const uint8_t* src, __m512i d[2]) {
  d[0] = _mm512_loadu_si512(src);
  d[1] = _mm512_loadu_si512(src + 64);
  if (plan.rshift8) {
    d[0] = _mm512_and_si512(_mm512_srl_epi16(d[0], plan.rshift8_count), plan.mask8);
    d[1] = _mm512_and_si512(_mm512_srl_epi16(d[1], plan.rshift8_count), plan.mask8);
  }
}

// The 2-bit parts 2h and 2h + 1 of one unit of N2 sub-planes, as one zmm (the 32 plane bytes are
// broadcast to both halves; each half rotates its part into place).
template <int N2>
__attribute__((always_inline)) inline void decode2(const Plan& plan, const uint8_t* const* rows, size_t u, __m512i d[2]) {
  __m512i x[N2];
  for (int q = 0; q < N2; ++q)
    x[q] = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[q] + u * 32)));
  for (int h = 0; h < 2; ++h) {
    d[h] = _mm512_and_si512(_mm512_rolv_epi32(x[0], plan.rot2[0][h]), plan.mask2[0]);
    for (int q = 1; q < N2; ++q) d[h] = or_masked(d[h], _mm512_rolv_epi32(x[q], plan.rot2[q][h]), plan.mask2[q]);
  }
}

// NC output channels [n, n + NC) using N8 8-bit, N4 4-bit and N2 2-bit sub-planes. kHalf: groups of
// 64, so the unit's first 64 values (int32 lanes 0-7 of the sums) and last 64 (lanes 8-15) have their
// own weight and activation scales (N2 == 0: the 4-bit parts keep the halves apart, 8-bit sums are
// folded into that shape).
template <int N8, int N4, int N2, int NC, bool kLow4, bool kHalf>
void tile(const PackedWeights& w, const Plan& plan, const PlaneRef* p8, const PlaneRef* p4, const PlaneRef* p2,
          const int8_t* qa, const float* qscale, const float* qasum, const float* qasum4, float off, float step, size_t n,
          float* y) {
  const size_t Ku = units_padded(w);
  const int8_t* a4 = qa + Ku;
  const int8_t* a2 = qa + 2 * Ku;
  const int units = static_cast<int>(Ku / kUnit), G = w.G;
  const int upg = kHalf ? 1 : w.group_size / kUnit, nqs = w.Kp / kBlock;
  __m512 facc[NC];
  for (int c = 0; c < NC; ++c) facc[c] = _mm512_setzero_ps();
  const uint8_t* r8[NC > 0 ? NC : 1];
  const uint8_t* r4[N4 > 0 ? N4 : 1][NC];
  const uint8_t* r2[N2 > 0 ? N2 : 1][NC];
  for (int c = 0; c < NC; ++c) {
    if constexpr (N8 > 0) r8[c] = p8[0].data + (n + c) * p8[0].row_bytes;
    for (int q = 0; q < N4; ++q) r4[q][c] = p4[q].data + (n + c) * p4[q].row_bytes;
    for (int q = 0; q < N2; ++q) r2[q][c] = p2[q].data + (n + c) * p2[q].row_bytes;
  }
  for (int u = 0, g = 0, next_g = upg; u < units; ++u) {
    if (u == next_g) {  // (no division in the loop: it showed up in the profile)
      g += kHalf ? 2 : 1;
      next_g += upg;
    }
    __m512i acc[NC];
    for (int c = 0; c < NC; ++c) {
      acc[c] = _mm512_setzero_si512();
    }
    if constexpr (N8 > 0) {
      const __m512i x0 = _mm512_loadu_si512(qa + u * kUnit), x1 = _mm512_loadu_si512(qa + u * kUnit + 64);
      for (int c = 0; c < NC; ++c) {
        const uint8_t* src = r8[c] + static_cast<size_t>(u) * kUnit;
        if constexpr (kHalf) {  // lanes 0-7: the first 64 values (two 128-bit lanes of each sum)
          const __m512i lo = _mm512_dpbusd_epi32(acc[c], _mm512_loadu_si512(src), x0);
          const __m512i hi = _mm512_dpbusd_epi32(acc[c], _mm512_loadu_si512(src + 64), x1);
          acc[c] = _mm512_add_epi32(_mm512_shuffle_i64x2(lo, hi, 0x44), _mm512_shuffle_i64x2(lo, hi, 0xEE));
        } else {
          acc[c] = _mm512_dpbusd_epi32(acc[c], _mm512_loadu_si512(src), x0);
          acc[c] = _mm512_dpbusd_epi32(acc[c], _mm512_loadu_si512(src + 64), x1);
        }
      }
    }
    if constexpr (N4 > 0) {
      const __m512i lo_a = _mm512_loadu_si512(a4 + u * kUnit), hi_a = _mm512_loadu_si512(a4 + u * kUnit + 64);
      for (int c = 0; c < NC; ++c) {
        __m512i x = _mm512_loadu_si512(r4[0][c] + static_cast<size_t>(u) * 64);
        __m512i lo, hi;
        if constexpr (kLow4) {  // the plane's value is the code's low nibble: AND / shift+AND
          lo = _mm512_and_si512(x, plan.mask4[0]);
          hi = _mm512_and_si512(_mm512_srli_epi16(x, 4), plan.mask4[0]);
        } else {
          lo = _mm512_and_si512(_mm512_rolv_epi32(x, plan.rot4[0][0]), plan.mask4[0]);
          hi = _mm512_and_si512(_mm512_rolv_epi32(x, plan.rot4[0][1]), plan.mask4[0]);
        }
        if constexpr (N4 > 1) {
          x = _mm512_loadu_si512(r4[1][c] + static_cast<size_t>(u) * 64);
          lo = or_masked(lo, _mm512_rolv_epi32(x, plan.rot4[1][0]), plan.mask4[1]);
          hi = or_masked(hi, _mm512_rolv_epi32(x, plan.rot4[1][1]), plan.mask4[1]);
        }
        acc[c] = _mm512_dpbusd_epi32(acc[c], lo, lo_a);
        acc[c] = _mm512_dpbusd_epi32(acc[c], hi, hi_a);
      }
    }
    if constexpr (N2 > 0) {
      const __m512i a01 = _mm512_loadu_si512(a2 + u * kUnit), a23 = _mm512_loadu_si512(a2 + u * kUnit + 64);
      for (int c = 0; c < NC; ++c) {
        const uint8_t* rows[N2];
        for (int q = 0; q < N2; ++q) rows[q] = r2[q][c];
        __m512i d[2];
        decode2<N2>(plan, rows, static_cast<size_t>(u), d);
        acc[c] = _mm512_dpbusd_epi32(acc[c], d[0], a01);
        acc[c] = _mm512_dpbusd_epi32(acc[c], d[1], a23);
      }
    }
    // Activation scale of this unit (quantize_row_q8 uses one scale per 128 values when group_size >= 128).
    const float as = qscale[u * (kUnit / kBlock)];
    // kHalf: the second half's group and activation scale (clamped: past K the sums are 0).
    const int g2 = kHalf ? std::min(g + 1, G - 1) : g;
    const float as2 = kHalf ? qscale[std::min(u * (kUnit / kBlock) + 2, nqs - 1)] : as;
    if constexpr (NC % 4 == 0 && kHalf) {
      for (int h = 0; h < NC / 4; ++h) {
        const __m512i* a = acc + 4 * h;
        const __m512i s01 = _mm512_add_epi32(_mm512_unpacklo_epi32(a[0], a[1]), _mm512_unpackhi_epi32(a[0], a[1]));
        const __m512i s23 = _mm512_add_epi32(_mm512_unpacklo_epi32(a[2], a[3]), _mm512_unpackhi_epi32(a[2], a[3]));
        const __m512i t = _mm512_add_epi32(_mm512_unpacklo_epi64(s01, s23), _mm512_unpackhi_epi64(s01, s23));
        const float* s4 = w.scales4 + (n / 4 + h) * G * 4;
        const __m128 sa = _mm_mul_ps(_mm_loadu_ps(s4 + g * 4), _mm_set1_ps(as));
        const __m128 sb = _mm_mul_ps(_mm_loadu_ps(s4 + g2 * 4), _mm_set1_ps(as2));
        const __m512 sv = _mm512_shuffle_f32x4(_mm512_castps128_ps512(sa), _mm512_castps128_ps512(sb), 0x00);
        facc[h] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), sv, facc[h]);
      }
    } else if constexpr (kHalf) {
      for (int c = 0; c < NC; ++c) {
        const float* sc = w.scales + (n + c) * G;
        const __m512 sv = _mm512_shuffle_f32x4(_mm512_set1_ps(sc[g] * as), _mm512_set1_ps(sc[g2] * as2), 0x44);
        facc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[c]), sv, facc[c]);
      }
    } else if constexpr (NC % 4 == 0) {
      // Interleave each quad of channels so one convert + FMA serves all four: every 128-bit lane
      // of t holds [ch0, ch1, ch2, ch3] partial sums; scales4 has the 4 channels' scales side by side.
      for (int h = 0; h < NC / 4; ++h) {
        const __m512i* a = acc + 4 * h;
        const __m512i s01 = _mm512_add_epi32(_mm512_unpacklo_epi32(a[0], a[1]), _mm512_unpackhi_epi32(a[0], a[1]));
        const __m512i s23 = _mm512_add_epi32(_mm512_unpacklo_epi32(a[2], a[3]), _mm512_unpackhi_epi32(a[2], a[3]));
        const __m512i t = _mm512_add_epi32(_mm512_unpacklo_epi64(s01, s23), _mm512_unpackhi_epi64(s01, s23));
        const __m128 s4 = _mm_mul_ps(_mm_loadu_ps(w.scales4 + ((n / 4 + h) * G + g) * 4), _mm_set1_ps(as));
        facc[h] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_broadcast_f32x4(s4), facc[h]);
      }
    } else {
      for (int c = 0; c < NC; ++c) {
        const float s = w.scales[(n + c) * G + g] * as;
        facc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[c]), _mm512_set1_ps(s), facc[c]);
      }
    }
  }
  if constexpr (NC % 4 == 0) {
    // Lane sums of the interleaved accumulators (channel 4h + c in element c), plus the zero-point /
    // truncation-midpoint term sum_g scale * (off - zero) * qasum = off * A - B for the quad at once:
    // scales4 / scale_zero4 hold 4 groups x 4 channels per zmm, qasum4 each group's sum 4 times.
    for (int h = 0; h < NC / 4; ++h) {
      const float* s4 = w.scales4 + (n / 4 + h) * G * 4;
      const float* z4 = w.scale_zero4 + (n / 4 + h) * G * 4;
      __m512 A = _mm512_setzero_ps(), B = _mm512_setzero_ps();
      for (int g = 0; g < G; g += 4) {
        const __mmask16 m = G - g >= 4 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (4 * (G - g))) - 1u);
        const __m512 q = _mm512_maskz_loadu_ps(m, qasum4 + 4 * g);
        A = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, s4 + 4 * g), q, A);
        B = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, z4 + 4 * g), q, B);
      }
      const __m128 r = _mm_fmadd_ps(quad_sum(facc[h]), _mm_set1_ps(step),
                                    _mm_fmsub_ps(quad_sum(A), _mm_set1_ps(off), quad_sum(B)));
      _mm_storeu_ps(y + n + 4 * h, r);
    }
    return;
  }
  for (int c = 0; c < NC; ++c) {
    const float* sc = w.scales + (n + c) * G;
    const float* zr = w.zeros + (n + c) * G;
    // Zero-point / truncation-midpoint term: sum_g scale * (off - zero) * qasum, 16 groups at a time.
    __m512 z = _mm512_setzero_ps();
    const __m512 vo = _mm512_set1_ps(off);
    for (int g = 0; g < G; g += 16) {
      const __mmask16 m = G - g >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (G - g)) - 1u);
      const __m512 t = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, sc + g), _mm512_sub_ps(vo, _mm512_maskz_loadu_ps(m, zr + g)));
      z = _mm512_fmadd_ps(t, _mm512_maskz_loadu_ps(m, qasum + g), z);
    }
    y[n + c] = _mm512_reduce_add_ps(_mm512_fmadd_ps(facc[c], _mm512_set1_ps(step), z));
  }
}

// The two hot decode shapes: one plane of in-place codes, 4-bit (the code's low nibble; activations in
// 4-bit-part order) or 8-bit (in order), 8 channels [n, n + 8), n a multiple of 4. Same math as `tile`,
// with the 8 channels addressed from two pointers and the row stride (no per-channel pointers: they
// spilled the loop's registers) and the scales of both quads walked by pointer.
template <int kW, bool kHalf>
void tile8(const PackedWeights& w, const PlaneRef& pl, const int8_t* qa, const float* qscale, const float* qasum4,
           float off, float step, size_t n, float* y) {
  constexpr int NC = 8;
  const size_t Ku = units_padded(w), rb = pl.row_bytes, rb3 = 3 * rb;
  const int8_t* act = kW == 4 ? qa + Ku : qa;
  const int units = static_cast<int>(Ku / kUnit), G = w.G;
  const int upg = kHalf ? 1 : w.group_size / kUnit, nqs = w.Kp / kBlock;
  constexpr size_t kStep = kW == 4 ? 64 : 128;  // plane bytes per unit
  const uint8_t* p = pl.data + n * rb;
  const uint8_t* q = p + 4 * rb;
  const float* s4a = w.scales4 + (n / 4) * G * 4;
  const float* s4b = s4a + G * 4;
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  __m512 facc[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
  // The units; the last one as a tail when at most 64 of its values are in K (ragged K = 576 etc.).
  const bool tail = w.Kp % kUnit != 0 && w.Kp % kUnit <= kUnit / 2;
  int u = 0, g = 0, next_g = upg;
  auto unit = [&](auto tail_c) {
    constexpr bool kTail = decltype(tail_c)::value;
    if (u == next_g) {
      g += kHalf ? 2 : 1;
      next_g += upg;
    }
    const __m512i x0 = _mm512_loadu_si512(act);
    __m512i x1 = _mm512_setzero_si512();
    __m256i y1 = _mm256_setzero_si256();
    if constexpr (kTail && kW == 4) {
      y1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(act + 64));
    } else if constexpr (!kTail || kHalf) {
      x1 = _mm512_loadu_si512(act + 64);
    }
    __m512i acc[NC];
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) {
      const uint8_t* src = (c < 4 ? p : q) + ((c & 3) == 3 ? rb3 : (c & 3) * rb);
      __m512i lo, hi;
      if constexpr (kTail && kW == 4) {  // <= 64 values left: half-width decode
        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)), m = _mm512_castsi512_si256(m4);
        const __m256i d = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_and_si256(x, m), _mm512_castsi512_si256(x0));
        acc[c] = _mm512_zextsi256_si512(_mm256_dpbusd_epi32(d, _mm256_and_si256(_mm256_srli_epi16(x, 4), m), y1));
        continue;
      } else if constexpr (kTail && !kHalf) {  // <= 64 values left: one dot product
        acc[c] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_loadu_si512(src), x0);
        continue;
      } else if constexpr (kW == 4) {
        const __m512i x = _mm512_loadu_si512(src);
        lo = _mm512_and_si512(x, m4);
        hi = _mm512_and_si512(_mm512_srli_epi16(x, 4), m4);
      } else {
        lo = _mm512_loadu_si512(src);
        hi = _mm512_loadu_si512(src + 64);
      }
      if constexpr (kHalf && kW == 8) {  // lanes 0-7: the first 64 values
        const __m512i a = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, x0);
        const __m512i b = _mm512_dpbusd_epi32(_mm512_setzero_si512(), hi, x1);
        acc[c] = _mm512_add_epi32(_mm512_shuffle_i64x2(a, b, 0x44), _mm512_shuffle_i64x2(a, b, 0xEE));
      } else {
        acc[c] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, x0), hi, x1);
      }
    }
    const int qi = u * (kUnit / kBlock);
    const float as = qscale[qi];
    const int g2 = kHalf ? std::min(g + 1, G - 1) : g;
    const float as2 = kHalf ? qscale[std::min(qi + 2, nqs - 1)] : as;
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const __m512i* a = acc + 4 * h;
      const __m512i s01 = _mm512_add_epi32(_mm512_unpacklo_epi32(a[0], a[1]), _mm512_unpackhi_epi32(a[0], a[1]));
      const __m512i s23 = _mm512_add_epi32(_mm512_unpacklo_epi32(a[2], a[3]), _mm512_unpackhi_epi32(a[2], a[3]));
      const __m512i t = _mm512_add_epi32(_mm512_unpacklo_epi64(s01, s23), _mm512_unpackhi_epi64(s01, s23));
      const float* s4 = h ? s4b : s4a;
      __m512 sv;
      if constexpr (kHalf) {
        const __m128 sa = _mm_mul_ps(_mm_loadu_ps(s4 + g * 4), _mm_set1_ps(as));
        const __m128 sb = _mm_mul_ps(_mm_loadu_ps(s4 + g2 * 4), _mm_set1_ps(as2));
        sv = _mm512_shuffle_f32x4(_mm512_castps128_ps512(sa), _mm512_castps128_ps512(sb), 0x00);
      } else {
        sv = _mm512_broadcast_f32x4(_mm_mul_ps(_mm_loadu_ps(s4 + g * 4), _mm_set1_ps(as)));
      }
      facc[h] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), sv, facc[h]);
    }
  };
  for (; u < units - (tail ? 1 : 0); ++u, p += kStep, q += kStep, act += kUnit) unit(std::false_type{});
  if (tail) unit(std::true_type{});
  for (int h = 0; h < 2; ++h) {  // zero-point / midpoint term, as in `tile`
    const float* s4 = h ? s4b : s4a;
    const float* z4 = w.scale_zero4 + (n / 4 + h) * G * 4;
    __m512 A = _mm512_setzero_ps(), B = _mm512_setzero_ps();
    for (int g = 0; g < G; g += 4) {
      const __mmask16 m = G - g >= 4 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (4 * (G - g))) - 1u);
      const __m512 qv = _mm512_maskz_loadu_ps(m, qasum4 + 4 * g);
      A = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, s4 + 4 * g), qv, A);
      B = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, z4 + 4 * g), qv, B);
    }
    const __m128 r = _mm_fmadd_ps(quad_sum(facc[h]), _mm_set1_ps(step), _mm_fmsub_ps(quad_sum(A), _mm_set1_ps(off), quad_sum(B)));
    _mm_storeu_ps(y + n + 4 * h, r);
  }
}

template <int N8, int N4, int N2, bool kLow4, bool kHalf>
void run_tiles(const PackedWeights& w, const Plan& plan, const PlaneRef* p8, const PlaneRef* p4, const PlaneRef* p2, const int8_t* qa,
               const float* qscale, const float* qasum, float off, float step, int n0, int n1, float* y) {
  thread_local std::vector<float> q4;  // qasum, each group's value 4 times (for the quad epilogue)
  q4.resize(static_cast<size_t>(w.G) * 4);
  for (int g = 0; g < w.G; ++g)
    for (int c = 0; c < 4; ++c) q4[4 * g + c] = qasum[g];
  const float* qasum4 = q4.data();
  int n = n0;
  for (; n < n1 && n % 4 != 0; ++n) tile<N8, N4, N2, 1, kLow4, kHalf>(w, plan, p8, p4, p2, qa, qscale, qasum, qasum4, off, step, n, y);
  constexpr int kWide = N2 == 0 ? 8 : 4;  // channels per tile (register budget)
  constexpr int kOne = N8 == 1 && N4 == 0 && N2 == 0 ? 8 : N8 == 0 && N4 == 1 && N2 == 0 && kLow4 ? 4 : 0;
  if constexpr (kOne != 0) {
    const PlaneRef& pl = kOne == 8 ? p8[0] : p4[0];
    for (; n + 8 <= n1; n += 8) tile8<kOne, kHalf>(w, pl, qa, qscale, qasum4, off, step, n, y);
  }
  for (; n + kWide <= n1; n += kWide)
    tile<N8, N4, N2, kWide, kLow4, kHalf>(w, plan, p8, p4, p2, qa, qscale, qasum, qasum4, off, step, n, y);
  for (; n + 4 <= n1; n += 4) tile<N8, N4, N2, 4, kLow4, kHalf>(w, plan, p8, p4, p2, qa, qscale, qasum, qasum4, off, step, n, y);
  for (; n < n1; ++n) tile<N8, N4, N2, 1, kLow4, kHalf>(w, plan, p8, p4, p2, qa, qscale, qasum, qasum4, off, step, n, y);
}

// Prefill: one output channel x R rows. The channel's parts are decoded once per unit and reused for
// all R rows (the decode is most of the GEMV's work); activation parts come from L1.
template <int N8, int N4, int N2, int R>
void tile_rows(const PackedWeights& w, const Plan& plan, const PlaneRef* p8, const PlaneRef* p4, const PlaneRef* p2,
               const int8_t* qa, size_t qa_stride, const float* qscale, const float* qasum, float off, float step,
               size_t n, float* y, size_t ldy) {
  const size_t Ku = units_padded(w), nqs = static_cast<size_t>(w.Kp / kBlock);
  const int units = static_cast<int>(Ku / kUnit), G = w.G;
  const int upg = w.group_size / kUnit;
  const float* sc = w.scales + n * G;
  const float* zr = w.zeros + n * G;
  __m512 facc[R];
  for (int r = 0; r < R; ++r) facc[r] = _mm512_setzero_ps();
  for (int u = 0, g = 0, next_g = upg; u < units; ++u) {
    if (u == next_g) {
      ++g;
      next_g += upg;
    }
    __m512i d8[2], lo, hi;
    __m512i d2[2];
    if constexpr (N8 > 0) {
      load8(plan, p8[0].data + n * p8[0].row_bytes + static_cast<size_t>(u) * kUnit, d8);
    }
    if constexpr (N4 > 0) {
      __m512i x = _mm512_loadu_si512(p4[0].data + n * p4[0].row_bytes + static_cast<size_t>(u) * 64);
      lo = _mm512_and_si512(_mm512_rolv_epi32(x, plan.rot4[0][0]), plan.mask4[0]);
      hi = _mm512_and_si512(_mm512_rolv_epi32(x, plan.rot4[0][1]), plan.mask4[0]);
      if constexpr (N4 > 1) {
        x = _mm512_loadu_si512(p4[1].data + n * p4[1].row_bytes + static_cast<size_t>(u) * 64);
        lo = or_masked(lo, _mm512_rolv_epi32(x, plan.rot4[1][0]), plan.mask4[1]);
        hi = or_masked(hi, _mm512_rolv_epi32(x, plan.rot4[1][1]), plan.mask4[1]);
      }
    }
    if constexpr (N2 > 0) {
      const uint8_t* rows[N2];
      for (int q = 0; q < N2; ++q) rows[q] = p2[q].data + n * p2[q].row_bytes;
      decode2<N2>(plan, rows, static_cast<size_t>(u), d2);
    }
    const __m512 ws = _mm512_set1_ps(sc[g]);
    for (int r = 0; r < R; ++r) {
      const int8_t* a = qa + r * qa_stride + static_cast<size_t>(u) * kUnit;
      __m512i acc = _mm512_setzero_si512();
      if constexpr (N8 > 0) {
        acc = _mm512_dpbusd_epi32(acc, d8[0], _mm512_loadu_si512(a));
        acc = _mm512_dpbusd_epi32(acc, d8[1], _mm512_loadu_si512(a + 64));
      }
      if constexpr (N4 > 0) {
        acc = _mm512_dpbusd_epi32(acc, lo, _mm512_loadu_si512(a + Ku));
        acc = _mm512_dpbusd_epi32(acc, hi, _mm512_loadu_si512(a + Ku + 64));
      }
      if constexpr (N2 > 0) {
        acc = _mm512_dpbusd_epi32(acc, d2[0], _mm512_loadu_si512(a + 2 * Ku));
        acc = _mm512_dpbusd_epi32(acc, d2[1], _mm512_loadu_si512(a + 2 * Ku + 64));
      }
      const __m512 t = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), _mm512_set1_ps(qscale[r * nqs + u * (kUnit / kBlock)]));
      facc[r] = _mm512_fmadd_ps(t, ws, facc[r]);
    }
  }
  const __m512 vo = _mm512_set1_ps(off), vstep = _mm512_set1_ps(step);
  for (int r = 0; r < R; ++r) {
    __m512 z = _mm512_mul_ps(facc[r], vstep);
    for (int g = 0; g < G; g += 16) {
      const __mmask16 m = G - g >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (G - g)) - 1u);
      const __m512 b = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, sc + g), _mm512_sub_ps(vo, _mm512_maskz_loadu_ps(m, zr + g)));
      z = _mm512_fmadd_ps(b, _mm512_maskz_loadu_ps(m, qasum + r * G + g), z);
    }
    y[r * ldy + n] = _mm512_reduce_add_ps(z);
  }
}

// Prefill: 4 output channels [n, n + 4) x R rows (n a multiple of 4). Parts are decoded once per
// unit for the 4 channels, each row's activation parts are loaded once for the 4 channels, and the
// 4 channels' sums share one convert + FMA per row (the GEMV's interleaved epilogue).
template <int N8, int N4, int N2, int R>
void tile_rows4(const PackedWeights& w, const Plan& plan, const PlaneRef* p8, const PlaneRef* p4, const PlaneRef* p2,
                const int8_t* qa, size_t qa_stride, const float* qscale, const float* qasum, float off, float step,
                size_t n, float* y, size_t ldy) {
  constexpr int C = 4;
  const size_t Ku = units_padded(w), nqs = static_cast<size_t>(w.Kp / kBlock);
  const int units = static_cast<int>(Ku / kUnit), G = w.G;
  const int upg = w.group_size / kUnit;
  __m512 facc[R];
  for (int r = 0; r < R; ++r) facc[r] = _mm512_setzero_ps();
  for (int u = 0, g = 0, next_g = upg; u < units; ++u) {
    if (u == next_g) {
      ++g;
      next_g += upg;
    }
    __m512i d8[C][2], lo[C], hi[C];
    __m512i d2[C][2];
    for (int c = 0; c < C; ++c) {
      if constexpr (N8 > 0) {
        load8(plan, p8[0].data + (n + c) * p8[0].row_bytes + static_cast<size_t>(u) * kUnit, d8[c]);
      }
      if constexpr (N4 > 0) {
        __m512i x = _mm512_loadu_si512(p4[0].data + (n + c) * p4[0].row_bytes + static_cast<size_t>(u) * 64);
        lo[c] = _mm512_and_si512(_mm512_rolv_epi32(x, plan.rot4[0][0]), plan.mask4[0]);
        hi[c] = _mm512_and_si512(_mm512_rolv_epi32(x, plan.rot4[0][1]), plan.mask4[0]);
        if constexpr (N4 > 1) {
          x = _mm512_loadu_si512(p4[1].data + (n + c) * p4[1].row_bytes + static_cast<size_t>(u) * 64);
          lo[c] = or_masked(lo[c], _mm512_rolv_epi32(x, plan.rot4[1][0]), plan.mask4[1]);
          hi[c] = or_masked(hi[c], _mm512_rolv_epi32(x, plan.rot4[1][1]), plan.mask4[1]);
        }
      }
      if constexpr (N2 > 0) {
        const uint8_t* rows[N2];
        for (int q = 0; q < N2; ++q) rows[q] = p2[q].data + (n + c) * p2[q].row_bytes;
        decode2<N2>(plan, rows, static_cast<size_t>(u), d2[c]);
      }
    }
    const __m512 s4 = _mm512_broadcast_f32x4(_mm_loadu_ps(w.scales4 + (n / 4 * G + g) * 4));
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const int8_t* a = qa + r * qa_stride + static_cast<size_t>(u) * kUnit;
      __m512i acc[C];
      for (int c = 0; c < C; ++c) acc[c] = _mm512_setzero_si512();
      if constexpr (N8 > 0) {
        const __m512i x0 = _mm512_loadu_si512(a), x1 = _mm512_loadu_si512(a + 64);
        for (int c = 0; c < C; ++c) {
          acc[c] = _mm512_dpbusd_epi32(acc[c], d8[c][0], x0);
          acc[c] = _mm512_dpbusd_epi32(acc[c], d8[c][1], x1);
        }
      }
      if constexpr (N4 > 0) {
        const __m512i x0 = _mm512_loadu_si512(a + Ku), x1 = _mm512_loadu_si512(a + Ku + 64);
        for (int c = 0; c < C; ++c) {
          acc[c] = _mm512_dpbusd_epi32(acc[c], lo[c], x0);
          acc[c] = _mm512_dpbusd_epi32(acc[c], hi[c], x1);
        }
      }
      if constexpr (N2 > 0) {
        const __m512i x0 = _mm512_loadu_si512(a + 2 * Ku), x1 = _mm512_loadu_si512(a + 2 * Ku + 64);
        for (int c = 0; c < C; ++c) {
          acc[c] = _mm512_dpbusd_epi32(acc[c], d2[c][0], x0);
          acc[c] = _mm512_dpbusd_epi32(acc[c], d2[c][1], x1);
        }
      }
      const __m512i s01 = _mm512_add_epi32(_mm512_unpacklo_epi32(acc[0], acc[1]), _mm512_unpackhi_epi32(acc[0], acc[1]));
      const __m512i s23 = _mm512_add_epi32(_mm512_unpacklo_epi32(acc[2], acc[3]), _mm512_unpackhi_epi32(acc[2], acc[3]));
      const __m512i t = _mm512_add_epi32(_mm512_unpacklo_epi64(s01, s23), _mm512_unpackhi_epi64(s01, s23));
      const __m512 sc = _mm512_mul_ps(s4, _mm512_set1_ps(qscale[r * nqs + u * (kUnit / kBlock)]));
      facc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), sc, facc[r]);
    }
  }
  // Zero-point term per channel: bias[c][g] = scale * (off - zero), dotted with each row's qasum.
  const __m512 vo = _mm512_set1_ps(off);
  const __m128 vstep = _mm_set1_ps(step);
  for (int r = 0; r < R; ++r) {
    alignas(16) float out[4];
    _mm_store_ps(out, _mm_mul_ps(quad_sum(facc[r]), vstep));
    for (int c = 0; c < C; ++c) {
      const float* sc = w.scales + (n + c) * G;
      const float* zr = w.zeros + (n + c) * G;
      __m512 z = _mm512_setzero_ps();
      for (int g = 0; g < G; g += 16) {
        const __mmask16 m = G - g >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (G - g)) - 1u);
        const __m512 b = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, sc + g), _mm512_sub_ps(vo, _mm512_maskz_loadu_ps(m, zr + g)));
        z = _mm512_fmadd_ps(b, _mm512_maskz_loadu_ps(m, qasum + r * G + g), z);
      }
      y[r * ldy + n + c] = out[c] + _mm512_reduce_add_ps(z);
    }
  }
}

template <int N8, int N4, int N2>
void run_rows(const PackedWeights& w, const Plan& plan, const PlaneRef* p8, const PlaneRef* p4, const PlaneRef* p2,
              const int8_t* qa, size_t qa_stride, const float* qscale, const float* qasum, float off, float step, int m,
              float* y, size_t ldy, int n0, int n1) {
  constexpr int kRows = N2 > 0 ? 4 : 8;  // register budget (decoded parts of 4 channels)
  const size_t nqs = static_cast<size_t>(w.Kp / kBlock), G = static_cast<size_t>(w.G);
  for (int r0 = 0; r0 < m;) {
    const int rows = std::min(kRows, m - r0);
    const int8_t* a = qa + r0 * qa_stride;
    const float* qs = qscale + r0 * nqs;
    const float* as = qasum + r0 * G;
    float* yr = y + r0 * ldy;
    int n = n0;
    auto one = [&](int nn) {
      switch (rows >= 8 ? 8 : rows >= 4 ? 4 : rows >= 2 ? 2 : 1) {
        case 8: tile_rows<N8, N4, N2, 8>(w, plan, p8, p4, p2, a, qa_stride, qs, as, off, step, nn, yr, ldy); break;
        case 4: tile_rows<N8, N4, N2, 4>(w, plan, p8, p4, p2, a, qa_stride, qs, as, off, step, nn, yr, ldy); break;
        case 2: tile_rows<N8, N4, N2, 2>(w, plan, p8, p4, p2, a, qa_stride, qs, as, off, step, nn, yr, ldy); break;
        default: tile_rows<N8, N4, N2, 1>(w, plan, p8, p4, p2, a, qa_stride, qs, as, off, step, nn, yr, ldy); break;
      }
    };
    for (; n < n1 && n % 4 != 0; ++n) one(n);
    for (; n + 4 <= n1; n += 4) {
      switch (rows >= 8 ? 8 : rows >= 4 ? 4 : rows >= 2 ? 2 : 1) {
        case 8: tile_rows4<N8, N4, N2, 8>(w, plan, p8, p4, p2, a, qa_stride, qs, as, off, step, n, yr, ldy); break;
        case 4: tile_rows4<N8, N4, N2, 4>(w, plan, p8, p4, p2, a, qa_stride, qs, as, off, step, n, yr, ldy); break;
        case 2: tile_rows4<N8, N4, N2, 2>(w, plan, p8, p4, p2, a, qa_stride, qs, as, off, step, n, yr, ldy); break;
        default: tile_rows4<N8, N4, N2, 1>(w, plan, p8, p4, p2, a, qa_stride, qs, as, off, step, n, yr, ldy); break;
      }
    }
    for (; n < n1; ++n) one(n);
    r0 += rows >= 8 ? 8 : rows >= 4 ? 4 : rows >= 2 ? 2 : 1;
  }
}

// Which sub-planes a row with k slices uses, grouped by width, and the per-call constants.
struct Setup {
  PlaneRef p8[1], p4[2], p2[4];
  int n8 = 0, n4 = 0, n2 = 0;
  bool fast = true;  // false: 1-bit sub-planes, groups < 64 (< 128 for prefill, or with 2-bit planes): AVX2 path
  bool half = false;  // groups of 64: a unit covers two groups
  float off = 0.f, step = 1.f;
  Plan plan;

  // `gemv`: the decode kernel, which also takes groups of 64 (two groups per unit) without 2-bit planes.
  Setup(const PackedWeights& w, int k, bool gemv) {
    const int base = w.base_at(k);  // codes are used as qk >> base; the scale absorbs 2^base
    fast = w.group_size >= kUnit || (gemv && w.group_size == kUnit / 2);
    half = w.group_size < kUnit;
    if (k == w.num_slices && w.codes.data) {  // all slices: the full codes, one byte per weight
      p8[n8++] = PlaneRef{w.codes.data, w.codes.row_bytes, 0};
    } else if (!gemv && w.codes.data && fast) {
      // GEMM: the decode is shared by all rows, the multiply-adds are not; the truncated codes as one
      // byte per weight (code >> base) need 2 vpdpbusd per 128 weights and row whatever k is, where the
      // sub-planes need 2 per plane width (a 4+2-bit row: 4).
      p8[n8++] = PlaneRef{w.codes.data, w.codes.row_bytes, 0};
      plan.rshift8 = base;
      plan.rshift8_count = _mm_cvtsi32_si128(base);
      plan.mask8 = _mm512_set1_epi8(static_cast<char>(0xFF >> base));
    } else {
      for (int p = 0; p < w.subplane_end[k] && fast; ++p) {
        const SubPlane& sp = w.sub[p];
        const PlaneRef r{sp.data, sp.row_bytes, sp.shift - base};
        if (sp.bits == 8) {
          p8[n8++] = r;
        } else if (sp.bits == 4) {
          p4[n4++] = r;
        } else if (sp.bits == 2) {
          p2[n2++] = r;
        } else {
          fast = false;
        }
      }
    }
    if (half && n2 > 0) fast = false;  // 2-bit parts mix the unit's two groups
    off = w.offset[k];
    step = w.step_at(k);
    for (int q = 0; q < n4; ++q) {
      const int t = p4[q].shift;
      plan.mask4[q] = _mm512_set1_epi8(static_cast<char>(0x0F << t));
      for (int p = 0; p < 2; ++p) plan.rot4[q][p] = _mm512_set1_epi32(rot(4 * p, t));
    }
    for (int q = 0; q < n2; ++q) {
      const int t = p2[q].shift;
      plan.mask2[q] = _mm512_set1_epi8(static_cast<char>(0x03 << t));
      for (int h = 0; h < 2; ++h)
        plan.rot2[q][h] = _mm512_inserti64x4(_mm512_set1_epi32(rot(4 * h, t)), _mm256_set1_epi32(rot(4 * h + 2, t)), 1);
    }
  }

  // fn(integral_constant N8, N4, N2, low4): the compile-time sub-plane set (total bits <= 8, so these
  // are all the combinations of widths in {2, 4, 8}).
  template <class Fn>
  void dispatch(Fn&& fn) const {
    using std::integral_constant;
    using I0 = integral_constant<int, 0>;
    using I1 = integral_constant<int, 1>;
    using I2 = integral_constant<int, 2>;
    using F = std::false_type;
    if (n8 == 1) return fn(I1{}, I0{}, I0{}, F{});
    if (n4 == 2) return fn(I0{}, I2{}, I0{}, F{});
    if (n4 == 1 && n2 == 0) return p4[0].shift == 0 ? fn(I0{}, I1{}, I0{}, std::true_type{}) : fn(I0{}, I1{}, I0{}, F{});
    if (n4 == 1 && n2 == 1) return fn(I0{}, I1{}, I1{}, F{});
    if (n4 == 1 && n2 == 2) return fn(I0{}, I1{}, I2{}, F{});
    if (n2 == 1) return fn(I0{}, I0{}, I1{}, F{});
    if (n2 == 2) return fn(I0{}, I0{}, I2{}, F{});
    if (n2 == 3) return fn(I0{}, I0{}, integral_constant<int, 3>{}, F{});
    return fn(I0{}, I0{}, integral_constant<int, 4>{}, F{});
  }
};

void gemv_q8_avx512(const PackedWeights& w, int k, const int8_t* qa, const float* qscale, const float* qasum, float* y,
                    int n0, int n1) {
  const Setup st(w, k, true);
  if (!st.fast) return kernels_avx2()->gemv_q8(w, k, qa, qscale, qasum, y, n0, n1);
  st.dispatch([&](auto n8, auto n4, auto n2, auto low4) {
    constexpr int A = decltype(n8)::value, B = decltype(n4)::value, C = decltype(n2)::value;
    constexpr bool L = decltype(low4)::value;
    if constexpr (C == 0) {
      if (st.half) return run_tiles<A, B, C, L, true>(w, st.plan, st.p8, st.p4, st.p2, qa, qscale, qasum, st.off, st.step, n0, n1, y);
    }
    run_tiles<A, B, C, L, false>(w, st.plan, st.p8, st.p4, st.p2, qa, qscale, qasum, st.off, st.step, n0, n1, y);
  });
}

void gemm_q8_avx512(const PackedWeights& w, int k, const int8_t* qa, size_t qa_stride, const float* qscale,
                    const float* qasum, int m, float* y, size_t ldy, int n0, int n1) {
  const Setup st(w, k, false);
  if (!st.fast) {
    const size_t nqs = static_cast<size_t>(w.Kp / kBlock), G = static_cast<size_t>(w.G);
    for (int r = 0; r < m; ++r)
      kernels_avx2()->gemv_q8(w, k, qa + r * qa_stride, qscale + r * nqs, qasum + r * G, y + r * ldy, n0, n1);
    return;
  }
  st.dispatch([&](auto n8, auto n4, auto n2, auto) {
    run_rows<decltype(n8)::value, decltype(n4)::value, decltype(n2)::value>(
        w, st.plan, st.p8, st.p4, st.p2, qa, qa_stride, qscale, qasum, st.off, st.step, m, y, ldy, n0, n1);
  });
}

// The float paths are the AVX2 ones (AVX-512 float FMA brings nothing on this class of CPU for
// a decode-bound GEMV; the int8 path is where VNNI pays).
void gemv_f32(const PackedWeights& w, int k, const float* a, const float* asum, float* y, int n0, int n1) {
  kernels_avx2()->gemv(w, k, a, asum, y, n0, n1);
}
void gemm_f32(const PackedWeights& w, int k, const float* a, size_t lda, int m, float* y, size_t ldy, int n0, int n1,
              float* scratch) {
  kernels_avx2()->gemm(w, k, a, lda, m, y, ldy, n0, n1, scratch);
}

const KernelTable kAvx512 = [] {
  KernelTable t;
  t.name = "avx512_vnni";
  t.gemv = gemv_f32;
  t.gemm = gemm_f32;
  t.n_align = 8;  // column chunks of whole 8-channel decode tiles
  t.gemv_q8 = gemv_q8_avx512;
  t.q8_bytes = q8_bytes_avx512;
  t.q8_prepare = q8_prepare_avx512;
  t.quantize_q8 = quantize_q8_avx512;
  t.gemm_q8 = gemm_q8_avx512;
  t.full_codes = true;
  return t;
}();

}  // namespace

const KernelTable* kernels_avx512_vnni() { return &kAvx512; }

}  // namespace mbq
