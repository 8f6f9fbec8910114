// SteeringVector: activation addition (Turner et al. 2023, "Steering Language
// Models With Activation Engineering"): adds alpha * v to the host activation
// at every position, as an AttachedModule (hooks/attached_module.h).
//
// Points, under "<host>.steer.":
//   hook_steer_in    the host activation           [batch, pos, ..., d]
//   hook_steer_out   hook_steer_in + alpha * v      [batch, pos, ..., d]
//
// Example:
//   at::Tensor v = cache["blocks.1.hook_resid_post"][0][3];   // [d_model]
//   model.attach("blocks.1.hook_resid_post", std::make_shared<SteeringVector>(v, 2.0));
#pragma once

#include "hooks/attached_module.h"

#include <ATen/core/Tensor.h>

namespace mechlab::hooks {

class SteeringVector : public AttachedModule {
 public:
  /// v: [d], d the host's last axis; alpha scales it.
  SteeringVector(at::Tensor v, double alpha);

  std::string name() const override { return "steer"; }
  std::vector<ModulePoint> hook_points(const core::ModelConfig& cfg,
                                       core::HookSite host) const override;
  at::Tensor forward(const at::Tensor& x, ModuleHooks& hooks) override;

  const at::Tensor& vector() const { return v_; }
  double alpha() const { return alpha_; }

 private:
  at::Tensor v_;  // [d]
  double alpha_;
};

}  // namespace mechlab::hooks
