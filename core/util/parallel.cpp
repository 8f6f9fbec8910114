// for_each_task's team size from the load, and its one-thread scope
// (core/util/parallel.h).
#include "core/util/parallel.h"

#include "core/log/log.h"
#include "core/util/error.h"

#include <omp.h>
#include <sched.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <mutex>
#include <optional>
#include <sstream>

// MKL's thread-local thread count, which LibTorch's libtorch_cpu.so exports
// where it is built with MKL (x86-64 wheels); weak, so that a build without
// it still links. The C name, as mkl_service.h maps it: the lower-case
// mkl_set_num_threads_local there is the Fortran entry, which takes a
// pointer.
extern "C" int MKL_Set_Num_Threads_Local(int) __attribute__((weak));

namespace mechlab {

CpuTicks cpu_ticks(const std::string& proc_stat, const std::vector<int>& cpus) {
  CpuTicks t;
  std::vector<char> seen(cpus.empty() ? 0 : static_cast<size_t>(*std::max_element(cpus.begin(), cpus.end())) + 1, 0);
  for (const int c : cpus) seen[static_cast<size_t>(c)] = 1;
  std::istringstream in(proc_stat);
  std::string line;
  while (std::getline(in, line)) {
    // "cpuN ..." lines only ("cpu  ..." is the sum, and %d would skip its blanks)
    if (line.compare(0, 3, "cpu") != 0 || line.size() < 4 || std::isdigit(static_cast<unsigned char>(line[3])) == 0) {
      continue;
    }
    int cpu = -1, n = 0;
    if (std::sscanf(line.c_str(), "cpu%d%n", &cpu, &n) != 1) continue;
    if (static_cast<size_t>(cpu) >= seen.size() || seen[static_cast<size_t>(cpu)] != 1) continue;
    // user nice system idle iowait irq softirq steal (later fields, guest
    // time, are already inside user and nice)
    unsigned long long v[8] = {};
    const int got = std::sscanf(line.c_str() + n, "%llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2],
                                &v[3], &v[4], &v[5], &v[6], &v[7]);
    MECHLAB_CHECK(got >= 7, "/proc/stat: line '", line, "' has ", got, " numbers, expected at least 7");
    const uint64_t busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    t.busy += busy;
    t.total += busy + v[3] + v[4];
    seen[static_cast<size_t>(cpu)] = 2;
  }
  for (const int c : cpus) {
    MECHLAB_CHECK(seen[static_cast<size_t>(c)] == 2, "/proc/stat: no line for cpu", c);
  }
  return t;
}

double cores_busy_elsewhere(const CpuTicks& before, const CpuTicks& after, int n_cpus, double own_cpu_s,
                            double wall_s) {
  if (after.total <= before.total || wall_s <= 0) return 0;
  const double busy_share = static_cast<double>(after.busy - before.busy) / static_cast<double>(after.total - before.total);
  return std::max(0.0, busy_share * n_cpus - own_cpu_s / wall_s);
}

namespace {

// The load, sampled at most every 0.2 s by whichever thread asks first.
class LoadMonitor {
 public:
  // Cores that other processes leave free, as of the last sample; the
  // whole CPU set before the first.
  int free_cores() {
    std::unique_lock<std::mutex> lock(mutex_, std::try_to_lock);
    if (!lock.owns_lock() || broken_) return free_.load();
    const auto now = std::chrono::steady_clock::now();
    if (last_ && now - last_->wall < std::chrono::milliseconds(200)) return free_.load();
    try {
      if (cpus_.empty()) init();
      const Sample s{now, own_cpu_s(), read_ticks()};
      if (last_) {
        const double wall = std::chrono::duration<double>(s.wall - last_->wall).count();
        const double elsewhere =
            cores_busy_elsewhere(last_->ticks, s.ticks, static_cast<int>(cpus_.size()), s.own - last_->own, wall);
        const int n = static_cast<int>(cpus_.size());
        const int free = std::clamp(static_cast<int>(std::lround(n - elsewhere)), 1, n);
        if (free != free_.load()) {
          char msg[128];
          std::snprintf(msg, sizeof msg, "for_each_task: other processes keep %.1f of %d cores busy; tasks on at most %d threads",
                        elsewhere, n, free);
          log::debug(msg);
        }
        free_.store(free);
      }
      last_ = s;
    } catch (const std::exception& e) {
      log::debug(std::string("for_each_task: the load cannot be read (") + e.what() + "); every thread used");
      broken_ = true;
      free_.store(1 << 20);
    }
    return free_.load();
  }

 private:
  struct Sample {
    std::chrono::steady_clock::time_point wall;
    double own = 0;
    CpuTicks ticks;
  };

  void init() {
    cpu_set_t set;
    CPU_ZERO(&set);
    MECHLAB_CHECK(sched_getaffinity(0, sizeof set, &set) == 0, "sched_getaffinity failed");
    for (int c = 0; c < CPU_SETSIZE; ++c) {
      if (CPU_ISSET(c, &set)) cpus_.push_back(c);
    }
    MECHLAB_CHECK(!cpus_.empty(), "an empty CPU set");
    free_.store(static_cast<int>(cpus_.size()));
  }

  CpuTicks read_ticks() const {
    std::ifstream f("/proc/stat");
    MECHLAB_CHECK(f.good(), "cannot open /proc/stat");
    std::stringstream text;
    text << f.rdbuf();
    return cpu_ticks(text.str(), cpus_);
  }

  static double own_cpu_s() {
    timespec ts{};
    MECHLAB_CHECK(clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) == 0, "clock_gettime failed");
    return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
  }

  std::mutex mutex_;
  std::vector<int> cpus_;
  std::optional<Sample> last_;
  bool broken_ = false;
  std::atomic<int> free_{1 << 20};
};

std::atomic<int> fixed_threads{0};

bool adaptive() {
  static const bool on = [] {
    const char* env = std::getenv("MECHLAB_ADAPTIVE_THREADS");
    return env == nullptr || std::string(env) != "0";
  }();
  return on;
}

}  // namespace

int task_threads() {
  const int wanted = at::get_num_threads();
  const int fixed = fixed_threads.load();
  if (fixed > 0) return std::min(fixed, wanted);
  if (!adaptive()) return wanted;
  static LoadMonitor monitor;
  return std::min(wanted, monitor.free_cores());
}

std::string task_threads_summary() {
  const char* wait = std::getenv("OMP_WAIT_POLICY");
  return std::string("Tasks (ACDC's node path): ") +
         (adaptive() ? "on the cores other processes leave free, up to --threads (MECHLAB_ADAPTIVE_THREADS=0: "
                       "always --threads)"
                     : "always on --threads threads (MECHLAB_ADAPTIVE_THREADS=0)") +
         "; OMP_WAIT_POLICY " + (wait != nullptr ? wait : "not set (idle OpenMP threads spin a while)");
}

FixedTaskThreads::FixedTaskThreads(int n) : previous_(fixed_threads.load()) {
  MECHLAB_CHECK(n >= 0, "FixedTaskThreads: n must be a thread count or 0 (measure the load), got ", n);
  fixed_threads.store(n);
}

FixedTaskThreads::~FixedTaskThreads() { fixed_threads.store(previous_); }

OneThread::OneThread() : omp_threads_(0), mkl_threads_(0) {
  // ATen sets a thread's counts to at::get_num_threads() on its first use
  // in that thread (a worker's first task), which would undo ours: make it
  // happen first, in LibTorch (get_num_threads) and in this program's
  // inlined copy of the check (at::parallel_for's).
  (void)at::get_num_threads();
  at::internal::lazy_init_num_threads();
  omp_threads_ = omp_get_max_threads();
  omp_set_num_threads(1);
  if (MKL_Set_Num_Threads_Local != nullptr) mkl_threads_ = MKL_Set_Num_Threads_Local(1);
}

OneThread::~OneThread() {
  omp_set_num_threads(omp_threads_);
  if (MKL_Set_Num_Threads_Local != nullptr) MKL_Set_Num_Threads_Local(mkl_threads_);
}

}  // namespace mechlab
