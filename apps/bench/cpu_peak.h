// The CPU's measured float32 multiply-add throughput: the physical limit of any
// float32 forward pass on this machine, used by `mechlab bench runtime` as the
// baseline that no implementation (mechlab, TransformerLens, a hand-written
// GEMM) can beat.
#pragma once

#include <string>

namespace mechlab::bench {

struct CpuPeak {
  double gflops = 0;  ///< float32 FLOP/s / 1e9 over all `threads`; 0 when not measurable here
  int threads = 0;
  std::string isa;    ///< the widest vector FMA used, e.g. "AVX2 FMA"
};

/// Runs independent chains of vector fused multiply-adds (no memory traffic) on
/// `threads` threads at once and returns the best of `trials` rates. On x86-64
/// it uses AVX-512F when the CPU has it, else AVX2+FMA; elsewhere gflops = 0.
CpuPeak measure_cpu_fp32_peak(int threads, int trials = 3);

}  // namespace mechlab::bench
