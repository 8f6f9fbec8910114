// MKL's code path on AMD CPUs with AVX-512 (docs/ARCHITECTURE.md, "Build").
//
// The MKL inside LibTorch's libtorch_cpu.so chooses its kernels by CPU
// vendor before features: on an AMD CPU it runs its generic AVX2 kernels
// even where the CPU has AVX-512 (Zen 4, Zen 5). It asks the exported
// function mkl_serv_intel_cpu_true() whether the CPU is Intel's, through
// the dynamic linker, so a definition in the program takes its place (ELF
// symbol interposition). mechlab's (core/util/mkl_dispatch.cpp) answers yes
// on an AMD CPU with AVX-512F, after which MKL picks its kernels by the
// CPU's feature flags, and gives MKL's own answer everywhere else. The
// environment variable MECHLAB_MKL_AVX512_ON_AMD=0 turns it off (to
// compare, or should an MKL path misbehave).
#pragma once

#include <string>

namespace mechlab {

/// True when this process gives MKL its AVX-512 kernels on an AMD CPU.
bool mkl_avx512_on_amd();

/// One line for logs and benchmark headers: "MKL: AVX-512 kernels on this
/// AMD CPU (mechlab)", "MKL: its own choice (MECHLAB_MKL_AVX512_ON_AMD=0)" or
/// "MKL: its own choice".
std::string mkl_dispatch_summary();

}  // namespace mechlab
