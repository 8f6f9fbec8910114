#include "patching/edge_attribution.h"

#include "core/util/error.h"
#include "hooks/act_name.h"
#include "patching/patch_target.h"
#include "patching/sender_delta.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <set>

namespace mechlab::patching {

namespace {

using Kind = CircuitNode::Kind;

// Senders that share a layer and kind: their rows in the score matrix are
// contiguous, and they have edges to the same receivers.
struct SenderGroup {
  CircuitNode first;   // its first sender (edges are decided on it)
  int64_t row = 0;     // its first row
  int64_t rows = 0;    // heads of a layer, or 1
};

std::vector<SenderGroup> sender_groups(const CircuitGraph& g) {
  const auto& cfg = g.cfg();
  std::vector<SenderGroup> out;
  out.push_back({{Kind::input, -1, -1}, 0, 1});
  for (int l = 0; l < cfg.n_layers; ++l) {
    CircuitNode h0{Kind::head, l, 0};
    out.push_back({h0, g.sender_index(h0), cfg.n_heads});
    if (cfg.has_mlp()) {
      CircuitNode m{Kind::mlp, l, -1};
      out.push_back({m, g.sender_index(m), 1});
    }
  }
  return out;
}

// The receivers whose input a gradient hook leads to: the first one, how
// many. Head inputs are reached through the projected q/k/v (see
// head_input_gradient).
std::pair<ReceiverInput, int64_t> receivers_at(const CircuitGraph& g, const core::HookSite& site) {
  const int L = site.layer;
  // Which receiver a hook feeds is kind-specific; how many heads it holds is
  // the site table's (heads_at).
  const int64_t heads = heads_at(g.cfg(), site.kind);
  switch (site.kind) {
    case core::HookKind::q: return {{{Kind::head, L, 0}, ReceiverChannel::q}, heads};
    case core::HookKind::k: return {{{Kind::head, L, 0}, ReceiverChannel::k}, heads};
    case core::HookKind::v: return {{{Kind::head, L, 0}, ReceiverChannel::v}, heads};
    case core::HookKind::mlp_in: return {{{Kind::mlp, L, -1}, ReceiverChannel::resid}, 1};
    default: return {{{Kind::output, -1, -1}, ReceiverChannel::resid}, 1};
  }
}

// The norm ln1 applies at one layer's resid_pre, for head_input_gradient:
// x_hat [bp, d_model] (normalised input) and 1/r [bp, 1]; undefined without a norm.
struct NormAt {
  at::Tensor x_hat, r_inv;
};

NormAt norm_at(const core::ModelConfig& cfg, const at::Tensor& resid_pre, at::ScalarType dt) {
  if (cfg.norm == core::NormKind::none) return {};
  at::Tensor x = resid_pre.to(dt).reshape({-1, resid_pre.size(-1)});  // [bp, d_model]
  if (cfg.norm_centres()) x = x - x.mean(-1, /*keepdim=*/true);
  at::Tensor r = (x.pow(2).mean(-1, /*keepdim=*/true) + cfg.norm_eps).sqrt();  // [bp, 1]
  return {x / r, r.reciprocal()};
}

// d(metric)/d(head input) for every head of one layer and one of q, k, v,
// from the gradient at the projected hook_q/k/v, without running attention
// in split-input mode. Each head reads its own copy of resid_pre through ln1
// and its projection, head_input = resid_pre for every head, so
//   d head_input[h] = ln1_backward(d proj[:, :, h] @ W[h]^T)
// where ln1_backward is the norm's Jacobian at resid_pre (the same for every
// head; it is symmetric apart from the gain):
//   layernorm: (g_hat - mean(g_hat) - x_hat * mean(g_hat * x_hat)) / r
//   rmsnorm:   (g_hat - x_hat * mean(g_hat * x_hat)) / r
// with g_hat = gain * g, r the norm's scale and x_hat the normalised input.
// This is exactly what autograd computes in split mode, at the cost of one
// elementwise pass instead of per-head norms and projections in the forward.
// The pass over [heads, bp, d_model] is written once and updated once; the
// rest is folded into small operands, by linearity:
//   gain:           g_hat = grad @ (W^T * gain) = grad @ Ws
//   1/r:            scales grad's rows (r is per position): grad' = grad / r
//   mean(g_hat):    g_hat - mean(g_hat) = grad @ (Ws - mean over d_model of Ws) = grad @ Wc
//   mean(g_hat x):  (grad' . (x_hat @ Wc^T)) / d_model per head and position
//                   (x_hat has zero mean under layernorm, so centring Ws changes nothing)
// so out = grad' @ Wc - x_hat * c with c = (grad' . P) / d_model, P = x_hat @ Wc^T.
//   grad [batch, pos, heads, d_head], W [heads, d_model, d_head], gain [d_model];
//   out [heads, bp, d_model] (contiguous, written)
void head_input_gradient(const core::ModelConfig& cfg, const at::Tensor& grad, const NormAt& norm,
                         const at::Tensor& W, const at::Tensor& gain, at::ScalarType dt,
                         at::Tensor out) {
  const int64_t heads = grad.size(2), bp = grad.size(0) * grad.size(1), e = grad.size(3);
  const int64_t d = W.size(1);
  at::Tensor g = grad.to(dt).reshape({bp, heads, e});  // [bp, heads, d_head]
  at::Tensor Wc = W.to(dt).transpose(1, 2);            // [heads, d_head, d_model]
  if (cfg.norm == core::NormKind::none) {
    at::bmm_out(out, g.transpose(0, 1), Wc);
    return;
  }
  if (cfg.norm_has_weights()) Wc = Wc * gain.to(dt);
  if (cfg.norm_centres()) Wc = Wc - Wc.mean(-1, /*keepdim=*/true);
  Wc = Wc.contiguous();
  g = g * norm.r_inv.view({bp, 1, 1});                                     // grad'
  at::Tensor P = at::mm(norm.x_hat, Wc.view({heads * e, d}).t());          // [bp, heads * d_head]
  at::Tensor c = (g * P.view({bp, heads, e})).sum(-1).div_(static_cast<double>(d));  // [bp, heads]
  at::bmm_out(out, g.transpose(0, 1), Wc);                                 // [heads, bp, d_model]
  out.addcmul_(norm.x_hat.unsqueeze(0), c.t().unsqueeze(-1), -1.0);
}

}  // namespace

std::vector<EdgeScores::Entry> EdgeScores::entries() const {
  std::vector<Entry> out;
  const at::Tensor s = scores.to(at::kDouble).contiguous();  // [(pos,) senders, receivers]
  const double* p = s.data_ptr<double>();
  const int64_t P = n_positions(), S = s.size(-2), R = s.size(-1);
  for (const Edge& e : graph.edges()) {
    const int64_t off = graph.sender_index(e.sender) * R + graph.receiver_index(e.receiver);
    if (P == 0) {
      out.push_back({e, -1, p[off]});
    } else {
      for (int64_t q = 0; q < P; ++q) out.push_back({e, q, p[q * S * R + off]});
    }
  }
  return out;
}

std::string EdgeScores::entry_name(const Entry& e) {
  return edge_name(e.edge) + (e.pos >= 0 ? " @" + std::to_string(e.pos) : "");
}

double EdgeScores::score(const Edge& e, int64_t pos) const {
  MECHLAB_CHECK(graph.has_edge(e.sender, e.receiver), "edge \"", edge_name(e),
                "\" does not exist in this model's circuit graph");
  const int64_t P = n_positions();
  MECHLAB_CHECK(P == 0 ? pos == -1 : (pos >= 0 && pos < P), "edge \"", edge_name(e), "\": position ", pos,
                P == 0 ? std::string(" given, but the scores are summed over positions; use pos = -1")
                       : " is outside the scores' positions 0.." + std::to_string(P - 1));
  const at::Tensor m = P == 0 ? scores : scores[pos];  // [senders, receivers]
  return m[graph.sender_index(e.sender)][graph.receiver_index(e.receiver)].item<double>();
}

std::vector<std::pair<Edge, double>> EdgeScores::all() const {
  MECHLAB_CHECK(n_positions() == 0, "EdgeScores::all lists scores summed over positions; these are split by "
                "position: use entries()");
  std::vector<std::pair<Edge, double>> out;
  for (const Entry& e : entries()) out.emplace_back(e.edge, e.score);
  return out;
}

std::vector<std::pair<Edge, double>> EdgeScores::top(int64_t k) const {
  auto v = all();
  std::stable_sort(v.begin(), v.end(),
                   [](const auto& a, const auto& b) { return std::abs(a.second) > std::abs(b.second); });
  if (k > 0 && static_cast<size_t>(k) < v.size()) v.resize(static_cast<size_t>(k));
  return v;
}

SweepResult EdgeScores::as_result() const {
  SweepResult r;
  r.sweep = "edges:" + config.value("method", std::string("attribution"));
  r.values = scores.to(at::kFloat);
  r.axes = {"sender", "receiver"};
  std::vector<std::string> s, rc;
  for (const auto& n : graph.senders()) s.push_back(node_name(n));
  for (const auto& n : graph.receivers()) rc.push_back(receiver_name(n));
  r.labels = {s, rc};
  if (n_positions() > 0) {
    std::vector<std::string> pos;
    for (int64_t p = 0; p < n_positions(); ++p) pos.push_back(std::to_string(p));
    r.axes.insert(r.axes.begin(), "pos");
    r.labels.insert(r.labels.begin(), pos);
  }
  r.config = config;
  r.config["sweep"] = r.sweep;
  return r;
}

nlohmann::json EdgeScores::to_json(int64_t k) const {
  nlohmann::json j = config;
  std::vector<Entry> v = entries();
  std::stable_sort(v.begin(), v.end(), [](const Entry& a, const Entry& b) { return std::abs(a.score) > std::abs(b.score); });
  if (k > 0 && static_cast<size_t>(k) < v.size()) v.resize(static_cast<size_t>(k));
  nlohmann::json edges = nlohmann::json::array();
  for (const Entry& e : v) {
    nlohmann::json item = {{"edge", entry_name(e)}, {"score", e.score}};
    if (e.pos >= 0) item["position"] = e.pos;
    edges.push_back(std::move(item));
  }
  j["top_edges"] = edges;
  return j;
}

EdgeScores edge_attribution(hooks::HookedTransformer& model, const PatchingData& data,
                            const Metric& metric, const AttributionOptions& options) {
  // The score matrix is written inside the backward, which runs outside
  // inference mode: it must not be an inference tensor.
  c10::InferenceMode not_inference(false);
  const auto& cfg = model.cfg();
  EdgeScores out{CircuitGraph(cfg), {}, {}};
  const CircuitGraph& graph = out.graph;
  const at::ScalarType dt = model.model().dtype() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t S = static_cast<int64_t>(graph.senders().size());
  const int64_t R = static_cast<int64_t>(graph.receivers().size());
  // Per position: [pos, senders, receivers], the sum over positions left out.
  const bool split = options.split_positions();
  if (split) data.check_same_padding("edge attribution per position (split_positions)");
  const int64_t B = data.batch(), P = data.seq_len();
  at::Tensor scores = split ? at::zeros({P, S, R}, at::TensorOptions(dt).device(model.model().device()))
                            : at::zeros({S, R}, at::TensorOptions(dt).device(model.model().device()));

  std::vector<std::string> grad_hooks;
  for (int l = 0; l < cfg.n_layers; ++l) {
    for (const char* a : {"q", "k", "v"}) grad_hooks.push_back(hooks::act_name(a, l));
    if (cfg.has_mlp()) grad_hooks.push_back(hooks::act_name("mlp_in", l));
  }
  grad_hooks.push_back(hooks::act_name("resid_post", cfg.n_layers - 1));
  std::vector<std::string> pass_hooks;  // what each layer's norm saw on the differentiated pass
  for (int l = 0; l < cfg.n_layers; ++l) pass_hooks.push_back(hooks::act_name("resid_pre", l));

  std::vector<SenderGroup> groups = sender_groups(graph);
  const int64_t N = data.batch() * data.seq_len() * cfg.d_model;
  // Every sender's difference, rows in the graph's sender order:
  // [senders, batch * pos * d_model], computed at the first gradient (the
  // base and source activations are complete by then: backward follows the forward).
  at::Tensor D;
  auto sender_deltas = [&](const GradientRuns& runs) {
    if (D.defined()) return;
    D = at::empty({S, N}, scores.options());
    for (const SenderGroup& sg : groups) {
      at::Tensor rows = D.narrow(0, sg.row, sg.rows);  // [rows, N]
      if (sg.first.kind == Kind::head) {
        // As head_output_delta (sender_delta.h), written in place:
        // [head, bp, d_head] @ W_O [head, d_head, d_model] -> [head, bp, d_model]
        const std::string z = hooks::act_name("z", sg.first.layer);
        const at::Tensor& W_O = model.model().weights().blocks[static_cast<size_t>(sg.first.layer)].W_O;
        at::Tensor dz = runs.source.at(z).to(dt) - runs.base.at(z).to(dt);  // [batch, pos, head, d_head]
        at::Tensor heads = rows.view({sg.rows, -1, cfg.d_model});  // [head, bp, d_model]
        at::bmm_out(heads, dz.reshape({-1, sg.rows, cfg.d_head}).transpose(0, 1),
                    W_O.to(dz.device(), dt));
      } else {
        rows.copy_(sender_delta(model, sg.first, runs.base, runs.source, dt).reshape({1, -1}));
      }
    }
  };
  // scores[senders of r0, col .. col+n) += D[senders of r0] @ g^T, g: [n, N].
  // A receiver's senders are a prefix of the sender order (each sender writes
  // the residual stream no earlier than the one before it), so this is one
  // matrix product, wide enough to use every thread.
  auto add_block = [&](const ReceiverInput& r0, int64_t col, const at::Tensor& g,
                       const GradientRuns& runs) {
    sender_deltas(runs);
    int64_t end = 0;
    for (const SenderGroup& sg : groups) {
      if (!graph.has_edge(sg.first, r0)) break;
      end = sg.row + sg.rows;
    }
    for (const SenderGroup& sg : groups) MECHLAB_ASSERT(sg.row < end || !graph.has_edge(sg.first, r0));
    if (end == 0) return;
    if (split) {
      // [senders, batch, pos, d_model] . [receivers, batch, pos, d_model] -> [pos, senders, receivers]
      const int64_t n = g.size(0);
      scores.narrow(1, 0, end).narrow(2, col, n).add_(at::einsum(
          "sbpd,nbpd->psn", {D.narrow(0, 0, end).view({end, B, P, cfg.d_model}), g.reshape({n, B, P, cfg.d_model})}));
      return;
    }
    scores.narrow(0, 0, end).narrow(1, col, g.size(0)).add_(at::mm(D.narrow(0, 0, end), g.t()));
  };
  // A layer's q, k and v input gradients arrive one after another during the
  // backward; their receivers are adjacent columns with the same senders, so
  // they are written into one buffer [q, k, v heads, N] and scored together:
  // one pass over the sender differences per layer.
  const std::vector<core::HookKind> qkv = {core::HookKind::q_input, core::HookKind::k_input,
                                           core::HookKind::v_input};
  struct Pending {
    at::Tensor buf;               // [heads_q + 2 heads_kv, N]
    std::set<core::HookKind> got;  // which parts are written
    NormAt norm;                  // ln1 at the layer's resid_pre
  };
  std::map<int, Pending> pending;  // by layer
  auto offset_of = [&](core::HookKind kind) {
    int64_t off = 0;
    for (auto k : qkv) {
      if (k == kind) return off;
      off += heads_at(cfg, k);
    }
    return off;
  };
  auto pending_at = [&](int layer, const GradientRuns& runs) -> Pending& {
    Pending& p = pending[layer];
    if (!p.buf.defined()) {
      p.buf = at::empty({offset_of(core::HookKind::v_input) + heads_at(cfg, core::HookKind::v_input), N},
                        scores.options());
      p.norm = norm_at(cfg, runs.pass.at(hooks::act_name("resid_pre", layer)), dt);
    }
    return p;
  };
  auto flush = [&](int layer, const GradientRuns& runs) {
    Pending& p = pending_at(layer, runs);
    for (auto kind : qkv) {  // no gradient reached it: it does not affect the metric
      if (!p.got.count(kind)) p.buf.narrow(0, offset_of(kind), heads_at(cfg, kind)).zero_();
    }
    const ReceiverInput r0{{Kind::head, layer, 0}, ReceiverChannel::q};
    add_block(r0, graph.receiver_index(r0), p.buf, runs);
    pending.erase(layer);
  };
  auto on_grad = [&](const std::string& hook, const at::Tensor& grad, const GradientRuns& runs) {
    core::HookSite site;
    MECHLAB_ASSERT(core::parse_site(hook, cfg.n_layers, &site));
    auto [r0, n] = receivers_at(graph, site);
    if (r0.node.kind != Kind::head) {
      return add_block(r0, graph.receiver_index(r0), grad.reshape({1, -1}).to(dt), runs);
    }
    const auto& block = model.model().weights().blocks[static_cast<size_t>(site.layer)];
    const at::Tensor& W = site.kind == core::HookKind::q ? block.W_Q
                          : site.kind == core::HookKind::k ? block.W_K : block.W_V;
    const core::HookKind input_kind = site.kind == core::HookKind::q   ? core::HookKind::q_input
                                      : site.kind == core::HookKind::k ? core::HookKind::k_input
                                                                       : core::HookKind::v_input;
    Pending& p = pending_at(r0.node.layer, runs);
    head_input_gradient(cfg, grad, p.norm, W, block.ln1_w, dt,
                        p.buf.narrow(0, offset_of(input_kind), n).view({n, -1, cfg.d_model}));
    p.got.insert(input_kind);
    if (p.got.size() == qkv.size()) flush(r0.node.layer, runs);
  };
  const GradientRuns runs =
      run_gradient_passes(model, data, metric, options, sender_hooks(cfg), grad_hooks, on_grad, pass_hooks);
  while (!pending.empty()) flush(pending.begin()->first, runs);  // inputs with no gradient

  at::Tensor has = at::zeros({S, R}, at::kBool);
  bool* hp = has.data_ptr<bool>();
  for (int64_t s = 0; s < S; ++s) {
    for (int64_t r = 0; r < R; ++r) {
      hp[s * R + r] = graph.has_edge(graph.senders()[static_cast<size_t>(s)],
                                     graph.receivers()[static_cast<size_t>(r)]);
    }
  }
  out.scores = scores.cpu().masked_fill(has.logical_not(), std::numeric_limits<double>::quiet_NaN());

  const bool noising = options.direction() == Direction::noising;
  const bool ig = options.method() == AttributionMethod::eap_ig;
  out.config = {
      {"method", method_name(options.method())},
      {"steps", ig ? options.steps() : 1},
      {"description", "edge attribution: (sender output, source - base) . dmetric/d(receiver input); "
                      "estimated metric change when only that edge is patched"},
      {"edge_format", "SENDER -> RECEIVER, e.g. \"a0.h3 -> a1.h2<q>\" (docs/ARCHITECTURE.md)"},
      {"n_edges", static_cast<int64_t>(graph.edges().size())},
      {"direction", direction_name(options.direction())},
      {"metric", metric.name()},
      {"base_metric", runs.base_metric},
      {"source_metric", runs.source_metric},
      {"clean_metric", noising ? runs.base_metric : runs.source_metric},
      {"corrupted_metric", noising ? runs.source_metric : runs.base_metric},
      {"forwards", runs.forwards},
      {"backwards", runs.backwards},
      {"n_prompts", data.batch()},
      {"seq_len", data.seq_len()},
      {"model", cfg.name},
      {"model_config", nlohmann::json::parse(cfg.to_json_string())},
  };
  if (split) {
    out.config["split_positions"] = true;
    out.config["n_positions"] = P;
  }
  for (const auto& [k, v] : options.extra_config().items()) out.config[k] = v;
  return out;
}

}  // namespace mechlab::patching
