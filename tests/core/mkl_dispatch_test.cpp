// The program's mkl_serv_intel_cpu_true (core/util/mkl_dispatch.h) is the one
// MKL inside libtorch_cpu.so finds: the dynamic linker's first definition of
// the name is the program's, libtorch's own comes next; and its answer is
// yes exactly on an AMD CPU with AVX-512F unless turned off. Without the
// link option that pulls it into every program, libtorch's would be first.
#include "core/util/mkl_dispatch.h"

#include <gtest/gtest.h>

#include <dlfcn.h>

extern "C" int mkl_serv_intel_cpu_true();

namespace mechlab {
namespace {

TEST(MklDispatch, TheProgramsDefinitionComesBeforeLibtorchs) {
  void* first = dlsym(RTLD_DEFAULT, "mkl_serv_intel_cpu_true");
  void* next = dlsym(RTLD_NEXT, "mkl_serv_intel_cpu_true");
  ASSERT_NE(first, nullptr);
  ASSERT_NE(next, nullptr) << "libtorch_cpu.so no longer exports mkl_serv_intel_cpu_true";
  EXPECT_EQ(first, reinterpret_cast<void*>(&mkl_serv_intel_cpu_true));
  EXPECT_NE(first, next);
  const int own = reinterpret_cast<int (*)()>(next)();
  if (mkl_avx512_on_amd()) {
    EXPECT_EQ(mkl_serv_intel_cpu_true(), 1);
    EXPECT_EQ(own, 0) << "MKL now takes this AMD CPU for Intel's by itself; mkl_dispatch is not needed";
    EXPECT_EQ(mkl_dispatch_summary(), "MKL: AVX-512 kernels on this AMD CPU (mechlab)");
  } else {
    EXPECT_EQ(mkl_serv_intel_cpu_true(), own);
  }
}

}  // namespace
}  // namespace mechlab
