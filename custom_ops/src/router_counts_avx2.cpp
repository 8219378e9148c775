// RouterCounts row kernel compiled with -mavx2 -mfma (x86-64 only; called after a CPUID check).
#define MBQ_ROUTER_AVX2 1
#include "router_kernel.h"

namespace mbq {
void router_rows_avx2(const RouterWeights& w, const float* thr, const float* x, size_t r0, size_t r1, int64_t* out,
                      float* scratch) {
  router_rows_impl(w, thr, x, r0, r1, out, scratch);
}
}  // namespace mbq
