// AttachedModule: a module spliced into the forward pass at a hook point (a
// steering vector, a probe, later an SAE), with hook points of its own.
//
// Attached at host H under the name N, the module receives H's activation
// after H's hooks have run, and what it returns flows on downstream. Its
// points are named "H.N.<suffix>" (SAELens: "blocks.3.hook_resid_post.sae.
// hook_sae_acts_post") and are hook points like the model's: cachable,
// filterable, hookable, patchable, listed in hook_names(), storable.
//
// Example (hooks/steering_vector.h is a complete module):
//   auto steer = std::make_shared<SteeringVector>(v, /*alpha=*/4.0);   // v: [d_model]
//   model.attach("blocks.1.hook_resid_post", steer);
//   auto [logits, cache] = model.run_with_cache(tokens, NamesFilter::glob("*.steer.*"));
//   cache["blocks.1.hook_resid_post.steer.hook_steer_out"];              // [batch, pos, d_model]
//   model.detach("blocks.1.hook_resid_post", "steer");
#pragma once

#include "core/model/hook_site.h"
#include "core/model/model_config.h"

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace mechlab::hooks {

/// A hook point a module declares: its name after "<host>.<module>." and its
/// shape in the glossary's axes (core/model/hook_site.h).
struct ModulePoint {
  std::string suffix;           ///< e.g. "hook_steer_in"
  std::vector<core::Dim> dims;  ///< e.g. {batch, pos, d_model}
};

/// What forward() fires its points through (the registry implements it).
class ModuleHooks {
 public:
  virtual ~ModuleHooks() = default;
  /// Runs the hooks at "<host>.<module>.<suffix>" on `act`; they may replace
  /// it (same shape). `suffix` must be one of the module's declared points.
  virtual void operator()(const std::string& suffix, at::Tensor& act) = 0;
};

class AttachedModule {
 public:
  virtual ~AttachedModule() = default;
  /// The module's part of its points' names ("steer", "sae"): one word, no dots.
  virtual std::string name() const = 0;
  /// The points the module fires when attached at `host`, in the order
  /// forward() reaches them. Throws mechlab::Error when the module cannot sit
  /// there (say, a vector whose width is not the host's last axis).
  virtual std::vector<ModulePoint> hook_points(const core::ModelConfig& cfg,
                                               core::HookSite host) const = 0;
  /// x: the host's activation (after the host's hooks). Returns the activation
  /// that flows on (same shape), firing every declared point through `hooks`.
  virtual at::Tensor forward(const at::Tensor& x, ModuleHooks& hooks) = 0;
};

}  // namespace mechlab::hooks
