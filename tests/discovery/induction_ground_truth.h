// The trained ground truth of circuit discovery: the induction circuit of
// the shipped induction model (apps/models/induction.h5), found with the head
// detector, as a reference edge set that any discovery method's scores are
// checked against (ROC AUC). Shared by the EAP-IG and ACDC checks.
//
// The contrast (clean vs corrupted, what the edge scores explain):
//   clean      BOS a_1 .. a_L a_1 .. a_j   answer a_{j+1} at the last position
//   corrupted  BOS b_1 .. b_L a_1 .. a_j   wrong  b_{j+1}
// Only the first copy differs, so the last position can predict a_{j+1} in
// the clean run only by induction: the previous-token head P, at position
// i of the first copy, moves token a_{i-1} into the residual stream there;
// the induction head I at the last position (token a_j) keys on that
// (K-composition), attends to position j + 1 and copies its token.
//
// Reference edges (docs/ARCHITECTURE.md, "Circuit discovery", "Evaluation"):
//   P -> I<k>        K-composition, the circuit's defining edge
//   I -> output      the copied token's logit
//   input -> P<v>    the token P moves (it differs between clean and corrupted)
//   input -> I<v>    the token I copies (it differs too)
// Left out on purpose: input -> I<q> (the query token a_j is the same in both
// runs, so patching it changes nothing), input -> P<q>/P<k> (a rotary
// previous-token head attends by relative position), edges into heads that
// the detector does not call previous-token or induction heads.
#pragma once

#include "core/data/tasks/induction.h"
#include "hooks/analysis/head_detector.h"
#include "hooks/hooked_transformer.h"
#include "patching/patching_data.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

namespace mechlab::testing {

struct InductionHeads {
  std::vector<std::pair<int, int>> previous_token;  ///< (layer, head)
  std::vector<std::pair<int, int>> induction;       ///< (layer, head)
  at::Tensor previous_token_scores, induction_scores;  // [n_layers, n_heads]
};

/// Heads whose detector score (mul measure, attention to BOS excluded) on
/// 32 prompts of BOS + 20 + 20 random tokens exceeds the threshold. The
/// thresholds are those of tests/apps/recipes_test.cpp's induction checks:
/// 0.3 for induction heads (the four layer-1 heads score 0.35 to 0.49 and
/// stand in for each other), 0.4 for previous-token heads (0.56 and 0.60 on
/// a0.h2 and a0.h3; the other layer-0 heads are far below).
inline InductionHeads find_induction_heads(hooks::HookedTransformer& model, double previous_threshold = 0.4,
                                           double induction_threshold = 0.3) {
  const core::Dataset probe = core::tasks::make_induction(
      core::tasks::InductionOptions{}.n(32).half_len(20).d_vocab(model.cfg().d_vocab).seed(11));
  const at::Tensor tokens = probe.tokens.to(at::kLong);  // [32, 41]
  const auto opt = analysis::HeadDetectorOptions().exclude_bos(true);
  at::NoGradGuard no_grad;
  InductionHeads h;
  h.previous_token_scores = analysis::detect_head(model, tokens, analysis::HeadType::previous_token, opt);
  h.induction_scores = analysis::detect_head(model, tokens, analysis::HeadType::induction, opt);
  for (int l = 0; l < model.cfg().n_layers; ++l) {
    for (int hd = 0; hd < model.cfg().n_heads; ++hd) {
      if (h.previous_token_scores[l][hd].item<double>() > previous_threshold) h.previous_token.emplace_back(l, hd);
      if (h.induction_scores[l][hd].item<double>() > induction_threshold) h.induction.emplace_back(l, hd);
    }
  }
  return h;
}

inline std::string head_name(const std::pair<int, int>& h) {
  return "a" + std::to_string(h.first) + ".h" + std::to_string(h.second);
}

/// The reference edges of the top of this file, for every previous-token
/// head P and induction head I in a later layer (K-composition needs P
/// before I); induction heads with no earlier previous-token head and
/// previous-token heads with no later induction head are left out. Empty
/// when there is no such pair.
inline std::vector<std::string> induction_reference_edges(const InductionHeads& h) {
  std::vector<std::pair<int, int>> ps, is;
  for (const auto& p : h.previous_token) {
    for (const auto& i : h.induction) {
      if (p.first < i.first) {
        if (std::find(ps.begin(), ps.end(), p) == ps.end()) ps.push_back(p);
        if (std::find(is.begin(), is.end(), i) == is.end()) is.push_back(i);
      }
    }
  }
  std::vector<std::string> edges;
  for (const auto& p : ps) {
    for (const auto& i : is) {
      if (p.first < i.first) edges.push_back(head_name(p) + " -> " + head_name(i) + "<k>");
    }
    edges.push_back("input -> " + head_name(p) + "<v>");
  }
  for (const auto& i : is) {
    edges.push_back(head_name(i) + " -> output");
    edges.push_back("input -> " + head_name(i) + "<v>");
  }
  return edges;
}

/// The clean/corrupted prompts of the top of this file: `n` pairs, first
/// copy of length L = half_len, query at the j-th token of the second copy
/// (1 <= j < L), random ids from [1, d_vocab) (make_induction's, two seeds).
inline patching::PatchingData induction_patching_data(int64_t n, int64_t half_len, int64_t j, int64_t d_vocab,
                                                      int64_t seed) {
  using core::tasks::InductionOptions;
  const at::Tensor a = core::tasks::make_induction(InductionOptions{}.n(n).half_len(half_len)
                                                       .d_vocab(d_vocab).seed(seed))
                           .tokens.to(at::kLong);  // [n, 1 + 2L]: BOS a_1..a_L a_1..a_L
  const at::Tensor b = core::tasks::make_induction(InductionOptions{}.n(n).half_len(half_len)
                                                       .d_vocab(d_vocab).seed(seed + 1000))
                           .tokens.to(at::kLong);  // [n, 1 + 2L]
  patching::PatchingData d;
  d.clean_tokens = a.narrow(1, 0, 1 + half_len + j).contiguous();      // [n, 1 + L + j]
  d.corrupted_tokens = at::cat({b.narrow(1, 0, 1 + half_len), a.narrow(1, 1 + half_len, j)}, 1);  // [n, 1 + L + j]
  d.answer_tokens = a.narrow(1, 1 + j, 1).contiguous();  // a_{j+1}: [n, 1]
  d.wrong_tokens = b.narrow(1, 1 + j, 1).contiguous();   // b_{j+1}: [n, 1]
  return d;
}

}  // namespace mechlab::testing
