// Process-wide tuning of glibc's allocator for tensor workloads.
//
// LibTorch's CPU tensors come from malloc. glibc serves blocks above its mmap
// threshold (128 KiB, raised dynamically up to 32 MiB) with mmap and gives
// the heap's free top back to the kernel past its trim threshold, so a loop
// that allocates and frees the same few large tensors every iteration (an
// ACDC trial, a patching sweep, a training step) pays fresh zeroed pages and
// page faults each time: 2.7 s of 21.6 s of CPU time (12%) in a 1-thread
// ACDC job, measured with `perf` (docs/ARCHITECTURE.md, "Allocator").
// tune_allocator() keeps blocks up to 256 MiB on the heap and up to 1 GiB of
// free heap mapped, so those pages are reused. Larger blocks still use mmap
// (a 4 GiB activation buffer goes back to the kernel when freed).
//
// The mechlab CLI calls it first thing; a program using the library may call
// it too. A user who set MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_
// keeps their setting. Other C libraries: nothing happens.
#pragma once

namespace mechlab {

/// Returns whether the allocator was tuned (false: not glibc, or the user's
/// environment already chose the thresholds).
bool tune_allocator();

}  // namespace mechlab
