// Independent tasks on LibTorch's intra-op threads, each task on one thread.
//
// at::parallel_for splits a range of loop iterations; ATen's ops inside it
// then run on the calling thread. Where the tasks are small ATen
// computations (a head's attention in circuit discovery), running several
// at once on separate threads beats letting each op split itself. But
// at::parallel_for runs a range of one task inline, where ATen and MKL
// would split that task's ops over the threads instead, so a task's float
// bits would depend on how many tasks ran beside it. for_each_task keeps
// them the same: every task runs alone on one thread, at any task count.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <atomic>
#include <cstdint>
#include <exception>

namespace mechlab {

/// Calls fn(i) for each i in [0, n), on up to at::get_num_threads() threads
/// (OpenMP, the pool LibTorch's ops use), in no particular order. Each call
/// runs with the caller's thread-local state (grad and inference mode,
/// dispatch keys), inside an active OpenMP team, where ATen's and MKL's own
/// parallelism is off. Calls must touch disjoint state. After a call
/// throws, the calls not yet started are skipped; the first exception is
/// rethrown once the others have ended.
template <typename Fn>
void for_each_task(int64_t n, const Fn& fn) {
  if (n <= 0) return;
  std::exception_ptr error;
  std::atomic<bool> failed{false};
  const at::ThreadLocalState caller;
  // A team of every thread even for one task: inside an active OpenMP
  // region ATen and MKL run single-threaded, outside they would not.
  const int threads = at::in_parallel_region() ? 1 : at::get_num_threads();
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (int64_t i = 0; i < n; ++i) {
    if (failed.load()) continue;
    try {
      at::ThreadLocalStateGuard state(caller);
      fn(i);
    } catch (...) {
      if (!failed.exchange(true)) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace mechlab
