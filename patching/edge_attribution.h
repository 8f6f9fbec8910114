// Edge attribution patching (EAP: Syed et al. 2023, "Attribution Patching
// Outperforms Automated Circuit Discovery") and EAP-IG (Hanna et al. 2024,
// inputs variant) over every edge of the circuit graph (patching/circuit_graph.h):
//
//   score(s -> r) = sum over batch, pos, d_model of
//                   (sender s's output, source - base) . dmetric/d(receiver input r)
//
// with the sender differences of patching/sender_delta.h and the gradient at
// the receiver's own input hook (hook_q_input/k_input/v_input head slice,
// hook_mlp_in, the final hook_resid_post), from the passes of
// patching/attribution.h: attribution = one source forward + one base
// forward and backward; eap-ig = gradients averaged over m interpolated
// input embeddings. A score estimates the metric change when only that edge
// is patched (the sender's contribution to that one receiver input replaced
// by its source value).
//
// Cost: attention runs in its normal (fused) mode; a head input's gradient
// is derived from the gradient at the projected hook_q/k/v through W^T and
// ln1's Jacobian (one elementwise pass per layer), which is what autograd
// would give in TransformerLens's split-input mode. Scores are computed inside the
// backward, receiver layer by receiver layer, as one matrix product of the
// sender differences [senders, batch*pos*d_model] with the gradients
// [receivers of the layer, batch*pos*d_model], so no gradient is kept.
// `mechlab bench patch` reports the cost in forward-pass equivalents.
//
// Since a receiver input's source-minus-base difference is the sum of its
// senders' differences, the scores of a receiver's incoming edges add up to
// the node attribution of that receiver input (tests/patching checks this).
//
// Per position (AttributionOptions::split_positions): the same sum without
// the sum over positions, scores [pos, senders, receivers]: score(s -> r @p)
// is the estimated change when only receiver r's input at position p reads
// s's source output at p (the edges of a position-split Circuit). Summed
// over positions they are the unsplit scores (linear in the position sum).
//
// Example:
//   EdgeScores e = edge_attribution(model, data, logit_diff(data.answers()));
//   e.score(e.graph.parse_edge("a0.h3 -> a1.h2<q>"));
//   for (auto& [edge, s] : e.top(20)) std::cout << edge_name(edge) << " " << s << "\n";
#pragma once

#include "hooks/hooked_transformer.h"
#include "patching/attribution.h"
#include "patching/circuit_graph.h"
#include "patching/sweeps.h"

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <string>
#include <utility>
#include <vector>

namespace mechlab::patching {

struct EdgeScores {
  CircuitGraph graph;
  /// [senders, receivers] in the graph's canonical order; NaN where no edge
  /// exists. float32 (float64 for float64 models), on the CPU. Split by
  /// position: [pos, senders, receivers].
  at::Tensor scores;
  nlohmann::json config;  ///< method, steps, direction, metric, baselines, passes, model

  /// Positions of per-position scores; 0 when the scores are summed over positions.
  int64_t n_positions() const { return scores.defined() && scores.dim() == 3 ? scores.size(0) : 0; }

  /// One scored edge; pos = -1 for scores summed over positions.
  struct Entry {
    Edge edge;
    int64_t pos = -1;
    double score = 0;
  };
  /// Every edge (at every position when split) with its score, in the graph's
  /// edge order, positions innermost.
  std::vector<Entry> entries() const;
  /// "a0.h3 -> a1.h2<q>", with ` @p` when split (Circuit's edge names).
  static std::string entry_name(const Entry& e);

  /// The score of one edge (must exist); `pos` for per-position scores.
  double score(const Edge& e, int64_t pos = -1) const;
  /// Every edge with its score, in the graph's edge order (unsplit scores only).
  std::vector<std::pair<Edge, double>> all() const;
  /// The k edges of largest |score|, largest first (all when k <= 0) (unsplit scores only).
  std::vector<std::pair<Edge, double>> top(int64_t k) const;
  /// As a sweep result for the patching results file: sweep "edges:<method>",
  /// values [sender, receiver] (NaN where no edge), axes {"sender", "receiver"},
  /// labels the node and receiver names; split: a leading "pos" axis.
  SweepResult as_result() const;
  /// {"edge": "a0.h3 -> a1.h2<q>", "score": ...} for the top k edges (split:
  /// (edge, position) pairs, `a0.h3 -> a1.h2<q> @5` and "position"), plus the config.
  nlohmann::json to_json(int64_t k) const;
};

EdgeScores edge_attribution(hooks::HookedTransformer& model, const PatchingData& data,
                            const Metric& metric, const AttributionOptions& options = {});

}  // namespace mechlab::patching
