#include "patching/discovery/circuit.h"

#include "core/util/error.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>

namespace mechlab::discovery {

namespace {

using patching::CircuitGraph;
using patching::CircuitNode;
using patching::ReceiverChannel;
using patching::ReceiverInput;
using Kind = CircuitNode::Kind;

bool is_head_input(const ReceiverInput& r) { return r.node.kind == Kind::head; }

std::string strip(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

// Query heads whose attention reads receiver r (one for <q>; a GQA group for <k>/<v>).
std::vector<int> heads_reading(const core::ModelConfig& cfg, const ReceiverInput& r) {
  if (r.channel == ReceiverChannel::q) return {r.node.head};
  const int group = cfg.n_heads / cfg.kv_heads();
  std::vector<int> out;
  for (int h = r.node.head * group; h < (r.node.head + 1) * group; ++h) out.push_back(h);
  return out;
}

}  // namespace

Circuit::Circuit(const CircuitGraph& graph) : graph_(graph) {
  const auto S = static_cast<int64_t>(graph_.senders().size());
  const auto R = static_cast<int64_t>(graph_.receivers().size());
  kept_ = at::zeros({S, R}, at::kBool);
  input_kept_ = at::ones({R}, at::kBool);
  scores_ = at::full({S, R}, std::numeric_limits<double>::quiet_NaN(), at::kDouble);
  input_scores_ = at::full({R}, std::numeric_limits<double>::quiet_NaN(), at::kDouble);
  for (int64_t r = 0; r < R; ++r) {
    const ReceiverInput& rec = graph_.receivers()[static_cast<size_t>(r)];
    if (is_head_input(rec)) edges_.push_back({CircuitEdge::Kind::head_input, -1, r});
    for (int64_t s = 0; s < S; ++s) {
      if (graph_.has_edge(graph_.senders()[static_cast<size_t>(s)], rec)) {
        edges_.push_back({CircuitEdge::Kind::residual, s, r});
      }
    }
  }
}

Circuit::Circuit(const Circuit& o)
    : graph_(o.graph_),
      edges_(o.edges_),
      kept_(o.kept_.clone()),
      input_kept_(o.input_kept_.clone()),
      scores_(o.scores_.clone()),
      input_scores_(o.input_scores_.clone()) {}

Circuit& Circuit::operator=(const Circuit& o) {
  if (this != &o) *this = Circuit(o);
  return *this;
}

Circuit Circuit::full(const CircuitGraph& graph) {
  Circuit c(graph);
  for (const CircuitEdge& e : c.edges_) c.set_kept(e, true);
  return c;
}

Circuit Circuit::empty(const CircuitGraph& graph) {
  Circuit c(graph);
  for (const CircuitEdge& e : c.edges_) c.set_kept(e, false);
  return c;
}

std::string Circuit::edge_name(const CircuitEdge& e) const {
  const ReceiverInput& r = graph_.receivers().at(static_cast<size_t>(e.receiver));
  if (e.kind == CircuitEdge::Kind::head_input) {
    return patching::receiver_name(r) + " -> " + patching::node_name(r.node);
  }
  return patching::edge_name({graph_.senders().at(static_cast<size_t>(e.sender)), r});
}

CircuitEdge Circuit::parse_edge(const std::string& text) const {
  const size_t arrow = text.find("->");
  MECHLAB_CHECK(arrow != std::string::npos && text.find("->", arrow + 2) == std::string::npos,
                "circuit edge \"", text, "\" must be \"SENDER -> RECEIVER\" (e.g. \"a0.h3 -> a1.h2<q>\") or a "
                "head-input edge \"a1.h2<q> -> a1.h2\"");
  const std::string left = strip(text.substr(0, arrow));
  const std::string right = strip(text.substr(arrow + 2));
  if (left.find('<') != std::string::npos) {
    const ReceiverInput r = graph_.parse_receiver(left);
    const CircuitNode head = graph_.parse_sender(right);
    MECHLAB_CHECK(is_head_input(r) && head.kind == Kind::head && head.layer == r.node.layer &&
                      head.head == r.node.head,
                  "head-input edge \"", text, "\" must join a head's input to the same head, e.g. \"",
                  left, " -> ", patching::node_name(r.node), "\"");
    return {CircuitEdge::Kind::head_input, -1, graph_.receiver_index(r)};
  }
  const patching::Edge e = graph_.parse_edge(text);
  return {CircuitEdge::Kind::residual, graph_.sender_index(e.sender), graph_.receiver_index(e.receiver)};
}

bool Circuit::kept(const CircuitEdge& e) const {
  if (e.kind == CircuitEdge::Kind::head_input) return input_kept_[e.receiver].item<bool>();
  return kept_[e.sender][e.receiver].item<bool>();
}

void Circuit::set_kept(const CircuitEdge& e, bool kept) {
  if (e.kind == CircuitEdge::Kind::head_input) {
    input_kept_[e.receiver] = kept;
  } else {
    kept_[e.sender][e.receiver] = kept;
  }
}

double Circuit::score(const CircuitEdge& e) const {
  if (e.kind == CircuitEdge::Kind::head_input) return input_scores_[e.receiver].item<double>();
  return scores_[e.sender][e.receiver].item<double>();
}

void Circuit::set_score(const CircuitEdge& e, double score) {
  if (e.kind == CircuitEdge::Kind::head_input) {
    input_scores_[e.receiver] = score;
  } else {
    scores_[e.sender][e.receiver] = score;
  }
}

int64_t Circuit::edge_count() const {
  // Head-input edges exist only for head receivers; MLP/output entries are always true.
  int64_t heads = 0;
  for (const ReceiverInput& r : graph_.receivers()) heads += is_head_input(r) ? 0 : 1;
  return kept_.sum().item<int64_t>() + input_kept_.sum().item<int64_t>() - heads;
}

at::Tensor Circuit::removed_mask() const {
  // Residual edges that exist but are removed, or whose receiver's input is removed.
  at::Tensor exists = at::zeros_like(kept_);
  auto ex = exists.accessor<bool, 2>();
  for (const CircuitEdge& e : edges_) {
    if (e.kind == CircuitEdge::Kind::residual) ex[e.sender][e.receiver] = true;
  }
  at::Tensor removed = exists.logical_and(kept_.logical_and(input_kept_.unsqueeze(0)).logical_not());
  return removed.t().contiguous().to(at::kFloat);  // [receivers, senders]
}

Circuit Circuit::without_dangling() const {
  const auto& senders = graph_.senders();
  const auto& receivers = graph_.receivers();
  const auto S = static_cast<int64_t>(senders.size());
  const auto R = static_cast<int64_t>(receivers.size());
  auto kept = kept_.accessor<bool, 2>();
  auto input_kept = input_kept_.accessor<bool, 1>();
  const core::ModelConfig& cfg = graph_.cfg();

  // Sender index of the node that reads receiver r, or -1 for output. For
  // <k>/<v> receivers of GQA models several heads read it (heads_reading).
  auto sender_of = [&](const CircuitNode& n) { return graph_.sender_index(n); };

  // Forward: which senders are reached from input through kept edges.
  std::vector<char> reached(static_cast<size_t>(S), 0);
  auto receiver_fed = [&](int64_t r) {  // a kept edge from a reached sender, and the input edge kept
    if (!input_kept[r]) return false;
    for (int64_t s = 0; s < S; ++s) {
      if (reached[static_cast<size_t>(s)] && kept[s][r]) return true;
    }
    return false;
  };
  std::vector<char> fed(static_cast<size_t>(R), 0);
  for (int64_t s = 0; s < S; ++s) {  // canonical order is forward order: senders before their readers
    const CircuitNode& n = senders[static_cast<size_t>(s)];
    if (n.kind == Kind::input) {
      reached[static_cast<size_t>(s)] = 1;
      continue;
    }
    for (int64_t r = 0; r < R; ++r) {
      const ReceiverInput& rec = receivers[static_cast<size_t>(r)];
      if (rec.node.kind != n.kind || rec.node.layer != n.layer) continue;
      if (n.kind == Kind::head) {
        const auto hs = heads_reading(cfg, rec);
        if (std::find(hs.begin(), hs.end(), n.head) == hs.end()) continue;
      }
      if (receiver_fed(r)) reached[static_cast<size_t>(s)] = 1;
    }
  }
  for (int64_t r = 0; r < R; ++r) fed[static_cast<size_t>(r)] = receiver_fed(r) ? 1 : 0;

  // Backward: which receivers' nodes reach output through kept edges.
  std::vector<char> useful(static_cast<size_t>(S), 0);  // sender's output reaches output
  auto receiver_useful = [&](int64_t r) {
    const ReceiverInput& rec = receivers[static_cast<size_t>(r)];
    if (rec.node.kind == Kind::output) return true;
    if (!input_kept[r]) return false;
    if (rec.node.kind == Kind::mlp) return useful[static_cast<size_t>(sender_of(rec.node))] != 0;
    for (int h : heads_reading(cfg, rec)) {
      if (useful[static_cast<size_t>(sender_of({Kind::head, rec.node.layer, h}))]) return true;
    }
    return false;
  };
  for (int64_t s = S - 1; s >= 0; --s) {  // readers come after their senders
    for (int64_t r = 0; r < R; ++r) {
      if (kept[s][r] && receiver_useful(r)) {
        useful[static_cast<size_t>(s)] = 1;
        break;
      }
    }
  }

  Circuit out = *this;  // a deep copy
  for (const CircuitEdge& e : edges_) {
    if (!this->kept(e)) continue;
    bool keep;
    if (e.kind == CircuitEdge::Kind::head_input) {
      keep = fed[static_cast<size_t>(e.receiver)] && receiver_useful(e.receiver);
    } else {
      keep = reached[static_cast<size_t>(e.sender)] && receiver_useful(e.receiver) &&
             fed[static_cast<size_t>(e.receiver)];
    }
    if (!keep) out.set_kept(e, false);
  }
  return out;
}

std::vector<std::string> Circuit::nodes() const {
  std::vector<std::string> out;
  const auto& senders = graph_.senders();
  for (size_t s = 0; s < senders.size(); ++s) {
    if (senders[s].kind == Kind::input) continue;
    if (kept_[static_cast<int64_t>(s)].any().item<bool>()) out.push_back(patching::node_name(senders[s]));
  }
  return out;
}

nlohmann::json Circuit::to_json() const {
  nlohmann::json list = nlohmann::json::array();
  for (const CircuitEdge& e : edges_) {
    const double sc = score(e);
    list.push_back({{"edge", edge_name(e)},
                    {"kind", e.kind == CircuitEdge::Kind::head_input ? "head_input" : "residual"},
                    {"kept", kept(e)},
                    {"score", std::isnan(sc) ? nlohmann::json(nullptr) : nlohmann::json(sc)}});
  }
  return {{"n_edges", static_cast<int64_t>(edges_.size())}, {"n_kept", edge_count()}, {"edges", list}};
}

Circuit Circuit::from_json(const CircuitGraph& graph, const nlohmann::json& j) {
  Circuit c(graph);
  MECHLAB_CHECK(j.is_object() && j.contains("edges") && j["edges"].is_array(),
                "a circuit must be a JSON object with an \"edges\" array");
  std::vector<char> seen(c.edges_.size(), 0);
  for (const auto& item : j["edges"]) {
    MECHLAB_CHECK(item.is_object() && item.contains("edge") && item["edge"].is_string() &&
                      item.contains("kept") && item["kept"].is_boolean(),
                  "each circuit edge must be an object with \"edge\" (text) and \"kept\" (true/false)");
    const std::string name = item["edge"].get<std::string>();
    const CircuitEdge e = c.parse_edge(name);
    const auto it = std::find(c.edges_.begin(), c.edges_.end(), e);
    MECHLAB_ASSERT(it != c.edges_.end());
    const size_t idx = static_cast<size_t>(it - c.edges_.begin());
    MECHLAB_CHECK(!seen[idx], "circuit edge \"", name, "\" is listed twice");
    seen[idx] = 1;
    c.set_kept(e, item["kept"].get<bool>());
    if (item.contains("score") && item["score"].is_number()) c.set_score(e, item["score"].get<double>());
  }
  for (size_t i = 0; i < seen.size(); ++i) {
    MECHLAB_CHECK(seen[i], "the circuit lacks edge \"", c.edge_name(c.edges_[i]),
                  "\" of this model's graph; was it made for another model?");
  }
  return c;
}

}  // namespace mechlab::discovery
