#include "sae/density.h"

#include "core/util/error.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

namespace mechlab::sae {

DensityHistogram density_histogram(const at::Tensor& density, int64_t bins, double lo, double hi) {
  MECHLAB_CHECK(bins >= 1, "density histogram bins = ", bins, " must be at least 1");
  MECHLAB_CHECK(lo < hi, "density histogram range [", lo, ", ", hi, "] is empty; give lo < hi");
  MECHLAB_CHECK(density.defined() && density.dim() == 1,
                "feature density must be [d_sae]; give one value per latent");
  const at::Tensor d = density.to(at::kDouble).contiguous();  // [d_sae]
  MECHLAB_CHECK(d.numel() == 0 || (d.ge(0).all().item<bool>() && d.le(1).all().item<bool>()),
                "feature density has values outside [0, 1] (or NaN); give shares of tokens");
  DensityHistogram h;
  const double w = (hi - lo) / static_cast<double>(bins);
  h.edges.resize(static_cast<size_t>(bins) + 1);
  for (int64_t b = 0; b <= bins; ++b) h.edges[static_cast<size_t>(b)] = lo + static_cast<double>(b) * w;
  h.edges.back() = hi;
  h.counts.assign(static_cast<size_t>(bins), 0);
  const double* v = d.data_ptr<double>();
  for (int64_t i = 0; i < d.numel(); ++i) {
    const double x = std::clamp(std::log10(v[i] + 1e-10), lo, hi);
    auto b = static_cast<int64_t>(std::floor((x - lo) / w));
    b = std::clamp<int64_t>(b, 0, bins - 1);
    // The division can round across an edge: settle on the edges themselves.
    if (b > 0 && x < h.edges[static_cast<size_t>(b)]) --b;
    if (b < bins - 1 && x >= h.edges[static_cast<size_t>(b) + 1]) ++b;
    ++h.counts[static_cast<size_t>(b)];
  }
  return h;
}

}  // namespace mechlab::sae
