// The circuit graph (docs/ARCHITECTURE.md, "Circuit graph and edge names")
// and its one text format for nodes, receiver inputs and edges, shared by
// path patching, edge attribution, the CLI, the JSON/HDF5 outputs and
// (later) ACDC.
//
// Nodes (senders write to the residual stream):
//   input          the embedding (token + positional): blocks.0.hook_resid_pre
//   a{L}.h{H}      attention head H of layer L: its hook_z slice times W_O[H]
//   m{L}           the MLP of layer L: blocks.L.hook_mlp_out
//   output         the logits (receiver only)
// Receiver inputs (what reads the residual stream):
//   a{L}.h{H}<q>   the query input of head H: blocks.L.hook_q_input[:, :, H]
//   a{L}.h{H}<k>   the key input of (kv) head H: blocks.L.hook_k_input[:, :, H]
//   a{L}.h{H}<v>   the value input of (kv) head H: blocks.L.hook_v_input[:, :, H]
//   m{L}           the MLP input: blocks.L.hook_mlp_in
//   output         the final residual stream: blocks.{n_layers-1}.hook_resid_post
// Edges:
//   "SENDER -> RECEIVER", e.g. "a0.h3 -> a1.h2<q>", "input -> m0", "m1 -> output"
//   (the parser accepts any spaces around "->", the printer writes one each side).
//
// An edge sender -> receiver exists when the sender writes the residual stream
// before the receiver reads it: input feeds everything; a{l} feeds layers
// L > l and, unless attention and MLP run in parallel (GPT-NeoX), m{l}; m{l}
// feeds layers L > l; everything feeds output.
//
// GQA models (n_kv_heads < n_heads) have n_kv_heads key/value inputs per
// layer: in a{L}.h{H}<k> and <v>, H is the kv head (0..n_kv_heads-1), the
// index of hook_k_input's head axis, shared by the query heads of its group.
//
// Canonical order (rows and columns of edge-score matrices): senders in
// forward order input, a0.h0..a0.h{n-1}, m0, a1.h0, ..., m{N-1}; receivers
// per layer a{L}.h*<q>, a{L}.h*<k>, a{L}.h*<v>, m{L}, then output.
//
// Example:
//   CircuitGraph g(model.cfg());
//   Edge e = g.parse_edge("a0.h3 -> a1.h2<q>");   // throws on unknown nodes or no such edge
//   PathSpec p = g.parse_path("a0.h1+m0 -> a1.h2<q>+output");
//   g.edge_name(e);                                // "a0.h3 -> a1.h2<q>"
#pragma once

#include "core/model/model_config.h"

#include <cstdint>
#include <string>
#include <vector>

namespace mechlab::patching {

/// A node of the circuit graph.
struct CircuitNode {
  enum class Kind { input, head, mlp, output };
  Kind kind = Kind::input;
  int layer = -1;  ///< -1 for input and output
  int head = -1;   ///< heads only (kv head for `<k>`/`<v>` receivers of GQA models)
  bool operator==(const CircuitNode& o) const {
    return kind == o.kind && layer == o.layer && head == o.head;
  }
};

/// What a receiver reads: one of a head's three inputs, or the whole residual.
enum class ReceiverChannel { q, k, v, resid };

/// A receiver input: a head's q/k/v input, an MLP's input, or the output.
struct ReceiverInput {
  CircuitNode node;
  ReceiverChannel channel = ReceiverChannel::resid;
  bool operator==(const ReceiverInput& o) const { return node == o.node && channel == o.channel; }
};

struct Edge {
  CircuitNode sender;
  ReceiverInput receiver;
};

/// A path-patching spec: a set of senders to a set of receiver inputs,
/// written "SENDERS -> RECEIVERS" with '+' between nodes, e.g.
/// "a0.h1+m0 -> a1.h2<q>+output".
struct PathSpec {
  std::vector<CircuitNode> senders;
  std::vector<ReceiverInput> receivers;
};

class CircuitGraph {
 public:
  explicit CircuitGraph(core::ModelConfig cfg);

  const core::ModelConfig& cfg() const { return cfg_; }

  /// Every sender / receiver input in canonical order (see the top of this file).
  const std::vector<CircuitNode>& senders() const { return senders_; }
  const std::vector<ReceiverInput>& receivers() const { return receivers_; }
  /// Every edge, receivers in canonical order, then senders in canonical order.
  std::vector<Edge> edges() const;
  int64_t sender_index(const CircuitNode& s) const;
  int64_t receiver_index(const ReceiverInput& r) const;

  /// Whether `s` writes the residual stream before `r` reads it.
  bool has_edge(const CircuitNode& s, const ReceiverInput& r) const;

  /// Parsing: unknown names, layers or heads out of range, an MLP in an
  /// attention-only model, a head receiver without <q|k|v>, and (for edges)
  /// a receiver that reads before the sender writes are mechlab::Errors
  /// naming the text and what is valid.
  CircuitNode parse_sender(const std::string& text) const;
  ReceiverInput parse_receiver(const std::string& text) const;
  Edge parse_edge(const std::string& text) const;
  /// "a0.h1+m0" -> nodes; the separator is '+', spaces ignored.
  std::vector<CircuitNode> parse_senders(const std::string& text) const;
  std::vector<ReceiverInput> parse_receivers(const std::string& text) const;
  /// "SENDERS -> RECEIVERS" (the one parser of path specs, used by the CLI and
  /// PatchPlan). Errors: no "->" or more than one, an empty side, a node that
  /// does not parse, and a spec in which no sender has an edge to any
  /// receiver (then there is no path to patch).
  PathSpec parse_path(const std::string& text) const;

  /// The hook whose activation (base vs source difference) is this sender's
  /// output: blocks.0.hook_resid_pre, blocks.L.attn.hook_z (head slice, times
  /// W_O) or blocks.L.hook_mlp_out.
  std::string sender_hook(const CircuitNode& s) const;
  /// The hook holding this receiver input (head slice for q/k/v, see above).
  std::string receiver_hook(const ReceiverInput& r) const;

 private:
  void check_node(const CircuitNode& n, ReceiverChannel channel, const std::string& text) const;

  core::ModelConfig cfg_;
  std::vector<CircuitNode> senders_;
  std::vector<ReceiverInput> receivers_;
};

/// "input", "a1.h2", "m0", "output".
std::string node_name(const CircuitNode& n);
/// "a1.h2<q>", "m0", "output".
std::string receiver_name(const ReceiverInput& r);
/// "a0.h3 -> a1.h2<q>".
std::string edge_name(const Edge& e);
/// "a0.h1+m0 -> a1.h2<q>+output" (parse_path's format, one space each side of "->").
std::string path_name(const PathSpec& p);

}  // namespace mechlab::patching
