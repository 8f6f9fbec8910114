// Probe directions as interventions (docs/ARCHITECTURE.md, "Probes"): a
// direction a probe found (its weight vector on raw features) is projected
// out of, or added to, the activation at a hook during a forward, and the
// change in a metric of the logits is reported. This is how one asks whether
// the model *uses* what a probe reads (Ravfogel et al. 2020, INLP; Elazar et
// al. 2021, amnesic probing), not only whether it is there.
//
// ProbeIntervention is an AttachedModule (hooks/attached_module.h), like
// hooks/steering_vector.h. Points, under "<host>.probe.":
//   hook_probe_in    the host activation                        [batch, pos, ..., d]
//   hook_probe_out   ablate: x - (x.u) u    steer: x + alpha u   [batch, pos, ..., d]
// with u = direction / ||direction||, so after ablation every position's
// activation is orthogonal to u (a probe reading along u sees only its bias).
//
// Example:
//   LinearProbes p = fit_logistic(x, y);                          // x [layers, N, d_model]
//   at::Tensor w = p.weight[3].select(1, 0);                       // [d_model], layer 3's probe
//   auto ablate = std::make_shared<ProbeIntervention>(w, InterventionMode::ablate);
//   InterventionEffect e = intervention_effect(model, "blocks.3.hook_resid_post", ablate, tokens,
//                                              patching::cross_entropy(tokens));  // any logits -> scalar
//   e.change;   // intervened - baseline
#pragma once

#include "hooks/attached_module.h"
#include "hooks/hooked_transformer.h"

#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <string>

namespace mechlab::probes {

enum class InterventionMode {
  ablate,  ///< project the direction out: x - (x.u) u
  steer,   ///< add alpha times the unit direction: x + alpha u
};

/// "ablate", "steer" and back; an unknown name is an error listing both.
InterventionMode parse_intervention_mode(const std::string& name);
std::string to_string(InterventionMode mode);

class ProbeIntervention : public hooks::AttachedModule {
 public:
  /// direction: [d], d the host's last axis, finite and non-zero; alpha is
  /// the steering strength (in activation units along the unit direction),
  /// unused when ablating.
  ProbeIntervention(at::Tensor direction, InterventionMode mode, double alpha = 0.0);

  std::string name() const override { return "probe"; }
  std::vector<hooks::ModulePoint> hook_points(const core::ModelConfig& cfg, core::HookSite host) const override;
  at::Tensor forward(const at::Tensor& x, hooks::ModuleHooks& hooks) override;

  /// The unit direction u [d] (float64, CPU).
  const at::Tensor& unit_direction() const { return u_; }
  InterventionMode mode() const { return mode_; }
  double alpha() const { return alpha_; }

  /// The intervention on any activation [..., d] (no hooks fired): what
  /// forward() returns between its two points.
  at::Tensor apply(const at::Tensor& x) const;

 private:
  at::Tensor u_;  // [d] float64, unit norm
  InterventionMode mode_;
  double alpha_;
};

/// A metric of one run's logits [batch, pos, d_vocab] -> scalar tensor:
/// TransformerLens's patching-metric signature; a patching::Metric is one.
using LogitsMetric = std::function<at::Tensor(const at::Tensor& logits)>;

struct InterventionEffect {
  double baseline = 0;    ///< the metric without the intervention
  double intervened = 0;  ///< with it
  double change = 0;      ///< intervened - baseline
};

/// Runs `tokens` [batch, pos] through `model` without and with `module`
/// attached at `host`, and evaluates `metric` on both logits. The module is
/// detached again when this returns, also by exception. `attention_mask`
/// [batch, pos] (undefined: none) is passed to both forwards.
InterventionEffect intervention_effect(hooks::HookedTransformer& model, const std::string& host,
                                       const std::shared_ptr<ProbeIntervention>& module, const at::Tensor& tokens,
                                       const LogitsMetric& metric, const at::Tensor& attention_mask = {});

}  // namespace mechlab::probes
