// mechlab bench acdc: ACDC circuit discovery on a random model (default 4
// layers, d_model 256, 8 heads, MLPs; 32 prompts x 16 tokens), in one run:
//   one forward per edge   acdc_one_forward_per_edge: every trial a full masked
//                          forward from the embedding, sequential (the
//                          reference's algorithm on mechlab's runtime)
//   fast (default)         acdc(): one trial at a time (the CPU's default),
//                          node by node (CircuitRunner::metric_by_nodes);
//                          with --max-batch > 1 (or on a GPU) several per
//                          forward as cumulative prefixes, restarted at their
//                          receiver's layer from the cached state
// Each run's time is wall clock and process CPU time (the latter is what to
// read on a loaded machine, with --threads 1).
// Both must give the same circuit (the run fails otherwise). The metric is
// kl_to_clean; tau is --threshold, or by default the median of the output
// edges' first-trial scores (so that a fair share of edges is kept).
// Two rows are arithmetic, not runs: the model FLOPs the tried edges need
// (where stacking copies saves none), in forward equivalents. Unsplit, node
// by node (cone_trial: only what a trial's edge can change through the
// edges kept at that moment); the restart floor (each trial redoes its
// receiver's part of its layer and every layer above, Flops::trial) is
// printed beside it. --split-positions runs both on the position-split
// graph ((edge, position) pairs); its floor is the restart floor, each
// tried pair at the unsplit trial's cost.
//   floor at one-per-edge rate  those FLOPs at the one-forward-per-edge
//                               run's seconds per forward: what the fast
//                               run would take computing as fast as a whole
//                               forward does. It can beat it by computing
//                               faster, e.g. a layer's head groups on
//                               separate threads
//   fma-peak (CPU)              those FLOPs at this CPU's measured peak
//                               float32 FMA rate: the physical limit
// --busy-neighbour (CPU) then times the fast run again beside a process
// spinning on one core, with for_each_task's team fixed at --threads, fixed
// at 1, and sized by the load (the default): a team waits for its slowest
// thread, which shares its core with the neighbour.
#include "apps/bench/bench_util.h"
#include "apps/bench/cpu_peak.h"
#include "apps/cli/commands.h"
#include "core/formats/text_file.h"
#include "core/util/error.h"
#include "core/util/parallel.h"
#include "core/util/rng.h"
#include "hooks/hooked_transformer.h"
#include "kernels/device_info.h"
#include "patching/discovery/acdc.h"
#include "patching/metrics.h"
#include "patching/patching_data.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <nlohmann/json.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <map>

namespace mechlab::cli {

namespace {

// Random prompt pairs: clean ids uniform in [0, d_vocab); each corrupted
// prompt differs from its clean one at a third of the positions.
patching::PatchingData random_pairs(int64_t n, int64_t t, int64_t d_vocab, uint64_t seed) {
  core::Rng rng(seed);
  patching::PatchingData d;
  d.clean_tokens = at::empty({n, t}, at::kLong);
  d.answer_tokens = at::empty({n, 1}, at::kLong);
  d.wrong_tokens = at::empty({n, 1}, at::kLong);
  auto c = d.clean_tokens.accessor<int64_t, 2>();
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < t; ++j) c[i][j] = static_cast<int64_t>(rng.below(d_vocab));
  }
  d.corrupted_tokens = d.clean_tokens.clone();
  auto x = d.corrupted_tokens.accessor<int64_t, 2>();
  auto ans = d.answer_tokens.accessor<int64_t, 2>();
  auto wrong = d.wrong_tokens.accessor<int64_t, 2>();
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < t; ++j) {
      if (rng.below(3) == 0) x[i][j] = static_cast<int64_t>((c[i][j] + 1 + rng.below(d_vocab - 1)) % d_vocab);
    }
    ans[i][0] = static_cast<int64_t>(rng.below(d_vocab));
    wrong[i][0] = (ans[i][0] + 1) % d_vocab;
  }
  return d;
}

// Another process spinning on one core while it lives (it only closes its
// output and spins, so forking this multi-threaded process is safe; closed,
// so that it holds no pipe of whoever reads this bench's output).
class BusyNeighbour {
 public:
  BusyNeighbour() : pid_(fork()) {
    if (pid_ == 0) {
      close(STDOUT_FILENO);
      close(STDERR_FILENO);
      for (volatile unsigned long k = 0;; k = k + 1) {
      }
    }
    MECHLAB_CHECK(pid_ > 0, "bench acdc --busy-neighbour: fork failed");
  }
  ~BusyNeighbour() {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  BusyNeighbour(const BusyNeighbour&) = delete;
  BusyNeighbour& operator=(const BusyNeighbour&) = delete;
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_;
};

// Model FLOPs (multiply-adds) of the parts of a forward over `b` prompts x
// `P` tokens; norms, biases, softmax and the receivers' patching are left
// out (they are small next to the matmuls at these sizes).
struct Flops {
  const core::ModelConfig& c;
  double b, P;
  double qkv_proj(double heads) const { return heads * c.d_model * c.d_head; }           // one token
  double attn(double heads, double keys) const { return heads * 2.0 * keys * c.d_head; }  // one query
  double out_proj(double heads) const { return heads * c.d_head * c.d_model; }           // one token
  double mlp() const { return c.has_mlp() ? (c.mlp == core::MlpKind::gated ? 3.0 : 2.0) * c.d_model * c.d_mlp : 0; }
  double avg_keys() const { return (P + 1) / 2; }  // causal
  // A whole layer at every position.
  double layer() const {
    const double H = c.n_heads, KV = c.kv_heads();
    return b * P * (qkv_proj(H + 2 * KV) + attn(H, avg_keys()) + out_proj(H) + mlp());
  }
  // The last layer when only the answer position (one per prompt) is read:
  // keys and values everywhere, the rest at the answer position.
  double last_layer_at_answers() const {
    const double H = c.n_heads, KV = c.kv_heads();
    return b * P * qkv_proj(2 * KV) + b * (qkv_proj(H) + attn(H, P) + out_proj(H) + mlp());
  }
  double unembed() const { return b * double(c.d_model) * c.d_vocab; }  // answer positions only
  // One full forward, as acdc_one_forward_per_edge runs it (unembedding the answer positions).
  double forward() const { return c.n_layers * layer() + unembed(); }
  // Layers after `l` to the logits, the last at the answer positions only.
  double after(int l) const {
    double f = unembed();
    for (int j = l + 1; j < c.n_layers; ++j) f += j == c.n_layers - 1 ? last_layer_at_answers() : layer();
    return f;
  }
  // The cheapest exact trial on an edge into receiver `r`: its own part of
  // layer L only (one head's projection of the changed channel, its
  // attention and output projection; or the MLP), then the MLP and the
  // layers after; at the last layer the query side at the answer positions.
  double trial(const patching::ReceiverInput& r) const {
    using Kind = patching::CircuitNode::Kind;
    if (r.node.kind == Kind::output) return unembed();
    const int l = r.node.layer;
    const bool last = l == c.n_layers - 1;
    const double q_tokens = last ? b : b * P;  // positions whose output is needed
    if (r.node.kind == Kind::mlp) return q_tokens * mlp() + after(l);
    // A kv head's k/v input changes every query head of its group.
    const double group = r.channel == patching::ReceiverChannel::q ? 1.0 : double(c.n_heads) / c.kv_heads();
    const double proj = r.channel == patching::ReceiverChannel::q ? q_tokens * qkv_proj(1) : b * P * qkv_proj(1);
    const double own = proj + q_tokens * (attn(group, last ? P : avg_keys()) + out_proj(group));
    return own + q_tokens * mlp() + after(l);
  }
  // Node by node (CircuitRunner::metric_by_nodes): one receiver's
  // projection, one head's attention and output projection, one MLP; the
  // last layer's queries and MLP at the answer positions only.
  double receiver_proj(bool query, bool last) const { return (query && last ? b : b * P) * qkv_proj(1); }
  double head_rest(bool last) const {
    return last ? b * (attn(1, P) + out_proj(1)) : b * P * (attn(1, avg_keys()) + out_proj(1));
  }
  double mlp_node(bool last) const { return (last ? b : b * P) * mlp(); }
};

// The least a node-by-node trial must compute: the receivers whose input
// changes (the trial's own, and every receiver that keeps an edge from a
// changed node), their heads' attention and output projections, the changed
// MLPs and the unembedding; every other node keeps its output. FLOPs of the
// trial on `mask` (float [receivers, senders], the trial's removed mask)
// whose edge goes into receiver `trial_r`.
double cone_trial(const patching::CircuitGraph& g, const Flops& fl, const at::Tensor& mask, int64_t trial_r,
                  const std::vector<std::vector<char>>& has_edge) {
  using Kind = patching::CircuitNode::Kind;
  using Channel = patching::ReceiverChannel;
  const auto& c = fl.c;
  const int64_t S = static_cast<int64_t>(g.senders().size());
  const int64_t group = c.n_heads / c.kv_heads();
  const float* m = mask.data_ptr<float>();
  std::vector<char> changed(static_cast<size_t>(S), 0);
  double f = fl.unembed();
  auto receiver_changes = [&](int64_t r) {
    if (r == trial_r) return true;
    for (int64_t s = 0; s < S; ++s) {
      if (changed[static_cast<size_t>(s)] && has_edge[static_cast<size_t>(r)][static_cast<size_t>(s)] &&
          m[r * S + s] == 0.f) {
        return true;
      }
    }
    return false;
  };
  for (int l = 0; l < c.n_layers; ++l) {
    const bool last = l == c.n_layers - 1;
    std::vector<char> head(static_cast<size_t>(c.n_heads), 0);
    for (Channel ch : {Channel::q, Channel::k, Channel::v}) {
      const int n = ch == Channel::q ? c.n_heads : c.kv_heads();
      for (int h = 0; h < n; ++h) {
        const int64_t r = g.receiver_index({{Kind::head, l, h}, ch});
        if (!receiver_changes(r)) continue;
        f += fl.receiver_proj(ch == Channel::q, last);
        for (int64_t i = 0; i < (ch == Channel::q ? 1 : group); ++i) head[static_cast<size_t>(ch == Channel::q ? h : h * group + i)] = 1;
      }
    }
    for (int h = 0; h < c.n_heads; ++h) {
      if (!head[static_cast<size_t>(h)]) continue;
      f += fl.head_rest(last);
      changed[static_cast<size_t>(g.sender_index({Kind::head, l, h}))] = 1;
    }
    if (c.has_mlp() && receiver_changes(g.receiver_index({{Kind::mlp, l, -1}, Channel::resid}))) {
      f += fl.mlp_node(last);
      changed[static_cast<size_t>(g.sender_index({Kind::mlp, l, -1}))] = 1;
    }
  }
  return f;
}

}  // namespace

void add_bench_acdc(CLI::App& bench) {
  auto* cmd = bench.add_subcommand(
      "acdc",
      "ACDC circuit discovery on a random model (4 layers, d_model 256, 8 heads, MLPs; 32 prompts x 16\n"
      "tokens): mechlab's ACDC (one trial at a time node by node on the CPU; restarted, batched trials\n"
      "on a GPU or with --max-batch) vs one full forward per edge on the same runtime, wall and CPU\n"
      "seconds; checks that both give the same circuit. Prints a table with the floor: the arithmetic of\n"
      "the cheapest exact trials, at the one-forward-per-edge run's rate and at the measured FMA peak.\n"
      "--busy-neighbour adds the fast run beside a process spinning on one core.");
  struct Args {
    std::string device = "cpu", json;
    int layers = 4, d_model = 256, heads = 8, vocab = 512;
    int64_t prompts = 32, seq_len = 16, max_batch = 0;
    int repeats = 3;
    double threshold = -1;
    uint64_t seed = 0;
    bool quick = false, attn_only = false, split_positions = false, busy_neighbour = false;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--device", a->device, "Where the model runs: cpu, cuda, cuda:N or auto")->capture_default_str();
  cmd->add_option("--layers", a->layers, "Layers of the random model")->capture_default_str()->check(CLI::Range(1, 64));
  cmd->add_option("--d-model", a->d_model, "Residual width (d_head = d_model / heads, d_mlp = 4 d_model)")
      ->capture_default_str()
      ->check(CLI::Range(8, 8192));
  cmd->add_option("--heads", a->heads, "Attention heads per layer")->capture_default_str()->check(CLI::Range(1, 128));
  cmd->add_option("--vocab", a->vocab, "Vocabulary size")->capture_default_str()->check(CLI::Range(4, 1 << 20));
  cmd->add_option("--prompts", a->prompts, "Prompt pairs")->capture_default_str()->check(positive());
  cmd->add_option("--seq-len", a->seq_len, "Tokens per prompt")->capture_default_str()->check(CLI::Range(2, 1024));
  cmd->add_option("--threshold", a->threshold,
                  "ACDC tau (default: the median first-trial score of the output's edges)");
  cmd->add_option("--max-batch", a->max_batch, "Trials per forward of the fast run (0 = automatic: 1 on the CPU, the memory budget on a GPU)")
      ->capture_default_str();
  cmd->add_option("--repeats", a->repeats,
                  "Timed runs of each implementation; the table reports the median with its IQR")
      ->capture_default_str()
      ->check(CLI::Range(1, 100));
  cmd->add_flag("--attn-only", a->attn_only, "No MLPs");
  cmd->add_flag("--split-positions", a->split_positions,
                "Split the graph by token position (every edge once per position; both runs)");
  cmd->add_flag("--busy-neighbour", a->busy_neighbour,
                "CPU: then time the fast run beside a process spinning on one core, with its team of threads fixed "
                "at --threads, fixed at 1, and sized by the load (the default)");
  cmd->add_flag("--quick", a->quick, "Smoke-test size: 2 layers, d_model 64, 4 heads, 8 prompts x 8 tokens (overrides the size options)");
  cmd->add_option("--seed", a->seed, "Seed of the random model and prompts")->capture_default_str();
  cmd->add_option("--json", a->json, "Also write the figures to this JSON file");
  cmd->callback([a] {
    if (a->quick) {
      a->layers = 2, a->d_model = 64, a->heads = 4, a->prompts = 8, a->seq_len = 8, a->vocab = 128;
    }
    MECHLAB_CHECK(a->d_model % a->heads == 0, "--d-model ", a->d_model, " must be a multiple of --heads ", a->heads);
    MECHLAB_CHECK(!a->busy_neighbour || a->device == "cpu", "--busy-neighbour measures CPU threads beside a busy "
                  "process: run it with --device cpu (got --device ", a->device, ")");
    const at::Device device = parse_device(a->device);
    core::ModelConfig cfg;
    cfg.name = "bench-acdc";
    cfg.n_layers = a->layers;
    cfg.d_model = a->d_model;
    cfg.n_heads = a->heads;
    cfg.d_head = a->d_model / a->heads;
    cfg.d_mlp = 4 * a->d_model;
    cfg.d_vocab = a->vocab;
    cfg.n_ctx = static_cast<int>(std::max<int64_t>(a->seq_len, 16));
    if (a->attn_only) cfg.mlp = core::MlpKind::none;
    core::Transformer base(cfg, a->seed);
    base.to(device);
    hooks::HookedTransformer model(std::move(base));
    patching::PatchingData data = random_pairs(a->prompts, a->seq_len, cfg.d_vocab, a->seed + 1);
    data.validate(cfg);
    at::InferenceMode guard;
    const patching::Metric kl = patching::kl_to_clean(data.answers(), model.forward(data.clean_tokens));

    double tau = a->threshold;
    if (tau < 0) {
      // The median metric increase of removing one output edge alone.
      discovery::CircuitRunner runner(model, data, discovery::Ablation::corrupted);
      std::vector<discovery::Circuit> one;
      const discovery::Circuit full = discovery::Circuit::full(runner.graph());
      for (const auto& e : full.edges()) {
        if (runner.graph().receivers()[static_cast<size_t>(e.receiver)].node.kind ==
            patching::CircuitNode::Kind::output) {
          discovery::Circuit c = discovery::Circuit::from_json(runner.graph(), full.to_json());
          c.set_kept(e, false);
          one.push_back(std::move(c));
        }
      }
      std::vector<double> m = runner.metrics(kl, one);
      std::sort(m.begin(), m.end());
      tau = m[m.size() / 2];
    }
    // Split by position: (edge, position) pairs.
    const int64_t n_positions = a->split_positions ? data.seq_len() : 0;
    const auto n_edges =
        static_cast<int64_t>(discovery::Circuit::full(patching::CircuitGraph(cfg), n_positions).edges().size());
    std::printf("model %d layers, d_model %d, %d heads%s, %lld prompts x %lld tokens, %s, %d threads; %lld edges, "
                "tau %.4g\n",
                cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.has_mlp() ? ", MLPs" : "",
                static_cast<long long>(data.batch()), static_cast<long long>(data.seq_len()),
                c10::str(device).c_str(), at::get_num_threads(), static_cast<long long>(n_edges), tau);
    if (device.is_cuda()) std::printf("%s\n", kernels::describe_gpus().c_str());
    std::fflush(stdout);

    const auto opts =
        discovery::AcdcOptions().threshold(tau).max_batch(a->max_batch).split_positions(a->split_positions);
    model.forward(data.corrupted_tokens);  // warm-up (allocator, thread pool)
    // Each implementation runs --repeats times (the runs are deterministic:
    // the last one's decisions are compared); the table reports medians.
    // Process CPU seconds beside the wall clock: on a loaded machine the
    // wall clock measures the load; with --threads 1 the CPU time does not.
    std::vector<double> fast_ms, naive_ms;
    std::clock_t c0 = std::clock();
    discovery::AcdcResult fast = discovery::acdc(model, data, kl, opts);
    fast_ms.push_back(fast.seconds * 1e3);
    for (int r = 1; r < a->repeats; ++r) fast_ms.push_back(discovery::acdc(model, data, kl, opts).seconds * 1e3);
    const double fast_cpu = static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC / a->repeats;
    std::printf("fast: %.2f s (%.2f s CPU per run), %lld forwards, %lld trials, %lld of %lld edges kept\n",
                fast.seconds, fast_cpu, static_cast<long long>(fast.forwards), static_cast<long long>(fast.trials),
                static_cast<long long>(fast.circuit.edge_count()), static_cast<long long>(n_edges));
    std::fflush(stdout);
    c0 = std::clock();
    discovery::AcdcResult naive = discovery::acdc_one_forward_per_edge(model, data, kl, opts);
    naive_ms.push_back(naive.seconds * 1e3);
    for (int r = 1; r < a->repeats; ++r) {
      naive_ms.push_back(discovery::acdc_one_forward_per_edge(model, data, kl, opts).seconds * 1e3);
    }
    const double naive_cpu = static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC / a->repeats;
    const bench::Stats fast_stats = bench::summarize(fast_ms), naive_stats = bench::summarize(naive_ms);
    fast.seconds = fast_stats.median / 1e3;
    naive.seconds = naive_stats.median / 1e3;
    std::printf("one forward per edge: %.2f s (%.2f s CPU per run), %lld forwards\n", naive.seconds, naive_cpu,
                static_cast<long long>(naive.forwards));
    auto same_decisions = [](const discovery::AcdcResult& x, const discovery::AcdcResult& y) {
      bool same = x.steps.size() == y.steps.size();
      for (size_t i = 0; same && i < x.steps.size(); ++i) {
        same = x.steps[i].edge == y.steps[i].edge && x.steps[i].kept == y.steps[i].kept;
      }
      return same;
    };
    MECHLAB_CHECK(same_decisions(fast, naive),
                  "bench acdc: the fast and the one-forward-per-edge runs decided differently");
    std::printf("same circuit: yes (%lld decisions identical)\n", static_cast<long long>(fast.steps.size()));

    // The floor: each tried edge once, with its cheapest exact restart.
    const patching::CircuitGraph graph(cfg);
    const discovery::Circuit full = discovery::Circuit::full(graph, n_positions);
    std::map<std::string, int64_t> receiver_of;
    for (const auto& e : full.edges()) receiver_of[full.edge_name(e)] = e.receiver;
    const Flops fl{cfg, static_cast<double>(data.batch()), static_cast<double>(data.seq_len())};
    double floor_fe = 0;
    int64_t tried = 0;
    for (const auto& st : fast.steps) {
      if (!st.tried) continue;
      ++tried;
      floor_fe += fl.trial(graph.receivers()[static_cast<size_t>(receiver_of.at(st.edge))]) / fl.forward();
    }
    // Node by node (unsplit): replay the decisions, each tried edge on the
    // circuit of its moment.
    double cone_fe = 0;
    if (n_positions == 0) {
      std::map<std::string, discovery::CircuitEdge> edge_of;
      for (const auto& e : full.edges()) edge_of.emplace(full.edge_name(e), e);
      std::vector<std::vector<char>> has_edge(graph.receivers().size(), std::vector<char>(graph.senders().size(), 0));
      for (const auto& e : full.edges()) {
        if (e.kind == discovery::CircuitEdge::Kind::residual) {
          has_edge[static_cast<size_t>(e.receiver)][static_cast<size_t>(e.sender)] = 1;
        }
      }
      discovery::Circuit cur = full;
      for (const auto& st : fast.steps) {
        const discovery::CircuitEdge& e = edge_of.at(st.edge);
        if (st.tried) {
          discovery::Circuit trial = cur;
          trial.set_kept(e, false);
          const at::Tensor mask = trial.removed_mask().contiguous();
          cone_fe += cone_trial(graph, fl, mask, e.receiver, has_edge) / fl.forward();
        }
        if (!st.kept) cur.set_kept(e, false);
      }
    }
    // Both runs also need the state's and the final circuit's forwards (the
    // one-forward-per-edge run's forwards beyond its trials): counted in full.
    const double extra = static_cast<double>(naive.forwards - tried);
    const double restart_floor = floor_fe + extra;
    const double floor_total = n_positions == 0 ? cone_fe + extra : restart_floor;
    const double s_per_forward = naive.seconds / static_cast<double>(std::max<int64_t>(naive.forwards, 1));
    std::printf("tried edges %lld; fast trials %lld (%lld discarded after kept edges, %.0f%%)\n",
                static_cast<long long>(tried), static_cast<long long>(fast.trials),
                static_cast<long long>(fast.trials - tried),
                100.0 * static_cast<double>(fast.trials - tried) / static_cast<double>(std::max<int64_t>(fast.trials, 1)));
    std::printf("restart floor (each trial redoes its receiver's part of the layer and every layer above): %.1f "
                "forward equivalents for %lld tried edges (%.3f of a forward per trial) + %.0f forwards of state and "
                "result = %.1f vs %lld forwards one per edge: %.1fx\n",
                floor_fe, static_cast<long long>(tried), floor_fe / static_cast<double>(std::max<int64_t>(tried, 1)),
                extra, restart_floor, static_cast<long long>(naive.forwards),
                static_cast<double>(naive.forwards) / restart_floor);
    if (n_positions == 0) {
      std::printf("node floor (each trial redoes only what its edge can change through kept edges): %.1f forward "
                  "equivalents (%.3f per trial) + %.0f = %.1f: %.1fx at the one-forward-per-edge run's rate\n",
                  cone_fe, cone_fe / static_cast<double>(std::max<int64_t>(tried, 1)), extra, floor_total,
                  static_cast<double>(naive.forwards) / floor_total);
    }
    // The physical limit: the floor's FLOPs (Flops counts multiply-adds) at
    // the measured FMA peak of the threads the runs used.
    const bench::CpuPeak peak =
        device.is_cpu() ? bench::measure_cpu_fp32_peak(at::get_num_threads()) : bench::CpuPeak{};
    const double peak_s = peak.gflops > 0 ? 2.0 * floor_total * fl.forward() / (peak.gflops * 1e9) : 0;
    char floor_note[96];
    std::snprintf(floor_note, sizeof floor_note, "%.1f forward equivalents (%lld tried edges)", floor_total,
                  static_cast<long long>(tried));

    std::vector<bench::Row> rows = {{"one forward per edge", naive_stats,
                                     std::to_string(naive.forwards) + " forwards from the embedding"},
                                    {"fast (acdc)", fast_stats,
                                     std::to_string(fast.forwards) + " forwards, " + std::to_string(fast.trials) +
                                         " trials"},
                                    {"floor at one-per-edge rate", bench::Stats{0, floor_total * s_per_forward * 1e3},
                                     std::string("derived: ") + floor_note}};
    if (peak_s > 0) {
      rows.push_back({"fma-peak", bench::Stats{0, peak_s * 1e3},
                      "derived: the floor's FLOPs at the measured peak: " + c10::str(static_cast<int>(peak.gflops)) +
                          " GFLOP/s (" + peak.isa + ", " + std::to_string(peak.threads) + " threads)"});
    }
    bench::print_table("ACDC, " + std::to_string(n_edges) + " edges, " + std::to_string(data.batch()) + " x " +
                           std::to_string(data.seq_len()) + " tokens",
                       rows, "one forward per edge", static_cast<double>(n_edges), "edges");
    std::printf("speed-up over one forward per edge: %.1fx, in CPU time %.1fx (the floor: %.1fx at the "
                "one-forward-per-edge run's rate",
                naive.seconds / fast.seconds, naive_cpu / fast_cpu, static_cast<double>(naive.forwards) / floor_total);
    if (peak_s > 0) std::printf(", %.1fx at the FMA peak", naive.seconds / peak_s);
    std::printf(")\n");
    // Beside a busy process: the team fixed at --threads, fixed at 1, then
    // sized by the load (FixedTaskThreads(0)), each size's runs in a row;
    // the same decisions every time.
    bench::Stats fixed_stats, one_stats, adaptive_stats;
    if (a->busy_neighbour) {
      const int threads = at::get_num_threads();
      const BusyNeighbour busy;
      auto time_team = [&](int team_threads) {
        std::vector<double> ms;
        for (int r = 0; r < a->repeats; ++r) {
          const FixedTaskThreads team(team_threads);
          const discovery::AcdcResult x = discovery::acdc(model, data, kl, opts);
          MECHLAB_CHECK(same_decisions(x, fast), "bench acdc: a run beside the busy process decided differently");
          ms.push_back(x.seconds * 1e3);
        }
        return bench::summarize(ms);
      };
      fixed_stats = time_team(threads);
      one_stats = time_team(1);
      adaptive_stats = time_team(0);
      const std::string fixed_name = "team fixed at " + std::to_string(threads);
      bench::print_table("ACDC beside a process spinning on one core (pid " + std::to_string(busy.pid()) +
                             "; fast run, same decisions)",
                         {{"quiet (above)", fast_stats, "no neighbour"},
                          {fixed_name, fixed_stats, "for_each_task on --threads threads"},
                          {"team fixed at 1", one_stats, "for_each_task on the caller"},
                          {"team sized by the load", adaptive_stats, "the default (task_threads)"}},
                         fixed_name, static_cast<double>(n_edges), "edges");
    }
    if (!a->json.empty()) {
      nlohmann::json j = {{"edges", n_edges},
                          {"tau", tau},
                          {"kept", fast.circuit.edge_count()},
                          {"prompts", data.batch()},
                          {"seq_len", data.seq_len()},
                          {"split_positions", a->split_positions},
                          {"device", c10::str(device)},
                          {"threads", at::get_num_threads()},
                          {"fast_s", fast.seconds},
                          {"fast_cpu_s", fast_cpu},
                          {"naive_cpu_s", naive_cpu},
                          {"fast_forwards", fast.forwards},
                          {"fast_trials", fast.trials},
                          {"naive_s", naive.seconds},
                          {"naive_forwards", naive.forwards},
                          {"tried", tried},
                          {"floor_forward_equivalents", floor_total},
                          {"floor_speedup", static_cast<double>(naive.forwards) / floor_total},
                          {"restart_floor_forward_equivalents", restart_floor},
                          {"fma_peak_s", peak_s},
                          {"speedup", naive.seconds / fast.seconds}};
      if (fixed_stats.n > 0) {
        j["busy_neighbour_fixed_team_s"] = fixed_stats.median / 1e3;
        j["busy_neighbour_one_thread_team_s"] = one_stats.median / 1e3;
        j["busy_neighbour_adaptive_team_s"] = adaptive_stats.median / 1e3;
      }
      core::write_text_file(a->json, j.dump(2) + "\n");
    }
  });
}

}  // namespace mechlab::cli
