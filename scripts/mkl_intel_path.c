/* Benchmark helper for scripts/bench_speed.sh, never linked into diffrec.
 *
 * Intel's oneMKL picks its AVX-512 sgemm kernels only after `mkl_serv_intel_cpu_true()` says
 * the CPU is Intel's; on an AMD CPU with AVX-512 (Zen 4) it runs its generic `_zen` path
 * instead, about 25 % slower on our workload (docs/benchmarks.md, twelfth session). PyTorch's
 * wheels export that MKL symbol, so preloading this library (LD_PRELOAD) hands PyTorch MKL's
 * fastest kernels on such a host: the competitor at its best, not handicapped by a vendor check.
 * At exit it prints how often MKL asked, so a run shows that the override took effect.
 */
#include <stdio.h>

static int calls;

int mkl_serv_intel_cpu_true(void) {
  calls++;
  return 1;
}

__attribute__((destructor)) static void report(void) {
  fprintf(stderr, "MKL_INTEL_PATH calls=%d\n", calls);
}
