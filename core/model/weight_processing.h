// Weight processing: TransformerLens 2.x's `process_weights_` /
// `load_and_process_state_dict`, step by step and each switchable. None of
// the steps changes the model's output distribution (log-probabilities); they
// make the weights easier to read:
//
//   fold_ln                 LayerNorm/RMSNorm gains (and LayerNorm biases) are
//                           multiplied into the layers that read the norm:
//                           W_Q, W_K, W_V (+ b_Q, b_K, b_V) for ln1, W_in,
//                           W_gate (+ b_in) for ln2, W_U (+ b_U) for ln_final.
//                           For LayerNorm the reading weights are then centred
//                           over d_model (W_Q, W_K, W_V, W_in, W_U: their input
//                           has zero mean, so the mean row never mattered).
//                           The norms become TransformerLens's LNPre / RMSPre
//                           (norm "layernorm_pre" / "rmsnorm_pre"), whose
//                           hook_normalized is (x - mean x) / scale, resp.
//                           x / scale.
//   center_writing_weights  Everything writing to the residual stream has its
//                           mean over d_model removed (W_E, W_pos, W_O, b_O,
//                           W_out, b_out). Exact only when every reader of the
//                           residual stream is a LayerNorm (which removes that
//                           mean again), so LayerNorm models with a final norm
//                           only.
//   center_unembed          W_U and b_U lose their mean over the vocabulary:
//                           logits move by a per-position constant, log-probs
//                           do not change.
//   fold_value_biases       b_O += sum_head b_V[head] @ W_O[head], b_V = 0
//                           (attention patterns sum to 1, so b_V's effect is a
//                           constant). GQA: b_V of kv head k serves query heads
//                           k * n_heads / n_kv_heads ... (k + 1) * n_heads /
//                           n_kv_heads - 1, as TransformerLens's
//                           repeat_interleave does.
//
// Applied steps are recorded in ModelConfig::processed (in TransformerLens's
// order: fold_ln, center_writing_weights, center_unembed, fold_value_biases),
// and a step already recorded is refused: processing twice is a mistake.
//
// Differences from TransformerLens, on purpose:
//   - A step the model cannot take is an error naming the step and the reason,
//     unless `skip_inapplicable` is set (ProcessOptions::all(), the CLI's
//     --process), which skips it with a warning as TransformerLens's
//     from_pretrained does: center_writing_weights without LayerNorm or
//     without a final norm, fold_ln without any norm.
//   - LayerNorm + gated MLP with a non-zero ln2 bias is refused: the gated MLP
//     adds b_in after act(x W_gate) * (x W_in), so the ln2 bias cannot be
//     folded into b_in (TransformerLens folds it there anyway and silently
//     changes the model).
//   - Half-precision weights are processed in float32 and rounded once.
//   - Tied embeddings are untied first whenever W_E or W_U would change
//     (TransformerLens never ties them).
//   - fold_value_biases is exact for every query that attends to at least one
//     key; a query whose keys are all padding has a zero pattern in mechlab
//     and TransformerLens, and gains the folded bias (only pad positions).
//
// Example:
//   auto model = core::load_model("gpt2/", {std::nullopt, core::ProcessOptions::all()});
//   // or, later:
//   core::Transformer folded = core::process_weights(model, core::ProcessOptions().fold_ln(true));
//   hooked.model() = core::process_weights(hooked.model(), core::ProcessOptions::all());
#pragma once

#include "core/model/model_config.h"
#include "core/util/options.h"
#include "core/model/transformer.h"
#include "core/model/weights.h"

#include <string>

namespace mechlab::core {

struct ProcessOptions {
  /// Fold norm gains/biases into the layers reading the norm; norms become
  /// layernorm_pre / rmsnorm_pre.
  /// Example: ProcessOptions().fold_ln(true)
  MECHLAB_OPTION(ProcessOptions, bool, fold_ln, false)
  /// Remove the d_model mean of every weight writing to the residual stream
  /// (LayerNorm models with a final norm only).
  /// Example: ProcessOptions().fold_ln(true).center_writing_weights(true)
  MECHLAB_OPTION(ProcessOptions, bool, center_writing_weights, false)
  /// Remove the vocabulary mean of W_U and b_U.
  /// Example: ProcessOptions().center_unembed(true)
  MECHLAB_OPTION(ProcessOptions, bool, center_unembed, false)
  /// Fold b_V through W_O into b_O.
  /// Example: ProcessOptions().fold_value_biases(true)
  MECHLAB_OPTION(ProcessOptions, bool, fold_value_biases, false)
  /// Skip, with a warning, a step the architecture cannot take instead of
  /// refusing it. Never skips a step already applied (that stays an error).
  /// Example: ProcessOptions().center_writing_weights(true).skip_inapplicable(true)
  MECHLAB_OPTION(ProcessOptions, bool, skip_inapplicable, false)

  /// What TransformerLens's from_pretrained does by default: every step,
  /// skipping those the model cannot take.
  static ProcessOptions all();
  /// Whether any step is asked for.
  bool any() const;
  /// "fold_ln, center_unembed", "none": for messages and logs.
  std::string describe() const;
};

/// Applies the asked-for steps to `cfg` and `w` (in TransformerLens's order)
/// and appends them to cfg.processed. Every check runs before any tensor is
/// touched, so an error leaves both unchanged. Tensors are replaced, never
/// written in place: other holders of the old tensors see no change. Runs
/// without autograd; the new tensors do not require grad.
void process_weights(ModelConfig& cfg, TransformerWeights& w, const ProcessOptions& options);

/// A processed copy of `model` on the same device and in the same dtype;
/// `model` is left as it was.
Transformer process_weights(const Transformer& model, const ProcessOptions& options);

}  // namespace mechlab::core
