// On the GPU machine: Torch, the bundle's HDF5 and (through torch_log.cpp)
// its spdlog in one program. spdlog is kept out of this file on purpose:
// LibTorch ships fmt 12 headers, Debian's spdlog 1.10 needs its own fmt 9, so
// a file that includes both Torch and spdlog does not compile (mechlab's
// CMakeLists.txt compiles its logging apart for the same reason).
#include <torch/torch.h>
#include <hdf5.h>
#include <string>

void log_line(const std::string& s);  // torch_log.cpp

int main() {
  bool cuda = torch::cuda::is_available();
  auto dev = cuda ? torch::kCUDA : torch::kCPU;
  auto x = torch::ones({256, 256}, torch::TensorOptions().device(dev));
  double s = x.matmul(x).sum().item<double>();
  unsigned a = 0, b = 0, c = 0;
  H5get_libversion(&a, &b, &c);
  log_line("torch " + std::string(TORCH_VERSION) + " cuda=" + (cuda ? "yes" : "no") +
           " sum=" + std::to_string(s) + " hdf5=" + std::to_string(a) + "." +
           std::to_string(b) + "." + std::to_string(c));
  return s == 256.0 * 256 * 256 ? 0 : 1;
}
