#include "hooks/steering_vector.h"

#include "core/util/error.h"

#include <ATen/ATen.h>

namespace mechlab::hooks {

SteeringVector::SteeringVector(at::Tensor v, double alpha) : v_(std::move(v)), alpha_(alpha) {
  MECHLAB_CHECK(v_.defined() && v_.dim() == 1,
                "a steering vector must be one-dimensional [d], got ",
                v_.defined() ? c10::str(v_.sizes()) : std::string("an undefined tensor"));
  MECHLAB_CHECK(at::isfinite(v_).all().item<bool>(), "the steering vector has NaN or inf entries");
}

std::vector<ModulePoint> SteeringVector::hook_points(const core::ModelConfig& cfg,
                                                     core::HookSite host) const {
  const core::SiteInfo& info = core::site_info(host.kind);
  const std::string where = host.name() + " " + core::site_shape(cfg, host);
  // A vector added "at every position" needs a per-token host; attention maps
  // have no position axis to broadcast over.
  MECHLAB_CHECK(!info.attention_map, "a steering vector cannot attach at ", where,
                ": attention maps have no per-token vector; attach at a per-token hook such as "
                "blocks.L.hook_resid_post");
  const int64_t width = core::dim_size(cfg, info.dims.back(), 0, 0);
  MECHLAB_CHECK(v_.size(0) == width, "steering vector of width ", v_.size(0),
                " does not fit ", where, ", whose last axis is ", width,
                "; use a vector of that width");
  return {{"hook_steer_in", info.dims}, {"hook_steer_out", info.dims}};
}

at::Tensor SteeringVector::forward(const at::Tensor& x, ModuleHooks& hooks) {
  at::Tensor in = x;  // [batch, pos, ..., d]
  hooks("hook_steer_in", in);
  // In the activation's dtype and device; alpha * v broadcasts over the leading axes.
  at::Tensor out = in + v_.to(in.device(), in.scalar_type()) * alpha_;  // [batch, pos, ..., d]
  hooks("hook_steer_out", out);
  return out;
}

}  // namespace mechlab::hooks
