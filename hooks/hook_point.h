// HookPoint and hook function types.
//
// A forward hook sees the activation at a hook point and may replace it by
// assigning to `act` (same shape). A backward hook sees the gradient of the
// loss with respect to that activation and may replace it likewise.
//
// Example:
//   mechlab::hooks::HookFn zero_head_3 = [](at::Tensor& z, const HookPoint&) {
//     z = z.clone();
//     z.select(2, 3).zero_();           // z: [batch, pos, head, d_head]
//   };
#pragma once

#include "core/model/hook_site.h"

#include <ATen/core/Tensor.h>

#include <functional>
#include <string>

namespace mechlab::hooks {

struct HookPoint {
  core::HookSite site;
  std::string name;  // TransformerLens name, e.g. "blocks.0.attn.hook_z"
};

using HookFn = std::function<void(at::Tensor& act, const HookPoint& hook)>;
using BackwardHookFn = std::function<void(at::Tensor& grad, const HookPoint& hook)>;

}  // namespace mechlab::hooks
