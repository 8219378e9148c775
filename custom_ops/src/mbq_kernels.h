// Internal kernel interface of libmbq_ops: every ISA (portable C++, x86 AVX2 / AVX-512 VNNI, ARM NEON)
// implements the same KernelTable against the same prepacked weights. The wire format
// (the ONNX initializer) is described in custom_ops/README.md; this header describes the
// *prepacked* (in-memory) format that MixedBitMatMul builds once at kernel creation.
//
// Prepacked format
// ----------------
// A weight code q[n, i] has B = sum(slice_bits) bits. Slice j (1-based) holds bits
// [B - c_j, B - c_{j-1}) of q. Each slice of width b is split into *sub-planes* whose widths
// are powers of two (b = 8 -> 8, 7 -> 4+2+1, 6 -> 4+2, 5 -> 4+1, 4 -> 4, 3 -> 2+1, 2 -> 2,
// 1 -> 1; the widest part holds the slice's most significant bits). Sub-plane p has width
// w_p in {1, 2, 4, 8} and a shift s_p: its value v contributes v << s_p to q.
// Using k slices means using sub-planes [0, SliceRange::end(k)) and nothing else, so a
// row with k slices reads only those bytes.
//
// K is padded to Kp = ceil(K / 32) * 32 (padding codes are 0; kernels see activations padded
// with zeros to Kp). Each sub-plane is one contiguous array [N][Kp / 32][4 * w] bytes: per
// output channel n, blocks of 32 consecutive values along K, each block 4*w bytes. Inside a
// block (nb = 4*w bytes), value i (0..31) lives in byte (i % nb), bits [w*(i / nb), +w).
//   w = 8: byte i is value i.
//   w = 4: byte t holds value t (low nibble) and value t+16 (high nibble).
//   w = 2: byte t holds values t, t+8, t+16, t+24 in bits 0-1, 2-3, 4-5, 6-7.
//   w = 1: byte t holds values t, t+4, ..., t+28 in bits 0..7.
// This lets a SIMD kernel expand a block into 32 in-order bytes with broadcasts, shifts and
// one AND, for any width (NEON and AVX2 alike).
//
// Scales and zero points are float arrays [N][G] (G = ceil(K / group_size), zeros converted
// to float). The dequantized weight used by a row with k slices is
//   w_k[n, i] = scale[n, g] * (qk[n, i] + offset[k] - zero[n, g]),  g = i / group_size,
// where qk is q with the sub-planes of slices > k left out and offset[k] = (2^(B - c_k) - 1) / 2.
// Groups are >= 16 values and a multiple of 16, so an 8-value chunk never straddles a group
// (a 32-value block may cover two groups of 16).
//
// Optional full codes (`codes`, only for tables that ask with KernelTable::full_codes and only when the
// codes span more than one sub-plane): the complete B-bit codes q[n, i] once more as one 8-bit
// sub-plane (same layout as an 8-bit sub-plane: [N][Kp / 32][32] bytes, byte i of a block is value i).
// A row that uses all S slices then reads one byte per weight from one array and needs no decode
// (AVX-512 VNNI decode: one vpdpbusd per 64 weights). Costs one extra byte per weight.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace mbq {

constexpr int kMaxSlices = 8;
constexpr int kMaxSubPlanes = 16;
constexpr int kBlock = 32;  // values per prepacked block along K

struct SubPlane {
  int bits = 0;                  // w in {1, 2, 4, 8}
  int shift = 0;                 // position of the value inside the B-bit code
  const uint8_t* data = nullptr; // [N][Kp / 32][4 * bits]
  size_t row_bytes = 0;          // bytes per output channel = Kp / 32 * 4 * bits
};

struct PackedWeights {
  int K = 0, N = 0, group_size = 0, G = 0, Kp = 0;
  int num_slices = 0, total_bits = 0;
  int slice_bits[kMaxSlices] = {};
  int num_subplanes = 0;
  SubPlane sub[kMaxSubPlanes];
  int subplane_end[kMaxSlices + 1] = {};  // slices 1..k use sub-planes [0, subplane_end[k])
  float offset[kMaxSlices + 1] = {};      // offset[k] = (2^(B - c_k) - 1) / 2
  int prefix_bits[kMaxSlices + 1] = {};   // c_k = slice_bits[0] + ... + slice_bits[k - 1]
  SubPlane codes;                         // optional full B-bit codes (data == nullptr when absent)
  const float* scales = nullptr;          // [N][G]
  const float* zeros = nullptr;           // [N][G]
  const float* scales4 = nullptr;         // [N / 4][G][4]: scales of 4-channel tiles side by side (full tiles only)
  const float* scale_zero4 = nullptr;     // [N / 4][G][4]: scale * zero, same layout

  // Bits a row with k slices uses (c_k), and how its codes are used: as qk >> base(k), with the
  // scale absorbing step(k) = 2^base(k). The common prologue of every kernel.
  int bits_at(int k) const { return prefix_bits[k]; }
  int base_at(int k) const { return total_bits - prefix_bits[k]; }
  float step_at(int k) const { return static_cast<float>(1 << base_at(k)); }

  // Owned storage behind the pointers above.
  std::vector<uint8_t> storage, code_storage;
  std::vector<float> scale_storage, zero_storage, scale4_storage, scale_zero4_storage;
};

// Y[0, n] = sum_i a[i] * w_k[n, i] for n in [n0, n1). `a` has Kp floats (zero padded);
// `asum` has G floats: asum[g] = sum of a over group g. `y` is indexed by absolute n.
using GemvFn = void (*)(const PackedWeights& w, int k_slices, const float* a, const float* asum,
                        float* y, int n0, int n1);

// Y[r, n] = sum_i A[r, i] * w_k[n, i] for r in [0, m), n in [n0, n1). A rows have stride lda
// (>= Kp, zero padded beyond K); Y rows have stride ldy. `scratch` holds at least
// gemm_scratch_floats(w) floats private to the calling thread.
using GemmFn = void (*)(const PackedWeights& w, int k_slices, const float* a, size_t lda, int m,
                        float* y, size_t ldy, int n0, int n1, float* scratch);

// Int8-activation GEMV (opt-in, attribute accuracy_level=4): activations quantized per block of
// q8_block(w) values (min(max(group_size, 32), 128); like MatMulNBits' blocks): a[i] ~= qscale[i / 32] *
// qa[i], qa in [-127, 127], Kp values (zero padded); qscale has one entry per 32 values (repeated
// within a quantization block). qasum[g] = sum over group g of the *dequantized* activations (so zero
// points stay consistent). Tables with q8_prepare get qa in a buffer of q8_bytes(w) bytes whose first
// Kp bytes are the in-order values and whose rest q8_prepare fills (a kernel-private layout).
using GemvQ8Fn = void (*)(const PackedWeights& w, int k_slices, const int8_t* qa, const float* qscale,
                          const float* qasum, float* y, int n0, int n1);

// Int8-activation GEMM (accuracy_level=4, more than one row): m rows of activations prepared as for
// GemvQ8Fn, row r at qa + r * qa_stride, qscale + r * (Kp / 32), qasum + r * G; Y rows at y + r * ldy.
// Tables without it run prefill rows through the float GEMM.
using GemmQ8Fn = void (*)(const PackedWeights& w, int k_slices, const int8_t* qa, size_t qa_stride, const float* qscale,
                          const float* qasum, int m, float* y, size_t ldy, int n0, int n1);

// Quantizes one activation row (Kp floats, zero padded) into the table's activation buffer: the
// same values, scales and sums as quantize_row_q8 (bit for bit), plus the table's private layout.
using QuantizeQ8Fn = void (*)(const PackedWeights& w, int k_slices, const float* a, int8_t* qa, float* qscale,
                              float* qasum);

// Filled by field name in each kernel file (`KernelTable t; t.name = ...; t.gemv = ...;`).
struct KernelTable {
  const char* name = nullptr;  // "ref", "avx2", "avx512_vnni", "neon", ...
  GemvFn gemv = nullptr;
  GemmFn gemm = nullptr;
  int n_align = 1;             // callers split N into ranges that are multiples of this (except the tail)
  GemvQ8Fn gemv_q8 = nullptr;  // optional; without it accuracy_level=4 runs the float path
  size_t (*q8_bytes)(const PackedWeights& w) = nullptr;  // optional: activation buffer size (>= Kp)
  // optional: fill the private layout after quantize_row_q8 (for a row that uses k_slices)
  void (*q8_prepare)(const PackedWeights& w, int k_slices, int8_t* qa) = nullptr;
  QuantizeQ8Fn quantize_q8 = nullptr;  // optional: replaces quantize_row_q8 + q8_prepare (same results)
  GemmQ8Fn gemm_q8 = nullptr;  // optional: int8 prefill (only where it beats the float GEMM)
  bool full_codes = false;     // prepack also stores the full codes (PackedWeights::codes)
};

// Values per activation quantization block of the int8 path (a multiple of 32).
inline int q8_block(const PackedWeights& w) { return w.group_size < 32 ? 32 : (w.group_size > 128 ? 128 : w.group_size); }

// Quantize one activation row (Kp floats, zero padded) for GemvQ8Fn.
void quantize_row_q8(const PackedWeights& w, const float* a, int8_t* qa, float* qscale, float* qasum);

// Floats of per-thread scratch that any GemmFn may use.
size_t gemm_scratch_floats(const PackedWeights& w);

// Build the prepacked form from the wire format (custom_ops/README.md). `packed` must
// already be validated to hold exactly the expected number of bytes.
// `full_codes`: also build PackedWeights::codes (when the codes span more than one sub-plane).
void prepack(PackedWeights& out, int K, int N, int group_size, const int* slice_bits, int num_slices,
             const uint8_t* packed, const float* scales, const uint8_t* zeros, bool full_codes = false);

// Per-ISA tables. A table getter returns nullptr when its ISA is not compiled in.
const KernelTable* kernels_ref();
const KernelTable* kernels_avx2();          // x86-64, needs AVX2 + FMA at run time
const KernelTable* kernels_avx512_vnni();   // x86-64, needs AVX-512 F/BW/VL + VNNI (and AVX2 + FMA)
const KernelTable* kernels_neon();          // aarch64 (kernel_neon.cpp)
const KernelTable* kernels_neon_dotprod();  // aarch64 + dotprod (optional; may return nullptr)

// Picks the best table the running CPU supports. Env MBQ_KERNEL=ref|avx2|avx512_vnni|neon|neon_dotprod
// forces a table (error if unavailable on this CPU/build). `error` is set on failure.
const KernelTable* select_kernels(const char* forced, const char** error);

// Names of the tables usable on this CPU, best last (for tests and --help).
std::vector<const char*> available_kernels();

// Scalar helper shared by kernels: expand block `blk` of sub-plane `p` for output channel n
// into 32 values (0 .. 2^w - 1), in order.
inline void expand_block_scalar(const SubPlane& p, int n, int blk, uint8_t out[kBlock]) {
  const int w = p.bits, nb = 4 * w, mask = (1 << w) - 1;
  const uint8_t* src = p.data + static_cast<size_t>(n) * p.row_bytes + static_cast<size_t>(blk) * nb;
  for (int i = 0; i < kBlock; ++i) out[i] = static_cast<uint8_t>((src[i % nb] >> (w * (i / nb))) & mask);
}

}  // namespace mbq
