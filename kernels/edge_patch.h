// Patching edges by masks: the operation at the heart of circuit discovery
// (ACDC, Conmy et al. 2023). The input of each receiver r (a head's q/k/v, an
// MLP, the logits) is the clean residual minus, for every removed edge
// (s -> r), that sender's clean-minus-ablated contribution:
//
//   out[b, p, r, :] = base[b, p, r, :] - sum_s mask[r, s] * delta[b, p, s, :]
//
// base  [batch, pos, n_receivers, d_model]  each receiver's clean input
// delta [batch, pos, n_senders, d_model]    each sender's (clean - ablated) output
// mask  [n_receivers, n_senders]            1 = edge removed (or a float weight)
//
// base and delta: float32, bfloat16, float16 or float64, the same dtype and
// device; mask: any floating dtype or bool, on the same device. Accumulation is
// in float32 (float64 for float64 inputs); out has base's dtype and is
// contiguous. On CUDA tensors a CUDA kernel runs when it supports the inputs
// (float32/bfloat16/float16, contiguous base and delta); otherwise ATen (a
// batched matmul) does the same sum.
#pragma once

#include "kernels/dispatch.h"

#include <ATen/ATen.h>

namespace mechlab::kernels {

struct EdgePatchArgs {
  at::Tensor base;   // [batch, pos, n_receivers, d_model]
  at::Tensor delta;  // [batch, pos, n_senders, d_model]
  at::Tensor mask;   // [n_receivers, n_senders]
  at::Device device() const { return base.device(); }
};

/// out = base - einsum("rs,bpsd->bprd", mask, delta), dispatched (see above).
at::Tensor edge_patch(const at::Tensor& base, const at::Tensor& delta, const at::Tensor& mask);

/// The implementations behind edge_patch ("cuda" when built with nvcc, then
/// "aten"), for tests and benchmarks.
const KernelFamily<EdgePatchArgs>& edge_patch_family();

namespace detail {
// The CUDA path's host wrapper and its support test (kernels/edge_patch_cuda.cpp).
std::string edge_patch_cuda_unsupported(const EdgePatchArgs& a);
at::Tensor edge_patch_cuda(const EdgePatchArgs& a);
}  // namespace detail

}  // namespace mechlab::kernels
