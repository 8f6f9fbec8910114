// The sparse decoder of a TopK sparse autoencoder (Gao et al. 2024): with k
// of d_sae latents active per row, the decoder and every gradient that
// touches it need only the k active rows of the weight. Three kernel
// families, one output each (the autograd functions in sae/sparse_ops.h
// combine them):
//
//   sparse_decode:             out[n, :] = sum_j values[n, j] * weight[indices[n, j], :]
//   sparse_decode_grad_values: grad_values[n, j] = grad_out[n, :] . weight[indices[n, j], :]
//   sparse_weight_grad:        G[c, :] = sum over (n, j) with indices[n, j] = c of coef[n, j] * rows[n, :]
//
// values, coef    [n, k]       float32 or float64
// indices         [n, k]       int64, each in [0, n_latents)
// weight          [n_latents, d]  any strides (W_dec, or W_enc.t() for the
//                                 encoder's input gradient)
// grad_out, rows  [n, d]
// G               [n_latents, d], or with `transposed` its transpose
//                 [d, n_latents] stored contiguous (W_enc's layout, so the
//                 encoder's weight gradient needs no copy)
//
// The sums run over j (or over the entries of a latent in order of n, then
// j) one term at a time, so the CPU kernels of the three families agree bit
// for bit whatever the weight's layout. Implementations, in dispatch order:
// "cuda" (float32, CUDA tensors), "cpu" (float32/float64 CPU tensors, the
// loops of kernels/sparse_cpu.h, which BatchTopK's entry lists share),
// "aten" (any device; gathers in chunks of rows).
// Out-of-range indices are refused on the CPU; on a GPU the kernels do not
// read them back (a device sync per call) and skip them.
#pragma once

#include "kernels/dispatch.h"

#include <ATen/ATen.h>

#include <string>

namespace mechlab::kernels {

struct SparseDecodeArgs {
  at::Tensor values;   // [n, k]
  at::Tensor indices;  // [n, k] int64
  at::Tensor weight;   // [n_latents, d]
  at::Device device() const { return values.device(); }
};

struct SparseDecodeGradValuesArgs {
  at::Tensor grad_out;  // [n, d]
  at::Tensor indices;   // [n, k] int64
  at::Tensor weight;    // [n_latents, d]
  at::Device device() const { return grad_out.device(); }
};

struct SparseWeightGradArgs {
  at::Tensor coef;     // [n, k]
  at::Tensor indices;  // [n, k] int64
  at::Tensor rows;     // [n, d]
  int64_t n_latents = 0;
  bool transposed = false;  // G as [d, n_latents]
  at::Device device() const { return coef.device(); }
};

/// out [n, d] = sum_j values[n, j] * weight[indices[n, j], :] (dispatched).
at::Tensor sparse_decode(const at::Tensor& values, const at::Tensor& indices, const at::Tensor& weight);
/// grad_values [n, k] = grad_out[n, :] . weight[indices[n, j], :] (dispatched).
at::Tensor sparse_decode_grad_values(const at::Tensor& grad_out, const at::Tensor& indices,
                                     const at::Tensor& weight);
/// G [n_latents, d] (or [d, n_latents] when `transposed`): row c sums
/// coef[n, j] * rows[n, :] over the entries with indices[n, j] = c; rows of
/// latents no entry names are zero (dispatched).
at::Tensor sparse_weight_grad(const at::Tensor& coef, const at::Tensor& indices, const at::Tensor& rows,
                              int64_t n_latents, bool transposed);

const KernelFamily<SparseDecodeArgs>& sparse_decode_family();
const KernelFamily<SparseDecodeGradValuesArgs>& sparse_decode_grad_values_family();
const KernelFamily<SparseWeightGradArgs>& sparse_weight_grad_family();

namespace detail {
// The CUDA host wrappers (kernels/sparse_decoder_cuda.cpp).
std::string sparse_decode_cuda_unsupported(const SparseDecodeArgs& a);
at::Tensor sparse_decode_cuda(const SparseDecodeArgs& a);
std::string sparse_decode_grad_values_cuda_unsupported(const SparseDecodeGradValuesArgs& a);
at::Tensor sparse_decode_grad_values_cuda(const SparseDecodeGradValuesArgs& a);
std::string sparse_weight_grad_cuda_unsupported(const SparseWeightGradArgs& a);
at::Tensor sparse_weight_grad_cuda(const SparseWeightGradArgs& a);
}  // namespace detail

}  // namespace mechlab::kernels
