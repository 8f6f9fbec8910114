// ActivationCache: the activations of one run, by hook name, with
// TransformerLens's ActivationCache helpers for residual-stream analysis.
//
// Stacks are [component, batch, pos, d_model] (pos dropped when a PosSlice
// selects one position) with one label per component, as in TransformerLens:
//   accumulated_resid  labels "0_pre", "0_mid", ..., "final_post"
//   decompose_resid    labels "embed", "pos_embed", "0_attn_out", "0_mlp_out", ...
//   stack_head_results labels "L0H0", "L0H1", ... (+ "remainder")
// Example:
//   auto [logits, cache] = model.run_with_cache(tokens);
//   auto resid = cache.decompose_resid(ResidOptions().pos(-1));  // components sum to resid_post
//   at::Tensor attrs = cache.logit_attrs(resid.tensor, answers, wrong, PosSlice(-1));
#pragma once

#include "core/model/transformer.h"
#include "core/util/options.h"

#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace mechlab::hooks {

/// Which positions a helper looks at: all, or one (negative counts from the end).
struct PosSlice {
  PosSlice() = default;
  PosSlice(int64_t index) : index(index) {}  // NOLINT: PosSlice(-1) reads well
  std::optional<int64_t> index;
  /// Selects along `dim` (drops it) when an index is set.
  at::Tensor apply(const at::Tensor& t, int64_t dim) const;
};

/// The keyword arguments of the residual-stream helpers, with
/// TransformerLens's names and defaults. A helper refuses an option it does
/// not take (set away from its default), naming it.
///
/// Example: cache.decompose_resid(ResidOptions().pos(-1).apply_ln(true))
struct ResidOptions {
  /// Up to and including this layer's input; -1 = all layers and the final residual.
  MECHLAB_OPTION(ResidOptions, int, layer, -1)
  /// At `layer`, the MLP's input (resid_mid) rather than the attention's.
  MECHLAB_OPTION(ResidOptions, bool, mlp_input, false)
  /// Scale each component as the norm at that point would (apply_ln_to_stack).
  MECHLAB_OPTION(ResidOptions, bool, apply_ln, false)
  /// One position (negative counts from the end; the pos axis is dropped), or all.
  MECHLAB_OPTION(ResidOptions, PosSlice, pos, {})
  /// accumulated_resid: include resid_mid of each layer.
  MECHLAB_OPTION(ResidOptions, bool, incl_mid, false)
  /// decompose_resid: "all", "attn" or "mlp".
  MECHLAB_OPTION(ResidOptions, std::string, mode, "all")
  /// decompose_resid: include embed and pos_embed.
  MECHLAB_OPTION(ResidOptions, bool, incl_embeds, true)
  /// stack_head_results: add the residual minus the heads' sum as "remainder".
  MECHLAB_OPTION(ResidOptions, bool, incl_remainder, false)
  /// apply_ln_to_stack at the final layer: apply ln_final in full instead of its scale.
  MECHLAB_OPTION(ResidOptions, bool, recompute_ln, false)
};

struct Stack {
  at::Tensor tensor;                // [component, batch, (pos,) d_model]
  std::vector<std::string> labels;  // [component]
};

class ActivationCache {
 public:
  ActivationCache() = default;
  ActivationCache(std::shared_ptr<const core::Transformer> model,
                  std::map<std::string, at::Tensor> acts);

  /// The activation at a hook point; a name not in the cache is an error that
  /// says whether the model lacks it or the names filter left it out.
  const at::Tensor& operator[](const std::string& name) const;
  /// Short names as act_name: cache.get("resid_pre", 3), cache.get("k6").
  const at::Tensor& get(const std::string& name, int layer = -1,
                        const std::string& layer_type = "") const;
  bool contains(const std::string& name) const { return acts_.count(name) > 0; }
  std::vector<std::string> keys() const;
  size_t size() const { return acts_.size(); }
  int64_t bytes() const;
  const std::map<std::string, at::Tensor>& items() const { return acts_; }
  const core::ModelConfig& config() const { return model_->config(); }

  /// The residual stream before each layer (and after the last), up to
  /// `layer` (-1 = all). incl_mid adds resid_mid; apply_ln scales as
  /// ln_final or ln1/ln2 of `layer` would (at the end it recomputes ln_final
  /// in full). Takes layer, incl_mid, apply_ln, pos, mlp_input.
  Stack accumulated_resid(const ResidOptions& opts = {}) const;
  /// The residual stream as a sum of embeddings and each layer's outputs.
  /// Takes layer, mlp_input, mode ("all", "attn" or "mlp"), apply_ln, pos, incl_embeds.
  Stack decompose_resid(const ResidOptions& opts = {}) const;
  /// Every head's output (hook_result, computed from hook_z and W_O if not
  /// cached). Takes layer, incl_remainder, pos, apply_ln.
  Stack stack_head_results(const ResidOptions& opts = {}) const;
  /// Divides a stack by the normalisation scale cached at `layer` (centring
  /// first for LayerNorm), approximating the effect of that norm on each
  /// component as TransformerLens does; recompute_ln at the end applies
  /// ln_final in full. Takes layer, mlp_input, pos, recompute_ln.
  at::Tensor apply_ln_to_stack(const at::Tensor& stack, const ResidOptions& opts = {}) const;
  /// Each component's direct contribution to logit(tokens) - logit(incorrect).
  /// tokens/incorrect: [batch] (or [batch, pos]); returns [component, batch(, pos)].
  at::Tensor logit_attrs(const at::Tensor& stack, const at::Tensor& tokens,
                         const at::Tensor& incorrect_tokens = {}, PosSlice pos = {}) const;

 private:
  at::Tensor head_result(int layer) const;  // [batch, pos, head, d_model]

  std::shared_ptr<const core::Transformer> model_;
  std::map<std::string, at::Tensor> acts_;
};

}  // namespace mechlab::hooks
