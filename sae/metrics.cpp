#include "sae/metrics.h"

#include "core/util/error.h"

#include <ATen/ATen.h>

#include <cmath>

namespace mechlab::sae {

ReconstructionMetrics reconstruction_metrics(const at::Tensor& x_in, const at::Tensor& out_in,
                                             const at::Tensor& acts_in) {
  MECHLAB_CHECK(x_in.dim() == 2 && out_in.sizes() == x_in.sizes(),
                "SAE metrics need x and its reconstruction as [n, d_in] of one shape, got ",
                x_in.sizes(), " and ", out_in.sizes());
  MECHLAB_CHECK(acts_in.dim() == 2 && acts_in.size(0) == x_in.size(0),
                "SAE metrics need latents [n, d_sae] with n = ", x_in.size(0), ", got ",
                acts_in.sizes());
  MECHLAB_CHECK(x_in.size(0) > 0, "SAE metrics need at least one row");
  const at::Tensor x = x_in.detach().to(at::kCPU, at::kDouble);      // [n, d_in]
  const at::Tensor out = out_in.detach().to(at::kCPU, at::kDouble);  // [n, d_in]
  const at::Tensor acts = acts_in.detach().to(at::kCPU);             // [n, d_sae]
  const double n = static_cast<double>(x.size(0));
  ReconstructionMetrics m;
  m.l0 = (acts != 0).sum(-1).to(at::kDouble).mean().item<double>();
  const at::Tensor resid = (x - out).pow(2).sum(-1);  // [n]
  m.mse = resid.mean().item<double>();
  const double mean_sq_norm = x.pow(2).sum().item<double>() / n;
  const double mean_norm_sq = (x.sum(0) / n).pow(2).sum().item<double>();
  const double total_variance = mean_sq_norm - mean_norm_sq;
  if (total_variance < 1e-10) {
    m.explained_variance = m.mse < 1e-10 ? 1.0 : 0.0;  // SAELens's convention
  } else {
    m.explained_variance = 1.0 - m.mse / total_variance;
  }
  m.fvu = 1.0 - m.explained_variance;
  m.explained_variance_legacy = (1 - resid / (x - x.mean(0)).pow(2).sum(-1)).mean().item<double>();
  const at::Tensor x_norm = x.norm(2, {-1});      // [n]
  const at::Tensor out_norm = out.norm(2, {-1});  // [n]
  m.cossim = ((x / x_norm.unsqueeze(-1)) * (out / out_norm.unsqueeze(-1))).sum(-1).mean().item<double>();
  m.l2_ratio = (out_norm / at::where(x_norm.abs() < 1e-4, at::ones_like(x_norm), x_norm)).mean().item<double>();
  m.relative_reconstruction_bias =
      out_norm.pow(2).mean().item<double>() / (x * out).sum(-1).mean().item<double>();
  return m;
}

LatentUsage latent_usage(const at::Tensor& acts_in, double dense_threshold) {
  MECHLAB_CHECK(acts_in.dim() == 2 && acts_in.size(0) > 0,
                "latent usage needs latents [n, d_sae] with n > 0, got ", acts_in.sizes());
  MECHLAB_CHECK(dense_threshold > 0 && dense_threshold <= 1,
                "the dense-latent threshold must lie in (0, 1], got ", dense_threshold);
  const at::Tensor fires = (acts_in.detach().to(at::kCPU) != 0).to(at::kDouble);  // [n, d_sae]
  LatentUsage u;
  u.density = fires.mean(0);  // [d_sae]
  u.dead_fraction = (u.density == 0).to(at::kDouble).mean().item<double>();
  u.dense_fraction = (u.density > dense_threshold).to(at::kDouble).mean().item<double>();
  const at::Tensor counts = fires.sum(0);  // [d_sae]
  const double total = counts.sum().item<double>();
  if (total == 0) {
    u.effective_features = 0;  // nothing fires: no features in use
  } else {
    const at::Tensor p = counts.masked_select(counts > 0) / total;
    u.effective_features = std::exp(-(p * p.log()).sum().item<double>());
  }
  return u;
}

}  // namespace mechlab::sae
