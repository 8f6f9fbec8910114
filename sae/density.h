// The feature-density histogram: how many latents fire on what share of
// tokens, on a log10 scale (SAELens's trainer logs log10(density + 1e-10) as
// its "feature density" histogram; dead latents land at -10).
//
//   v_i   = clip(log10(density_i + 1e-10), lo, hi)
//   bin b = [lo + b w, lo + (b + 1) w), w = (hi - lo) / bins, the last bin
//           closed on the right (numpy.histogram's convention)
//
// Example:
//   auto m = mechlab::sae::splice_metrics(model, sae, "", tokens);   // sae/splice.h
//   auto h = mechlab::sae::density_histogram(m.feature_density);
//   for (int64_t b = 0; b < h.bins(); ++b) std::cout << h.edges[b] << " " << h.counts[b] << "\n";
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace mechlab::sae {

struct DensityHistogram {
  std::vector<double> edges;    ///< bins + 1 edges in log10(density), lo first
  std::vector<int64_t> counts;  ///< latents per bin; they sum to d_sae
  int64_t bins() const { return static_cast<int64_t>(counts.size()); }
};

/// The histogram above of density [d_sae] (values in [0, 1]). Refuses bins < 1,
/// lo >= hi, a density outside [0, 1] or NaN.
DensityHistogram density_histogram(const at::Tensor& density, int64_t bins = 20, double lo = -10.0,
                                   double hi = 0.0);

}  // namespace mechlab::sae
