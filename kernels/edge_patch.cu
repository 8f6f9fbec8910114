// edge_patch's CUDA kernel (see kernels/edge_patch.h for the operation).
//
// A block owns one (batch, pos) row and kEdgePatchTileD consecutive d_model
// columns, one per thread, so every global load and store of a warp is
// coalesced along d_model. Each thread keeps kEdgePatchTileR receivers'
// sums in registers and walks the senders kEdgePatchTileS at a time: the
// tile's delta values (one per sender, its own column) go to registers and
// are used for all kEdgePatchTileR receivers; the matching mask tile is
// staged once per block in shared memory and read as a broadcast. Loads are
// in the tensors' dtype (bf16/fp16/f32) and converted to float32; the sums are
// float32 and the output is rounded once.
//
// ACDC's masks are mostly zero (an edge is in the mask once removed), so a
// mask tile that is all zero is skipped, delta loads included. Zero weights
// therefore contribute nothing even where delta holds inf or NaN (the ATen
// path would give NaN there).
#include "kernels/cuda_check.h"
#include "kernels/edge_patch_launch.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace mechlab::kernels::detail {
namespace {

constexpr int kTileD = kEdgePatchTileD;
constexpr int kTileR = kEdgePatchTileR;
constexpr int kTileS = kEdgePatchTileS;

__device__ __forceinline__ float load_f(const float* p) { return __ldg(p); }
__device__ __forceinline__ float load_f(const __nv_bfloat16* p) { return __bfloat162float(__ldg(p)); }
__device__ __forceinline__ float load_f(const __half* p) { return __half2float(__ldg(p)); }
__device__ __forceinline__ void store_f(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_f(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
__device__ __forceinline__ void store_f(__half* p, float v) { *p = __float2half_rn(v); }

template <typename T>
__global__ void __launch_bounds__(kTileD)
    edge_patch_kernel(const T* __restrict__ base,     // [rows, n_r, d_model]
                      const T* __restrict__ delta,    // [rows, n_s, d_model]
                      const float* __restrict__ mask,  // [n_r, n_s]
                      T* __restrict__ out,            // [rows, n_r, d_model]
                      int64_t n_r, int64_t n_s, int64_t d_model) {
  __shared__ float sh_mask[kTileR][kTileS];
  const int64_t row = blockIdx.x;
  const int64_t d = static_cast<int64_t>(blockIdx.y) * kTileD + threadIdx.x;
  // Threads past d_model load and store nothing but still reach every barrier.
  const bool active = d < d_model;
  const T* base_row = base + row * n_r * d_model;
  const T* delta_row = delta + row * n_s * d_model;
  T* out_row = out + row * n_r * d_model;

  for (int64_t r0 = 0; r0 < n_r; r0 += kTileR) {
    float acc[kTileR];
#pragma unroll
    for (int i = 0; i < kTileR; ++i) acc[i] = 0.f;

    for (int64_t s0 = 0; s0 < n_s; s0 += kTileS) {
      int nonzero = 0;
      for (int k = threadIdx.x; k < kTileR * kTileS; k += blockDim.x) {
        const int64_t r = r0 + k / kTileS;
        const int64_t s = s0 + k % kTileS;
        const float m = (r < n_r && s < n_s) ? __ldg(mask + r * n_s + s) : 0.f;
        sh_mask[k / kTileS][k % kTileS] = m;
        nonzero |= (m != 0.f);
      }
      // The barrier that publishes the mask tile also says whether any edge
      // in it is removed; the answer is the same in every thread.
      if (!__syncthreads_or(nonzero)) continue;

      float dv[kTileS];  // delta[row, s0 + j, d]
#pragma unroll
      for (int j = 0; j < kTileS; ++j) {
        const int64_t s = s0 + j;
        dv[j] = (active && s < n_s) ? load_f(delta_row + s * d_model + d) : 0.f;
      }
#pragma unroll
      for (int j = 0; j < kTileS; ++j) {
#pragma unroll
        for (int i = 0; i < kTileR; ++i) acc[i] = fmaf(sh_mask[i][j], dv[j], acc[i]);
      }
      __syncthreads();  // every thread has read sh_mask before the next tile overwrites it
    }

    if (active) {
#pragma unroll
      for (int i = 0; i < kTileR; ++i) {
        const int64_t r = r0 + i;
        if (r < n_r) {
          const int64_t at = r * d_model + d;
          store_f(out_row + at, load_f(base_row + at) - acc[i]);
        }
      }
    }
  }
}

template <typename T>
void launch_typed(const EdgePatchLaunch& a, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(a.rows),
                  static_cast<unsigned>((a.d_model + kTileD - 1) / kTileD));
  edge_patch_kernel<T><<<grid, kTileD, 0, stream>>>(
      static_cast<const T*>(a.base), static_cast<const T*>(a.delta), a.mask,
      static_cast<T*>(a.out), a.n_receivers, a.n_senders, a.d_model);
  MECHLAB_CUDA_CHECK_LAUNCH();
}

}  // namespace

void launch_edge_patch(PatchDtype dtype, const EdgePatchLaunch& args, cudaStream_t stream) {
  switch (dtype) {
    case PatchDtype::f32: return launch_typed<float>(args, stream);
    case PatchDtype::bf16: return launch_typed<__nv_bfloat16>(args, stream);
    case PatchDtype::f16: return launch_typed<__half>(args, stream);
  }
}

}  // namespace mechlab::kernels::detail
