#include "core/model/layers/norm.h"

#include <ATen/ATen.h>

#include <optional>

namespace mechlab::core {
namespace {

std::optional<at::Tensor> optional(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

}  // namespace

at::Tensor apply_norm(const ModelConfig& cfg, const at::Tensor& x, const at::Tensor& w,
                      const at::Tensor& b, HookSite scale_site, HookSite normalized_site,
                      const Hooks& hooks) {
  if (cfg.norm == NormKind::none) return x;
  const int64_t d = x.size(-1);
  const bool affine = cfg.norm_has_weights();
  // Fast path: nobody looks inside, so use ATen's fused kernels (which
  // accumulate in float32 for half inputs, like the explicit path below).
  if (!hooks.listens(scale_site) && !hooks.listens(normalized_site)) {
    if (cfg.norm_centres()) {
      return at::layer_norm(x, {d}, affine ? optional(w) : std::nullopt,
                            affine ? optional(b) : std::nullopt, cfg.norm_eps);
    }
    return at::rms_norm(x, {d}, affine ? optional(w) : std::nullopt, cfg.norm_eps);
  }
  const auto dtype = x.scalar_type();
  at::Tensor xf = x.to(at::kFloat);
  if (cfg.norm_centres()) xf = xf - xf.mean(-1, /*keepdim=*/true);
  at::Tensor scale = (xf.pow(2).mean(-1, /*keepdim=*/true) + cfg.norm_eps).sqrt();  // [..., 1]
  hooks(scale_site, scale);
  if (cfg.norm == NormKind::layernorm) {
    at::Tensor y = xf / scale * w + b;
    hooks(normalized_site, y);
    return y.to(dtype);
  }
  at::Tensor y = xf / scale;
  hooks(normalized_site, y);
  if (cfg.norm == NormKind::rmsnorm) return y.to(dtype) * w;
  return y.to(dtype);  // layernorm_pre, rmsnorm_pre
}

}  // namespace mechlab::core
