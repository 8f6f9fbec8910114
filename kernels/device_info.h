// What the CUDA runtime says about the GPUs: used by `mechlab info`, the
// benchmarks' headers, and by bulk work that sizes batches to free memory.
// Compiled with nvcc when the CUDA toolkit is present; without it every query
// answers "no GPU".
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mechlab::kernels {

struct GpuInfo {
  int index = 0;
  std::string name;
  int sm_major = 0, sm_minor = 0;
  int multiprocessors = 0;
  int64_t total_bytes = 0;
  int64_t free_bytes = 0;
  int64_t l2_bytes = 0;
};

/// Whether this binary was built with CUDA support (nvcc found at build time).
bool built_with_cuda();
/// GPUs the CUDA runtime sees (empty without a GPU or driver; never throws).
std::vector<GpuInfo> list_gpus();
/// One line per GPU, or "no CUDA GPU (…reason…)".
std::string describe_gpus();

}  // namespace mechlab::kernels
