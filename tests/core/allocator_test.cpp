// tune_allocator (core/util/allocator.h): a freed large tensor-sized block is
// reused without fresh pages. Without it, glibc mmaps a 64 MiB block and
// unmaps it on free, so touching a new one faults in all 16,384 of its 4 KiB
// pages again (measured: 16,385 minor faults untuned, 0 tuned).
#include "core/util/allocator.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <sys/resource.h>

namespace {

long minor_faults() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_minflt;
}

// Keeps the compiler from eliding a malloc/memset/free sequence.
void escape(void* p) { asm volatile("" : : "r"(p) : "memory"); }

}  // namespace

// glibc only (mechlab's platform, Debian); tune_allocator is a no-op elsewhere.
#if defined(__GLIBC__)
TEST(Allocator, AFreedLargeBlockIsReusedWithoutPageFaults) {
  if (std::getenv("MALLOC_MMAP_THRESHOLD_") || std::getenv("MALLOC_TRIM_THRESHOLD_")) {
    // glibc applied the user's thresholds at start-up; they must win.
    EXPECT_FALSE(mechlab::tune_allocator()) << "the user's malloc settings must win";
    return;
  }
  ASSERT_TRUE(mechlab::tune_allocator());
  const size_t n = size_t{64} << 20;
  char* p = static_cast<char*>(std::malloc(n));
  ASSERT_NE(p, nullptr);
  std::memset(p, 1, n);
  escape(p);
  std::free(p);
  const long before = minor_faults();
  char* q = static_cast<char*>(std::malloc(n));
  ASSERT_NE(q, nullptr);
  std::memset(q, 2, n);
  escape(q);
  const long faults = minor_faults() - before;
  std::free(q);
  EXPECT_LT(faults, 1024) << "a 64 MiB block touched afresh faults 16,384 pages";
}

TEST(Allocator, TheUsersMallocSettingsWin) {
  ASSERT_EQ(setenv("MALLOC_TRIM_THRESHOLD_", "1000000", 0), 0);
  EXPECT_FALSE(mechlab::tune_allocator());
  unsetenv("MALLOC_TRIM_THRESHOLD_");
}
#endif
