// A naive ACDC for the tests, written from the algorithm's description (Conmy
// et al. 2023, acdc/TLACDCExperiment.py) and sharing no code with
// patching/discovery/acdc.cpp or circuit_runner.cpp: one full forward through
// HookedTransformer hooks per edge, sequential.
//
// The masked forward overwrites each receiver input as the reference's
// receiver_hook does: the receiver's input in the ablation run plus, for every
// kept edge s -> r, (s's output in this forward - s's output in the ablation
// run); a removed head-input edge leaves the ablation run's input. Sender
// outputs are captured in the same forward (hook_resid_pre of layer 0, each
// head's hook_z slice @ W_O, hook_mlp_out). Zero ablation runs the ablation
// run with every sender output set to 0 (the reference's corrupted cache under
// zero_ablation).
//
// Position split (run(..., split = true)): the same forward on a
// position-split circuit, position by position: the receiver input at
// position p is the ablation run's input at p plus, for every edge kept at
// p, (s's output at p - its ablation-run output at p). One forward per tried
// (edge, position), each receiver's positions from the last to the first.
#pragma once

#include "hooks/act_name.h"
#include "hooks/hooked_transformer.h"
#include "patching/discovery/circuit.h"
#include "patching/metrics.h"
#include "patching/patching_data.h"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>
#include <map>
#include <string>
#include <tuple>
#include <vector>

namespace mechlab::testing {

struct NaiveStep {
  std::string edge;
  bool kept = false;
  bool tried = true;
  double score = std::numeric_limits<double>::quiet_NaN();
};

struct NaiveResult {
  std::vector<NaiveStep> steps;
  discovery::Circuit circuit;
  double smallest_margin = std::numeric_limits<double>::infinity();  // min |result - tau| over tried edges
  int64_t forwards = 0;
};

class NaiveAcdc {
 public:
  using Node = patching::CircuitNode;
  using Recv = patching::ReceiverInput;
  using Ch = patching::ReceiverChannel;

  NaiveAcdc(hooks::HookedTransformer& model, const patching::PatchingData& data, bool zero_ablation)
      : model_(model), graph_(model.cfg()), clean_(data.clean_tokens) {
    at::NoGradGuard ng;
    const auto& cfg = model.cfg();
    std::vector<std::pair<std::string, hooks::HookFn>> hs;
    const int last = cfg.n_layers - 1;
    auto sender_key = [&](const Node& n) { return graph_.sender_index(n); };
    hs.push_back({"blocks.0.hook_resid_pre", [&, zero_ablation](at::Tensor& x, const hooks::HookPoint&) {
                    if (zero_ablation) x = at::zeros_like(x);
                    corr_send_[sender_key({Node::Kind::input, -1, -1})] = x.clone();
                  }});
    for (int l = 0; l < cfg.n_layers; ++l) {
      hs.push_back({hooks::act_name("resid_pre", l), [&, l](at::Tensor& x, const hooks::HookPoint&) {
                      for (int h = 0; h < cfg.n_heads; ++h) {
                        corr_recv_[{l, h, 0}] = x.clone();
                        corr_recv_[{l, h, 1}] = x.clone();
                        corr_recv_[{l, h, 2}] = x.clone();
                      }
                      if (cfg.has_mlp() && cfg.parallel_attn_mlp) corr_recv_[{l, -1, 3}] = x.clone();
                    }});
      hs.push_back({hooks::act_name("z", l), [&, l, zero_ablation](at::Tensor& z, const hooks::HookPoint&) {
                      if (zero_ablation) z = at::zeros_like(z);
                      for (int h = 0; h < cfg.n_heads; ++h) {
                        corr_send_[sender_key({Node::Kind::head, l, h})] = head_output(z, l, h);
                      }
                    }});
      if (cfg.has_mlp()) {
        if (!cfg.parallel_attn_mlp) {
          hs.push_back({hooks::act_name("resid_mid", l), [&, l](at::Tensor& x, const hooks::HookPoint&) {
                          corr_recv_[{l, -1, 3}] = x.clone();
                        }});
        }
        hs.push_back({hooks::act_name("mlp_out", l), [&, l, zero_ablation](at::Tensor& x, const hooks::HookPoint&) {
                        if (zero_ablation) x = at::zeros_like(x);
                        corr_send_[sender_key({Node::Kind::mlp, l, -1})] = x.clone();
                      }});
      }
    }
    hs.push_back({hooks::act_name("resid_post", last), [&](at::Tensor& x, const hooks::HookPoint&) {
                    corr_recv_[{-1, -1, 4}] = x.clone();
                  }});
    model_.run_with_hooks(data.corrupted_tokens, hs);
  }

  // The receiver's input in this forward, as the reference's receiver_hook computes it.
  at::Tensor receiver_input(const discovery::Circuit& c, const Recv& r, const std::map<int64_t, at::Tensor>& live) {
    at::Tensor v = corr_recv_.at(key(r)).clone();  // [batch, pos, d_model]
    const int64_t ri = graph_.receiver_index(r);
    if (c.split()) {
      for (int64_t p = 0; p < c.n_positions(); ++p) {
        if (r.node.kind == Node::Kind::head && !c.kept({discovery::CircuitEdge::Kind::head_input, -1, ri, p})) continue;
        at::Tensor vp = v.select(1, p);  // [batch, d_model], a view of v
        for (const Node& s : graph_.senders()) {
          if (!graph_.has_edge(s, r)) continue;
          const int64_t si = graph_.sender_index(s);
          if (c.kept({discovery::CircuitEdge::Kind::residual, si, ri, p})) {
            vp.add_(live.at(si).select(1, p) - corr_send_.at(si).select(1, p));
          }
        }
      }
      return v;
    }
    if (r.node.kind == Node::Kind::head && !c.kept({discovery::CircuitEdge::Kind::head_input, -1, ri})) return v;
    for (const Node& s : graph_.senders()) {
      if (!graph_.has_edge(s, r)) continue;
      const int64_t si = graph_.sender_index(s);
      if (c.kept({discovery::CircuitEdge::Kind::residual, si, ri})) v = v + (live.at(si) - corr_send_.at(si));
    }
    return v;
  }

  at::Tensor forward(const discovery::Circuit& c) {
    at::NoGradGuard ng;
    const auto& cfg = model_.cfg();
    std::map<int64_t, at::Tensor> live;
    std::vector<std::pair<std::string, hooks::HookFn>> hs;
    hs.push_back({"blocks.0.hook_resid_pre", [&](at::Tensor& x, const hooks::HookPoint&) {
                    live[graph_.sender_index({Node::Kind::input, -1, -1})] = x.clone();
                  }});
    for (int l = 0; l < cfg.n_layers; ++l) {
      const std::pair<const char*, Ch> qkv[] = {{"q_input", Ch::q}, {"k_input", Ch::k}, {"v_input", Ch::v}};
      for (const auto& [hook, ch] : qkv) {
        hs.push_back({hooks::act_name(hook, l), [&, l, ch = ch](at::Tensor& x, const hooks::HookPoint&) {
                        x = x.clone();  // [batch, pos, head, d_model]
                        for (int64_t h = 0; h < x.size(2); ++h) {
                          x.select(2, h).copy_(receiver_input(c, {{Node::Kind::head, l, static_cast<int>(h)}, ch}, live));
                        }
                      }});
      }
      hs.push_back({hooks::act_name("z", l), [&, l](at::Tensor& z, const hooks::HookPoint&) {
                      for (int h = 0; h < cfg.n_heads; ++h) {
                        live[graph_.sender_index({Node::Kind::head, l, h})] = head_output(z, l, h);
                      }
                    }});
      if (cfg.has_mlp()) {
        hs.push_back({hooks::act_name("mlp_in", l), [&, l](at::Tensor& x, const hooks::HookPoint&) {
                        x = receiver_input(c, {{Node::Kind::mlp, l, -1}, Ch::resid}, live);
                      }});
        hs.push_back({hooks::act_name("mlp_out", l), [&, l](at::Tensor& x, const hooks::HookPoint&) {
                        live[graph_.sender_index({Node::Kind::mlp, l, -1})] = x.clone();
                      }});
      }
    }
    hs.push_back({hooks::act_name("resid_post", cfg.n_layers - 1), [&](at::Tensor& x, const hooks::HookPoint&) {
                    x = receiver_input(c, {{Node::Kind::output, -1, -1}, Ch::resid}, live);
                  }});
    return model_.run_with_hooks(clean_, hs);  // [batch, pos, d_vocab]
  }

  /// ACDC with one full forward per tried edge.
  /// split: every edge once per token position (p = P-1..0 per receiver).
  NaiveResult run(const patching::Metric& metric, double tau, bool abs_value, bool reverse = false,
                  bool split = false) {
    using discovery::Circuit;
    using discovery::CircuitEdge;
    const auto& cfg = model_.cfg();
    const int64_t P = split ? clean_.size(1) : 0;
    NaiveResult out{{}, Circuit::full(graph_, P)};
    Circuit& c = out.circuit;
    double cur = metric(forward(c)).item<double>();
    // Positions of a receiver's edges, last first; {-1} unsplit.
    std::vector<int64_t> positions;
    for (int64_t p = P - 1; p >= 0; --p) positions.push_back(p);
    if (!split) positions.push_back(-1);
    // Whether sender s has a kept outgoing edge at a position in [p0, p1].
    auto sender_used_at = [&](const Node& s, int64_t p0, int64_t p1) {
      const int64_t si = graph_.sender_index(s);
      for (int64_t p = p0; p <= p1; ++p) {
        for (const Recv& r : graph_.receivers()) {
          if (graph_.has_edge(s, r) && c.kept({CircuitEdge::Kind::residual, si, graph_.receiver_index(r), p})) {
            return true;
          }
        }
      }
      return false;
    };
    auto sender_used = [&](const Node& s) { return sender_used_at(s, -1, -1); };
    auto incoming = [&](const Recv& r, int64_t p) {
      std::vector<CircuitEdge> es;
      const int64_t ri = graph_.receiver_index(r);
      for (int l = cfg.n_layers - 1; l >= 0; --l) {
        std::vector<Node> nodes;
        if (cfg.has_mlp()) nodes.push_back({Node::Kind::mlp, l, -1});
        for (int i = 0; i < cfg.n_heads; ++i) nodes.push_back({Node::Kind::head, l, reverse ? i : cfg.n_heads - 1 - i});
        for (const Node& s : nodes) {
          if (graph_.has_edge(s, r)) es.push_back({CircuitEdge::Kind::residual, graph_.sender_index(s), ri, p});
        }
      }
      es.push_back({CircuitEdge::Kind::residual, graph_.sender_index({Node::Kind::input, -1, -1}), ri, p});
      return es;
    };
    auto unused = [&](const CircuitEdge& e) {
      if (!c.kept(e)) return;
      c.set_kept(e, false);
      out.steps.push_back({c.edge_name(e), false, false});
    };
    auto attempt = [&](const CircuitEdge& e) {
      if (!c.kept(e)) return;
      c.set_kept(e, false);
      const double m = metric(forward(c)).item<double>();
      ++out.forwards;
      const double score = m - cur;
      const double result = abs_value ? std::abs(score) : score;
      out.smallest_margin = std::min(out.smallest_margin, std::abs(result - tau));
      if (result < tau) {
        cur = m;
        out.steps.push_back({c.edge_name(e), false, true, score});
      } else {
        c.set_kept(e, true);
        out.steps.push_back({c.edge_name(e), true, true, score});
      }
    };
    for (int64_t p : positions) {
      for (const CircuitEdge& e : incoming({{Node::Kind::output, -1, -1}, Ch::resid}, p)) attempt(e);
    }
    const Ch order[] = {Ch::v, Ch::k, Ch::q};
    for (int L = cfg.n_layers - 1; L >= 0; --L) {
      if (cfg.has_mlp()) {
        const Recv m{{Node::Kind::mlp, L, -1}, Ch::resid};
        for (int64_t p : positions) {
          // The MLP at p reads its input at p only.
          const bool used = split ? sender_used_at(m.node, p, p) : sender_used(m.node);
          for (const CircuitEdge& e : incoming(m, p)) used ? attempt(e) : unused(e);
        }
      }
      for (Ch ch : order) {
        const int n = ch == Ch::q ? cfg.n_heads : cfg.kv_heads();
        for (int h = n - 1; h >= 0; --h) {
          const Recv r{{Node::Kind::head, L, h}, ch};
          for (int64_t p : positions) {
            // The query at p feeds the head's output at p; a key or value at p
            // feeds its outputs at every later position too (causal attention).
            const int64_t p_last = !split ? -1 : ch == Ch::q ? p : P - 1;
            bool used = false;
            const int group = ch == Ch::q ? 1 : cfg.n_heads / cfg.kv_heads();
            for (int q = h * group; q < (h + 1) * group; ++q) {
              used = used || sender_used_at({Node::Kind::head, L, q}, p, p_last);
            }
            const CircuitEdge he{CircuitEdge::Kind::head_input, -1, graph_.receiver_index(r), p};
            used ? attempt(he) : unused(he);
          }
        }
      }
      for (Ch ch : order) {
        const int n = ch == Ch::q ? cfg.n_heads : cfg.kv_heads();
        for (int h = n - 1; h >= 0; --h) {
          const Recv r{{Node::Kind::head, L, h}, ch};
          for (int64_t p : positions) {
            const bool used = c.kept({CircuitEdge::Kind::head_input, -1, graph_.receiver_index(r), p});
            for (const CircuitEdge& e : incoming(r, p)) used ? attempt(e) : unused(e);
          }
        }
      }
    }
    return out;
  }

 private:
  using Key = std::tuple<int, int, int>;  // layer, head, 0..2 = q/k/v, 3 = mlp, 4 = output
  Key key(const Recv& r) const {
    if (r.node.kind == Node::Kind::output) return {-1, -1, 4};
    if (r.node.kind == Node::Kind::mlp) return {r.node.layer, -1, 3};
    // GQA: the kv head's input is the same residual as any head's.
    return {r.node.layer, r.node.head, r.channel == Ch::q ? 0 : r.channel == Ch::k ? 1 : 2};
  }
  at::Tensor head_output(const at::Tensor& z, int l, int h) const {  // z [batch, pos, head, d_head]
    return at::matmul(z.select(2, h), model_.model().weights().blocks[static_cast<size_t>(l)].W_O[h]);
  }

  hooks::HookedTransformer& model_;
  patching::CircuitGraph graph_;
  at::Tensor clean_;
  std::map<int64_t, at::Tensor> corr_send_;  // sender index -> [batch, pos, d_model]
  std::map<Key, at::Tensor> corr_recv_;      // receiver -> its input in the ablation run
};

}  // namespace mechlab::testing
