// for_each_task (core/util/parallel.h): every task once, on several threads,
// each alone on its thread with the caller's thread-local state, and a task's
// exception back in the caller.
#include "core/util/error.h"
#include "core/util/parallel.h"
#include "tests/test_util.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>
#include <omp.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

namespace {

using mechlab::testing::ScopedThreads;

void pause_ms(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

}  // namespace

// Catches a serial loop (the mechlab build without OpenMP ran every
// at::parallel_for of its own on one thread, silently), an index skipped or
// run twice, and n = 0 or 1 mishandled.
TEST(ForEachTask, RunsEveryTaskOnceOverTheThreads) {
  const ScopedThreads two(2);
  for (const int64_t n : {0, 1, 2, 7}) {
    std::vector<std::atomic<int>> calls(static_cast<size_t>(n));
    std::mutex m;
    std::set<std::thread::id> threads;
    mechlab::for_each_task(n, [&](int64_t i) {
      calls[static_cast<size_t>(i)].fetch_add(1);
      pause_ms(20);  // long enough that both threads take tasks
      std::lock_guard<std::mutex> lock(m);
      threads.insert(std::this_thread::get_id());
    });
    for (int64_t i = 0; i < n; ++i) EXPECT_EQ(calls[static_cast<size_t>(i)].load(), 1) << "task " << i << " of " << n;
    if (n >= 2) {
      EXPECT_EQ(threads.size(), 2u) << n << " tasks ran on " << threads.size() << " thread(s), not 2";
    }
  }
}

// Inside a task, ATen's ops and MKL must run on the task's thread alone
// whatever the number of tasks: for one task too, the team is active
// (omp_in_parallel), so MKL does not split its GEMMs either, and a task's
// float bits are those of a one-thread run. Catches a team sized by the
// task count (one task: no active team, ATen and MKL on every thread): the
// sum over 2^20 floats is split per thread by ATen outside a task, and its
// bits then differ from the one-thread sum.
TEST(ForEachTask, EachTaskComputesAloneOnItsThread) {
  const at::Tensor x = at::randn({1 << 20}, at::TensorOptions(at::kFloat));
  float alone = 0;
  {
    const ScopedThreads one(1);
    alone = x.sum().item<float>();
  }
  const ScopedThreads two(2);
  for (const int64_t n : {1, 3}) {
    std::vector<float> sums(static_cast<size_t>(n));
    std::vector<int> active(static_cast<size_t>(n)), in_region(static_cast<size_t>(n));
    mechlab::for_each_task(n, [&](int64_t i) {
      active[static_cast<size_t>(i)] = omp_in_parallel();
      in_region[static_cast<size_t>(i)] = at::in_parallel_region();
      sums[static_cast<size_t>(i)] = x.sum().item<float>();
    });
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_TRUE(active[static_cast<size_t>(i)]) << "task " << i << " of " << n << " outside an active OpenMP team";
      EXPECT_TRUE(in_region[static_cast<size_t>(i)]) << "task " << i << " of " << n;
      EXPECT_EQ(sums[static_cast<size_t>(i)], alone) << "task " << i << " of " << n;
    }
  }
}

// Grad mode and inference mode are per thread: a task on a worker thread
// must see the caller's. Under c10::InferenceMode an in-place update of an
// inference tensor outside it throws, which is how ACDC's node path first
// failed in `mechlab bench acdc`. Catches the ThreadLocalStateGuard left out.
TEST(ForEachTask, TasksRunWithTheCallersThreadLocalState) {
  const ScopedThreads two(2);
  c10::InferenceMode inference;
  const at::Tensor t = at::zeros({8});  // an inference tensor
  ASSERT_TRUE(t.is_inference());
  std::vector<int> grad(8, -1), infer(8, -1);
  std::mutex m;
  std::set<std::thread::id> threads;
  mechlab::for_each_task(8, [&](int64_t i) {
    grad[static_cast<size_t>(i)] = at::GradMode::is_enabled();
    infer[static_cast<size_t>(i)] = c10::InferenceMode::is_enabled();
    t.narrow(0, i, 1).fill_(static_cast<double>(i + 1));
    pause_ms(10);
    std::lock_guard<std::mutex> lock(m);
    threads.insert(std::this_thread::get_id());
  });
  EXPECT_EQ(threads.size(), 2u);
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(grad[static_cast<size_t>(i)], 0) << "task " << i;
    EXPECT_EQ(infer[static_cast<size_t>(i)], 1) << "task " << i;
  }
  EXPECT_TRUE(at::equal(t, at::arange(1, 9, at::kFloat)));
}

// An exception may not leave an OpenMP region (std::terminate): the first
// comes back to the caller once every started task has ended, and tasks not
// yet started are skipped. Catches a throw through the region (the process
// dies) and a return before the other tasks end.
TEST(ForEachTask, TheFirstExceptionComesBackAfterTheOtherTasksEnd) {
  const ScopedThreads two(2);
  std::atomic<int> started{0}, ended{0};
  std::string message;
  try {
    mechlab::for_each_task(6, [&](int64_t i) {
      started.fetch_add(1);
      if (i == 0) throw mechlab::Error("task 0 failed");
      pause_ms(30);
      ended.fetch_add(1);
    });
  } catch (const mechlab::Error& e) {
    message = e.what();
  }
  EXPECT_EQ(message, "task 0 failed");
  EXPECT_EQ(ended.load(), started.load() - 1) << "a task was still running when for_each_task returned";
  EXPECT_LT(started.load(), 6) << "every task started after the first had failed";
}
