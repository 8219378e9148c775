// insn_count_check: loops of a known length, to check insn_count_plugin.c's counts (tools/bench_arm_insn.py).
//
//   insn_count_check N
//
// Three marked windows (see insn_count_plugin.c for the marker calls):
//   tag 1: an empty window                            (the cost of the markers themselves)
//   tag 2: N iterations of  add; subs; b.ne           (3 N instructions + a constant)
//   tag 3: N iterations of  sdot; sdot (by element); subs; b.ne   (4 N, of which 2 N SDOT, + a constant)
// The loops are inline assembly, so the compiler cannot change their length; runs with N and 2 N must
// differ by exactly 3 N and 4 N instructions. Build: aarch64-linux-gnu-gcc -O2 -march=armv8.2-a+dotprod.
#include <arm_neon.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MARK 0x4d4251

int main(int argc, char** argv) {
  const long n = argc > 1 ? atol(argv[1]) : 1000;
  if (n < 1) return 2;
  long acc = 0;
  int32x4_t v = vdupq_n_s32(0);
  const int8x16_t a = vdupq_n_s8(1), b = vdupq_n_s8(2);

  syscall(MARK, 1, 1, 0, 0);
  syscall(MARK, 2, 1, 0, 0);

  syscall(MARK, 1, 2, 0, 0);
  __asm__ volatile(
      "mov x9, %1\n"
      "1:\n"
      "add %0, %0, #1\n"
      "subs x9, x9, #1\n"
      "b.ne 1b\n"
      : "+r"(acc)
      : "r"(n)
      : "x9", "cc");
  syscall(MARK, 2, 2, 0, 0);

  syscall(MARK, 1, 3, 0, 0);
  __asm__ volatile(
      "mov x9, %1\n"
      "1:\n"
      "sdot %0.4s, %2.16b, %3.16b\n"
      "sdot %0.4s, %2.16b, %3.4b[1]\n"
      "subs x9, x9, #1\n"
      "b.ne 1b\n"
      : "+w"(v)
      : "r"(n), "w"(a), "w"(b)
      : "x9", "cc");
  syscall(MARK, 2, 3, 0, 0);

  // The results, so that the loops are observable: N and 16 N (each sdot adds 4 products of 1 * 2).
  printf("%ld %d\n", acc, vgetq_lane_s32(v, 0));
  return 0;
}
