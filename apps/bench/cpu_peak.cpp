// Why independent chains: a fused multiply-add has a latency of about 4 cycles
// and a core issues 2 per cycle, so 8 or more accumulators in flight are needed
// to keep both FMA pipes busy. Each kernel keeps 12 (AVX2) or 24 (AVX-512)
// registers of accumulators, touches no memory inside the loop, and its result
// goes to a volatile sink so that the compiler cannot drop the work.
#include "apps/bench/cpu_peak.h"

#include <algorithm>
#include <chrono>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace mechlab::bench {
namespace {

constexpr double kFlopsPerThread = 2e10;  // per trial: ~0.25 s on one AVX2 core at 3 GHz
volatile float g_sink = 0;

#if defined(__x86_64__)
constexpr int kAvx2Chains = 12, kAvx512Chains = 24;

__attribute__((target("avx2,fma"))) void fma_avx2(long iterations) {
  __m256 acc[kAvx2Chains];
  for (int j = 0; j < kAvx2Chains; ++j) acc[j] = _mm256_set1_ps(1.0f + 1e-3f * j);
  const __m256 a = _mm256_set1_ps(0.9999999f), b = _mm256_set1_ps(1e-7f);
  for (long i = 0; i < iterations; ++i) {
#pragma GCC unroll 12
    for (int j = 0; j < kAvx2Chains; ++j) acc[j] = _mm256_fmadd_ps(acc[j], a, b);
  }
  float lanes[8], total = 0;
  for (int j = 0; j < kAvx2Chains; ++j) {
    _mm256_storeu_ps(lanes, acc[j]);
    total += lanes[0];
  }
  g_sink = total;
}

__attribute__((target("avx512f"))) void fma_avx512(long iterations) {
  __m512 acc[kAvx512Chains];
  for (int j = 0; j < kAvx512Chains; ++j) acc[j] = _mm512_set1_ps(1.0f + 1e-3f * j);
  const __m512 a = _mm512_set1_ps(0.9999999f), b = _mm512_set1_ps(1e-7f);
  for (long i = 0; i < iterations; ++i) {
#pragma GCC unroll 24
    for (int j = 0; j < kAvx512Chains; ++j) acc[j] = _mm512_fmadd_ps(acc[j], a, b);
  }
  float lanes[16], total = 0;
  for (int j = 0; j < kAvx512Chains; ++j) {
    _mm512_storeu_ps(lanes, acc[j]);
    total += lanes[0];
  }
  g_sink = total;
}
#endif

}  // namespace

CpuPeak measure_cpu_fp32_peak(int threads, int trials) {
  CpuPeak peak;
  peak.threads = std::max(threads, 1);
#if defined(__x86_64__)
  void (*kernel)(long) = nullptr;
  double flops_per_iteration = 0;  // per thread: chains x lanes x 2 (multiply + add)
  if (__builtin_cpu_supports("avx512f")) {
    kernel = fma_avx512;
    flops_per_iteration = kAvx512Chains * 16 * 2.0;
    peak.isa = "AVX-512 FMA";
  } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    kernel = fma_avx2;
    flops_per_iteration = kAvx2Chains * 8 * 2.0;
    peak.isa = "AVX2 FMA";
  }
  if (!kernel) return peak;
  const long iterations = static_cast<long>(kFlopsPerThread / flops_per_iteration);
  for (int t = 0; t < std::max(trials, 1); ++t) {
    std::vector<std::thread> pool;
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < peak.threads; ++i) pool.emplace_back(kernel, iterations);
    for (auto& th : pool) th.join();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    peak.gflops = std::max(peak.gflops, peak.threads * iterations * flops_per_iteration / s / 1e9);
  }
#else
  (void)trials;
#endif
  return peak;
}

}  // namespace mechlab::bench
