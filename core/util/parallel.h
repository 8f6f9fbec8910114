// Independent tasks on LibTorch's intra-op threads, each task on one thread.
//
// at::parallel_for splits a range of loop iterations; ATen's ops inside it
// then run on the calling thread. Where the tasks are small ATen
// computations (a head's attention in circuit discovery), running several
// at once on separate threads beats letting each op split itself. But
// at::parallel_for runs a range of one task inline, where ATen and MKL
// would split that task's ops over the threads instead, so a task's float
// bits would depend on how many tasks ran beside it. for_each_task keeps
// them those of a one-thread run: every task runs alone on one thread, with
// ATen and MKL single-threaded there (OneThread), at any task count and on
// any number of threads.
//
// The team shrinks while other processes keep cores busy (task_threads): a
// team waits at its end for its slowest thread, and a thread that shares a
// core with another process's is often descheduled for a whole time slice.
// Small tasks (ACDC's node path: about 0.2 ms per team) then take several
// times longer on two threads than on one.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <string>
#include <vector>

namespace mechlab {

/// How many threads for_each_task runs on now: at::get_num_threads(), but
/// no more than the cores of this process's CPU set that other processes
/// leave free, at least 1. The load is read from /proc/stat at most every
/// 0.2 s (busy time of the allowed CPUs, steal included, less this
/// process's own CPU time). MECHLAB_ADAPTIVE_THREADS=0 in the environment
/// keeps at::get_num_threads() (to compare, or where /proc/stat misleads).
int task_threads();

/// One line for `mechlab --version` and bug reports: whether task_threads()
/// follows the load, and OMP_WAIT_POLICY (whether idle OpenMP threads spin).
std::string task_threads_summary();

/// Within its scope task_threads() is min(n, at::get_num_threads()) whatever
/// the load (n = 0: measured again), in every thread; the previous setting
/// comes back after. For tests and benchmarks that compare team sizes.
class FixedTaskThreads {
 public:
  explicit FixedTaskThreads(int n);
  ~FixedTaskThreads();
  FixedTaskThreads(const FixedTaskThreads&) = delete;
  FixedTaskThreads& operator=(const FixedTaskThreads&) = delete;

 private:
  int previous_;
};

/// Cumulative CPU ticks of some CPUs, from /proc/stat.
struct CpuTicks {
  uint64_t busy = 0;   // user nice system irq softirq steal (guest time is inside user)
  uint64_t total = 0;  // busy + idle + iowait
};

/// Sums the lines "cpuN ..." of /proc/stat's text for the CPUs in `cpus`.
/// Throws mechlab::Error naming the line when one of them is missing or
/// malformed.
CpuTicks cpu_ticks(const std::string& proc_stat, const std::vector<int>& cpus);

/// Cores that other processes kept busy between two samples of the same
/// `n_cpus` CPUs: their busy share times n_cpus, less this process's CPU
/// time over the wall time between the samples (`own_cpu_s`, `wall_s`).
/// Never below 0; 0 when no tick passed.
double cores_busy_elsewhere(const CpuTicks& before, const CpuTicks& after, int n_cpus, double own_cpu_s,
                            double wall_s);

/// Within its scope ATen and MKL run single-threaded on the calling thread,
/// with the bits of a one-thread process: its OpenMP thread count and MKL's
/// thread-local count are 1, and both are restored after.
class OneThread {
 public:
  OneThread();
  ~OneThread();
  OneThread(const OneThread&) = delete;
  OneThread& operator=(const OneThread&) = delete;

 private:
  int omp_threads_, mkl_threads_;
};

/// Calls fn(i) for each i in [0, n), on min(n, task_threads()) threads
/// (OpenMP, the pool LibTorch's ops use), in no particular order. Each call
/// runs with the caller's thread-local state (grad and inference mode,
/// dispatch keys) and with ATen's and MKL's own parallelism off
/// (OneThread), so that its float bits are those of a one-thread run
/// whatever the team size and the number of tasks. Calls must touch
/// disjoint state. After a call throws, the calls not yet started are
/// skipped; the first exception is rethrown once the others have ended.
template <typename Fn>
void for_each_task(int64_t n, const Fn& fn) {
  if (n <= 0) return;
  const int64_t threads = n == 1 || at::in_parallel_region() ? 1 : std::min<int64_t>(n, task_threads());
  if (threads == 1) {
    const OneThread alone;
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::exception_ptr error;
  std::atomic<bool> failed{false};
  const at::ThreadLocalState caller;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (int64_t i = 0; i < n; ++i) {
    if (failed.load()) continue;
    try {
      at::ThreadLocalStateGuard state(caller);
      const OneThread alone;
      fn(i);
    } catch (...) {
      if (!failed.exchange(true)) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace mechlab
