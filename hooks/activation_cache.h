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
//   auto resid = cache.decompose_resid();                  // components sum to resid_post
//   at::Tensor attrs = cache.logit_attrs(resid.tensor, answers, wrong, PosSlice(-1));
#pragma once

#include "core/model/transformer.h"

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

  /// The residual stream before each layer (and after the last), up to `layer`
  /// (-1 = all). incl_mid adds resid_mid; apply_ln scales as ln_final or
  /// ln1/ln2 of `layer` would (at the end it recomputes ln_final in full).
  Stack accumulated_resid(int layer = -1, bool incl_mid = false, bool apply_ln = false,
                          PosSlice pos = {}, bool mlp_input = false) const;
  /// The residual stream as a sum of embeddings and each layer's outputs.
  /// mode: "all", "attn" or "mlp".
  Stack decompose_resid(int layer = -1, bool mlp_input = false, const std::string& mode = "all",
                        bool apply_ln = false, PosSlice pos = {}, bool incl_embeds = true) const;
  /// Every head's output (hook_result, computed from hook_z and W_O if not cached).
  Stack stack_head_results(int layer = -1, bool incl_remainder = false, PosSlice pos = {},
                           bool apply_ln = false) const;
  /// Divides a stack by the normalisation scale cached at `layer` (centring
  /// first for LayerNorm), approximating the effect of that norm on each
  /// component as TransformerLens does. recompute_ln at the end applies ln_final in full.
  at::Tensor apply_ln_to_stack(const at::Tensor& stack, int layer = -1, bool mlp_input = false,
                               PosSlice pos = {}, bool recompute_ln = false) const;
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
