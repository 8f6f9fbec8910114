// Probe directions as interventions (docs/ARCHITECTURE.md, "Probes"): a
// direction a probe found (its weight vector on raw features) is projected
// out of, or added to, the activation at a hook during a forward, and the
// change in a metric of the logits is reported. This is how one asks whether
// the model *uses* what a probe reads (Ravfogel et al. 2020, INLP; Elazar et
// al. 2021, amnesic probing), not only whether it is there.
//
// ProbeIntervention is an AttachedModule (hooks/attached_module.h), like
// hooks/steering_vector.h. Points, under "<host>.probe.":
//   hook_probe_in    the host activation                          [batch, pos, ..., d]
//   hook_probe_out   ablate: x - U (U^T x)    steer: x + alpha u   [batch, pos, ..., d]
// with U [d, r] an orthonormal basis of the directions' span (one direction:
// u = direction / ||direction||), so after ablation every position's
// activation is orthogonal to the span (a probe reading along it sees only
// its bias). A multinomial probe's span is that of its class weights'
// differences w_k - w_0 (probe_directions): rank <= K - 1, all the softmax
// depends on; the classes' shared direction is left alone.
//
// Example:
//   LinearProbes p = fit_logistic(x, y);                          // x [layers, N, d_model]
//   at::Tensor w = probe_directions(p, 3);                         // [d_model, 1 or K - 1], layer 3's probe
//   auto ablate = std::make_shared<ProbeIntervention>(w, InterventionMode::ablate);
//   InterventionEffect e = intervention_effect(model, "blocks.3.hook_resid_post", ablate, tokens,
//                                              patching::cross_entropy(tokens));  // any logits -> scalar
//   e.change;   // intervened - baseline
#pragma once

#include "hooks/attached_module.h"
#include "hooks/hooked_transformer.h"
#include "probes/linear_probe.h"

#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <string>

namespace mechlab::probes {

enum class InterventionMode {
  ablate,  ///< project the directions' span out: x - U (U^T x)
  steer,   ///< add alpha times the unit direction: x + alpha u (one direction only)
};

/// "ablate", "steer" and back; an unknown name is an error listing both.
InterventionMode parse_intervention_mode(const std::string& name);
std::string to_string(InterventionMode mode);

class ProbeIntervention : public hooks::AttachedModule {
 public:
  /// direction: [d], or [d, k] (k directions as columns; ablate only), d
  /// the host's last axis, finite and not all zero; the span is
  /// orthonormalised (Gram-Schmidt, twice) and a column within 1e-10 of the
  /// span of those before it adds nothing. alpha is the steering strength (in
  /// activation units along the unit direction), unused when ablating.
  /// head >= 0: at a per-head site ([batch, pos, heads, d], e.g. hook_z) only
  /// that head's vectors change, where a per-head probe
  /// (FeatureOptions::split_heads) read; -1: every vector of the last axis,
  /// or, for a direction of width heads * d at a per-head site, the heads'
  /// vectors concatenated (what a probe of the whole hook read).
  ProbeIntervention(at::Tensor direction, InterventionMode mode, double alpha = 0.0, int64_t head = -1);

  std::string name() const override { return "probe"; }
  std::vector<hooks::ModulePoint> hook_points(const core::ModelConfig& cfg, core::HookSite host) const override;
  at::Tensor forward(const at::Tensor& x, hooks::ModuleHooks& hooks) override;

  /// The orthonormal basis U [d, r] of the span (float64, CPU); r = rank.
  const at::Tensor& basis() const { return u_; }
  int64_t rank() const { return u_.size(1); }
  InterventionMode mode() const { return mode_; }
  double alpha() const { return alpha_; }
  int64_t head() const { return head_; }

  /// The intervention on any activation [..., d] ([..., heads, d] with a
  /// head) (no hooks fired): what forward() returns between its two points.
  at::Tensor apply(const at::Tensor& x) const;

 private:
  at::Tensor apply_to_vectors(const at::Tensor& x) const;  // [..., d], every vector

  at::Tensor u_;  // [d, r] float64, orthonormal columns
  InterventionMode mode_;
  double alpha_;
  int64_t head_;
};

/// The directions probe p of `probes` reads, on raw features, as columns
/// [D, r]: a binary probe's weight vector (r = 1); a multinomial probe's
/// class weight differences w_k - w_0, k = 1..K-1 (r = K - 1): the logits'
/// differences, all its softmax depends on. Their span is what ablating the
/// probe removes.
at::Tensor probe_directions(const LinearProbes& probes, int64_t p);

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
