// x86-64 AVX2 + FMA kernels (this file alone is compiled with -mavx2 -mfma; the dispatcher
// only calls it after checking the CPU). Float math throughout: codes are expanded to bytes,
// converted to float and multiplied with float activations (no activation quantization).
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "mbq_kernels.h"

namespace mbq {

namespace {

// 32 in-order codes (bytes) of block `blk` of channel n, using sub-planes [0, end), each shifted
// down by `base` bits (base = B - c_k gives codes < 2^c_k for the int8 path; 0 gives full codes).
inline __m256i block_codes(const PackedWeights& w, int end, size_t n, size_t blk, int base = 0) {
  __m256i q = _mm256_setzero_si256();
  for (int p = 0; p < end; ++p) {
    const SubPlane& sp = w.sub[p];
    const uint8_t* src = sp.data + n * sp.row_bytes + blk * 4 * sp.bits;
    __m256i v;
    switch (sp.bits) {
      case 8:
        v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
        break;
      case 4: {
        const __m256i b = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
        v = _mm256_and_si256(_mm256_srlv_epi64(b, _mm256_setr_epi64x(0, 0, 4, 4)), _mm256_set1_epi8(0x0F));
        break;
      }
      case 2: {
        int64_t x;
        std::memcpy(&x, src, 8);
        v = _mm256_and_si256(_mm256_srlv_epi64(_mm256_set1_epi64x(x), _mm256_setr_epi64x(0, 2, 4, 6)),
                             _mm256_set1_epi8(0x03));
        break;
      }
      default: {  // 1
        int32_t x;
        std::memcpy(&x, src, 4);
        v = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(x), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)),
                             _mm256_set1_epi8(0x01));
        break;
      }
    }
    // v < 2^bits and bits + shift <= 8: a 16-bit shift never carries into the next byte.
    q = _mm256_or_si256(q, _mm256_sll_epi16(v, _mm_cvtsi32_si128(sp.shift - base)));
  }
  return q;
}

inline void to_float(__m256i q, __m256 f[4]) {
  const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
  f[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
  f[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
  f[2] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
  f[3] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Codes of block `blk` of channel n as 4 x 8 int32 lanes (values 8h .. 8h+7 in q[h]), each
// sub-plane's value shifted to (shift - base). Loads go straight from memory into 32-bit lanes
// (vpmovzxbd), so a block needs no cross-lane shuffles.
inline void block_codes32(const PackedWeights& w, int end, size_t n, size_t blk, int base, __m256i q[4]) {
  for (int h = 0; h < 4; ++h) q[h] = _mm256_setzero_si256();
  for (int p = 0; p < end; ++p) {
    const SubPlane& sp = w.sub[p];
    const uint8_t* src = sp.data + n * sp.row_bytes + blk * 4 * sp.bits;
    const __m128i s = _mm_cvtsi32_si128(sp.shift - base);
    __m256i v[4];
    switch (sp.bits) {
      case 8:
        for (int h = 0; h < 4; ++h)
          v[h] = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + 8 * h)));
        break;
      case 4: {
        const __m256i m = _mm256_set1_epi32(0x0F);
        const __m256i x0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src)));
        const __m256i x1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + 8)));
        v[0] = _mm256_and_si256(x0, m);
        v[1] = _mm256_and_si256(x1, m);
        v[2] = _mm256_srli_epi32(x0, 4);
        v[3] = _mm256_srli_epi32(x1, 4);
        break;
      }
      case 2: {
        const __m256i m = _mm256_set1_epi32(0x03);
        const __m256i x = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src)));
        v[0] = _mm256_and_si256(x, m);
        v[1] = _mm256_and_si256(_mm256_srli_epi32(x, 2), m);
        v[2] = _mm256_and_si256(_mm256_srli_epi32(x, 4), m);
        v[3] = _mm256_srli_epi32(x, 6);
        break;
      }
      default: {  // 1: value 8h+i is bit (2h + i/4) of byte i%4
        int32_t x32;
        std::memcpy(&x32, src, 4);
        const __m256i x = _mm256_set1_epi32(x32), one = _mm256_set1_epi32(1);
        const __m256i sh = _mm256_setr_epi32(0, 8, 16, 24, 1, 9, 17, 25);
        for (int h = 0; h < 4; ++h)
          v[h] = _mm256_and_si256(_mm256_srlv_epi32(x, _mm256_add_epi32(sh, _mm256_set1_epi32(2 * h))), one);
        break;
      }
    }
    for (int h = 0; h < 4; ++h) q[h] = _mm256_or_si256(q[h], _mm256_sll_epi32(v[h], s));
  }
}

// Decoders: Generic loops over the row's sub-planes at run time; Fixed<W...> knows their widths
// at compile time (the common slice layouts), which removes the per-block loop and switch - this
// halves decode time for a single 4-bit plane.
struct Generic {
  static bool match(const PackedWeights&, int) { return true; }
  static void codes32(const PackedWeights& w, int end, size_t n, size_t blk, int base, __m256i q[4]) {
    block_codes32(w, end, n, blk, base, q);
  }
  static __m256i codes8(const PackedWeights& w, int end, size_t n, size_t blk, int base) {
    return block_codes(w, end, n, blk, base);
  }
};

template <int W>
inline void sub_codes32(const SubPlane& sp, size_t n, size_t blk, int base, __m256i q[4]) {
  const uint8_t* src = sp.data + n * sp.row_bytes + blk * 4 * W;
  const __m128i s = _mm_cvtsi32_si128(sp.shift - base);
  __m256i v[4];
  if constexpr (W == 8) {
    for (int h = 0; h < 4; ++h) v[h] = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + 8 * h)));
  } else if constexpr (W == 4) {
    const __m256i m = _mm256_set1_epi32(0x0F);
    const __m256i x0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src)));
    const __m256i x1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + 8)));
    v[0] = _mm256_and_si256(x0, m);
    v[1] = _mm256_and_si256(x1, m);
    v[2] = _mm256_srli_epi32(x0, 4);
    v[3] = _mm256_srli_epi32(x1, 4);
  } else if constexpr (W == 2) {
    const __m256i m = _mm256_set1_epi32(0x03);
    const __m256i x = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src)));
    v[0] = _mm256_and_si256(x, m);
    v[1] = _mm256_and_si256(_mm256_srli_epi32(x, 2), m);
    v[2] = _mm256_and_si256(_mm256_srli_epi32(x, 4), m);
    v[3] = _mm256_srli_epi32(x, 6);
  } else {
    static_assert(W == 1, "sub-plane widths are 1, 2, 4 or 8");
    int32_t x32;
    std::memcpy(&x32, src, 4);
    const __m256i x = _mm256_set1_epi32(x32), one = _mm256_set1_epi32(1);
    const __m256i sh = _mm256_setr_epi32(0, 8, 16, 24, 1, 9, 17, 25);
    for (int h = 0; h < 4; ++h)
      v[h] = _mm256_and_si256(_mm256_srlv_epi32(x, _mm256_add_epi32(sh, _mm256_set1_epi32(2 * h))), one);
  }
  for (int h = 0; h < 4; ++h) q[h] = _mm256_or_si256(q[h], _mm256_sll_epi32(v[h], s));
}

template <int W>
inline __m256i sub_codes8(const SubPlane& sp, size_t n, size_t blk, int base) {
  const uint8_t* src = sp.data + n * sp.row_bytes + blk * 4 * W;
  __m256i v;
  if constexpr (W == 8) {
    v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
  } else if constexpr (W == 4) {
    const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
    const __m128i m = _mm_set1_epi8(0x0F);
    v = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(x, 4), m), _mm_and_si128(x, m));
  } else if constexpr (W == 2) {
    int64_t x;
    std::memcpy(&x, src, 8);
    v = _mm256_and_si256(_mm256_srlv_epi64(_mm256_set1_epi64x(x), _mm256_setr_epi64x(0, 2, 4, 6)), _mm256_set1_epi8(0x03));
  } else {
    int32_t x;
    std::memcpy(&x, src, 4);
    v = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(x), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)),
                         _mm256_set1_epi8(0x01));
  }
  return _mm256_sll_epi16(v, _mm_cvtsi32_si128(sp.shift - base));
}

template <int... Ws>
struct Fixed {
  static bool match(const PackedWeights& w, int end) {
    const int ws[] = {Ws...};
    if (end != static_cast<int>(sizeof...(Ws))) return false;
    for (int p = 0; p < end; ++p)
      if (w.sub[p].bits != ws[p]) return false;
    return true;
  }
  static void codes32(const PackedWeights& w, int, size_t n, size_t blk, int base, __m256i q[4]) {
    for (int h = 0; h < 4; ++h) q[h] = _mm256_setzero_si256();
    int p = 0;
    (sub_codes32<Ws>(w.sub[p++], n, blk, base, q), ...);
  }
  static __m256i codes8(const PackedWeights& w, int, size_t n, size_t blk, int base) {
    __m256i q = _mm256_setzero_si256();
    int p = 0;
    ((q = _mm256_or_si256(q, sub_codes8<Ws>(w.sub[p++], n, blk, base))), ...);
    return q;
  }
};

// Calls fn(Decoder{}) with the first decoder matching the row's sub-planes.
template <typename Fn, typename D, typename... Ds>
inline void with_decoder(const PackedWeights& w, int end, Fn&& fn) {
  if constexpr (sizeof...(Ds) == 0) {
    fn(D{});
  } else {
    if (D::match(w, end)) {
      fn(D{});
    } else {
      with_decoder<Fn, Ds...>(w, end, static_cast<Fn&&>(fn));
    }
  }
}

template <typename Fn>
inline void dispatch_decoder(const PackedWeights& w, int end, Fn&& fn) {
  with_decoder<Fn, Fixed<4>, Fixed<4, 2>, Fixed<4, 2, 2>, Fixed<2>, Fixed<2, 2>, Fixed<2, 2, 2>, Fixed<2, 2, 2, 2>,
               Fixed<8>, Fixed<4, 4>, Fixed<2, 1>, Fixed<2, 1, 2>, Generic>(w, end, static_cast<Fn&&>(fn));
}

template <class D>
void gemv_avx2_impl(const PackedWeights& w, int k, const float* a, const float* asum, float* y, int n0, int n1) {
  const int end = w.subplane_end[k], base = w.base_at(k);  // codes are used as qk >> base
  const float step = w.step_at(k), off = w.offset[k];   // the scale absorbs 2^base
  const size_t blocks = static_cast<size_t>(w.Kp / kBlock);
  const int gs = w.group_size, G = w.G;
  for (int n = n0; n < n1; ++n) {
    const float* sc = w.scales + static_cast<size_t>(n) * G;
    const float* zr = w.zeros + static_cast<size_t>(n) * G;
    __m256 tot = _mm256_setzero_ps();
    float ztot = 0.f;
    if (gs == 16) {  // a block covers two groups
      for (size_t blk = 0; blk < blocks; ++blk) {
        const float* ab = a + blk * kBlock;
        __m256i q[4];
        D::codes32(w, end, n, blk, base, q);
        __m256 f[4];
        for (int h = 0; h < 4; ++h) f[h] = _mm256_cvtepi32_ps(q[h]);
        const __m256 g0 = _mm256_fmadd_ps(f[1], _mm256_loadu_ps(ab + 8), _mm256_mul_ps(f[0], _mm256_loadu_ps(ab)));
        const __m256 g1 = _mm256_fmadd_ps(f[3], _mm256_loadu_ps(ab + 24), _mm256_mul_ps(f[2], _mm256_loadu_ps(ab + 16)));
        const int g = static_cast<int>(2 * blk);
        tot = _mm256_fmadd_ps(g0, _mm256_set1_ps(sc[g]), tot);
        ztot += sc[g] * (off - zr[g]) * asum[g];
        if (g + 1 < G) {
          tot = _mm256_fmadd_ps(g1, _mm256_set1_ps(sc[g + 1]), tot);
          ztot += sc[g + 1] * (off - zr[g + 1]) * asum[g + 1];
        }
      }
    } else {
      const size_t bpg = static_cast<size_t>(gs / kBlock);
      for (int g = 0; g < G; ++g) {
        __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
        const size_t b1 = std::min(blocks, (g + 1) * bpg);
        for (size_t blk = g * bpg; blk < b1; ++blk) {
          const float* ab = a + blk * kBlock;
          __m256i q[4];
          D::codes32(w, end, n, blk, base, q);
          acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q[0]), _mm256_loadu_ps(ab), acc0);
          acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q[1]), _mm256_loadu_ps(ab + 8), acc1);
          acc2 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q[2]), _mm256_loadu_ps(ab + 16), acc2);
          acc3 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q[3]), _mm256_loadu_ps(ab + 24), acc3);
        }
        const __m256 acc = _mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3));
        tot = _mm256_fmadd_ps(acc, _mm256_set1_ps(sc[g]), tot);
        ztot += sc[g] * (off - zr[g]) * asum[g];
      }
    }
    y[n] = hsum(tot) * step + ztot;
  }
}

void gemv_avx2(const PackedWeights& w, int k, const float* a, const float* asum, float* y, int n0, int n1) {
  dispatch_decoder(w, w.subplane_end[k], [&](auto d) { gemv_avx2_impl<decltype(d)>(w, k, a, asum, y, n0, n1); });
}

// Dequantize channels [n, n + cols) (cols <= 4) into wt[c * Kp + i] (full float weights).
void dequant_cols(const PackedWeights& w, int end, float off, int n, int cols, float* wt) {
  const size_t blocks = static_cast<size_t>(w.Kp / kBlock);
  const int gs = w.group_size, G = w.G;
  for (int c = 0; c < 4; ++c) {
    float* dst = wt + static_cast<size_t>(c) * w.Kp;
    if (c >= cols) {
      std::memset(dst, 0, sizeof(float) * w.Kp);
      continue;
    }
    const size_t nn = static_cast<size_t>(n + c);
    const float* sc = w.scales + nn * G;
    const float* zr = w.zeros + nn * G;
    for (size_t blk = 0; blk < blocks; ++blk) {
      __m256 f[4];
      to_float(block_codes(w, end, nn, blk), f);
      for (int h = 0; h < 4; ++h) {
        const int g = static_cast<int>((blk * kBlock + h * 8) / gs);
        __m256 v = _mm256_setzero_ps();
        if (g < G) {
          const __m256 s = _mm256_set1_ps(sc[g]);
          v = _mm256_fmadd_ps(f[h], s, _mm256_set1_ps(sc[g] * (off - zr[g])));
        }
        _mm256_storeu_ps(dst + blk * kBlock + h * 8, v);
      }
    }
  }
}

inline void hsum4(const __m256 acc[4], float out[4]) {
  // [sum(acc0), sum(acc1), sum(acc2), sum(acc3)]
  const __m256 t0 = _mm256_hadd_ps(acc[0], acc[1]);
  const __m256 t1 = _mm256_hadd_ps(acc[2], acc[3]);
  const __m256 t2 = _mm256_hadd_ps(t0, t1);
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(t2), _mm256_extractf128_ps(t2, 1));
  _mm_storeu_ps(out, s);
}

// R rows x 4 columns over k in [k0, k1) (multiples of 8); adds into y unless `first`.
template <int R>
inline void micro(const float* a, size_t lda, const float* wt, size_t Kp, size_t k0, size_t k1, float* y, size_t ldy,
                  int cols, bool first) {
  __m256 acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < 4; ++c) acc[r][c] = _mm256_setzero_ps();
  for (size_t i = k0; i < k1; i += 8) {
    const __m256 w0 = _mm256_loadu_ps(wt + i), w1 = _mm256_loadu_ps(wt + Kp + i);
    const __m256 w2 = _mm256_loadu_ps(wt + 2 * Kp + i), w3 = _mm256_loadu_ps(wt + 3 * Kp + i);
    for (int r = 0; r < R; ++r) {
      const __m256 av = _mm256_loadu_ps(a + r * lda + i);
      acc[r][0] = _mm256_fmadd_ps(av, w0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(av, w1, acc[r][1]);
      acc[r][2] = _mm256_fmadd_ps(av, w2, acc[r][2]);
      acc[r][3] = _mm256_fmadd_ps(av, w3, acc[r][3]);
    }
  }
  for (int r = 0; r < R; ++r) {
    float out[4];
    hsum4(acc[r], out);
    for (int c = 0; c < cols; ++c) y[r * ldy + c] = first ? out[c] : y[r * ldy + c] + out[c];
  }
}

// Dequantize 4 channels to float once, then stream the rows over K chunks that keep the
// 4 x chunk weight tile in L1.
void gemm_avx2(const PackedWeights& w, int k, const float* a, size_t lda, int m, float* y, size_t ldy, int n0,
               int n1, float* scratch) {
  constexpr size_t kChunk = 512;
  const int end = w.subplane_end[k];
  const float off = w.offset[k];
  const size_t Kp = static_cast<size_t>(w.Kp);
  for (int n = n0; n < n1; n += 4) {
    const int cols = std::min(4, n1 - n);
    dequant_cols(w, end, off, n, cols, scratch);
    for (size_t k0 = 0; k0 < Kp; k0 += kChunk) {
      const size_t k1 = std::min(Kp, k0 + kChunk);
      const bool first = k0 == 0;
      int r = 0;
      for (; r + 3 <= m; r += 3) micro<3>(a + r * lda, lda, scratch, Kp, k0, k1, y + r * ldy + n, ldy, cols, first);
      if (m - r == 2) micro<2>(a + r * lda, lda, scratch, Kp, k0, k1, y + r * ldy + n, ldy, cols, first);
      if (m - r == 1) micro<1>(a + r * lda, lda, scratch, Kp, k0, k1, y + r * ldy + n, ldy, cols, first);
    }
  }
}

// Int8 activations: maddubs(u8 codes, s8 activations) -> i16 pairs -> madd -> i32 per 4 values.
// Codes are taken as qk >> (B - c_k) (< 2^c_k) and the scale multiplied by 2^(B - c_k); with c_k <= 7
// a pair sum is <= 2 * 127 * 127 and cannot saturate; an 8-bit code is split into two nibbles.
template <bool kSplit>
inline __m256i dot_block(__m256i q, __m256i a8) {
  const __m256i ones = _mm256_set1_epi16(1);
  if (!kSplit) return _mm256_madd_epi16(_mm256_maddubs_epi16(q, a8), ones);
  const __m256i nib = _mm256_set1_epi8(0x0F);
  const __m256i hi = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(q, 4), nib), a8), ones);
  const __m256i lo = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_and_si256(q, nib), a8), ones);
  return _mm256_add_epi32(_mm256_slli_epi32(hi, 4), lo);
}

template <bool kSplit, class D>
void gemv_q8_impl(const PackedWeights& w, int k, const int8_t* qa, const float* qscale, const float* qasum, float* y,
                  int n0, int n1) {
  const int end = w.subplane_end[k], base = w.base_at(k);
  const float step = w.step_at(k), off = w.offset[k];
  const size_t blocks = static_cast<size_t>(w.Kp / kBlock);
  const int gs = w.group_size, G = w.G;
  for (int n = n0; n < n1; ++n) {
    const float* sc = w.scales + static_cast<size_t>(n) * G;
    const float* zr = w.zeros + static_cast<size_t>(n) * G;
    __m256 tot = _mm256_setzero_ps();
    float ztot = 0.f;
    if (gs == 16) {
      for (size_t blk = 0; blk < blocks; ++blk) {
        const __m256i a8 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qa + blk * kBlock));
        const __m256 p = _mm256_cvtepi32_ps(dot_block<kSplit>(D::codes8(w, end, n, blk, base), a8));
        const int g = static_cast<int>(2 * blk);
        const float s0 = sc[g] * qscale[blk], s1 = g + 1 < G ? sc[g + 1] * qscale[blk] : 0.f;
        tot = _mm256_fmadd_ps(p, _mm256_setr_m128(_mm_set1_ps(s0), _mm_set1_ps(s1)), tot);
        ztot += sc[g] * (off - zr[g]) * qasum[g];
        if (g + 1 < G) ztot += sc[g + 1] * (off - zr[g + 1]) * qasum[g + 1];
      }
    } else {
      const size_t bpg = static_cast<size_t>(gs / kBlock);
      for (int g = 0; g < G; ++g) {
        __m256 acc = _mm256_setzero_ps();
        const size_t b1 = std::min(blocks, (g + 1) * bpg);
        for (size_t blk = g * bpg; blk < b1; ++blk) {
          const __m256i a8 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qa + blk * kBlock));
          const __m256 p = _mm256_cvtepi32_ps(dot_block<kSplit>(D::codes8(w, end, n, blk, base), a8));
          acc = _mm256_fmadd_ps(p, _mm256_set1_ps(qscale[blk]), acc);
        }
        tot = _mm256_fmadd_ps(acc, _mm256_set1_ps(sc[g]), tot);
        ztot += sc[g] * (off - zr[g]) * qasum[g];
      }
    }
    y[n] = hsum(tot) * step + ztot;
  }
}

void gemv_q8_avx2(const PackedWeights& w, int k, const int8_t* qa, const float* qscale, const float* qasum, float* y,
                  int n0, int n1) {
  dispatch_decoder(w, w.subplane_end[k], [&](auto d) {
    if (w.bits_at(k) == 8) {
      gemv_q8_impl<true, decltype(d)>(w, k, qa, qscale, qasum, y, n0, n1);
    } else {
      gemv_q8_impl<false, decltype(d)>(w, k, qa, qscale, qasum, y, n0, n1);
    }
  });
}

// quantize_row_q8 vectorized (same values bit for bit: the same float operations, and vcvtps2dq rounds
// to nearest even like its 1.5 * 2^23 trick); the AVX2 int8 GEMV reads the in-order values only.
void quantize_q8_avx2(const PackedWeights& w, int /*k_slices*/, const float* a, int8_t* qa, float* qscale,
                      float* qasum) {
  const int qb = q8_block(w), gs = w.group_size;
  if (gs < 32) return quantize_row_q8(w, a, qa, qscale, qasum);  // a block covers more than one group
  std::fill(qasum, qasum + w.G, 0.f);
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int b0 = 0; b0 < w.Kp; b0 += qb) {  // block lengths are multiples of 32
    const int b1 = std::min(w.Kp, b0 + qb);
    __m256 m = _mm256_setzero_ps();
    for (int i = b0; i < b1; i += 8) m = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(a + i), abs_mask), m);
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float amax = _mm_cvtss_f32(m4);
    const float s = amax / 127.f, inv = amax > 0.f ? 127.f / amax : 0.f;
    for (int blk = b0 / kBlock; blk < b1 / kBlock; ++blk) qscale[blk] = s;
    const __m256 vinv = _mm256_set1_ps(inv);
    __m256i sum = _mm256_setzero_si256();
    for (int i = b0; i < b1; i += 32) {
      __m256i q[4];
      for (int h = 0; h < 4; ++h) {
        q[h] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(a + i + 8 * h), vinv));
        sum = _mm256_add_epi32(sum, q[h]);
      }
      // |q| <= 127: the saturating packs are exact; the permutation undoes their lane interleave.
      const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(qa + i), _mm256_permutevar8x32_epi32(p, order));
    }
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
    const int g = b0 / gs;  // qb <= gs: the block lies in one group
    if (g < w.G) {  // multiply, then add: no FMA contraction (the scalar quantizer rounds twice)
      const __m128 t = _mm_mul_ss(_mm_set_ss(s), _mm_set_ss(static_cast<float>(_mm_cvtsi128_si32(s4))));
      qasum[g] = _mm_cvtss_f32(_mm_add_ss(_mm_set_ss(qasum[g]), t));
    }
  }
}

const KernelTable kAvx2 = [] {
  KernelTable t;
  t.name = "avx2";
  t.gemv = gemv_avx2;
  t.gemm = gemm_avx2;
  t.n_align = 4;
  t.gemv_q8 = gemv_q8_avx2;
  t.quantize_q8 = quantize_q8_avx2;
  return t;
}();

}  // namespace

const KernelTable* kernels_avx2() { return &kAvx2; }

}  // namespace mbq
