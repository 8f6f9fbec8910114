#include "patching/discovery/circuit.h"

#include "core/util/error.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>
#include <map>
#include <tuple>

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

Circuit::Circuit(const CircuitGraph& graph, int64_t n_positions) : graph_(graph), n_positions_(n_positions) {
  MECHLAB_CHECK(n_positions >= 0, "circuit n_positions ", n_positions,
                " is negative; give the prompts' length to split by position, or 0");
  S_ = static_cast<int64_t>(graph_.senders().size());
  R_ = static_cast<int64_t>(graph_.receivers().size());
  const int64_t P = std::max<int64_t>(1, n_positions_);
  const auto SR = static_cast<size_t>(S_ * R_);
  exists_.assign(SR, 0);
  kept_.assign(SR * static_cast<size_t>(P), 0);
  input_kept_.assign(static_cast<size_t>(R_ * P), 1);
  scores_.assign(SR * static_cast<size_t>(P), std::numeric_limits<double>::quiet_NaN());
  input_scores_.assign(static_cast<size_t>(R_ * P), std::numeric_limits<double>::quiet_NaN());
  // Unsplit edges have pos -1; split ones each position 0..P-1 (innermost).
  const int64_t p0 = split() ? 0 : -1, p1 = split() ? P : 0;
  for (int64_t r = 0; r < R_; ++r) {
    const ReceiverInput& rec = graph_.receivers()[static_cast<size_t>(r)];
    if (is_head_input(rec)) {
      for (int64_t p = p0; p < p1; ++p) edges_.push_back({CircuitEdge::Kind::head_input, -1, r, p});
    }
    for (int64_t s = 0; s < S_; ++s) {
      if (graph_.has_edge(graph_.senders()[static_cast<size_t>(s)], rec)) {
        for (int64_t p = p0; p < p1; ++p) edges_.push_back({CircuitEdge::Kind::residual, s, r, p});
        exists_[idx(s, r)] = 1;
      }
    }
  }
}

Circuit Circuit::full(const CircuitGraph& graph, int64_t n_positions) {
  Circuit c(graph, n_positions);
  for (const CircuitEdge& e : c.edges_) c.set_kept(e, true);
  return c;
}

Circuit Circuit::empty(const CircuitGraph& graph, int64_t n_positions) {
  Circuit c(graph, n_positions);
  for (const CircuitEdge& e : c.edges_) c.set_kept(e, false);
  return c;
}

void Circuit::set_position_labels(std::vector<std::string> labels) {
  MECHLAB_CHECK(labels.empty() || static_cast<int64_t>(labels.size()) == n_positions_, "position labels: ",
                labels.size(), " labels for a circuit of ", n_positions_,
                " positions; give one label per position (or none)");
  position_labels_ = std::move(labels);
}

bool Circuit::same_shape(const Circuit& o) const {
  return n_positions_ == o.n_positions_ && graph_.senders() == o.graph_.senders() &&
         graph_.receivers() == o.graph_.receivers();
}

int64_t Circuit::pos_of(const CircuitEdge& e) const {
  if (!split()) {
    MECHLAB_CHECK(e.pos == -1, "circuit edge at position ", e.pos,
                  " given to a circuit that is not split by position; use pos = -1");
    return 0;
  }
  MECHLAB_CHECK(e.pos >= 0 && e.pos < n_positions_, "circuit edge position ", e.pos,
                " is outside the circuit's positions 0..", n_positions_ - 1);
  return e.pos;
}

std::string Circuit::edge_name(const CircuitEdge& e) const {
  const ReceiverInput& r = graph_.receivers().at(static_cast<size_t>(e.receiver));
  std::string name = e.kind == CircuitEdge::Kind::head_input
                         ? patching::receiver_name(r) + " -> " + patching::node_name(r.node)
                         : patching::edge_name({graph_.senders().at(static_cast<size_t>(e.sender)), r});
  if (e.pos >= 0) name += " @" + std::to_string(e.pos);
  return name;
}

CircuitEdge Circuit::parse_edge(const std::string& raw) const {
  // "EDGE @p": the position after the last '@'.
  std::string text = raw;
  int64_t pos = -1;
  const size_t at_sign = raw.rfind('@');
  if (at_sign != std::string::npos) {
    const std::string num = strip(raw.substr(at_sign + 1));
    MECHLAB_CHECK(!num.empty() && num.size() <= 9 &&
                      std::all_of(num.begin(), num.end(), [](char ch) { return std::isdigit(static_cast<unsigned char>(ch)); }),
                  "circuit edge \"", strip(raw), "\": the position after '@' must be a token position (a number), e.g. "
                  "\"a0.h3 -> a1.h2<q> @5\"");
    pos = std::stoll(num);
    text = raw.substr(0, at_sign);
    MECHLAB_CHECK(split(), "circuit edge \"", strip(raw), "\" names a position, but the circuit is not split by "
                  "position; drop \" @", pos, "\" or use a position-split circuit");
    MECHLAB_CHECK(pos < n_positions_, "circuit edge \"", strip(raw), "\": position ", pos,
                  " is out of range; the circuit has positions 0..", n_positions_ - 1);
  } else {
    MECHLAB_CHECK(!split(), "circuit edge \"", strip(raw), "\" lacks its position: the circuit is split by "
                  "position; append \" @p\" with p in 0..", n_positions_ - 1, ", e.g. \"", strip(raw), " @0\"");
  }
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
    return {CircuitEdge::Kind::head_input, -1, graph_.receiver_index(r), pos};
  }
  const patching::Edge e = graph_.parse_edge(text);
  return {CircuitEdge::Kind::residual, graph_.sender_index(e.sender), graph_.receiver_index(e.receiver), pos};
}

bool Circuit::kept(const CircuitEdge& e) const {
  const int64_t p = pos_of(e);
  if (e.kind == CircuitEdge::Kind::head_input) return input_kept_.at(ridx(e.receiver, p)) != 0;
  return kept_.at(idx(e.sender, e.receiver, p)) != 0;
}

void Circuit::set_kept(const CircuitEdge& e, bool kept) {
  const int64_t p = pos_of(e);
  if (e.kind == CircuitEdge::Kind::head_input) {
    input_kept_.at(ridx(e.receiver, p)) = kept ? 1 : 0;
  } else {
    kept_.at(idx(e.sender, e.receiver, p)) = kept ? 1 : 0;
  }
}

double Circuit::score(const CircuitEdge& e) const {
  const int64_t p = pos_of(e);
  if (e.kind == CircuitEdge::Kind::head_input) return input_scores_.at(ridx(e.receiver, p));
  return scores_.at(idx(e.sender, e.receiver, p));
}

void Circuit::set_score(const CircuitEdge& e, double score) {
  const int64_t p = pos_of(e);
  if (e.kind == CircuitEdge::Kind::head_input) {
    input_scores_.at(ridx(e.receiver, p)) = score;
  } else {
    scores_.at(idx(e.sender, e.receiver, p)) = score;
  }
}

int64_t Circuit::edge_count() const {
  // Head-input flags count only for head receivers (MLP/output entries are always 1).
  int64_t n = 0;
  for (uint8_t k : kept_) n += k;
  const int64_t P = std::max<int64_t>(1, n_positions_);
  for (int64_t p = 0; p < P; ++p) {
    for (int64_t r = 0; r < R_; ++r) {
      if (is_head_input(graph_.receivers()[static_cast<size_t>(r)])) n += input_kept_[ridx(r, p)];
    }
  }
  return n;
}

at::Tensor Circuit::kept_residual() const {
  at::Tensor t = at::tensor(at::ArrayRef<uint8_t>(kept_), at::kByte).to(at::kBool);
  return split() ? t.view({n_positions_, S_, R_}) : t.view({S_, R_});
}

at::Tensor Circuit::kept_head_input() const {
  at::Tensor t = at::tensor(at::ArrayRef<uint8_t>(input_kept_), at::kByte).to(at::kBool);
  return split() ? t.view({n_positions_, R_}) : t;
}

at::Tensor Circuit::removed_mask() const {
  // Residual edges that exist but are removed, or whose receiver's input is removed.
  const int64_t P = std::max<int64_t>(1, n_positions_);
  at::Tensor removed = at::zeros({P, R_, S_}, at::kFloat);  // [positions, receivers, senders]
  float* m = removed.data_ptr<float>();
  for (int64_t p = 0; p < P; ++p) {
    float* mp = m + p * R_ * S_;
    for (int64_t s = 0; s < S_; ++s) {
      for (int64_t r = 0; r < R_; ++r) {
        if (exists_[idx(s, r)] && !(kept_[idx(s, r, p)] && input_kept_[ridx(r, p)])) mp[r * S_ + s] = 1.f;
      }
    }
  }
  return split() ? removed : removed.squeeze(0);  // unsplit: [receivers, senders]
}

Circuit Circuit::without_dangling() const {
  const auto& senders = graph_.senders();
  const auto& receivers = graph_.receivers();
  const auto S = static_cast<int64_t>(senders.size());
  const auto R = static_cast<int64_t>(receivers.size());
  const int64_t P = std::max<int64_t>(1, n_positions_);
  auto kept = [&](int64_t s, int64_t r, int64_t p) { return kept_[idx(s, r, p)] != 0; };
  auto input_kept = [&](int64_t r, int64_t p) { return input_kept_[ridx(r, p)] != 0; };
  const core::ModelConfig& cfg = graph_.cfg();
  // A head at position p reads its query at p and its keys and values at
  // every position <= p (causal attention); everything else reads position p only.
  auto reads_earlier = [](const ReceiverInput& r) {
    return r.node.kind == Kind::head && r.channel != ReceiverChannel::q;
  };
  auto sp = [&](int64_t s, int64_t p) { return static_cast<size_t>(p * S + s); };

  // Sender index of the node that reads receiver r, or -1 for output. For
  // <k>/<v> receivers of GQA models several heads read it (heads_reading).
  auto sender_of = [&](const CircuitNode& n) { return graph_.sender_index(n); };

  // Forward: which (sender, position) are reached from input through kept edges.
  std::vector<char> reached(static_cast<size_t>(S * P), 0);
  auto receiver_fed = [&](int64_t r, int64_t p) {  // a kept edge from a reached sender, and the input edge kept
    if (!input_kept(r, p)) return false;
    for (int64_t s = 0; s < S; ++s) {
      if (reached[sp(s, p)] && kept(s, r, p)) return true;
    }
    return false;
  };
  std::vector<char> fed(static_cast<size_t>(R * P), 0);
  for (int64_t s = 0; s < S; ++s) {  // canonical order is forward order: senders before their readers
    const CircuitNode& n = senders[static_cast<size_t>(s)];
    if (n.kind == Kind::input) {
      for (int64_t p = 0; p < P; ++p) reached[sp(s, p)] = 1;
      continue;
    }
    for (int64_t r = 0; r < R; ++r) {
      const ReceiverInput& rec = receivers[static_cast<size_t>(r)];
      if (rec.node.kind != n.kind || rec.node.layer != n.layer) continue;
      if (n.kind == Kind::head) {
        const auto hs = heads_reading(cfg, rec);
        if (std::find(hs.begin(), hs.end(), n.head) == hs.end()) continue;
      }
      const bool earlier = reads_earlier(rec);
      bool fed_before = false;  // k/v: fed at some position <= p
      for (int64_t p = 0; p < P; ++p) {
        const bool f = receiver_fed(r, p);
        fed_before = fed_before || f;
        if (earlier ? fed_before : f) reached[sp(s, p)] = 1;
      }
    }
  }
  for (int64_t p = 0; p < P; ++p) {
    for (int64_t r = 0; r < R; ++r) fed[ridx(r, p)] = receiver_fed(r, p) ? 1 : 0;
  }

  // Backward: which receivers' nodes reach output through kept edges.
  std::vector<char> useful(static_cast<size_t>(S * P), 0);  // sender's output at p reaches output
  auto receiver_useful = [&](int64_t r, int64_t p) {
    const ReceiverInput& rec = receivers[static_cast<size_t>(r)];
    if (rec.node.kind == Kind::output) return true;
    if (!input_kept(r, p)) return false;
    if (rec.node.kind == Kind::mlp) return useful[sp(sender_of(rec.node), p)] != 0;
    const int64_t p_end = reads_earlier(rec) ? P : p + 1;  // k/v at p feed the head at p' >= p
    for (int h : heads_reading(cfg, rec)) {
      const int64_t hs = sender_of({Kind::head, rec.node.layer, h});
      for (int64_t q = p; q < p_end; ++q) {
        if (useful[sp(hs, q)]) return true;
      }
    }
    return false;
  };
  for (int64_t s = S - 1; s >= 0; --s) {  // readers come after their senders
    for (int64_t p = 0; p < P; ++p) {
      for (int64_t r = 0; r < R; ++r) {
        if (kept(s, r, p) && receiver_useful(r, p)) {
          useful[sp(s, p)] = 1;
          break;
        }
      }
    }
  }

  Circuit out = *this;  // a deep copy
  for (const CircuitEdge& e : edges_) {
    if (!this->kept(e)) continue;
    const int64_t p = pos_of(e);
    bool keep;
    if (e.kind == CircuitEdge::Kind::head_input) {
      keep = fed[ridx(e.receiver, p)] && receiver_useful(e.receiver, p);
    } else {
      keep = reached[sp(e.sender, p)] && receiver_useful(e.receiver, p) && fed[ridx(e.receiver, p)];
    }
    if (!keep) out.set_kept(e, false);
  }
  return out;
}

std::vector<std::string> Circuit::nodes() const {
  std::vector<std::string> out;
  const auto& senders = graph_.senders();
  const int64_t P = std::max<int64_t>(1, n_positions_);
  for (size_t s = 0; s < senders.size(); ++s) {
    if (senders[s].kind == Kind::input) continue;
    for (int64_t p = 0; p < P; ++p) {
      bool any = false;
      for (int64_t r = 0; r < R_ && !any; ++r) any = kept_[idx(static_cast<int64_t>(s), r, p)] != 0;
      if (any) out.push_back(patching::node_name(senders[s]) + (split() ? " @" + std::to_string(p) : ""));
    }
  }
  return out;
}

nlohmann::json Circuit::to_json() const {
  nlohmann::json list = nlohmann::json::array();
  for (const CircuitEdge& e : edges_) {
    const double sc = score(e);
    nlohmann::json item = {{"edge", edge_name(e)},
                           {"kind", e.kind == CircuitEdge::Kind::head_input ? "head_input" : "residual"},
                           {"kept", kept(e)},
                           {"score", std::isnan(sc) ? nlohmann::json(nullptr) : nlohmann::json(sc)}};
    if (split()) item["position"] = e.pos;
    list.push_back(std::move(item));
  }
  nlohmann::json j = {{"n_edges", static_cast<int64_t>(edges_.size())}, {"n_kept", edge_count()}};
  if (split()) {
    j["n_positions"] = n_positions_;
    j["position_labels"] = position_labels_;
  }
  j["edges"] = list;
  return j;
}

Circuit Circuit::from_json(const CircuitGraph& graph, const nlohmann::json& j) {
  MECHLAB_CHECK(j.is_object() && j.contains("edges") && j["edges"].is_array(),
                "a circuit must be a JSON object with an \"edges\" array");
  int64_t n_positions = 0;
  if (j.contains("n_positions")) {
    MECHLAB_CHECK(j["n_positions"].is_number_integer() && j["n_positions"].get<int64_t>() >= 0,
                  "a circuit's \"n_positions\" must be a whole number >= 0 (0 = not split by position)");
    n_positions = j["n_positions"].get<int64_t>();
  }
  Circuit c(graph, n_positions);
  if (n_positions > 0 && j.contains("position_labels") && j["position_labels"].is_array() &&
      !j["position_labels"].empty()) {
    c.set_position_labels(j["position_labels"].get<std::vector<std::string>>());
  }
  std::vector<char> seen(c.edges_.size(), 0);
  // Edge -> its index in edges_ (a split circuit has tens of thousands).
  std::map<std::tuple<int, int64_t, int64_t, int64_t>, size_t> index;
  for (size_t i = 0; i < c.edges_.size(); ++i) {
    const CircuitEdge& e = c.edges_[i];
    index[{static_cast<int>(e.kind), e.sender, e.receiver, e.pos}] = i;
  }
  for (const auto& item : j["edges"]) {
    MECHLAB_CHECK(item.is_object() && item.contains("edge") && item["edge"].is_string() &&
                      item.contains("kept") && item["kept"].is_boolean(),
                  "each circuit edge must be an object with \"edge\" (text) and \"kept\" (true/false)");
    const std::string name = item["edge"].get<std::string>();
    const CircuitEdge e = c.parse_edge(name);
    const auto it = index.find({static_cast<int>(e.kind), e.sender, e.receiver, e.pos});
    MECHLAB_ASSERT(it != index.end());
    const size_t idx = it->second;
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
