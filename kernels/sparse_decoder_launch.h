// Between the sparse decoder's host wrappers (sparse_decoder_cuda.cpp) and
// its kernels (sparse_decoder.cu): raw pointers, sizes, strides (in
// elements) and a stream. float32 only. CUDA builds only.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace mechlab::kernels::detail {

constexpr int kSparseThreads = 256;  // threads per block of the row kernels
constexpr int kSparseTile = 32;      // the transposed weight gradient's tile (latents x d)

struct SparseDecodeLaunch {
  const float* values;     // [n, k], contiguous
  const int64_t* indices;  // [n, k], contiguous
  const float* weight;     // [n_latents, d], strides ws0, ws1
  float* out;              // [n, d], contiguous
  int64_t n, k, n_latents, d, ws0, ws1;
};

struct SparseGradValuesLaunch {
  const float* grad_out;   // [n, d], contiguous
  const int64_t* indices;  // [n, k], contiguous
  const float* weight;     // [n_latents, d], strides ws0, ws1
  float* out;              // [n, k], contiguous
  int64_t n, k, n_latents, d, ws0, ws1;
};

struct SparseWeightGradLaunch {
  const float* coef;      // [n, k], contiguous
  const float* rows;      // [n, d], contiguous
  const int64_t* order;   // [n * k]: entry numbers (n * k + j) sorted by latent
  const int64_t* start;   // [n_latents + 1]: latent c's entries are order[start[c] .. start[c + 1])
  float* out;             // [n_latents, d], or [d, n_latents] when transposed; contiguous
  int64_t n, k, n_latents, d;
  bool transposed;
};

void launch_sparse_decode(const SparseDecodeLaunch& args, cudaStream_t stream);
void launch_sparse_grad_values(const SparseGradValuesLaunch& args, cudaStream_t stream);
void launch_sparse_weight_grad(const SparseWeightGradLaunch& args, cudaStream_t stream);

}  // namespace mechlab::kernels::detail
