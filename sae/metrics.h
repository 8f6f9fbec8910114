// SAE metrics that need no model, with SAELens 6.x's definitions
// (sae_lens.evals.get_sparsity_and_variance_metrics and its
// ExplainedVarianceCalculator; the trainer's feature density), on a flat
// batch: x [n, d_in] the activations, out [n, d_in] the SAE's
// reconstruction, acts [n, d_sae] its latents.
//
//   l0            mean over rows of the number of nonzero latents
//   mse           mean over rows of ||x - out||^2 (summed over d_in)
//   explained_variance = 1 - mse / (E||x||^2 - ||E x||^2)   (R^2 over the batch;
//                 1 or 0 when x has no variance); fvu = 1 - explained_variance
//   explained_variance_legacy  mean over rows of 1 - ||x - out||^2 / ||x - mean(x)||^2
//   cossim        mean over rows of cos(x, out)
//   l2_ratio      mean over rows of ||out|| / ||x|| (||x|| < 1e-4 counts as 1): shrinkage
//   relative_reconstruction_bias  mean ||out||^2 / mean <x, out> (Rajamanoharan et al. 2024, eq. 10)
//
// Latent usage: density [d_sae] = fraction of rows where a latent fires;
// dead_fraction = share of latents that never fire; dense_fraction = share
// firing on more than `dense_threshold` of rows; effective_features =
// exp(H(p)), H the entropy in nats of each latent's share p of all firings
// (the "effective number of features" of the superposition-as-compression
// view: d_sae when every latent fires equally often, 1 when one does all).
#pragma once

#include <ATen/core/Tensor.h>

namespace mechlab::sae {

struct ReconstructionMetrics {
  double l0 = 0;
  double mse = 0;
  double explained_variance = 0;
  double fvu = 0;
  double explained_variance_legacy = 0;
  double cossim = 0;
  double l2_ratio = 0;
  double relative_reconstruction_bias = 0;
};

/// The metrics above (accumulated in float64). Refuses mismatched shapes.
ReconstructionMetrics reconstruction_metrics(const at::Tensor& x, const at::Tensor& out,
                                             const at::Tensor& acts);

struct LatentUsage {
  at::Tensor density;  ///< [d_sae] float64, fraction of rows each latent fires on
  double dead_fraction = 0;
  double dense_fraction = 0;
  double effective_features = 0;
};

/// Latent usage of acts [n, d_sae] (see above); dense_threshold in (0, 1].
LatentUsage latent_usage(const at::Tensor& acts, double dense_threshold = 0.1);

}  // namespace mechlab::sae
