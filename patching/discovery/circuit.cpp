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
  S_ = static_cast<int64_t>(graph_.senders().size());
  R_ = static_cast<int64_t>(graph_.receivers().size());
  const auto SR = static_cast<size_t>(S_ * R_);
  exists_.assign(SR, 0);
  kept_.assign(SR, 0);
  input_kept_.assign(static_cast<size_t>(R_), 1);
  scores_.assign(SR, std::numeric_limits<double>::quiet_NaN());
  input_scores_.assign(static_cast<size_t>(R_), std::numeric_limits<double>::quiet_NaN());
  for (int64_t r = 0; r < R_; ++r) {
    const ReceiverInput& rec = graph_.receivers()[static_cast<size_t>(r)];
    if (is_head_input(rec)) edges_.push_back({CircuitEdge::Kind::head_input, -1, r});
    for (int64_t s = 0; s < S_; ++s) {
      if (graph_.has_edge(graph_.senders()[static_cast<size_t>(s)], rec)) {
        edges_.push_back({CircuitEdge::Kind::residual, s, r});
        exists_[idx(s, r)] = 1;
      }
    }
  }
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
  if (e.kind == CircuitEdge::Kind::head_input) return input_kept_.at(static_cast<size_t>(e.receiver)) != 0;
  return kept_.at(idx(e.sender, e.receiver)) != 0;
}

void Circuit::set_kept(const CircuitEdge& e, bool kept) {
  if (e.kind == CircuitEdge::Kind::head_input) {
    input_kept_.at(static_cast<size_t>(e.receiver)) = kept ? 1 : 0;
  } else {
    kept_.at(idx(e.sender, e.receiver)) = kept ? 1 : 0;
  }
}

double Circuit::score(const CircuitEdge& e) const {
  if (e.kind == CircuitEdge::Kind::head_input) return input_scores_.at(static_cast<size_t>(e.receiver));
  return scores_.at(idx(e.sender, e.receiver));
}

void Circuit::set_score(const CircuitEdge& e, double score) {
  if (e.kind == CircuitEdge::Kind::head_input) {
    input_scores_.at(static_cast<size_t>(e.receiver)) = score;
  } else {
    scores_.at(idx(e.sender, e.receiver)) = score;
  }
}

int64_t Circuit::edge_count() const {
  // Head-input flags count only for head receivers (MLP/output entries are always 1).
  int64_t n = 0;
  for (uint8_t k : kept_) n += k;
  for (int64_t r = 0; r < R_; ++r) {
    if (is_head_input(graph_.receivers()[static_cast<size_t>(r)])) n += input_kept_[static_cast<size_t>(r)];
  }
  return n;
}

at::Tensor Circuit::kept_residual() const {
  return at::tensor(at::ArrayRef<uint8_t>(kept_), at::kByte).view({S_, R_}).to(at::kBool);
}

at::Tensor Circuit::kept_head_input() const {
  return at::tensor(at::ArrayRef<uint8_t>(input_kept_), at::kByte).to(at::kBool);
}

at::Tensor Circuit::removed_mask() const {
  // Residual edges that exist but are removed, or whose receiver's input is removed.
  at::Tensor removed = at::zeros({R_, S_}, at::kFloat);  // [receivers, senders]
  float* m = removed.data_ptr<float>();
  for (int64_t s = 0; s < S_; ++s) {
    for (int64_t r = 0; r < R_; ++r) {
      if (exists_[idx(s, r)] && !(kept_[idx(s, r)] && input_kept_[static_cast<size_t>(r)])) m[r * S_ + s] = 1.f;
    }
  }
  return removed;
}

Circuit Circuit::without_dangling() const {
  const auto& senders = graph_.senders();
  const auto& receivers = graph_.receivers();
  const auto S = static_cast<int64_t>(senders.size());
  const auto R = static_cast<int64_t>(receivers.size());
  auto kept = [&](int64_t s, int64_t r) { return kept_[idx(s, r)] != 0; };
  auto input_kept = [&](int64_t r) { return input_kept_[static_cast<size_t>(r)] != 0; };
  const core::ModelConfig& cfg = graph_.cfg();

  // Sender index of the node that reads receiver r, or -1 for output. For
  // <k>/<v> receivers of GQA models several heads read it (heads_reading).
  auto sender_of = [&](const CircuitNode& n) { return graph_.sender_index(n); };

  // Forward: which senders are reached from input through kept edges.
  std::vector<char> reached(static_cast<size_t>(S), 0);
  auto receiver_fed = [&](int64_t r) {  // a kept edge from a reached sender, and the input edge kept
    if (!input_kept(r)) return false;
    for (int64_t s = 0; s < S; ++s) {
      if (reached[static_cast<size_t>(s)] && kept(s, r)) return true;
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
    if (!input_kept(r)) return false;
    if (rec.node.kind == Kind::mlp) return useful[static_cast<size_t>(sender_of(rec.node))] != 0;
    for (int h : heads_reading(cfg, rec)) {
      if (useful[static_cast<size_t>(sender_of({Kind::head, rec.node.layer, h}))]) return true;
    }
    return false;
  };
  for (int64_t s = S - 1; s >= 0; --s) {  // readers come after their senders
    for (int64_t r = 0; r < R; ++r) {
      if (kept(s, r) && receiver_useful(r)) {
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
    bool any = false;
    for (int64_t r = 0; r < R_ && !any; ++r) any = kept_[idx(static_cast<int64_t>(s), r)] != 0;
    if (any) out.push_back(patching::node_name(senders[s]));
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
