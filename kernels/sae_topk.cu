// sae_topk's CUDA kernel (see kernels/sae_topk.h for the operation).
//
// One block per row. The k-th largest value is found by a radix select on
// the float's order key (bits mapped so that unsigned order is float order):
// four passes over the row, each building a 256-bin histogram in shared
// memory of the next 8 bits among the entries that share the prefix found so
// far, and keeping the bin where the count from the top reaches k. Then one
// pass collects the entries above that key and as many equal to it as k
// needs, and a rank sort (k^2 compares, k <= 1024) writes them largest
// first, equal keys by increasing index. Which of several entries equal to
// the k-th value are kept depends on the order of shared-memory atomics.
#include "kernels/cuda_check.h"
#include "kernels/sae_topk_launch.h"

#include <cuda_runtime.h>

namespace mechlab::kernels::detail {
namespace {

constexpr int kThreads = kSaeTopkThreads;

__device__ __forceinline__ unsigned order_key(float v) {
  const unsigned bits = __float_as_uint(v);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

__global__ void __launch_bounds__(kThreads)
    sae_topk_kernel(const float* __restrict__ x, int64_t* __restrict__ out, int64_t m, int k) {
  __shared__ unsigned hist[256];
  __shared__ unsigned s_prefix, s_need, n_gt, n_eq;
  extern __shared__ unsigned char smem[];
  unsigned* sel_key = reinterpret_cast<unsigned*>(smem);                 // [k]
  int64_t* sel_idx = reinterpret_cast<int64_t*>(smem + ((4 * k + 7) / 8) * 8);  // [k]
  const float* row = x + static_cast<int64_t>(blockIdx.x) * m;
  const int tid = threadIdx.x;

  unsigned prefix = 0, mask = 0, need = static_cast<unsigned>(k);
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = tid; b < 256; b += kThreads) hist[b] = 0;
    __syncthreads();
    for (int64_t i = tid; i < m; i += kThreads) {
      const unsigned key = order_key(row[i]);
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (tid == 0) {
      unsigned above = 0;
      for (int b = 255; b >= 0; --b) {
        if (above + hist[b] >= need) {
          s_prefix = prefix | (static_cast<unsigned>(b) << shift);
          s_need = need - above;
          break;
        }
        above += hist[b];
      }
      n_gt = 0;
      n_eq = 0;
    }
    __syncthreads();
    prefix = s_prefix;
    need = s_need;
    mask |= 255u << shift;
    __syncthreads();  // every thread has read s_prefix before thread 0 may write it again
  }
  // prefix is now the k-th largest key; `need` entries equal to it are kept.
  const unsigned n_above = static_cast<unsigned>(k) - need;
  for (int64_t i = tid; i < m; i += kThreads) {
    const unsigned key = order_key(row[i]);
    if (key > prefix) {
      const unsigned p = atomicAdd(&n_gt, 1u);
      sel_key[p] = key;
      sel_idx[p] = i;
    } else if (key == prefix) {
      const unsigned p = atomicAdd(&n_eq, 1u);
      if (p < need) {
        sel_key[n_above + p] = key;
        sel_idx[n_above + p] = i;
      }
    }
  }
  __syncthreads();
  int64_t* out_row = out + static_cast<int64_t>(blockIdx.x) * k;
  for (int t = tid; t < k; t += kThreads) {
    const unsigned kt = sel_key[t];
    const int64_t it = sel_idx[t];
    int rank = 0;
    for (int s = 0; s < k; ++s) {
      const unsigned ks = sel_key[s];
      rank += (ks > kt) || (ks == kt && sel_idx[s] < it);
    }
    out_row[rank] = it;
  }
}

}  // namespace

void launch_sae_topk(const SaeTopkLaunch& a, cudaStream_t stream) {
  const size_t smem = static_cast<size_t>((4 * a.k + 7) / 8) * 8 + static_cast<size_t>(a.k) * 8;
  sae_topk_kernel<<<static_cast<unsigned>(a.n), kThreads, smem, stream>>>(a.x, a.out, a.m, a.k);
  MECHLAB_CUDA_CHECK_LAUNCH();
}

}  // namespace mechlab::kernels::detail
