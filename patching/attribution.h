// Attribution patching (Nanda 2023, "Attribution Patching: Activation
// Patching At Industrial Scale"; Syed et al. 2023) and EAP-IG (Hanna et al.
// 2024, "Have Faith in Faithfulness", inputs variant) for nodes: a linear
// estimate of every activation patch from a few forwards and backwards.
//
//   attribution   score(A) = dmetric/dA |base . (A_source - A_base)
//                 one base forward + backward, one source forward
//   eap_ig        score(A) = mean_j dmetric/dA |x_j . (A_source - A_base)
//                 where run j (j = 1..m) feeds the interpolated input embedding
//                 x_j = e_base + (j/m) (e_source - e_base) (e = blocks.0.hook_resid_pre)
//                 to the base prompts; m forwards + backwards, one base and one
//                 source forward. These are Hanna et al.'s points (their steps
//                 k/m from the corrupted input, k = 0..m-1); the sum over
//                 them is a right Riemann sum of the integrated gradient, so
//                 for the input node it converges to the exact patching effect
//                 as m grows, and any node on which the metric depends linearly
//                 gets the exact effect for every m.
//
// A score estimates the CHANGE of the metric when A's slice is patched from
// the source run into the base run (noising, the default and Syed et al.'s
// direction: base = clean prompts, source = corrupted; denoising: the other
// way). The dot product runs over the slice a sweep patches and the whole
// batch (metrics average over prompts, so their gradients carry the 1/batch).
//
// Node sweeps take the names and shapes of patching/sweeps.h (resid_pre ...
// attn_head_by_pos_every): the value at an index estimates the activation-
// patching sweep's value there minus the base metric.
//
// Example:
//   auto results = attribution_sweeps(model, data, {"attn_head_out_by_pos"}, logit_diff(a),
//                                     AttributionOptions{}.method(AttributionMethod::eap_ig).steps(10));
//   results[0].values;   // [layer, pos, head]
#pragma once

#include "core/util/options.h"
#include "hooks/hooked_transformer.h"
#include "patching/metrics.h"
#include "patching/patching_data.h"
#include "patching/sweeps.h"

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <functional>
#include <map>
#include <string>
#include <vector>

namespace mechlab::patching {

enum class AttributionMethod {
  attribution,  ///< gradient at the base run x (source - base)
  eap_ig,       ///< gradients averaged over m interpolated input embeddings x (source - base)
};
/// "attribution", "eap-ig".
const char* method_name(AttributionMethod m);
/// Accepts "attribution" and "eap-ig" (or "eap_ig").
AttributionMethod parse_method(const std::string& text);

struct AttributionOptions {
  MECHLAB_OPTION(AttributionOptions, AttributionMethod, method, AttributionMethod::attribution)
  /// EAP-IG interpolation steps m (>= 1; Hanna et al. use 5 to 30); ignored by attribution.
  MECHLAB_OPTION(AttributionOptions, int, steps, 5)
  /// noising (default): base = clean prompts, source = corrupted; denoising: the reverse.
  MECHLAB_OPTION(AttributionOptions, Direction, direction, Direction::noising)
  /// One label per position for pictures and files; default: the index.
  MECHLAB_OPTION(AttributionOptions, std::vector<std::string>, position_labels, {})
  /// Edge attribution only: score every edge once per token position
  /// ([pos, senders, receivers], not summed over positions; the prompts must
  /// share one padding). Node attribution ignores it.
  MECHLAB_OPTION(AttributionOptions, bool, split_positions, false)
  /// Extra fields copied into each result's config.
  MECHLAB_OPTION(AttributionOptions, nlohmann::json, extra_config, nlohmann::json::object())
};

/// What the gradient passes produced besides the gradients.
struct GradientRuns {
  std::map<std::string, at::Tensor> base;    ///< act_hooks on the base run (detached)
  std::map<std::string, at::Tensor> source;  ///< act_hooks on the source run (detached)
  /// pass_hooks on the gradient pass being differentiated (for EAP-IG the
  /// interpolated run, not the base run), replaced at each pass (detached).
  std::map<std::string, at::Tensor> pass;
  double base_metric = 0, source_metric = 0;
  int64_t forwards = 0, backwards = 0;       ///< passes run (a forward+backward counts in both)
};

/// The engine under node and edge attribution. Runs the source prompts once
/// (no autograd) recording `act_hooks`, then the gradient pass(es) of
/// `options.method` on the base prompts; during each backward, `on_grad(hook,
/// grad, runs)` receives d(metric)/d(activation) at each of `grad_hooks`
/// (and `runs.pass` holds the current pass's `pass_hooks` activations),
/// already divided by the number of passes (so summing what it gets gives the
/// mean gradient); `runs.base` and `runs.source` are complete by then. Hooks must
/// come at or after blocks.0.hook_resid_pre (where the gradient starts).
/// Throws mechlab::Error for steps < 1 or unknown hooks. Runs with autograd
/// on even inside a caller's at::InferenceMode; the model's weights must not
/// be inference tensors (load the model outside inference mode).
GradientRuns run_gradient_passes(
    hooks::HookedTransformer& model, const PatchingData& data, const Metric& metric,
    const AttributionOptions& options, const std::vector<std::string>& act_hooks,
    const std::vector<std::string>& grad_hooks,
    const std::function<void(const std::string& hook, const at::Tensor& grad,
                             const GradientRuns& runs)>& on_grad,
    const std::vector<std::string>& pass_hooks = {});

/// Base and source activations and the mean metric gradient at `hooks`.
struct GradientCache {
  GradientRuns runs;
  std::map<std::string, at::Tensor> grad;  ///< same shapes as the activations
};
GradientCache attribution_gradients(hooks::HookedTransformer& model, const PatchingData& data,
                                    const Metric& metric, const std::vector<std::string>& hooks,
                                    const AttributionOptions& options = {});

/// The attribution score of one patch target: the sum over its slice (and the
/// batch) of grad x (source - base). Float64/float32 scalar tensor.
at::Tensor target_attribution(const GradientCache& cache, const PatchTarget& target);

/// Node attribution for sweeps of patching/sweeps.h, one gradient pass for
/// all of them. Each result: sweep = "<method>:<sweep>" (e.g.
/// "attribution:attn_head_out_by_pos"), values shaped as the sweep,
/// estimated metric change per index; config holds the method, steps,
/// direction, metric and baselines.
std::vector<SweepResult> attribution_sweeps(hooks::HookedTransformer& model, const PatchingData& data,
                                            const std::vector<std::string>& sweeps,
                                            const Metric& metric,
                                            const AttributionOptions& options = {});

}  // namespace mechlab::patching
