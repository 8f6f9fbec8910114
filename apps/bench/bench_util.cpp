#include "apps/bench/bench_util.h"

#include "core/util/mkl_dispatch.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>

#include <sys/resource.h>

#include <chrono>
#include <cstdio>

#ifdef MECHLAB_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace mechlab::bench {
namespace {
void sync(const at::Device& device) {
#ifdef MECHLAB_HAVE_CUDA
  if (device.is_cuda()) cudaDeviceSynchronize();
#else
  (void)device;
#endif
}
}  // namespace

Stats time_ms(const std::function<void()>& fn, int warmup, int repeats, const at::Device& device) {
  MECHLAB_CHECK(repeats >= 1, "repeats must be at least 1, not ", repeats);
  for (int i = 0; i < warmup; ++i) fn();
  sync(device);
  std::vector<double> ms;
  for (int i = 0; i < repeats; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    fn();
    sync(device);
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  return summarize(ms);
}

double median_ms(const std::function<void()>& fn, int warmup, int repeats, const at::Device& device) {
  return time_ms(fn, warmup, repeats, device).median;
}

int64_t peak_rss_bytes() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<int64_t>(u.ru_maxrss) * 1024;
}

void print_table(const std::string& title, const std::vector<Row>& rows, const std::string& baseline,
                 double work_units, const std::string& unit) {
  double base = 0;
  for (const auto& r : rows) {
    if (r.name == baseline) base = r.ms.median;
  }
  std::printf("\n%s\n%s\n", title.c_str(), mkl_dispatch_summary().c_str());
  std::printf("| %-32s | %10s | %21s | %4s | %14s | %8s | %s\n", "case", "median ms", "IQR ms (q1 - q3)",
              "runs", (unit + "/s").c_str(), "vs base", "note");
  for (const auto& r : rows) {
    // n == 0: a figure derived from a measurement (a bound), not timed runs.
    char iqr[64] = "-", runs[24] = "-";
    if (r.ms.n > 0) {
      std::snprintf(iqr, sizeof iqr, "%.3f - %.3f", r.ms.q1, r.ms.q3);
      std::snprintf(runs, sizeof runs, "%lld", static_cast<long long>(r.ms.n));
    }
    std::printf("| %-32s | %10.3f | %21s | %4s | %14.0f | %8.3f | %s\n", r.name.c_str(), r.ms.median, iqr,
                runs, work_units / (r.ms.median / 1e3),
                base > 0 ? r.ms.median / base : 0.0, r.note.c_str());
  }
  std::printf("\nratios of medians (time / time of '%s'):\n", baseline.c_str());
  for (const auto& r : rows) {
    if (r.name != baseline) std::printf("  %-32s %.3f\n", r.name.c_str(), base > 0 ? r.ms.median / base : 0.0);
  }
}

}  // namespace mechlab::bench
