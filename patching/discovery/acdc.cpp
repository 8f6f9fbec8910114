#include "patching/discovery/acdc.h"

#include "core/util/error.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cmath>

namespace mechlab::discovery {

namespace {

using patching::CircuitGraph;
using patching::CircuitNode;
using patching::ReceiverChannel;
using patching::ReceiverInput;
using Kind = CircuitNode::Kind;

// When a decision is forced (the edge removed without a forward because its
// node is unused, the reference's "unused node" rule).
enum class Check {
  none,         // output's incoming edges: always tried
  mlp_used,     // edges into m{L}: tried iff the MLP has a kept outgoing edge
  head_used,    // a head-input edge: tried iff a head reading it has a kept outgoing edge
  input_kept,   // edges into a q/k/v receiver: tried iff its head-input edge is kept
};

struct Item {
  CircuitEdge edge;
  int layer;    // where its trial forwards restart (n_layers for the output)
  Check check;
  RestartAt at = RestartAt::attention;  // mlp: m{layer}'s edges, whose trials run only that MLP onwards
};

// The decision order (docs/ARCHITECTURE.md, "ACDC"): receivers from the
// output backwards, each receiver's senders by layer descending. Split by
// position (n_positions > 0): each receiver's edges at positions P-1..0,
// all of a receiver at one position before the next position.
std::vector<Item> decision_order(const CircuitGraph& g, bool reverse, bool mlp_restart, int64_t n_positions) {
  const auto& cfg = g.cfg();
  const int H = cfg.n_heads, KV = cfg.kv_heads();
  std::vector<int64_t> positions;  // last to first; {-1} when unsplit
  for (int64_t p = n_positions - 1; p >= 0; --p) positions.push_back(p);
  if (n_positions == 0) positions.push_back(-1);
  // Senders of receiver r in ACDC's order: layers descending, the MLP first,
  // heads H-1..0 (reverse: 0..H-1), input last.
  auto incoming = [&](const ReceiverInput& r) {
    std::vector<int64_t> out;
    for (int l = cfg.n_layers - 1; l >= 0; --l) {
      std::vector<CircuitNode> layer;
      if (cfg.has_mlp()) layer.push_back({Kind::mlp, l, -1});
      for (int i = 0; i < H; ++i) layer.push_back({Kind::head, l, reverse ? i : H - 1 - i});
      for (const CircuitNode& s : layer) {
        if (g.has_edge(s, r)) out.push_back(g.sender_index(s));
      }
    }
    out.push_back(g.sender_index({Kind::input, -1, -1}));
    return out;
  };
  std::vector<Item> items;
  auto add_receiver = [&](const ReceiverInput& r, int layer, Check check, RestartAt at = RestartAt::attention) {
    const int64_t ri = g.receiver_index(r);
    const std::vector<int64_t> senders = incoming(r);
    for (int64_t p : positions) {
      for (int64_t s : senders) items.push_back({{CircuitEdge::Kind::residual, s, ri, p}, layer, check, at});
    }
  };
  add_receiver({{Kind::output, -1, -1}, ReceiverChannel::resid}, cfg.n_layers, Check::none);
  const ReceiverChannel channels[] = {ReceiverChannel::v, ReceiverChannel::k, ReceiverChannel::q};
  for (int L = cfg.n_layers - 1; L >= 0; --L) {
    // m{L} is decided before any receiver of layer L's heads changes, so its
    // trials may start at the MLP from the state's resid_mid.
    if (cfg.has_mlp()) {
      add_receiver({{Kind::mlp, L, -1}, ReceiverChannel::resid}, L, Check::mlp_used,
                   mlp_restart ? RestartAt::mlp : RestartAt::attention);
    }
    for (ReceiverChannel ch : channels) {
      const int n = ch == ReceiverChannel::q ? H : KV;
      for (int h = n - 1; h >= 0; --h) {
        const int64_t ri = g.receiver_index({{Kind::head, L, h}, ch});
        for (int64_t p : positions) items.push_back({{CircuitEdge::Kind::head_input, -1, ri, p}, L, Check::head_used});
      }
    }
    for (ReceiverChannel ch : channels) {
      const int n = ch == ReceiverChannel::q ? H : KV;
      for (int h = n - 1; h >= 0; --h) add_receiver({{Kind::head, L, h}, ch}, L, Check::input_kept);
    }
  }
  return items;
}

// The circuit being pruned, as flags and the removed mask the runner reads
// ([receivers, senders], or [positions, receivers, senders] when split).
class Work {
 public:
  explicit Work(const Circuit& start) : g_(&start.graph()) {
    S_ = static_cast<int64_t>(g_->senders().size());
    R_ = static_cast<int64_t>(g_->receivers().size());
    P_ = std::max<int64_t>(1, start.n_positions());
    kept_.assign(static_cast<size_t>(P_ * S_ * R_), 0);
    exists_.assign(static_cast<size_t>(S_ * R_), 0);
    input_kept_.assign(static_cast<size_t>(P_ * R_), 1);
    for (const CircuitEdge& e : start.edges()) {
      if (e.kind == CircuitEdge::Kind::residual) exists_[idx(e.sender, e.receiver, 0)] = 1;
      if (e.kind == CircuitEdge::Kind::head_input) input_kept_[ridx(e.receiver, p_of(e))] = start.kept(e) ? 1 : 0;
      if (e.kind == CircuitEdge::Kind::residual && start.kept(e)) kept_[idx(e.sender, e.receiver, p_of(e))] = 1;
    }
    mask_ = start.removed_mask().contiguous();  // float32 [(positions,) receivers, senders]
  }
  Work clone() const {
    Work w = *this;
    w.mask_ = mask_.clone();
    return w;
  }

  bool kept(const CircuitEdge& e) const {
    return e.kind == CircuitEdge::Kind::head_input ? input_kept_[ridx(e.receiver, p_of(e))] != 0
                                                   : kept_[idx(e.sender, e.receiver, p_of(e))] != 0;
  }
  void remove(const CircuitEdge& e) {
    const int64_t p = p_of(e);
    float* m = mask_.data_ptr<float>() + p * R_ * S_;
    if (e.kind == CircuitEdge::Kind::head_input) {
      input_kept_[ridx(e.receiver, p)] = 0;
      for (int64_t s = 0; s < S_; ++s) m[e.receiver * S_ + s] = exists_[idx(s, e.receiver, 0)] ? 1.f : 0.f;
    } else {
      kept_[idx(e.sender, e.receiver, p)] = 0;
      m[e.receiver * S_ + e.sender] = 1.f;
    }
  }
  // A sender with a kept outgoing residual edge at a position in [p0, p1).
  bool sender_used(int64_t s, int64_t p0, int64_t p1) const {
    for (int64_t p = p0; p < p1; ++p) {
      for (int64_t r = 0; r < R_; ++r) {
        if (kept_[idx(s, r, p)]) return true;
      }
    }
    return false;
  }
  // Whether the item's node is used (else its decision is forced). Split:
  // the node at the edge's position p; a head reads its query at p and its
  // keys and values at every position <= p (causal attention), so its
  // <k>/<v> input at p is used when the head is used at any p' >= p.
  bool used(const Item& it) const {
    const ReceiverInput& r = g_->receivers()[static_cast<size_t>(it.edge.receiver)];
    const int64_t p = p_of(it.edge);
    switch (it.check) {
      case Check::none: return true;
      case Check::mlp_used: return sender_used(g_->sender_index(r.node), p, p + 1);
      case Check::input_kept: return input_kept_[ridx(it.edge.receiver, p)] != 0;
      case Check::head_used: {
        const auto& cfg = g_->cfg();
        // <q> is read by its head; a (kv) head's <k>/<v> by the query heads of its group.
        const bool q = r.channel == ReceiverChannel::q;
        const int group = q ? 1 : cfg.n_heads / cfg.kv_heads();
        const int first = q ? r.node.head : r.node.head * group;
        for (int h = first; h < first + group; ++h) {
          if (sender_used(g_->sender_index({Kind::head, r.node.layer, h}), p, q ? p + 1 : P_)) return true;
        }
        return false;
      }
    }
    return true;
  }
  const at::Tensor& mask() const { return mask_; }

 private:
  static int64_t p_of(const CircuitEdge& e) { return e.pos < 0 ? 0 : e.pos; }
  size_t idx(int64_t s, int64_t r, int64_t p) const { return static_cast<size_t>((p * S_ + s) * R_ + r); }
  size_t ridx(int64_t r, int64_t p) const { return static_cast<size_t>(p * R_ + r); }

  const CircuitGraph* g_;
  int64_t S_ = 0, R_ = 0, P_ = 1;
  std::vector<char> kept_, exists_, input_kept_;
  at::Tensor mask_;
};

void check_options(const AcdcOptions& options) {
  const double tau = options.threshold();
  MECHLAB_CHECK(!std::isnan(tau) && tau >= 0, "ACDC threshold ", tau,
                " must be a number >= 0 (the metric increase below which an edge is removed)");
  MECHLAB_CHECK(options.indices_mode() == "normal" || options.indices_mode() == "reverse",
                "unknown ACDC indices_mode \"", options.indices_mode(),
                "\"; use \"normal\" (heads from the last) or \"reverse\" (heads from the first)");
  MECHLAB_CHECK(options.max_batch() >= 0, "ACDC max_batch must be >= 0 (0 = from the memory budget), got ",
                options.max_batch());
  MECHLAB_CHECK(options.memory_budget_bytes() >= 0, "ACDC memory_budget_bytes must be >= 0 (0 = automatic), got ",
                options.memory_budget_bytes());
}

// `one_forward_per_edge`: every trial a full masked forward from the
// embedding, one per forward (the baseline of `mechlab bench acdc`).
// `t0`: when the run began (the runner's construction counts when acdc() made it).
AcdcResult run_acdc(CircuitRunner& runner, const patching::Metric& metric, const AcdcOptions& options,
                    const std::vector<AcdcStep>& resume, const AcdcObserver& observer, bool one_forward_per_edge,
                    std::chrono::steady_clock::time_point t0) {
  check_options(options);
  // The rule removes an edge when the metric rises by less than tau: with a
  // metric that falls as the circuit breaks, every removal would pass.
  MECHLAB_CHECK(options.abs_value() || !metric.higher_is_better(), "ACDC removes an edge when the metric rises by ",
                "less than the threshold, but metric ", metric.name(), " is higher when the circuit is better, so ",
                "every edge would go: pass metric.negated() (the reference ACDC minimises -logit_diff on IOI) or ",
                "set AcdcOptions::abs_value");
  const double tau = options.threshold();
  hooks::HookedTransformer& model = runner.model();
  MECHLAB_CHECK(options.ablation() == runner.ablation(), "ACDC ablation \"", ablation_name(options.ablation()),
                "\" differs from the circuit runner's \"", ablation_name(runner.ablation()),
                "\"; make the runner with the ablation of the options");
  const CircuitGraph& graph = runner.graph();
  if (options.start()) {
    MECHLAB_CHECK(options.start()->graph().cfg().to_json_string() == model.cfg().to_json_string(),
                  "the ACDC start circuit was made for another model (", options.start()->graph().cfg().name,
                  ", not ", model.cfg().name, "); start from a circuit of this model");
  }
  const int64_t forwards_before = runner.forwards();

  const double full_metric = metric(runner.clean_logits()).item<double>();
  MECHLAB_CHECK(std::isfinite(full_metric), "metric ", metric.name(), " is ", full_metric,
                " on the full model; ACDC needs a finite metric (check the answers and the data)");

  const int64_t n_positions = options.split_positions() ? runner.seq_len() : 0;
  if (options.start()) {
    MECHLAB_CHECK(options.start()->n_positions() == n_positions, "the ACDC start circuit is ",
                  options.start()->split() ? "split into " + std::to_string(options.start()->n_positions()) + " positions"
                                           : std::string("not split by position"),
                  " but the run ", options.split_positions()
                                       ? "splits by the prompts' " + std::to_string(n_positions) + " positions"
                                       : std::string("is not split"),
                  "; start from a circuit of the same split (option split_positions)");
  }
  const Circuit start = options.start() ? *options.start() : Circuit::full(graph, n_positions);
  Work cur(start);
  // Automatic: one trial per forward on the CPU, where k stacked copies cost
  // k forwards of arithmetic and the trials after a kept edge are lost
  // (docs/ARCHITECTURE.md, "ACDC", measured); the memory budget's k elsewhere.
  const bool on_cpu = model.model().device().is_cpu();
  const int64_t kmax = one_forward_per_edge      ? 1
                       : options.max_batch() > 0 ? options.max_batch()
                       : on_cpu                  ? 1
                                                 : runner.copies_per_forward(metric);
  // One trial at a time, unsplit: node by node (a trial recomputes what its
  // edge can change); else restarts from the state, batched.
  const bool by_nodes = !one_forward_per_edge && kmax == 1 && n_positions == 0;
  double cur_metric = by_nodes ? runner.metric_by_nodes(metric, cur.mask()) : runner.set_state(start, metric);
  const std::vector<Item> items = decision_order(graph, options.indices_mode() == "reverse",
                                                 runner.can_restart_at_mlp() && !one_forward_per_edge, n_positions);
  int64_t total = 0;
  for (const Item& it : items) total += cur.kept(it.edge) ? 1 : 0;
  std::vector<AcdcStep> steps;
  std::vector<double> scores(items.size(), NAN);
  int64_t trials = 0;

  // Replay the journal: each step must be the decision this run takes next.
  size_t pos = 0;
  for (size_t i = 0; i < resume.size(); ++i) {
    while (pos < items.size() && !cur.kept(items[pos].edge)) ++pos;
    const AcdcStep& st = resume[i];
    const bool forced = pos < items.size() && !cur.used(items[pos]);
    MECHLAB_CHECK(pos < items.size() && st.edge == start.edge_name(items[pos].edge) && st.tried == !forced &&
                      !(forced && st.kept),
                  "the ACDC resume journal belongs to another job: its step ", i + 1, " decides \"", st.edge,
                  "\"", pos < items.size() ? " but this run decides \"" + start.edge_name(items[pos].edge) + "\" next"
                                           : " but this run has no edge left to decide",
                  "; resume with the journal of this job or start afresh");
    if (st.tried) {
      // The decision must be this job's: tau and abs_value decide it from the score.
      const double result = options.abs_value() ? std::abs(st.score) : st.score;
      MECHLAB_CHECK(std::isnan(st.score) ? st.kept : (result < tau) == !st.kept,
                    "the ACDC resume journal belongs to another job: its step ", i + 1, " ",
                    st.kept ? "keeps" : "removes", " \"", st.edge, "\" with score ", st.score,
                    ", which threshold ", tau, options.abs_value() ? " (on |score|)" : "",
                    " would not; resume with the journal of this job or start afresh");
    }
    if (!st.kept) cur.remove(items[pos].edge);
    if (st.tried) {
      scores[pos] = st.score;
      cur_metric = st.metric;
    }
    steps.push_back(st);
    ++pos;
  }

  int64_t batch = kmax;
  while (true) {
    while (pos < items.size() && !cur.kept(items[pos].edge)) ++pos;
    if (pos >= items.size()) break;
    // Collect up to `batch` trials restarting at one layer: trial j removes
    // the candidates 1..j (and the forced removals among them) on top of the
    // current circuit.
    const int layer = items[pos].layer;
    const RestartAt at = items[pos].at;
    Work work = cur.clone();
    struct Planned {
      size_t item;
      bool forced;
      int64_t trial;
    };
    std::vector<Planned> plan;
    std::vector<at::Tensor> masks;
    size_t i = pos;
    for (; i < items.size() && items[i].layer == layer && items[i].at == at; ++i) {
      if (!work.kept(items[i].edge)) continue;
      if (!work.used(items[i])) {
        work.remove(items[i].edge);
        plan.push_back({i, true, -1});
        continue;
      }
      if (static_cast<int64_t>(masks.size()) == batch) break;
      work.remove(items[i].edge);
      plan.push_back({i, false, static_cast<int64_t>(masks.size())});
      masks.push_back(work.mask().clone());
    }
    const std::vector<double> values =
        masks.empty() ? std::vector<double>{}
        : by_nodes    ? std::vector<double>{runner.metric_by_nodes(metric, masks[0])}
                      : runner.restart(one_forward_per_edge ? 0 : layer, metric, masks, at);
    trials += static_cast<int64_t>(masks.size());

    // Decide in order; at the first kept edge the later trials are void.
    size_t next = i;
    int64_t decided_trials = 0;
    bool stopped = false;
    for (const Planned& p : plan) {
      const CircuitEdge& e = items[p.item].edge;
      AcdcStep st;
      st.edge = start.edge_name(e);
      if (p.forced) {
        st.tried = false;
        cur.remove(e);
      } else {
        ++decided_trials;
        const double after = values[static_cast<size_t>(p.trial)];
        st.score = after - cur_metric;
        const double result = options.abs_value() ? std::abs(st.score) : st.score;
        scores[p.item] = st.score;
        if (result < tau) {
          cur.remove(e);
          cur_metric = after;
        } else {
          st.kept = true;
        }
      }
      st.metric = cur_metric;
      steps.push_back(st);
      if (observer) observer(steps.back(), static_cast<int64_t>(steps.size()), total);
      if (st.kept) {
        next = p.item + 1;
        stopped = true;
        break;
      }
    }
    pos = next;
    // Kept edges end batches early: shrink the next batch to the run of
    // removals just seen, grow it again while trials are all removed.
    batch = stopped ? std::max<int64_t>(1, decided_trials) : std::min(kmax, 2 * std::max<int64_t>(batch, 1));
  }

  Circuit circuit = Circuit::full(graph, n_positions);
  for (size_t i = 0; i < items.size(); ++i) {
    if (!cur.kept(items[i].edge)) circuit.set_kept(items[i].edge, false);
    if (!std::isnan(scores[i])) circuit.set_score(items[i].edge, scores[i]);
  }
  const double final_metric =
      by_nodes ? runner.metric_by_nodes(metric, cur.mask()) : runner.metrics(metric, {circuit}).at(0);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  nlohmann::json config = {
      {"method", "acdc"},
      {"threshold", tau},
      {"abs_value", options.abs_value()},
      {"ablation", ablation_name(options.ablation())},
      {"indices_mode", options.indices_mode()},
      {"metric", metric.name()},
      {"model", model.cfg().name},
      {"started_from_circuit", options.start().has_value()},
      {"n_prompts", runner.n_prompts()},
      {"seq_len", runner.seq_len()},
  };
  if (options.split_positions()) config["split_positions"] = true;
  return AcdcResult{std::move(circuit), std::move(steps), full_metric, final_metric,
                    runner.forwards() - forwards_before, trials, seconds, std::move(config)};
}

AcdcResult run_acdc(hooks::HookedTransformer& model, const patching::PatchingData& data,
                    const patching::Metric& metric, const AcdcOptions& options, const std::vector<AcdcStep>& resume,
                    const AcdcObserver& observer, bool one_forward_per_edge) {
  const auto t0 = std::chrono::steady_clock::now();
  check_options(options);  // before the runner's forwards
  data.validate(model.cfg());
  CircuitRunner runner(model, data, options.ablation(),
                       RunnerOptions().memory_budget_bytes(options.memory_budget_bytes()));
  return run_acdc(runner, metric, options, resume, observer, one_forward_per_edge, t0);
}

}  // namespace

AcdcResult acdc(hooks::HookedTransformer& model, const patching::PatchingData& data, const patching::Metric& metric,
                const AcdcOptions& options, const std::vector<AcdcStep>& resume, const AcdcObserver& observer) {
  return run_acdc(model, data, metric, options, resume, observer, false);
}

AcdcResult acdc(CircuitRunner& runner, const patching::Metric& metric, const AcdcOptions& options,
                const std::vector<AcdcStep>& resume, const AcdcObserver& observer) {
  return run_acdc(runner, metric, options, resume, observer, false, std::chrono::steady_clock::now());
}

AcdcResult acdc_one_forward_per_edge(hooks::HookedTransformer& model, const patching::PatchingData& data,
                                     const patching::Metric& metric, const AcdcOptions& options) {
  return run_acdc(model, data, metric, options, {}, {}, true);
}

}  // namespace mechlab::discovery
