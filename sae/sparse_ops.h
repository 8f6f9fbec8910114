// The sparse path of a TopK SAE's training step (Gao et al. 2024, section
// 5.3 "kernels"): with k of d_sae latents active per row, only the encoder's
// forward GEMM must be dense. The decoder, its gradients and the encoder's
// weight gradient touch k rows (columns) of the weights per input row.
//
// Two autograd functions, over the kernel families of kernels/sae_topk.h and
// kernels/sparse_decoder.h (CUDA kernels on a GPU, parallel loops on the CPU):
//
//   sparse_encoder_values: values[n, j] = (sae_in @ W_enc + b_enc)[n, indices[n, j]]
//     forward: read from the dense pre-activations already computed;
//     backward, for g = dL/dvalues [n, k]:
//       dW_enc[:, c] = sum over indices[n, j] = c of g[n, j] * sae_in[n, :]   (k columns per row)
//       db_enc[c]    = sum over indices[n, j] = c of g[n, j]
//       dsae_in[n]   = sum_j g[n, j] * W_enc[:, indices[n, j]]
//   sparse_decode: recons[n, :] = sum_j values[n, j] * W_dec[indices[n, j], :]   (no b_dec)
//     backward, for G = dL/drecons [n, d_in]:
//       dvalues[n, j]   = G[n, :] . W_dec[indices[n, j], :]
//       dW_dec[c, :]    = sum over indices[n, j] = c of values[n, j] * G[n, :]   (touched rows only)
//
// Each gives the dense path's values and gradients up to the order of the
// sums (the zeros the dense GEMMs add change nothing but rounding).
#pragma once

#include <ATen/ATen.h>

namespace mechlab::sae {

/// values [n, k] = hidden_pre.gather(1, indices), where hidden_pre [n, d_sae]
/// must be sae_in @ W_enc + b_enc as computed without gradient, times
/// `scale` [d_sae] per latent when scale is defined (TopK's decoder-norm
/// rescale: hidden_pre may then be scaled in place, no unscaled copy kept);
/// the gradient reaches sae_in [n, d_in], W_enc [d_in, d_sae] and b_enc
/// [d_sae] through the k selected latents of each row only (above), and
/// scale at the selected latents (from values / scale: exact to an ulp).
at::Tensor sparse_encoder_values(const at::Tensor& sae_in, const at::Tensor& W_enc, const at::Tensor& b_enc,
                                 const at::Tensor& hidden_pre, const at::Tensor& indices,
                                 const at::Tensor& scale = {});

/// recons [n, d_in] = sum_j values[n, j] * W_dec[indices[n, j], :], values
/// [n, k], indices [n, k] int64, W_dec [d_sae, d_in]; differentiable in values
/// and W_dec (only the rows named in indices get a non-zero gradient).
at::Tensor sparse_decode(const at::Tensor& values, const at::Tensor& indices, const at::Tensor& W_dec);

}  // namespace mechlab::sae
