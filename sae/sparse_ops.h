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

// ---------------------------------------------------------------- rows of varying length
//
// BatchTopK (Bussmann et al. 2024) keeps the k x n largest pre-activations
// of the whole batch, so each row has its own number of active latents. Its
// sparse path lists them flat, sorted by row and then latent (compressed
// sparse rows): entry p is (rows[p], latents[p]), row r's entries are
// [offsets[r], offsets[r + 1]). The same two autograd functions as above,
// over that list:
//
//   sparse_rows_encoder_values: values[p] = hidden_pre[rows[p], latents[p]]
//     backward, for g = dL/dvalues [nnz]:
//       dW_enc[:, c] = sum over latents[p] = c of g[p] * sae_in[rows[p], :]
//       db_enc[c]    = sum over latents[p] = c of g[p]
//       dsae_in[r]   = sum over p in row r of g[p] * W_enc[:, latents[p]]
//   sparse_rows_decode: recons[r, :] = sum over p in row r of values[p] * W_dec[latents[p], :]
//     backward, for G = dL/drecons [n, d_in]:
//       dvalues[p]  = G[rows[p], :] . W_dec[latents[p], :]
//       dW_dec[c, :] = sum over latents[p] = c of values[p] * G[rows[p], :]
//
// On the CPU (float32, float64) the sums are loops over the list, the [n, k]
// kernels' own (kernels/sparse_cpu.h: one thread per output row or latent,
// in list order, no atomics); elsewhere (a GPU) ATen gathers and
// index_add_ in chunks of entries. The results are the dense path's up to
// the order of summation.

/// The active entries of an [n, d_sae] matrix, sorted by row then latent.
struct SparseRows {
  at::Tensor flat;     ///< [nnz] int64, row * d_sae + latent, increasing
  at::Tensor rows;     ///< [nnz] int64, non-decreasing
  at::Tensor latents;  ///< [nnz] int64
  at::Tensor offsets;  ///< [n + 1] int64: row r's entries are [offsets[r], offsets[r + 1])
  int64_t n = 0;       ///< rows of the matrix
  int64_t d_sae = 0;   ///< columns of the matrix
};

/// The positions of the `keep` largest entries of x [N] (any order), the
/// set at::topk(x, keep) finds (entries tied at the cut may be exchanged for
/// equal ones), without selecting among all N: a threshold below the
/// keep-th largest value, read off a fixed random sample of x, leaves a few
/// more than `keep` candidates, and the top `keep` are taken among those.
/// When fewer than `keep` entries reach the threshold (a skewed sample), all
/// of x is searched. BatchTopK's batch-wide selection (N = rows x d_sae).
at::Tensor top_entries(const at::Tensor& x, int64_t keep);

/// The list of entries `flat` (row * d_sae + latent, distinct, any order)
/// of an [n, d_sae] matrix, on flat's device.
SparseRows sparse_rows(const at::Tensor& flat, int64_t n, int64_t d_sae);

/// values [nnz] = hidden_pre[rows[p], latents[p]] (times scale[latents[p]]
/// when scale is defined, as sparse_encoder_values); gradients to sae_in,
/// W_enc, b_enc (and scale) through the listed entries only.
at::Tensor sparse_rows_encoder_values(const at::Tensor& sae_in, const at::Tensor& W_enc, const at::Tensor& b_enc,
                                      const at::Tensor& hidden_pre, const SparseRows& entries,
                                      const at::Tensor& scale = {});

/// recons [n, d_in] = per row, the sum of its entries' values [nnz] times
/// their W_dec rows; differentiable in values and W_dec.
at::Tensor sparse_rows_decode(const at::Tensor& values, const SparseRows& entries, const at::Tensor& W_dec);

}  // namespace mechlab::sae
