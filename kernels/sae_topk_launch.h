// Between sae_topk's host wrapper (sae_topk_cuda.cpp) and its kernel
// (sae_topk.cu): raw pointers, sizes and a stream. CUDA builds only.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace mechlab::kernels::detail {

/// Threads per block (one block per row) and the largest k the kernel takes
/// (its selection lives in shared memory).
constexpr int kSaeTopkThreads = 256;
constexpr int kSaeTopkMaxK = 1024;

struct SaeTopkLaunch {
  const float* x;  // [n, m], contiguous
  int64_t* out;    // [n, k], contiguous
  int64_t n;       // 1 .. 2^31 - 1 (grid x)
  int64_t m;
  int k;           // 1 .. kSaeTopkMaxK
};

void launch_sae_topk(const SaeTopkLaunch& args, cudaStream_t stream);

}  // namespace mechlab::kernels::detail
