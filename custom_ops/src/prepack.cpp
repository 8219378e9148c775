// Wire format (custom_ops/README.md) -> prepacked sub-plane format (mbq_kernels.h).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "mbq_kernels.h"

namespace mbq {

namespace {

// Power-of-two parts of a slice width, widest (most significant) first: 7 -> {4, 2, 1}.
int split_width(int b, int parts[4]) {
  int n = 0;
  for (int w = 8; w >= 1; w >>= 1) {
    if (b & w) parts[n++] = w;
  }
  return n;
}

// Value i (0-based inside its group) of a little-endian b-bit stream starting at `src`.
inline unsigned read_bits(const uint8_t* src, int b, int i) {
  const int bit = i * b;
  const int byte = bit >> 3, off = bit & 7;
  unsigned v = src[byte];
  if (off + b > 8) v |= static_cast<unsigned>(src[byte + 1]) << 8;
  return (v >> off) & ((1u << b) - 1u);
}

}  // namespace

void quantize_row_q8(const PackedWeights& w, const float* a, int8_t* qa, float* qscale, float* qasum) {
  std::fill(qasum, qasum + w.G, 0.f);
  const int qb = q8_block(w), gs = w.group_size;
  constexpr float kRound = 12582912.f;  // 1.5 * 2^23: (x + kRound) - kRound rounds |x| < 2^22 to nearest even
  for (int b0 = 0; b0 < w.Kp; b0 += qb) {
    const int b1 = std::min(w.Kp, b0 + qb);
    float amax = 0.f;
    for (int i = b0; i < b1; ++i) amax = std::max(amax, std::fabs(a[i]));
    const float s = amax / 127.f, inv = amax > 0.f ? 127.f / amax : 0.f;
    for (int blk = b0 / kBlock; blk < b1 / kBlock; ++blk) qscale[blk] = s;
    for (int i = b0; i < b1; ++i) {  // |a[i] * inv| <= 127
      const float x = a[i] * inv;
      qa[i] = static_cast<int8_t>(static_cast<int>((x + kRound) - kRound));
    }
    for (int g0 = b0; g0 < b1;) {  // qasum: exact integer sum per group, one multiply
      const int g = g0 / gs, g1 = std::min(b1, (g + 1) * gs);
      int sum = 0;
      for (int i = g0; i < g1; ++i) sum += qa[i];
      if (g < w.G) qasum[g] += s * static_cast<float>(sum);
      g0 = g1;
    }
  }
}

size_t gemm_scratch_floats(const PackedWeights& w) { return static_cast<size_t>(w.Kp) * 8 + 64; }

void prepack(PackedWeights& out, int K, int N, int group_size, const int* slice_bits, int num_slices,
             const uint8_t* packed, const float* scales, const uint8_t* zeros, bool full_codes) {
  out.K = K;
  out.N = N;
  out.group_size = group_size;
  out.G = (K + group_size - 1) / group_size;
  out.Kp = (K + kBlock - 1) / kBlock * kBlock;
  out.num_slices = num_slices;
  int total = 0;
  for (int j = 0; j < num_slices; ++j) total += (out.slice_bits[j] = slice_bits[j]);
  out.total_bits = total;

  // Sub-plane table.
  struct Part { int slice, lo, bits; };
  Part parts[kMaxSubPlanes];
  int np = 0, cum = 0;
  size_t bytes = 0;
  const size_t blocks = static_cast<size_t>(out.Kp / kBlock);
  out.subplane_end[0] = 0;
  out.offset[0] = 0.f;
  for (int j = 0; j < num_slices; ++j) {
    const int b = slice_bits[j];
    cum += b;
    out.prefix_bits[j + 1] = cum;
    const int slice_lo = total - cum;
    int widths[4];
    const int nw = split_width(b, widths);
    int rem = b;
    for (int t = 0; t < nw; ++t) {
      rem -= widths[t];
      parts[np] = {j, rem, widths[t]};
      out.sub[np].bits = widths[t];
      out.sub[np].shift = slice_lo + rem;
      out.sub[np].row_bytes = blocks * 4 * widths[t];
      bytes += out.sub[np].row_bytes * static_cast<size_t>(N);
      ++np;
    }
    out.subplane_end[j + 1] = np;
    out.offset[j + 1] = static_cast<float>(((1 << (total - cum)) - 1) / 2.0);
  }
  out.num_subplanes = np;
  out.storage.assign(bytes + 128, 0);  // slack: SIMD kernels may over-read a row's last unit
  size_t pos = 0;
  for (int p = 0; p < np; ++p) {
    out.sub[p].data = out.storage.data() + pos;
    pos += out.sub[p].row_bytes * static_cast<size_t>(N);
  }

  // Wire plane offsets.
  size_t plane_off[kMaxSlices];
  size_t off = 0;
  for (int j = 0; j < num_slices; ++j) {
    plane_off[j] = off;
    off += static_cast<size_t>(N) * out.G * group_size * slice_bits[j] / 8;
  }

  std::vector<uint8_t> row(out.Kp);
  for (int j = 0; j < num_slices; ++j) {
    const int b = slice_bits[j];
    const size_t group_bytes = static_cast<size_t>(group_size) * b / 8;
    for (int n = 0; n < N; ++n) {
      std::fill(row.begin(), row.end(), 0);
      const uint8_t* src_row = packed + plane_off[j] + static_cast<size_t>(n) * out.G * group_bytes;
      for (int i = 0; i < K; ++i) {
        const int g = i / group_size;
        row[i] = static_cast<uint8_t>(read_bits(src_row + g * group_bytes, b, i - g * group_size));
      }
      for (int p = out.subplane_end[j]; p < out.subplane_end[j + 1]; ++p) {
        const int w = parts[p].bits, lo = parts[p].lo, nb = 4 * w, mask = (1 << w) - 1;
        uint8_t* dst = const_cast<uint8_t*>(out.sub[p].data) + static_cast<size_t>(n) * out.sub[p].row_bytes;
        for (size_t blk = 0; blk < blocks; ++blk) {
          uint8_t* d = dst + blk * nb;
          for (int i = 0; i < kBlock; ++i) {
            const unsigned v = (row[blk * kBlock + i] >> lo) & mask;
            d[i % nb] = static_cast<uint8_t>(d[i % nb] | (v << (w * (i / nb))));
          }
        }
      }
    }
  }

  // Full codes: the sum of every sub-plane's value << shift, as one 8-bit sub-plane.
  out.codes = SubPlane{};
  if (full_codes && np > 1) {
    out.codes.bits = 8;
    out.codes.row_bytes = blocks * kBlock;
    out.code_storage.assign(out.codes.row_bytes * static_cast<size_t>(N) + 128, 0);  // slack as above
    out.codes.data = out.code_storage.data();
    uint8_t vals[kBlock];
    for (int n = 0; n < N; ++n) {
      uint8_t* dst = out.code_storage.data() + static_cast<size_t>(n) * out.codes.row_bytes;
      for (size_t blk = 0; blk < blocks; ++blk) {
        for (int p = 0; p < np; ++p) {
          expand_block_scalar(out.sub[p], n, static_cast<int>(blk), vals);
          for (int i = 0; i < kBlock; ++i) dst[blk * kBlock + i] = static_cast<uint8_t>(dst[blk * kBlock + i] | (vals[i] << out.sub[p].shift));
        }
      }
    }
  } else {
    std::vector<uint8_t>().swap(out.code_storage);
  }

  const size_t ng = static_cast<size_t>(N) * out.G;
  out.scale_storage.assign(scales, scales + ng);
  out.zero_storage.resize(ng);
  for (size_t t = 0; t < ng; ++t) out.zero_storage[t] = static_cast<float>(zeros[t]);
  out.scales = out.scale_storage.data();
  out.zeros = out.zero_storage.data();
  const size_t G = static_cast<size_t>(out.G);
  out.scale4_storage.resize(static_cast<size_t>(N / 4) * G * 4);
  out.scale_zero4_storage.resize(out.scale4_storage.size());
  for (size_t t = 0; t < static_cast<size_t>(N / 4); ++t)
    for (size_t g = 0; g < G; ++g)
      for (size_t c = 0; c < 4; ++c) {
        const size_t src = (4 * t + c) * G + g, dst = (t * G + g) * 4 + c;
        out.scale4_storage[dst] = scales[src];
        out.scale_zero4_storage[dst] = scales[src] * out.zero_storage[src];
      }
  out.scales4 = out.scale4_storage.data();
  out.scale_zero4 = out.scale_zero4_storage.data();
}

}  // namespace mbq
