// Splicing SAEs into a model (SAELens's HookedSAETransformer.run_with_saes)
// and the metrics that need the model: CE loss recovered and KL divergence,
// with SAELens 6.x's definitions (sae_lens.evals.get_recons_loss and
// get_downstream_reconstruction_metrics), plus the token-level sparsity and
// reconstruction metrics of get_sparsity_and_variance_metrics computed on
// the same tokens.
//
// Splicing: SaeSplice attaches each SAE at its hook for the lifetime of the
// object (hooks/attached_module.h), so the SAEs' points
// ("<hook>.sae.hook_sae_acts_post", ...) can be cached, patched and stored
// like the model's; the destructor detaches them and restores each SAE's
// use_error_term, also when the run throws.
//
// Metrics on tokens [n, pos] (batches of batch_size prompts):
//   ce_loss_without_sae    mean next-token CE of the clean model
//   ce_loss_with_sae       ... with the hook's activation replaced by the
//                          SAE's reconstruction (no error term)
//   ce_loss_with_ablation  ... with the hook's activation zeroed
//   ce_loss_score          (ablation - with_sae) / (ablation - without_sae):
//                          "CE loss recovered"
//   kl_div_with_sae        mean over positions of KL(clean || spliced), in nats
//   kl_div_with_ablation   mean KL(clean || zero-ablated)
//   kl_div_score           (kl_ablation - kl_sae) / kl_ablation
//   ce_loss_with_error_term, kl_div_with_error_term: the same with the SAE
//                          spliced with its error term (0 KL up to rounding
//                          unless a hook edits a point inside the SAE; a
//                          check of the splice itself, not in SAELens)
// At a hook_z host a hook_z SAE (sae.h) reads each position's heads as one
// row of head * d_head, and so do the activation metrics (SAELens's evals
// flatten(-2, -1) there too).
// Positions whose token is in ignore_tokens (SAELens: the tokenizer's special
// tokens) are left out of every mean and keep their clean activation in the
// spliced run, as SAELens's replacement hook does; a CE term is left out when
// the token it predicts FROM is ignored (SAELens masks mask[:, :-1]).
//
// Example:
//   auto sae = mechlab::sae::import_saelens("my_sae");
//   auto m = mechlab::sae::splice_metrics(model, sae, "blocks.3.hook_resid_post", tokens);
//   std::cout << m.ce_loss_score << "\n";
//   {
//     SaeSplice splice(model, {{"blocks.3.hook_resid_post", sae}});
//     auto [logits, cache] = model.run_with_cache(tokens, hooks::NamesFilter::glob("*.sae.*"));
//   }  // detached here
#pragma once

#include "core/util/options.h"
#include "hooks/hooked_transformer.h"
#include "sae/sae.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace mechlab::sae {

/// One SAE and where it goes: hook "" means the SAE's own cfg().hook_name().
struct SaeAt {
  std::string hook;
  std::shared_ptr<Sae> sae;
};

/// Attaches SAEs for its lifetime (see the file comment). Refuses, one line,
/// an SAE without a hook, a hook the model does not have, a width mismatch,
/// two SAEs at one hook; nothing stays attached after a refusal.
class SaeSplice {
 public:
  SaeSplice(hooks::HookedTransformer& model, std::vector<SaeAt> saes, bool use_error_term = false);
  ~SaeSplice();
  SaeSplice(const SaeSplice&) = delete;
  SaeSplice& operator=(const SaeSplice&) = delete;

  /// The hooks the SAEs sit at, in the order given.
  const std::vector<std::string>& hooks() const { return hosts_; }

 private:
  void undo() noexcept;

  hooks::HookedTransformer& model_;
  std::vector<std::string> hosts_;
  std::vector<std::pair<std::shared_ptr<Sae>, bool>> saved_;  // SAE, its use_error_term before
};

/// Logits [batch, pos, d_vocab] of one run with the SAEs spliced in.
at::Tensor run_with_saes(hooks::HookedTransformer& model, const at::Tensor& tokens,
                         std::vector<SaeAt> saes, bool use_error_term = false,
                         const hooks::RunOptions& opts = {});
/// The same, recording the points `filter` selects (the SAEs' points included).
std::pair<at::Tensor, hooks::ActivationCache> run_with_cache_with_saes(
    hooks::HookedTransformer& model, const at::Tensor& tokens, std::vector<SaeAt> saes,
    const hooks::NamesFilter& filter, bool use_error_term = false, const hooks::RunOptions& opts = {});

struct SpliceEvalOptions {
  /// Prompts per forward pass. The per-batch terms of SAELens
  /// (relative_reconstruction_bias, explained_variance_legacy) depend on it.
  MECHLAB_OPTION(SpliceEvalOptions, int64_t, batch_size, 8)
  /// Token ids left out of every metric (SAELens: the special tokens).
  MECHLAB_OPTION(SpliceEvalOptions, std::vector<int64_t>, ignore_tokens, {})
  /// Also run the spliced model with the error term (two more forwards per batch).
  MECHLAB_OPTION(SpliceEvalOptions, bool, error_term_check, true)
};

struct SpliceMetrics {
  double ce_loss_without_sae = 0, ce_loss_with_sae = 0, ce_loss_with_ablation = 0;
  double ce_loss_score = 0;
  double kl_div_with_sae = 0, kl_div_with_ablation = 0, kl_div_score = 0;
  double ce_loss_with_error_term = 0, kl_div_with_error_term = 0;  ///< NaN without error_term_check
  // get_sparsity_and_variance_metrics on the hook's activations (not ignored):
  double l0 = 0, l1 = 0, mse = 0, cossim = 0;
  double explained_variance = 0, explained_variance_legacy = 0;
  double l2_norm_in = 0, l2_norm_out = 0, l2_ratio = 0, relative_reconstruction_bias = 0;
  at::Tensor feature_density;  ///< [d_sae] float64: share of counted tokens each latent fires on
  int64_t tokens = 0;          ///< positions counted (KL and the activation metrics)
  int64_t ce_tokens = 0;       ///< next-token predictions counted
};

/// The metrics above for `sae` spliced at `hook` ("" = its cfg().hook_name())
/// on tokens [n, pos] int; run without gradient.
SpliceMetrics splice_metrics(hooks::HookedTransformer& model, const std::shared_ptr<Sae>& sae,
                             const std::string& hook, const at::Tensor& tokens,
                             const SpliceEvalOptions& opts = {});

/// KL(p || q) per position for logits [..., d_vocab]: sum over the vocabulary
/// of softmax(p) (log_softmax(p) - log_softmax(q)); [...] in the logits' dtype.
at::Tensor kl_per_position(const at::Tensor& clean_logits, const at::Tensor& new_logits);

}  // namespace mechlab::sae
