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
  bool operator==(const CircuitEdge& o) const {
    return kind == o.kind && sender == o.sender && receiver == o.receiver;
  }
};

class Circuit {
 public:
  /// Copies are independent: editing a copy leaves the original as it was.
  Circuit(const Circuit& other) = default;
  Circuit& operator=(const Circuit& other) = default;
  Circuit(Circuit&&) = default;
  Circuit& operator=(Circuit&&) = default;

  /// Every edge kept, no scores.
  static Circuit full(const patching::CircuitGraph& graph);
  /// Every edge removed, no scores.
  static Circuit empty(const patching::CircuitGraph& graph);

  const patching::CircuitGraph& graph() const { return graph_; }

  /// Every prunable edge of the graph: for each receiver in canonical order,
  /// its head-input edge (q/k/v receivers) and then its residual edges,
  /// senders in canonical order.
  const std::vector<CircuitEdge>& edges() const { return edges_; }
  /// "a0.h3 -> a1.h2<q>" or "a1.h2<q> -> a1.h2".
  std::string edge_name(const CircuitEdge& e) const;
  /// Inverse of edge_name; also accepts any spacing around "->". Unknown
  /// nodes, non-edges and a head-input edge whose head differs are errors
  /// naming the text.
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
  /// kernels::edge_patch.
  at::Tensor removed_mask() const;

  /// bool [senders, receivers] (false where no edge exists) and bool
  /// [receivers] (head-input edges; true for MLP and output receivers), new tensors.
  at::Tensor kept_residual() const;
  at::Tensor kept_head_input() const;

  /// The circuit without dangling edges: an edge stays only if its sender
  /// is reached from `input` through kept edges (a head is reached when one
  /// of its q/k/v inputs has a kept head-input edge and a kept edge from a
  /// reached sender) and its receiver's node reaches `output`. Scores stay.
  Circuit without_dangling() const;

  /// Heads and MLPs with at least one kept outgoing residual edge, in
  /// canonical order ("a1.h2", "m0").
  std::vector<std::string> nodes() const;

  /// {"n_edges", "n_kept", "edges": [{"edge", "kind", "kept", "score"}...]}
  /// (score null where unset), every edge in edges() order.
  nlohmann::json to_json() const;
  /// Reads to_json's form; the edge list must name exactly this graph's
  /// edges (an edge of another model is an error naming it).
  static Circuit from_json(const patching::CircuitGraph& graph, const nlohmann::json& j);

 private:
  explicit Circuit(const patching::CircuitGraph& graph);

  size_t idx(int64_t s, int64_t r) const { return static_cast<size_t>(s * R_ + r); }

  // Plain vectors, not tensors: ACDC and the evaluation flip and read single
  // flags thousands of times, and a tensor element access costs a dispatch.
  patching::CircuitGraph graph_;
  int64_t S_ = 0, R_ = 0;
  std::vector<CircuitEdge> edges_;
  std::vector<uint8_t> exists_;        // [senders * receivers]: a residual edge exists
  std::vector<uint8_t> kept_;          // [senders * receivers]
  std::vector<uint8_t> input_kept_;    // [receivers]
  std::vector<double> scores_;         // [senders * receivers], NaN = unset
  std::vector<double> input_scores_;   // [receivers]
};

}  // namespace mechlab::discovery
