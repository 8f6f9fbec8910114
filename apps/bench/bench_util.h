// Small helpers shared by the `mechlab bench` programs: timing with device
// synchronisation, the statistics every figure is reported with (median,
// interquartile range, number of runs: the one home for them), and the ratio
// table every benchmark prints last.
#pragma once

#include "core/util/error.h"

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace mechlab::bench {

/// A set of measurements summarised: n, median and quartiles. Quantiles are
/// linear interpolation between order statistics (numpy's default, R type 7):
/// q(p) = x[floor(h)] + (h - floor(h)) (x[floor(h)+1] - x[floor(h)]), h = p (n - 1)
/// on the sorted x; the median of an even count is the mean of the middle two.
struct Stats {
  int64_t n = 0;
  double median = 0, q1 = 0, q3 = 0, min = 0, max = 0;
  double iqr() const { return q3 - q1; }
};

/// The p-quantile (0 <= p <= 1) of `sorted` (ascending, not empty), as Stats defines it.
inline double quantile_of_sorted(const std::vector<double>& sorted, double p) {
  MECHLAB_CHECK(!sorted.empty(), "a quantile of no measurements was asked for");
  const double h = p * static_cast<double>(sorted.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(h));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (h - static_cast<double>(lo)) * (sorted[hi] - sorted[lo]);
}

/// Summarises `samples` (not empty; a NaN is refused: a failed timing must not
/// sort somewhere arbitrary and shift the median).
inline Stats summarize(std::vector<double> samples) {
  MECHLAB_CHECK(!samples.empty(), "no measurements to summarise: run at least once (repeats >= 1)");
  for (double x : samples) MECHLAB_CHECK(!std::isnan(x), "a measurement is NaN");
  std::sort(samples.begin(), samples.end());
  Stats s;
  s.n = static_cast<int64_t>(samples.size());
  s.median = quantile_of_sorted(samples, 0.5);
  s.q1 = quantile_of_sorted(samples, 0.25);
  s.q3 = quantile_of_sorted(samples, 0.75);
  s.min = samples.front();
  s.max = samples.back();
  return s;
}

/// Stats scaled by `factor` (ms -> s, per-item -> extrapolated total).
inline Stats scaled(Stats s, double factor) {
  s.median *= factor, s.q1 *= factor, s.q3 *= factor, s.min *= factor, s.max *= factor;
  if (factor < 0) std::swap(s.q1, s.q3), std::swap(s.min, s.max);
  return s;
}

/// Wall times in milliseconds of `repeats` runs of `fn` after `warmup` untimed
/// runs; synchronises the CUDA device around each run when `device` is CUDA.
Stats time_ms(const std::function<void()>& fn, int warmup, int repeats, const at::Device& device);

/// time_ms(...).median.
double median_ms(const std::function<void()>& fn, int warmup, int repeats, const at::Device& device);

/// Peak resident set size of this process so far, in bytes.
int64_t peak_rss_bytes();

/// One line of a table: a median over `stats.n` runs, with its interquartile range.
struct Row {
  std::string name;
  Stats ms;
  std::string note;
};

/// Prints rows as a table (median ms, IQR, runs), then "ratio" lines of each
/// row's median against `baseline`'s.
void print_table(const std::string& title, const std::vector<Row>& rows, const std::string& baseline,
                 double work_units, const std::string& unit);

}  // namespace mechlab::bench
