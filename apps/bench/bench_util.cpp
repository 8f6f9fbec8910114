#include "apps/bench/bench_util.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>

#include <sys/resource.h>

#include <algorithm>
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

double median_ms(const std::function<void()>& fn, int warmup, int repeats, const at::Device& device) {
  for (int i = 0; i < warmup; ++i) fn();
  sync(device);
  std::vector<double> ms;
  for (int i = 0; i < repeats; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    fn();
    sync(device);
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
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
    if (r.name == baseline) base = r.ms;
  }
  std::printf("\n%s\n", title.c_str());
  std::printf("| %-32s | %10s | %14s | %8s | %s\n", "case", "median ms", (unit + "/s").c_str(), "vs base", "note");
  for (const auto& r : rows) {
    std::printf("| %-32s | %10.3f | %14.0f | %8.3f | %s\n", r.name.c_str(), r.ms, work_units / (r.ms / 1e3),
                base > 0 ? r.ms / base : 0.0, r.note.c_str());
  }
  std::printf("\nratios (time / time of '%s'):\n", baseline.c_str());
  for (const auto& r : rows) {
    if (r.name != baseline) std::printf("  %-32s %.3f\n", r.name.c_str(), base > 0 ? r.ms / base : 0.0);
  }
}

}  // namespace mechlab::bench
