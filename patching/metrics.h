// Patching metrics: scalars computed from a run's logits that say how much of
// the clean behaviour a patched run shows.
//
// A Metric maps the logits of `copies` stacked runs to one value per copy, so
// that the bulk patcher (patching/bulk_patcher.h) evaluates every patch
// configuration of a batched forward at once. Metrics that read only each
// prompt's answer position (Reads::answer_logits) let the patcher unembed
// that one position per prompt instead of all of them.
//
//   logit_diff            mean over prompts of logit(answer) - logit(wrong) at the
//                         answer position (with K answers per prompt: the mean of the
//                         K differences)
//   normalised_logit_diff (logit_diff - corrupted) / (clean - corrupted): 0 = corrupted
//                         baseline, 1 = clean baseline
//   answer_prob           mean softmax probability of the answer tokens
//   kl_to_clean           KL(P_clean || P_run) at the answer position, mean over prompts
//   cross_entropy         next-token loss of the run's own input, mean over counted
//                         positions (core::loss_per_token's convention); reads every position
//   custom                any C++ callable on logits [batch, pos, d_vocab] -> scalar,
//                         TransformerLens's `patching_metric` signature
//
// Example:
//   Metric m = logit_diff(data.answers());
//   double ld = m(model.forward(data.clean_tokens)).item<double>();
//   Metric mine = Metric::custom("top1", [&](const at::Tensor& logits) {  // [batch, pos, d_vocab]
//     return logits.select(1, -1).argmax(-1).eq(answers).to(at::kFloat).mean();
//   });
#pragma once

#include "core/util/options.h"

#include <ATen/core/Tensor.h>

#include <functional>
#include <limits>
#include <string>
#include <vector>

namespace mechlab::hooks {
class HookedTransformer;
}

namespace mechlab::patching {

struct PatchingData;
enum class Direction;  // patching/sweeps.h

/// What the answer-based metrics compare, per prompt.
struct AnswerSpec {
  at::Tensor answer_tokens;  ///< int64 [batch, K]
  at::Tensor wrong_tokens;   ///< int64 [batch, K] (may be undefined for answer_prob / kl_to_clean)
  at::Tensor answer_pos;     ///< int64 [batch], the position whose logits answer
};

class Metric {
 public:
  enum class Reads {
    answer_logits,  ///< batched fn gets [copies, batch, d_vocab]: each prompt's answer position
    all_logits,     ///< batched fn gets [copies, batch, pos, d_vocab]
  };
  /// fn maps the stacked logits described by `reads` to [copies] (float32).
  using BatchedFn = std::function<at::Tensor(const at::Tensor& logits)>;

  /// `higher_is_better`: the metric grows as the run behaves more like the
  /// clean model (logit_diff); false when it shrinks (kl_to_clean).
  Metric(std::string name, Reads reads, at::Tensor answer_pos, BatchedFn fn, bool higher_is_better = false);

  /// A user metric with TransformerLens's signature: logits [batch, pos,
  /// d_vocab] -> scalar tensor. Reads every position; evaluated copy by copy.
  static Metric custom(std::string name, std::function<at::Tensor(const at::Tensor& logits)> fn,
                       bool higher_is_better = false);

  const std::string& name() const { return name_; }
  bool higher_is_better() const { return higher_is_better_; }
  /// -metric, named "-<name>", the other way up: what ACDC minimises for a
  /// higher-is-better metric (the reference ACDC's IOI runs use -logit_diff).
  Metric negated() const;
  Reads reads() const { return reads_; }
  /// int64 [batch]; undefined for all_logits metrics.
  const at::Tensor& answer_pos() const { return answer_pos_; }

  /// One run: logits [batch, pos, d_vocab] -> scalar (float32; float64 when
  /// the metric function computes in float64).
  at::Tensor operator()(const at::Tensor& logits) const;
  /// Stacked runs, shaped as `reads()` says -> [copies] (float32 or float64 as above).
  at::Tensor batched(const at::Tensor& logits) const;

 private:
  std::string name_;
  Reads reads_;
  at::Tensor answer_pos_;
  BatchedFn fn_;
  bool higher_is_better_ = false;
};

/// Logits at each prompt's answer position: [batch, pos, d_vocab] -> [batch, d_vocab].
at::Tensor logits_at(const at::Tensor& logits, const at::Tensor& answer_pos);

/// logit(answer) - logit(wrong) per prompt (mean over K): logits [..., batch,
/// d_vocab] at the answer positions -> [..., batch] (float32).
at::Tensor logit_diff_per_prompt(const at::Tensor& answer_logits, const AnswerSpec& answers);

Metric logit_diff(const AnswerSpec& answers);
/// 0 at `corrupted`, 1 at `clean` (baseline logit differences); they must differ.
Metric normalised_logit_diff(const AnswerSpec& answers, double clean, double corrupted);
Metric answer_prob(const AnswerSpec& answers);
/// clean_logits: [batch, pos, d_vocab] of the clean run.
Metric kl_to_clean(const AnswerSpec& answers, const at::Tensor& clean_logits);
/// KL(P_clean || P_run) at every real position, mean over them (ACDC's
/// induction-task metric; kl_to_clean reads only the answer position).
/// clean_logits [batch, pos, d_vocab]; attention_mask [batch, pos] or undefined.
Metric kl_to_clean_all_positions(const at::Tensor& clean_logits, const at::Tensor& attention_mask = {});
/// tokens: [batch, pos] the run's input; attention_mask [batch, pos] or undefined.
Metric cross_entropy(const at::Tensor& tokens, const at::Tensor& attention_mask = {});

/// A metric that make_metric builds by name, with what it measures.
struct MetricInfo {
  const char* name;
  const char* description;
};
/// Every name make_metric accepts, in the order of the table at the top of this file.
const std::vector<MetricInfo>& metric_catalog();
/// The catalog's names, comma-separated: "logit_diff, normalised_logit_diff, ...".
const char* metric_names();

/// A metric by name, with its options (PatchPlan::metric, `mechlab patch --metric`).
struct MetricOptions {
  /// One of metric_catalog().
  MECHLAB_OPTION(MetricOptions, std::string, name, "logit_diff")
  /// normalised_logit_diff: the logit differences that map to 1 and 0. NaN
  /// (the default) = measured on the unpatched clean and corrupted runs.
  MECHLAB_OPTION(MetricOptions, double, clean_baseline, std::numeric_limits<double>::quiet_NaN())
  MECHLAB_OPTION(MetricOptions, double, corrupted_baseline, std::numeric_limits<double>::quiet_NaN())
};

/// The metric named by `options` for patched runs of `direction`, built from
/// `data`: normalised_logit_diff and kl_to_clean run the unpatched model once
/// or twice for their baselines; cross_entropy scores the patched run's own
/// input (the corrupted prompts when denoising, the clean ones when noising).
/// An unknown name is an error listing metric_names().
Metric make_metric(const MetricOptions& options, hooks::HookedTransformer& model,
                   const PatchingData& data, Direction direction);

}  // namespace mechlab::patching
