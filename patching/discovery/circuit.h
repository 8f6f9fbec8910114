// A circuit: which edges of the circuit graph (patching/circuit_graph.h) a
// discovery method keeps, with a score per edge. ACDC, edge attribution
// (EAP, EAP-IG) and their evaluation all speak this one type.
//
// Two kinds of prunable edge, as the reference ACDC (Conmy et al. 2023,
// acdc/TLACDCCorrespondence.py) has them:
//   residual    "SENDER -> RECEIVER" of the circuit graph, e.g. "a0.h3 -> a1.h2<q>":
//               the sender's output reaches the receiver input through the
//               residual stream (the reference's ADDITION edges).
//   head input  "a1.h2<q> -> a1.h2" (and <k>, <v>): the head's query (key,
//               value) input feeds the head (the reference's DIRECT_COMPUTATION
//               edge hook_q_input -> hook_q). Removing it gives the head its
//               ablated q input, which equals removing every residual edge
//               into a1.h2<q> (the input is the sum of its senders); ACDC tries
//               it before those edges. In GQA models <k>/<v> name kv heads.
// The MLP input -> MLP and q/k/v -> head links cannot be pruned (the
// reference's PLACEHOLDER edges) and are not edges here.
//
// A removed edge means: the receiver reads the sender's ablated contribution
// (corrupted run, mean or zero) instead of its contribution in this run.
//
// Position split (optional; auto-circuit's per-token-position edges): a
// circuit made with n_positions = P > 0 holds every prunable edge once per
// token position p = 0..P-1 (the prompts' common length). The residual edge
// "a0.h3 -> a1.h2<k> @5" is the receiver input at position 5 reading the
// sender's output at position 5 (the residual stream is per position); the
// head-input edge "a1.h2<q> -> a1.h2 @5" is the head's query input at
// position 5. Removing an edge at every position is removing the unsplit
// edge. An unsplit circuit (n_positions 0) has edges with pos = -1, as before.
//
// Example:
//   Circuit c = Circuit::full(CircuitGraph(model.cfg()));
//   c.set_kept(c.parse_edge("a0.h3 -> a1.h2<q>"), false);
//   at::Tensor removed = c.removed_mask();      // [receivers, senders], what the forward patches
//   for (const CircuitEdge& e : c.edges()) if (c.kept(e)) std::cout << c.edge_name(e) << "\n";
#pragma once

#include "patching/circuit_graph.h"

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace mechlab::discovery {

/// One prunable edge, by index into its graph's canonical lists.
struct CircuitEdge {
  enum class Kind { residual, head_input };
  Kind kind = Kind::residual;
  int64_t sender = -1;    ///< residual: index into graph.senders(); head_input: -1
  int64_t receiver = -1;  ///< index into graph.receivers() (head_input: a q/k/v receiver)
  int64_t pos = -1;       ///< token position in a position-split circuit; -1 in an unsplit one
  bool operator==(const CircuitEdge& o) const {
    return kind == o.kind && sender == o.sender && receiver == o.receiver && pos == o.pos;
  }
};

class Circuit {
 public:
  /// Copies are independent: editing a copy leaves the original as it was.
  Circuit(const Circuit& other) = default;
  Circuit& operator=(const Circuit& other) = default;
  Circuit(Circuit&&) = default;
  Circuit& operator=(Circuit&&) = default;

  /// Every edge kept, no scores. `n_positions` > 0 splits every edge by
  /// token position (see the top of this file); 0 = unsplit.
  static Circuit full(const patching::CircuitGraph& graph, int64_t n_positions = 0);
  /// Every edge removed, no scores.
  static Circuit empty(const patching::CircuitGraph& graph, int64_t n_positions = 0);

  const patching::CircuitGraph& graph() const { return graph_; }
  /// Token positions of a position-split circuit; 0 when unsplit.
  int64_t n_positions() const { return n_positions_; }
  bool split() const { return n_positions_ > 0; }
  /// Names of the positions for output (token labels, e.g. "5:Mary"); empty
  /// = the numbers. Must name every position of a split circuit.
  const std::vector<std::string>& position_labels() const { return position_labels_; }
  void set_position_labels(std::vector<std::string> labels);
  /// Same graph and the same split as `o` (both unsplit, or both P positions).
  bool same_shape(const Circuit& o) const;

  /// Every prunable edge of the graph: for each receiver in canonical order,
  /// its head-input edge (q/k/v receivers) and then its residual edges,
  /// senders in canonical order; split: each edge at positions 0..P-1.
  const std::vector<CircuitEdge>& edges() const { return edges_; }
  /// "a0.h3 -> a1.h2<q>" or "a1.h2<q> -> a1.h2"; split: ` @p` appended,
  /// `a0.h3 -> a1.h2<q> @5`.
  std::string edge_name(const CircuitEdge& e) const;
  /// Inverse of edge_name; also accepts any spacing around "->" and `@`.
  /// Unknown nodes, non-edges, a head-input edge whose head differs, a
  /// position out of range, a position missing in a split circuit and one
  /// given to an unsplit circuit are errors naming the text.
  CircuitEdge parse_edge(const std::string& text) const;

  bool kept(const CircuitEdge& e) const;
  void set_kept(const CircuitEdge& e, bool kept);
  /// NaN where no score was set.
  double score(const CircuitEdge& e) const;
  void set_score(const CircuitEdge& e, double score);

  /// Kept edges, both kinds (the reference's count_no_edges).
  int64_t edge_count() const;

  /// float32 [receivers, senders] on the CPU, 1 where the forward must patch
  /// the edge (residual edge removed, or its receiver's head-input edge
  /// removed), 0 elsewhere (kept edges and non-edges): the mask of
  /// kernels::edge_patch. Split: [positions, receivers, senders].
  at::Tensor removed_mask() const;

  /// bool [senders, receivers] (false where no edge exists) and bool
  /// [receivers] (head-input edges; true for MLP and output receivers), new
  /// tensors. Split: a leading [positions] axis.
  at::Tensor kept_residual() const;
  at::Tensor kept_head_input() const;

  /// The circuit without dangling edges: an edge stays only if its sender
  /// is reached from `input` through kept edges (a head is reached when one
  /// of its q/k/v inputs has a kept head-input edge and a kept edge from a
  /// reached sender) and its receiver's node reaches `output`. Scores stay.
  /// Split: per (node, position); a head at position p reads its query at p
  /// and its keys and values at every position <= p (causal attention), so
  /// its `<k>`/`<v>` input at p reaches it at p' >= p.
  Circuit without_dangling() const;

  /// Heads and MLPs with at least one kept outgoing residual edge, in
  /// canonical order ("a1.h2", "m0"); split: each (node, position) with
  /// one, `a1.h2 @5`.
  std::vector<std::string> nodes() const;

  /// {"n_edges", "n_kept", "edges": [{"edge", "kind", "kept", "score"}...]}
  /// (score null where unset), every edge in edges() order. Split: also
  /// "n_positions", "position_labels" and each edge's "position".
  nlohmann::json to_json() const;
  /// Reads to_json's form; the edge list must name exactly this graph's
  /// edges (an edge of another model is an error naming it).
  static Circuit from_json(const patching::CircuitGraph& graph, const nlohmann::json& j);

 private:
  Circuit(const patching::CircuitGraph& graph, int64_t n_positions);

  // pos = -1 (unsplit) is position 0 of the one-position storage.
  size_t idx(int64_t s, int64_t r, int64_t p = 0) const { return static_cast<size_t>((p * S_ + s) * R_ + r); }
  size_t ridx(int64_t r, int64_t p = 0) const { return static_cast<size_t>(p * R_ + r); }
  // The storage position of an edge; a position that does not fit the split is an error.
  int64_t pos_of(const CircuitEdge& e) const;

  // Plain vectors, not tensors: ACDC and the evaluation flip and read single
  // flags thousands of times, and a tensor element access costs a dispatch.
  patching::CircuitGraph graph_;
  int64_t S_ = 0, R_ = 0;
  int64_t n_positions_ = 0;  // 0 = unsplit; the storage has max(1, n_positions_) positions
  std::vector<std::string> position_labels_;
  std::vector<CircuitEdge> edges_;
  std::vector<uint8_t> exists_;        // [senders * receivers]: a residual edge exists
  std::vector<uint8_t> kept_;          // [positions * senders * receivers]
  std::vector<uint8_t> input_kept_;    // [positions * receivers]
  std::vector<double> scores_;         // [positions * senders * receivers], NaN = unset
  std::vector<double> input_scores_;   // [positions * receivers]
};

}  // namespace mechlab::discovery
