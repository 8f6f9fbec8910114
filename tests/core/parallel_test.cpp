// for_each_task (core/util/parallel.h): every task once, on several threads,
// each alone on its thread with the caller's thread-local state, and a task's
// exception back in the caller; on one thread the same bits; and the team
// size from the load (/proc/stat).
#include "core/util/error.h"
#include "core/util/parallel.h"
#include "tests/test_util.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <omp.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

// MKL's thread count as the calling thread sees it (libtorch_cpu.so's MKL,
// its C name).
extern "C" int MKL_Get_Max_Threads() __attribute__((weak));

namespace {

using mechlab::FixedTaskThreads;
using mechlab::testing::ScopedThreads;

void pause_ms(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

}  // namespace

// Catches a serial loop (the mechlab build without OpenMP ran every
// at::parallel_for of its own on one thread, silently), an index skipped or
// run twice, and n = 0 or 1 mishandled.
TEST(ForEachTask, RunsEveryTaskOnceOverTheThreads) {
  const ScopedThreads two(2);
  const FixedTaskThreads team(2);  // whatever else runs on this machine
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

// Inside a task, ATen's ops and MKL must run on the task's thread alone,
// and a task's float bits must be those of a one-thread run, whatever the
// number of tasks and the team size (one task, or a team of 1, runs on the
// caller). Catches the one-thread scope left out or half done: on the
// caller ATen splits the sum over 2^20 floats per thread, and its bits then
// differ from the one-thread sum; in a team MKL with its AVX-512 kernels
// (core/util/mkl_dispatch.h) takes its threaded path, and this GEMM's bits
// differ from its one-thread GEMM's.
TEST(ForEachTask, EachTaskComputesAloneOnItsThread) {
  const at::Tensor x = at::randn({1 << 20}, at::TensorOptions(at::kFloat));
  const at::Tensor a = at::randn({64, 4096}), b = at::randn({4096, 64});
  float alone = 0;
  at::Tensor alone_mm;
  {
    const ScopedThreads one(1);
    alone = x.sum().item<float>();
    alone_mm = at::mm(a, b);
  }
  const ScopedThreads two(2);
  for (const auto& [team_size, n] : {std::pair<int, int64_t>{2, 1}, {2, 3}, {1, 3}}) {
    const FixedTaskThreads team(team_size);
    std::vector<float> sums(static_cast<size_t>(n));
    std::vector<at::Tensor> mms(static_cast<size_t>(n));
    std::vector<int> aten_threads(static_cast<size_t>(n));
    mechlab::for_each_task(n, [&](int64_t i) {
      aten_threads[static_cast<size_t>(i)] = at::get_num_threads();
      sums[static_cast<size_t>(i)] = x.sum().item<float>();
      mms[static_cast<size_t>(i)] = at::mm(a, b);
    });
    for (int64_t i = 0; i < n; ++i) {
      const std::string where = "task " + std::to_string(i) + " of " + std::to_string(n) + ", team of " +
                                std::to_string(team_size);
      EXPECT_EQ(aten_threads[static_cast<size_t>(i)], 1) << where;
      EXPECT_EQ(sums[static_cast<size_t>(i)], alone) << where;
      EXPECT_TRUE(at::equal(mms[static_cast<size_t>(i)], alone_mm)) << where << ": GEMM bits";
    }
    EXPECT_EQ(at::get_num_threads(), 2) << "the caller's thread count not restored";
  }
}

// Grad mode and inference mode are per thread: a task on a worker thread
// must see the caller's. Under c10::InferenceMode an in-place update of an
// inference tensor outside it throws, which is how ACDC's node path first
// failed in `mechlab bench acdc`. Catches the ThreadLocalStateGuard left out.
TEST(ForEachTask, TasksRunWithTheCallersThreadLocalState) {
  const ScopedThreads two(2);
  const FixedTaskThreads team(2);
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
  const FixedTaskThreads team(2);
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

// A team of one runs the tasks on the caller, in order, and gives back the
// caller's OpenMP and MKL thread counts after. Catches tasks sent to a
// team of one thread anyway, and settings not restored.
TEST(ForEachTask, OnOneThreadTasksRunOnTheCallerInOrder) {
  const ScopedThreads two(2);
  const FixedTaskThreads alone(1);
  ASSERT_EQ(mechlab::task_threads(), 1);
  const int mkl_before = MKL_Get_Max_Threads != nullptr ? MKL_Get_Max_Threads() : -1;
  std::vector<int64_t> order;
  std::vector<int> mkls(3, -1);
  const auto caller = std::this_thread::get_id();
  mechlab::for_each_task(3, [&](int64_t i) {
    EXPECT_EQ(std::this_thread::get_id(), caller) << "task " << i;
    order.push_back(i);
    if (MKL_Get_Max_Threads != nullptr) mkls[static_cast<size_t>(i)] = MKL_Get_Max_Threads();
  });
  EXPECT_EQ(order, (std::vector<int64_t>{0, 1, 2}));
  if (MKL_Get_Max_Threads != nullptr) {
    EXPECT_EQ(mkls, (std::vector<int>{1, 1, 1}));
    EXPECT_EQ(MKL_Get_Max_Threads(), mkl_before);
  }
  EXPECT_EQ(at::get_num_threads(), 2);
}

TEST(ForEachTask, OnOneThreadTheFirstExceptionStopsTheRest) {
  const ScopedThreads two(2);
  const FixedTaskThreads alone(1);
  std::vector<int64_t> ran;
  EXPECT_THROW(mechlab::for_each_task(4,
                                      [&](int64_t i) {
                                        ran.push_back(i);
                                        if (i == 1) throw mechlab::Error("task 1 failed");
                                      }),
               mechlab::Error);
  EXPECT_EQ(ran, (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(at::get_num_threads(), 2) << "the one-thread scope not undone by the exception";
}

// /proc/stat's per-CPU lines: user nice system idle iowait irq softirq
// steal guest guest_nice. Busy = user + nice + system + irq + softirq +
// steal; the aggregate "cpu " line and CPUs outside the set are left out.
TEST(CpuTicks, SumsTheChosenCpusLines) {
  const std::string stat =
      "cpu  1000 1000 1000 1000 1000 1000 1000 1000 0 0\n"
      "cpu0 10 1 5 100 2 3 4 6 7 0\n"
      "cpu1 20 0 10 200 4 0 0 0 0 0\n"
      "cpu2 1 1 1 1 1 1 1 1 0 0\n"
      "intr 12345 0 0\n"
      "ctxt 999\n";
  const mechlab::CpuTicks t = mechlab::cpu_ticks(stat, {0, 1});
  EXPECT_EQ(t.busy, 10u + 1 + 5 + 3 + 4 + 6 + 20 + 10);
  EXPECT_EQ(t.total, t.busy + 100 + 2 + 200 + 4);
  const mechlab::CpuTicks one = mechlab::cpu_ticks(stat, {2});
  EXPECT_EQ(one.busy, 6u);
  EXPECT_EQ(one.total, 8u);
}

TEST(CpuTicks, RefusesAMissingOrShortLine) {
  const std::string stat = "cpu  1 2 3 4 5 6 7 8\ncpu0 1 2 3 4 5 6 7 8\ncpu1 1 2 3\n";
  using mechlab::testing::error_of;
  using ::testing::HasSubstr;
  EXPECT_THAT(error_of([&] { mechlab::cpu_ticks(stat, {0, 3}); }), HasSubstr("no line for cpu3"));
  EXPECT_THAT(error_of([&] { mechlab::cpu_ticks(stat, {1}); }), HasSubstr("has 3 numbers, expected at least 7"));
}

// 2 CPUs, 150 of 200 ticks busy (1.5 cores), this process 0.5 s of CPU
// over 1 s: 1 core busy elsewhere.
TEST(CpuTicks, CoresBusyElsewhereAreTheBusyShareLessOurOwn) {
  const mechlab::CpuTicks a{1000, 4000}, b{1150, 4200};
  EXPECT_DOUBLE_EQ(mechlab::cores_busy_elsewhere(a, b, 2, 0.5, 1.0), 1.0);
  EXPECT_DOUBLE_EQ(mechlab::cores_busy_elsewhere(a, b, 2, 0.0, 1.0), 1.5);
  EXPECT_DOUBLE_EQ(mechlab::cores_busy_elsewhere(a, b, 2, 2.0, 1.0), 0.0) << "never below 0";
  EXPECT_DOUBLE_EQ(mechlab::cores_busy_elsewhere(a, a, 2, 0.0, 1.0), 0.0) << "no tick passed";
}

// Live: with a process spinning on every core this one may use, the team
// is one thread once the monitor has sampled a busy interval. Catches a
// monitor that never shrinks the team (load read wrongly, own time not
// subtracted the other way round). Other tests' load only adds to it.
TEST(TaskThreads, EveryCoreBusyElsewhereLeavesOneThread) {
  const ScopedThreads two(2);
  cpu_set_t set;
  CPU_ZERO(&set);
  ASSERT_EQ(sched_getaffinity(0, sizeof set, &set), 0);
  std::vector<pid_t> spinners;
  for (int i = 0; i < CPU_COUNT(&set); ++i) {
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      for (volatile unsigned long k = 0;; k = k + 1) {
      }
    }
    spinners.push_back(pid);
  }
  std::vector<int> seen;
  for (int k = 0; k < 4; ++k) {  // the last interval lies inside the busy time
    seen.push_back(mechlab::task_threads());
    pause_ms(300);
  }
  const int last = mechlab::task_threads();
  for (const pid_t pid : spinners) {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
  EXPECT_EQ(last, 1) << "with " << CPU_COUNT(&set) << " spinning processes; earlier samples " << seen[0] << " "
                     << seen[1] << " " << seen[2] << " " << seen[3];
}
