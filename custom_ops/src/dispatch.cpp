// Run-time choice of the kernel table by CPU features (and the MBQ_KERNEL override).
#include <cstring>

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

// Every table, worst first: name, getter (nullptr when not compiled in), and whether this CPU runs it.
struct Entry {
  const char* name;
  const KernelTable* (*table)();
  bool (*cpu_ok)();
};
const Entry kTables[] = {
    {"ref", kernels_ref, [] { return true; }},
    {"avx2", kernels_avx2, cpu_has_avx2_fma},
    {"avx512_vnni", kernels_avx512_vnni, [] { return kernels_avx2() != nullptr && cpu_has_avx512_vnni(); }},
    {"neon", kernels_neon, [] { return true; }},  // NEON is mandatory on aarch64
    {"neon_dotprod", kernels_neon_dotprod, cpu_has_dotprod},
};

// The usable entries, best last, found once.
const std::vector<const Entry*>& usable() {
  static const std::vector<const Entry*> list = [] {
    std::vector<const Entry*> v;
    for (const Entry& e : kTables)
      if (e.table() && e.cpu_ok()) v.push_back(&e);
    return v;
  }();
  return list;
}

}  // namespace

std::vector<const char*> available_kernels() {
  std::vector<const char*> names;
  for (const Entry* e : usable()) names.push_back(e->name);
  return names;
}

const KernelTable* select_kernels(const char* forced, const char** error) {
  *error = nullptr;
  const std::vector<const Entry*>& list = usable();
  if (forced && *forced) {
    for (const Entry* e : list) {
      if (std::strcmp(e->name, forced) == 0) return e->table();
    }
    *error = "MBQ_KERNEL names a kernel that is not available on this CPU/build";
    return nullptr;
  }
  return list.back()->table();
}

}  // namespace mbq
