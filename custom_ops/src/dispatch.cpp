// Run-time choice of the kernel table by CPU features (and the MBQ_KERNEL override).
#include <cstring>
#include <string>

#include "mbq_kernels.h"

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#endif

namespace mbq {

#ifndef MBQ_HAVE_AVX2
const KernelTable* kernels_avx2() { return nullptr; }
#endif
#ifndef MBQ_HAVE_AVX512_VNNI
const KernelTable* kernels_avx512_vnni() { return nullptr; }
#endif
#ifndef MBQ_HAVE_NEON
const KernelTable* kernels_neon() { return nullptr; }
#endif
#ifndef MBQ_HAVE_NEON_DOTPROD
const KernelTable* kernels_neon_dotprod() { return nullptr; }
#endif

namespace {

bool cpu_has_avx2_fma() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

bool cpu_has_avx512_vnni() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  return cpu_has_avx2_fma() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#else
  return false;
#endif
}

bool cpu_has_dotprod() {
#if defined(__aarch64__) && defined(__linux__)
  return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#else
  return false;
#endif
}

}  // namespace

std::vector<const char*> available_kernels() {
  std::vector<const char*> names{"ref"};
  if (kernels_avx2() && cpu_has_avx2_fma()) names.push_back("avx2");
  if (kernels_avx512_vnni() && kernels_avx2() && cpu_has_avx512_vnni()) names.push_back("avx512_vnni");
  if (kernels_neon()) names.push_back("neon");  // NEON is mandatory on aarch64
  if (kernels_neon_dotprod() && cpu_has_dotprod()) names.push_back("neon_dotprod");
  return names;
}

const KernelTable* select_kernels(const char* forced, const char** error) {
  *error = nullptr;
  const std::vector<const char*> names = available_kernels();
  auto table_of = [](const std::string& name) -> const KernelTable* {
    if (name == "ref") return kernels_ref();
    if (name == "avx2") return kernels_avx2();
    if (name == "avx512_vnni") return kernels_avx512_vnni();
    if (name == "neon") return kernels_neon();
    if (name == "neon_dotprod") return kernels_neon_dotprod();
    return nullptr;
  };
  if (forced && *forced) {
    for (const char* n : names) {
      if (std::strcmp(n, forced) == 0) return table_of(n);
    }
    *error = "MBQ_KERNEL names a kernel that is not available on this CPU/build";
    return nullptr;
  }
  return table_of(names.back());
}

}  // namespace mbq
