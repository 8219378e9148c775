// AArch64 kernels for CPUs with the dot-product extension (ARMv8.2 DotProd, e.g. Cortex-A55/A76
// and later): the int8-activation GEMV uses SDOT (16 multiply-adds per instruction); the float32
// GEMV/GEMM are the plain NEON ones. Compiled with -march=armv8.2-a+dotprod (MBQ_HAVE_NEON_DOTPROD);
// dispatch.cpp only picks this table when getauxval(AT_HWCAP) reports HWCAP_ASIMDDP.
#include "kernel_neon.h"

#ifndef __ARM_FEATURE_DOTPROD
#error "kernel_neon_dotprod.cpp must be compiled with the dotprod extension (-march=armv8.2-a+dotprod)"
#endif

namespace mbq {

namespace {

struct DotSdot {
  static int32x4_t dot16(int32x4_t acc, int8x16_t a, int8x16_t q) { return vdotq_s32(acc, a, q); }
};

const KernelTable kNeonDotprod = [] {
  KernelTable t;
  t.name = "neon_dotprod";
  t.gemv = neon_gemv_f32;
  t.gemm = neon_gemm_f32;
  t.n_align = kTileN;
  t.gemv_q8 = gemv_q8<DotSdot>;
  return t;
}();

}  // namespace

const KernelTable* kernels_neon_dotprod() { return &kNeonDotprod; }

}  // namespace mbq
