// Between edge_patch's host wrapper (edge_patch_cuda.cpp, which knows ATen)
// and its kernel (edge_patch.cu, which does not): raw pointers, sizes and a
// stream. CUDA builds only.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace mechlab::kernels::detail {

enum class PatchDtype { f32, bf16, f16 };

/// The CUDA kernel's tiles: threads per block, one d_model column each
/// (blocks tile d_model), receivers accumulated per thread, senders per step.
constexpr int kEdgePatchTileD = 128;
constexpr int kEdgePatchTileR = 16;
constexpr int kEdgePatchTileS = 16;

struct EdgePatchLaunch {
  const void* base;   // [rows, n_receivers, d_model], contiguous
  const void* delta;  // [rows, n_senders, d_model], contiguous
  const float* mask;  // [n_receivers, n_senders], contiguous float32
  void* out;          // [rows, n_receivers, d_model], contiguous
  int64_t rows;       // batch * pos, 1 .. 2^31 - 1 (grid x)
  int64_t n_receivers;
  int64_t n_senders;
  int64_t d_model;    // 1 .. 65535 * kEdgePatchTileD (grid y)
};

/// Launches the kernel on `stream` and checks the launch.
void launch_edge_patch(PatchDtype dtype, const EdgePatchLaunch& args, cudaStream_t stream);

}  // namespace mechlab::kernels::detail
