#include "kernels/device_info.h"

#include <cuda_runtime.h>

#include <sstream>

namespace mechlab::kernels {

bool built_with_cuda() { return true; }

std::vector<GpuInfo> list_gpus() {
  std::vector<GpuInfo> out;
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return out;
  }
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) continue;
    GpuInfo g;
    g.index = i;
    g.name = p.name;
    g.sm_major = p.major;
    g.sm_minor = p.minor;
    g.multiprocessors = p.multiProcessorCount;
    g.total_bytes = static_cast<int64_t>(p.totalGlobalMem);
    g.l2_bytes = p.l2CacheSize;
    size_t free_b = 0, total_b = 0;
    if (cudaSetDevice(i) == cudaSuccess && cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) {
      g.free_bytes = static_cast<int64_t>(free_b);
    }
    out.push_back(g);
  }
  return out;
}

std::string describe_gpus() {
  const auto gpus = list_gpus();
  if (gpus.empty()) return "no CUDA GPU visible (built with CUDA)";
  std::ostringstream os;
  for (const auto& g : gpus) {
    os << "cuda:" << g.index << " " << g.name << " sm_" << g.sm_major << g.sm_minor << ", "
       << g.multiprocessors << " SMs, " << (g.total_bytes >> 20) << " MiB ("
       << (g.free_bytes >> 20) << " free), L2 " << (g.l2_bytes >> 20) << " MiB\n";
  }
  std::string s = os.str();
  s.pop_back();
  return s;
}

}  // namespace mechlab::kernels
