// The sparse decoder's CUDA kernels (see kernels/sparse_decoder.h).
//
// sparse_decode: a block per (row, 256 columns of d), one column per thread;
//   each thread adds the k weight entries of its column in order of j, so
//   loads of a weight row are coalesced when its columns are contiguous.
// grad_values: a block per row, a warp per (row, j): lanes stride over d
//   and the partial dots are reduced by warp shuffles.
// weight_grad: the entries come sorted by latent (the host wrapper sorts
//   them with ATen), so each output element is summed by one thread in a
//   fixed order, without atomics. Untransposed: a block per (latent, 256
//   columns). Transposed ([d, n_latents], W_enc's layout): a block per 32 x 32
//   tile; threads sum along d (coalesced reads of rows), the tile is
//   transposed in shared memory and written along the latents (coalesced).
// Indices outside [0, n_latents) are skipped (the CPU path refuses them).
#include "kernels/cuda_check.h"
#include "kernels/sparse_decoder_launch.h"

#include <cuda_runtime.h>

namespace mechlab::kernels::detail {
namespace {

constexpr int kThreads = kSparseThreads;
constexpr int kTile = kSparseTile;

__global__ void __launch_bounds__(kThreads)
    decode_kernel(const float* __restrict__ values, const int64_t* __restrict__ indices,
                  const float* __restrict__ weight, float* __restrict__ out, int64_t k, int64_t n_latents,
                  int64_t d, int64_t ws0, int64_t ws1) {
  const int64_t r = blockIdx.x;
  const int64_t c = static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x;
  if (c >= d) return;
  float acc = 0.f;
  for (int64_t j = 0; j < k; ++j) {
    const int64_t lat = __ldg(indices + r * k + j);
    if (lat < 0 || lat >= n_latents) continue;
    acc = fmaf(__ldg(values + r * k + j), __ldg(weight + lat * ws0 + c * ws1), acc);
  }
  out[r * d + c] = acc;
}

__global__ void __launch_bounds__(kThreads)
    grad_values_kernel(const float* __restrict__ grad_out, const int64_t* __restrict__ indices,
                       const float* __restrict__ weight, float* __restrict__ out, int64_t k, int64_t n_latents,
                       int64_t d, int64_t ws0, int64_t ws1) {
  const int64_t r = blockIdx.x;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const float* g = grad_out + r * d;
  for (int64_t j = warp; j < k; j += kThreads / 32) {
    const int64_t lat = __ldg(indices + r * k + j);
    float acc = 0.f;
    if (lat >= 0 && lat < n_latents) {
      const float* w = weight + lat * ws0;
      for (int64_t c = lane; c < d; c += 32) acc = fmaf(__ldg(g + c), __ldg(w + c * ws1), acc);
    }
    for (int off = 16; off > 0; off /= 2) acc += __shfl_down_sync(0xffffffffu, acc, off);
    if (lane == 0) out[r * k + j] = acc;
  }
}

__global__ void __launch_bounds__(kThreads)
    weight_grad_kernel(const float* __restrict__ coef, const float* __restrict__ rows,
                       const int64_t* __restrict__ order, const int64_t* __restrict__ start,
                       float* __restrict__ out, int64_t k, int64_t d) {
  const int64_t lat = blockIdx.x;
  const int64_t c = static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x;
  if (c >= d) return;
  float acc = 0.f;
  const int64_t p1 = __ldg(start + lat + 1);
  for (int64_t p = __ldg(start + lat); p < p1; ++p) {
    const int64_t e = __ldg(order + p);
    acc = fmaf(__ldg(coef + e), __ldg(rows + (e / k) * d + c), acc);
  }
  out[lat * d + c] = acc;
}

// Block (kTile, 8): threadIdx.x walks d when summing and the latents when
// writing; each thread covers kTile / 8 latents (or d rows) of the tile.
__global__ void __launch_bounds__(kTile * 8)
    weight_grad_t_kernel(const float* __restrict__ coef, const float* __restrict__ rows,
                         const int64_t* __restrict__ order, const int64_t* __restrict__ start,
                         float* __restrict__ out, int64_t k, int64_t n_latents, int64_t d) {
  __shared__ float tile[kTile][kTile + 1];  // [latent][d], padded against bank conflicts
  const int64_t lat0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t d0 = static_cast<int64_t>(blockIdx.y) * kTile;
  const int tx = threadIdx.x, ty = threadIdx.y;
  for (int i = ty; i < kTile; i += 8) {
    const int64_t lat = lat0 + i, c = d0 + tx;
    float acc = 0.f;
    if (lat < n_latents && c < d) {
      const int64_t p1 = __ldg(start + lat + 1);
      for (int64_t p = __ldg(start + lat); p < p1; ++p) {
        const int64_t e = __ldg(order + p);
        acc = fmaf(__ldg(coef + e), __ldg(rows + (e / k) * d + c), acc);
      }
    }
    tile[i][tx] = acc;
  }
  __syncthreads();
  for (int i = ty; i < kTile; i += 8) {
    const int64_t c = d0 + i, lat = lat0 + tx;
    if (c < d && lat < n_latents) out[c * n_latents + lat] = tile[tx][i];
  }
}

}  // namespace

void launch_sparse_decode(const SparseDecodeLaunch& a, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(a.n), static_cast<unsigned>((a.d + kThreads - 1) / kThreads));
  decode_kernel<<<grid, kThreads, 0, stream>>>(a.values, a.indices, a.weight, a.out, a.k, a.n_latents, a.d,
                                               a.ws0, a.ws1);
  MECHLAB_CUDA_CHECK_LAUNCH();
}

void launch_sparse_grad_values(const SparseGradValuesLaunch& a, cudaStream_t stream) {
  grad_values_kernel<<<static_cast<unsigned>(a.n), kThreads, 0, stream>>>(
      a.grad_out, a.indices, a.weight, a.out, a.k, a.n_latents, a.d, a.ws0, a.ws1);
  MECHLAB_CUDA_CHECK_LAUNCH();
}

void launch_sparse_weight_grad(const SparseWeightGradLaunch& a, cudaStream_t stream) {
  if (!a.transposed) {
    const dim3 grid(static_cast<unsigned>(a.n_latents), static_cast<unsigned>((a.d + kThreads - 1) / kThreads));
    weight_grad_kernel<<<grid, kThreads, 0, stream>>>(a.coef, a.rows, a.order, a.start, a.out, a.k, a.d);
  } else {
    const dim3 grid(static_cast<unsigned>((a.n_latents + kTile - 1) / kTile),
                    static_cast<unsigned>((a.d + kTile - 1) / kTile));
    weight_grad_t_kernel<<<grid, dim3(kTile, 8), 0, stream>>>(a.coef, a.rows, a.order, a.start, a.out, a.k,
                                                               a.n_latents, a.d);
  }
  MECHLAB_CUDA_CHECK_LAUNCH();
}

}  // namespace mechlab::kernels::detail
