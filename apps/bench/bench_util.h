// Small helpers shared by the `mechlab bench` programs: timing with device
// synchronisation, medians, and the ratio table every benchmark prints last.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <string>
#include <vector>

namespace mechlab::bench {

/// Median wall time in milliseconds of `fn` over `repeats` runs after `warmup`
/// runs; synchronises the CUDA device around each run when `device` is CUDA.
double median_ms(const std::function<void()>& fn, int warmup, int repeats, const at::Device& device);

/// Peak resident set size of this process so far, in bytes.
int64_t peak_rss_bytes();

struct Row {
  std::string name;
  double ms;
  std::string note;
};

/// Prints rows as a table, then "ratio" lines of each row against `baseline`.
void print_table(const std::string& title, const std::vector<Row>& rows, const std::string& baseline,
                 double work_units, const std::string& unit);

}  // namespace mechlab::bench
