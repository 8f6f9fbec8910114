// CPU-only build of device_info.h (no CUDA toolkit at build time).
#ifndef MECHLAB_HAVE_CUDA
#include "kernels/device_info.h"

namespace mechlab::kernels {
bool built_with_cuda() { return false; }
std::vector<GpuInfo> list_gpus() { return {}; }
std::string describe_gpus() { return "no CUDA GPU (built without CUDA)"; }
}  // namespace mechlab::kernels
#endif
