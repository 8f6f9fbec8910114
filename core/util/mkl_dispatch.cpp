#include "core/util/mkl_dispatch.h"

#include <dlfcn.h>

#include <cstdlib>
#include <cstring>

namespace mechlab {
namespace {

bool turned_off() {
  const char* env = std::getenv("MECHLAB_MKL_AVX512_ON_AMD");
  return env != nullptr && std::strcmp(env, "0") == 0;
}

bool amd_with_avx512() {
#if defined(__x86_64__)
  // MKL may ask before libgcc's own constructor has filled in the CPU model
  // (a BLAS call during static initialisation); initialising twice is harmless.
  __builtin_cpu_init();
  return __builtin_cpu_is("amd") && __builtin_cpu_supports("avx512f");
#else
  return false;
#endif
}

}  // namespace

bool mkl_avx512_on_amd() { return amd_with_avx512() && !turned_off(); }

std::string mkl_dispatch_summary() {
  if (mkl_avx512_on_amd()) return "MKL: AVX-512 kernels on this AMD CPU (mechlab)";
  if (amd_with_avx512()) return "MKL: its own choice (MECHLAB_MKL_AVX512_ON_AMD=0)";
  return "MKL: its own choice";
}

}  // namespace mechlab

// Called by MKL (see mkl_dispatch.h). Decided once; MKL may ask from several
// threads, which a function-local static makes safe.
extern "C" int mkl_serv_intel_cpu_true() {
  static const int answer = [] {
    if (mechlab::mkl_avx512_on_amd()) return 1;
    using Fn = int (*)();
    const auto own = reinterpret_cast<Fn>(dlsym(RTLD_NEXT, "mkl_serv_intel_cpu_true"));
    return own != nullptr ? own() : 0;
  }();
  return answer;
}
