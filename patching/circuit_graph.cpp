#include "patching/circuit_graph.h"

#include "core/util/error.h"

#include <cctype>
#include <utility>

namespace mechlab::patching {

namespace {

using Kind = CircuitNode::Kind;

constexpr const char* kSyntax =
    "nodes are input, a{L}.h{H} (attention head), m{L} (MLP) and output, e.g. a0.h3, m1; a head "
    "as a receiver names the input it reads: a1.h2<q>, a1.h2<k> or a1.h2<v>; edges are "
    "\"SENDER -> RECEIVER\"";

std::string strip(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

// Reads a non-negative decimal at s[i..], advancing i; false if none.
bool read_int(const std::string& s, size_t& i, int& out) {
  const size_t start = i;
  int64_t v = 0;
  while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i])) && v < (1 << 24)) {
    v = v * 10 + (s[i++] - '0');
  }
  out = static_cast<int>(v);
  return i > start && (i == start + 1 || s[start] != '0');
}

// Parses the grammar only (no model checks). Throws on malformed text.
std::pair<CircuitNode, ReceiverChannel> parse_syntax(const std::string& raw, bool* has_channel) {
  const std::string s = strip(raw);
  CircuitNode n;
  ReceiverChannel ch = ReceiverChannel::resid;
  *has_channel = false;
  auto bad = [&] {
    return Error(str_cat("unknown circuit node \"", raw, "\"; ", kSyntax));
  };
  if (s == "input") return {CircuitNode{Kind::input, -1, -1}, ch};
  if (s == "output") return {CircuitNode{Kind::output, -1, -1}, ch};
  size_t i = 1;
  if (s.size() >= 2 && s[0] == 'm') {
    n.kind = Kind::mlp;
    if (!read_int(s, i, n.layer) || i != s.size()) throw bad();
    return {n, ch};
  }
  if (s.size() >= 2 && s[0] == 'a') {
    n.kind = Kind::head;
    if (!read_int(s, i, n.layer) || s.compare(i, 2, ".h") != 0) throw bad();
    i += 2;
    if (!read_int(s, i, n.head)) throw bad();
    if (i == s.size()) return {n, ch};
    if (s.size() - i != 3 || s[i] != '<' || s[i + 2] != '>') throw bad();
    switch (s[i + 1]) {
      case 'q': ch = ReceiverChannel::q; break;
      case 'k': ch = ReceiverChannel::k; break;
      case 'v': ch = ReceiverChannel::v; break;
      default: throw bad();
    }
    *has_channel = true;
    return {n, ch};
  }
  throw bad();
}

std::vector<std::string> split_on(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == sep) {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  out.push_back(cur);
  return out;
}

// Position in the forward pass at which a sender writes / a receiver reads:
// layer L's attention is step 2L+1, its MLP 2L+2 (2L+1 when parallel: it
// reads resid_pre like the attention does); input writes at 0, output reads
// after everything.
int write_step(const CircuitNode& s, bool parallel) {
  switch (s.kind) {
    case Kind::input: return 0;
    case Kind::head: return 2 * s.layer + 1;
    case Kind::mlp: return 2 * s.layer + (parallel ? 1 : 2);
    case Kind::output: break;
  }
  return 1 << 30;
}
int read_step(const ReceiverInput& r, bool parallel) {
  return r.node.kind == Kind::output ? (1 << 30) : write_step(r.node, parallel);
}

}  // namespace

std::string node_name(const CircuitNode& n) {
  switch (n.kind) {
    case Kind::input: return "input";
    case Kind::head: return str_cat("a", n.layer, ".h", n.head);
    case Kind::mlp: return str_cat("m", n.layer);
    case Kind::output: return "output";
  }
  return "?";
}

std::string receiver_name(const ReceiverInput& r) {
  const std::string base = node_name(r.node);
  switch (r.channel) {
    case ReceiverChannel::q: return base + "<q>";
    case ReceiverChannel::k: return base + "<k>";
    case ReceiverChannel::v: return base + "<v>";
    case ReceiverChannel::resid: break;
  }
  return base;
}

std::string edge_name(const Edge& e) { return node_name(e.sender) + " -> " + receiver_name(e.receiver); }

std::string path_name(const PathSpec& p) {
  std::string s, r;
  for (const auto& n : p.senders) s += (s.empty() ? "" : "+") + node_name(n);
  for (const auto& n : p.receivers) r += (r.empty() ? "" : "+") + receiver_name(n);
  return s + " -> " + r;
}

CircuitGraph::CircuitGraph(core::ModelConfig cfg) : cfg_(std::move(cfg)) {
  const bool mlp = cfg_.has_mlp();
  senders_.push_back({Kind::input, -1, -1});
  for (int l = 0; l < cfg_.n_layers; ++l) {
    for (int h = 0; h < cfg_.n_heads; ++h) senders_.push_back({Kind::head, l, h});
    if (mlp) senders_.push_back({Kind::mlp, l, -1});
  }
  for (int l = 0; l < cfg_.n_layers; ++l) {
    for (int h = 0; h < cfg_.n_heads; ++h) receivers_.push_back({{Kind::head, l, h}, ReceiverChannel::q});
    for (int h = 0; h < cfg_.kv_heads(); ++h) {
      receivers_.push_back({{Kind::head, l, h}, ReceiverChannel::k});
    }
    for (int h = 0; h < cfg_.kv_heads(); ++h) {
      receivers_.push_back({{Kind::head, l, h}, ReceiverChannel::v});
    }
    if (mlp) receivers_.push_back({{Kind::mlp, l, -1}, ReceiverChannel::resid});
  }
  receivers_.push_back({{Kind::output, -1, -1}, ReceiverChannel::resid});
}

std::vector<Edge> CircuitGraph::edges() const {
  std::vector<Edge> out;
  for (const auto& r : receivers_) {
    for (const auto& s : senders_) {
      if (has_edge(s, r)) out.push_back({s, r});
    }
  }
  return out;
}

int64_t CircuitGraph::sender_index(const CircuitNode& s) const {
  for (size_t i = 0; i < senders_.size(); ++i) {
    if (senders_[i] == s) return static_cast<int64_t>(i);
  }
  throw Error(str_cat("\"", node_name(s), "\" is not a sender of this model's circuit graph"));
}

int64_t CircuitGraph::receiver_index(const ReceiverInput& r) const {
  for (size_t i = 0; i < receivers_.size(); ++i) {
    if (receivers_[i] == r) return static_cast<int64_t>(i);
  }
  throw Error(str_cat("\"", receiver_name(r), "\" is not a receiver input of this model's circuit graph"));
}

bool CircuitGraph::has_edge(const CircuitNode& s, const ReceiverInput& r) const {
  if (s.kind == Kind::output || r.node.kind == Kind::input) return false;
  return write_step(s, cfg_.parallel_attn_mlp) < read_step(r, cfg_.parallel_attn_mlp);
}

void CircuitGraph::check_node(const CircuitNode& n, ReceiverChannel ch, const std::string& text) const {
  if (n.kind == Kind::input || n.kind == Kind::output) return;
  MECHLAB_CHECK(n.layer >= 0 && n.layer < cfg_.n_layers, "circuit node \"", strip(text), "\": layer ",
                n.layer, " is out of range; the model has ", cfg_.n_layers, " layers (0..",
                cfg_.n_layers - 1, ")");
  if (n.kind == Kind::mlp) {
    MECHLAB_CHECK(cfg_.has_mlp(), "circuit node \"", strip(text), "\": model \"", cfg_.name,
                  "\" is attention-only and has no MLPs; its nodes are input, a{L}.h{H} and output");
    return;
  }
  const bool kv = ch == ReceiverChannel::k || ch == ReceiverChannel::v;
  const int heads = kv ? cfg_.kv_heads() : cfg_.n_heads;
  MECHLAB_CHECK(n.head >= 0 && n.head < heads, "circuit node \"", strip(text), "\": head ", n.head,
                " is out of range; layer ", n.layer, " has ", heads,
                kv && heads != cfg_.n_heads ? " key/value heads (GQA)" : " heads", " (0..",
                heads - 1, ")");
}

CircuitNode CircuitGraph::parse_sender(const std::string& text) const {
  bool has_channel = false;
  auto [n, ch] = parse_syntax(text, &has_channel);
  MECHLAB_CHECK(n.kind != Kind::output, "\"output\" is not a sender: the logits write nothing to "
                "the residual stream; senders are input, a{L}.h{H} and m{L}");
  MECHLAB_CHECK(!has_channel, "\"", strip(text), "\" is a receiver input; as a sender a head is "
                "the whole head: ", node_name(n));
  check_node(n, ReceiverChannel::resid, text);
  return n;
}

ReceiverInput CircuitGraph::parse_receiver(const std::string& text) const {
  bool has_channel = false;
  auto [n, ch] = parse_syntax(text, &has_channel);
  MECHLAB_CHECK(n.kind != Kind::input, "\"input\" is not a receiver: nothing writes the residual "
                "stream before the embedding; receivers are a{L}.h{H}<q|k|v>, m{L} and output");
  MECHLAB_CHECK(n.kind != Kind::head || has_channel, "receiver \"", strip(text),
                "\" must name the input it reads: ", node_name(n), "<q>, ", node_name(n), "<k> or ",
                node_name(n), "<v>");
  check_node(n, ch, text);
  return {n, ch};
}

Edge CircuitGraph::parse_edge(const std::string& text) const {
  const size_t arrow = text.find("->");
  MECHLAB_CHECK(arrow != std::string::npos && text.find("->", arrow + 2) == std::string::npos,
                "edge \"", text, "\" must be \"SENDER -> RECEIVER\", e.g. \"a0.h3 -> a1.h2<q>\"; ",
                kSyntax);
  Edge e{parse_sender(text.substr(0, arrow)), parse_receiver(text.substr(arrow + 2))};
  MECHLAB_CHECK(has_edge(e.sender, e.receiver), "edge \"", strip(text), "\" does not exist: ",
                node_name(e.sender), " writes the residual stream at or after the point where ",
                receiver_name(e.receiver),
                " reads it (a sender must come before its receiver: an earlier layer, or the "
                "attention of the same layer for that layer's MLP in a non-parallel model)");
  return e;
}

std::vector<CircuitNode> CircuitGraph::parse_senders(const std::string& text) const {
  std::vector<CircuitNode> out;
  for (const auto& part : split_on(text, '+')) out.push_back(parse_sender(part));
  return out;
}

std::vector<ReceiverInput> CircuitGraph::parse_receivers(const std::string& text) const {
  std::vector<ReceiverInput> out;
  for (const auto& part : split_on(text, '+')) out.push_back(parse_receiver(part));
  return out;
}

PathSpec CircuitGraph::parse_path(const std::string& text) const {
  const size_t arrow = text.find("->");
  MECHLAB_CHECK(arrow != std::string::npos && text.find("->", arrow + 2) == std::string::npos,
                "path \"", strip(text), "\" must be \"SENDERS -> RECEIVERS\" with one \"->\", nodes "
                "joined by '+', e.g. \"a0.h1+m0 -> a1.h2<q>+output\"");
  const std::string lhs = strip(text.substr(0, arrow)), rhs = strip(text.substr(arrow + 2));
  MECHLAB_CHECK(!lhs.empty(), "path \"", strip(text), "\" has no senders before \"->\"; give "
                "input, a{L}.h{H} or m{L} nodes joined by '+', e.g. \"a0.h1+m0 -> a1.h2<q>\"");
  MECHLAB_CHECK(!rhs.empty(), "path \"", strip(text), "\" has no receivers after \"->\"; give "
                "a{L}.h{H}<q|k|v>, m{L} or output joined by '+', e.g. \"a0.h1 -> a1.h2<q>+output\"");
  PathSpec p{parse_senders(lhs), parse_receivers(rhs)};
  bool any = false;
  for (const auto& s : p.senders) {
    for (const auto& r : p.receivers) any = any || has_edge(s, r);
  }
  MECHLAB_CHECK(any, "path \"", path_name(p), "\": no sender writes the residual stream before a "
                "receiver reads it, so there is no path (a receiver must be in a later layer than "
                "its sender, or be the MLP of the sender head's layer)");
  return p;
}

std::string CircuitGraph::sender_hook(const CircuitNode& s) const {
  switch (s.kind) {
    case Kind::input: return "blocks.0.hook_resid_pre";
    case Kind::head: return str_cat("blocks.", s.layer, ".attn.hook_z");
    case Kind::mlp: return str_cat("blocks.", s.layer, ".hook_mlp_out");
    case Kind::output: break;
  }
  throw Error("\"output\" is not a sender");
}

std::string CircuitGraph::receiver_hook(const ReceiverInput& r) const {
  switch (r.node.kind) {
    case Kind::head:
      return str_cat("blocks.", r.node.layer, r.channel == ReceiverChannel::q   ? ".hook_q_input"
                                              : r.channel == ReceiverChannel::k ? ".hook_k_input"
                                                                                : ".hook_v_input");
    case Kind::mlp: return str_cat("blocks.", r.node.layer, ".hook_mlp_in");
    case Kind::output: return str_cat("blocks.", cfg_.n_layers - 1, ".hook_resid_post");
    case Kind::input: break;
  }
  throw Error("\"input\" is not a receiver");
}

}  // namespace mechlab::patching
