// PatchingData: the clean/corrupted prompt pairs and answers a patching
// experiment runs on, checked against a model before any forward.
//
// It mirrors a patching dataset (core/data/dataset.h): /clean_tokens,
// /corrupted_tokens, /answer_tokens, /wrong_tokens, optional /answer_pos and
// /attention_mask. Clean and corrupted prompts share one attention mask (same
// padding), as position-by-position patching needs aligned prompts.
//
// Example:
//   PatchingData data = PatchingData::from_dataset(core::load_dataset("ioi.h5"), 32);
//   data.validate(model.cfg());
//   Metric m = logit_diff(data.answers());
#pragma once

#include "core/data/dataset.h"
#include "core/model/model_config.h"
#include "patching/metrics.h"

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace mechlab::patching {

struct PatchingData {
  at::Tensor clean_tokens;      ///< int [batch, pos]
  at::Tensor corrupted_tokens;  ///< int [batch, pos]
  at::Tensor attention_mask;    ///< [batch, pos] 0/1, or undefined (no padding)
  at::Tensor answer_tokens;     ///< int [batch, K]
  at::Tensor wrong_tokens;      ///< int [batch, K]
  at::Tensor answer_pos;        ///< int [batch], or undefined: the last real position

  /// The first `max_examples` pairs of a patching dataset (all when <= 0).
  /// Throws mechlab::Error if the dataset has no clean/corrupted pairs or no answers.
  static PatchingData from_dataset(const core::Dataset& ds, int64_t max_examples = 0);

  int64_t batch() const { return clean_tokens.size(0); }
  int64_t seq_len() const { return clean_tokens.size(1); }

  /// Checks shapes, dtypes, token ids against the model's vocabulary and
  /// n_ctx, and answer positions against the sequence; throws mechlab::Error
  /// naming the tensor, the example and what to do.
  void validate(const core::ModelConfig& cfg) const;

  /// For analyses that split by token position (position-split circuits,
  /// per-position edge scores): every prompt must have the same padding, so
  /// that position p means the same in each. Throws mechlab::Error naming
  /// `what` and the first prompt whose attention mask differs from prompt 0's.
  void check_same_padding(const std::string& what) const;
  /// int64 [batch]: answer_pos, or the last real position of each prompt.
  at::Tensor resolved_answer_pos() const;
  /// Answers, wrong answers and resolved positions as int64 tensors.
  AnswerSpec answers() const;
};

/// One label per position of the first `max_examples` pairs (all when <= 0)
/// that means the same for every example, for heatmap columns and tables:
///   - IOI datasets (task "ioi" with its template index per example in
///     /labels): the template slot at that position, "p: IO", "p: S1",
///     "p: S2", "p: PLACE", "p: OBJ", "p: END" (the last word, whose logits
///     answer) or the template's word ("p: and"); where
///     the examples' templates put different slots at p, the distinct slots
///     most frequent first, "p: S2|gave|," (at most three, then "|…").
///   - other datasets: "p: word" where every example has the same clean word
///     there ("p: clean/corrupted" where every corrupted prompt has the same
///     other word), "p: (differs)" where the words vary and some corrupted
///     prompt differs from its clean one, "p: (varies)" otherwise.
/// Padding is ignored; a position that is padding in every example is
/// "p: <pad>". Raw-id datasets (no word tokenizer) show the ids.
std::vector<std::string> position_labels(const core::Dataset& ds, int64_t max_examples = 0);

}  // namespace mechlab::patching
