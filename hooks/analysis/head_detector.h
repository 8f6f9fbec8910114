// Head detector: how much each attention head's pattern looks like a known
// head type, TransformerLens's `head_detector.detect_head`, for checking that
// a trained model has the heads its task needs (previous-token heads and
// induction heads in the induction recipe, Olsson et al. 2022).
//
// Detection patterns for a sequence of tokens t (lower triangular [pos, pos]):
//   previous_token   D[q, q-1] = 1
//   duplicate_token  D[q, k] = 1 for k < q with t[k] == t[q]
//   induction        D[q, k] = 1 for 0 < k <= q with t[k-1] == t[q]: attend to the
//                    token after an earlier copy of the current one
// Scores, for a head's pattern P [q_pos, k_pos]:
//   mul  sum(P * D) / sum(P): the share of attention on the detected pairs (0..1)
//   abs  1 - round(sum|P - D| / pos, 3 decimals): 1 = exact match, -1 = opposite
// exclude_bos zeroes attention to position 0 (in P for mul, in |P - D| for abs),
// exclude_current_token the diagonal, as TransformerLens does.
// A batch of sequences scores the mean of its per-sequence scores (what
// TransformerLens does for a list of prompts, but with the options applied to
// every prompt; TransformerLens 2.x drops them in that case).
//
// Example:
//   at::Tensor scores = detect_head(model, tokens, HeadType::induction);  // [n_layers, n_heads]
#pragma once

#include "core/util/options.h"
#include "hooks/hooked_transformer.h"

#include <ATen/ATen.h>

#include <string>

namespace mechlab::analysis {

enum class HeadType { previous_token, duplicate_token, induction };
enum class ErrorMeasure { mul, abs };

/// "previous_token", "duplicate_token", "induction" (also with TransformerLens's
/// "_head" suffix); refuses other names, listing the valid ones.
HeadType parse_head_type(const std::string& name);
const char* to_string(HeadType type);

struct HeadDetectorOptions {
  MECHLAB_OPTION(HeadDetectorOptions, bool, exclude_bos, false)
  MECHLAB_OPTION(HeadDetectorOptions, bool, exclude_current_token, false)
  MECHLAB_OPTION(HeadDetectorOptions, ErrorMeasure, error_measure, ErrorMeasure::mul)
};

/// The detection pattern of `type` for tokens [pos] (float32 [pos, pos]) or
/// [batch, pos] (float32 [batch, pos, pos]).
at::Tensor detection_pattern(HeadType type, const at::Tensor& tokens);

/// Scores [n_layers, n_heads] of every head against `detection`: float
/// [pos, pos] (one pattern for every sequence) or [batch, pos, pos].
/// tokens: [pos] or [batch, pos] of equal-length, unpadded sequences.
at::Tensor detect_head(hooks::HookedTransformer& model, const at::Tensor& tokens,
                       const at::Tensor& detection, const HeadDetectorOptions& options = {});
at::Tensor detect_head(hooks::HookedTransformer& model, const at::Tensor& tokens, HeadType type,
                       const HeadDetectorOptions& options = {});

/// The score of attention patterns [..., q_pos, k_pos] against detection
/// patterns broadcastable to them: one score per leading index.
at::Tensor head_similarity_score(const at::Tensor& pattern, const at::Tensor& detection,
                                 const HeadDetectorOptions& options = {});

}  // namespace mechlab::analysis
