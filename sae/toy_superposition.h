// ToySuperposition: a ground-truth problem for SAE training (toy models of
// superposition, Elhage et al. 2022; the SAE recovery check of Sharkey et
// al. 2022): n_features sparse unit feature directions in d dimensions
// (n_features > d), each active in a sample with probability p_active with
// a magnitude uniform in [0, max_magnitude]. A sample is
//   x = sum_i a_i f_i,   a_i = m_i * [u_i < p_active],  m_i, u_i ~ U[0, 1)
// so a good SAE's decoder rows should be the f_i, which mean max cosine
// similarity (MMCS) measures.
//
// Deterministic: the features come from `seed` alone, a batch from the
// generator passed in (the training loop's, which its checkpoint keeps).
//
// Example:
//   ToySuperposition toy(ToyOptions().n_features(512).d(256).seed(1));
//   at::Tensor x = toy.sample(1024, gen);                         // [1024, 256]
//   double r = mean_max_cosine_similarity(toy.features(), sae.param("W_dec"));
#pragma once

#include "core/util/options.h"

#include <ATen/ATen.h>

#include <cstdint>

namespace mechlab::sae {

struct ToyOptions {
  MECHLAB_OPTION(ToyOptions, int64_t, n_features, 512)
  MECHLAB_OPTION(ToyOptions, int64_t, d, 256)
  /// Probability that a feature is active in a sample (5 / 512: ~5 active).
  MECHLAB_OPTION(ToyOptions, double, p_active, 5.0 / 512.0)
  MECHLAB_OPTION(ToyOptions, double, max_magnitude, 1.0)
  /// Seeds the feature directions.
  MECHLAB_OPTION(ToyOptions, uint64_t, seed, 0)
};

class ToySuperposition {
 public:
  /// Refuses (one line naming the option) sizes < 1, p_active outside
  /// (0, 1], max_magnitude <= 0.
  explicit ToySuperposition(ToyOptions options);

  const ToyOptions& options() const { return options_; }
  /// The ground-truth directions: [n_features, d] float32, unit rows
  /// (Gaussian draws normalised: uniform on the sphere).
  const at::Tensor& features() const { return features_; }
  /// n samples [n, d] float32 drawn with `gen` (a CPU generator).
  at::Tensor sample(int64_t n, at::Generator& gen) const;
  /// The coefficients a [n, n_features] of n samples, and x = a @ features.
  at::Tensor sample_coefficients(int64_t n, at::Generator& gen) const;

 private:
  ToyOptions options_;
  at::Tensor features_;  // [n_features, d]
};

/// Mean over the rows of `truth` [F, d] of the largest cosine similarity
/// with any row of `learned` [m, d] (an SAE's W_dec): 1 when every true
/// direction is some learned row. Rows of zero norm count as cosine 0.
double mean_max_cosine_similarity(const at::Tensor& truth, const at::Tensor& learned);

}  // namespace mechlab::sae
