// mechlab bench acdc: ACDC circuit discovery on a random model (default 4
// layers, d_model 256, 8 heads, MLPs; 32 prompts x 16 tokens), in one run:
//   one forward per edge   acdc_one_forward_per_edge: every trial a full masked
//                          forward from the embedding, sequential (the
//                          reference's algorithm on mechlab's runtime)
//   fast (default)         acdc(): trials restart at their receiver's layer
//                          from the cached state, several per forward as
//                          cumulative prefixes
// Both must give the same circuit (the run fails otherwise). The metric is
// kl_to_clean; tau is --threshold, or by default the median of the output
// edges' first-trial scores (so that a fair share of edges is kept).
#include "apps/bench/bench_util.h"
#include "apps/cli/commands.h"
#include "core/formats/text_file.h"
#include "core/util/error.h"
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

#include <algorithm>
#include <cstdio>

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

}  // namespace

void add_bench_acdc(CLI::App& bench) {
  auto* cmd = bench.add_subcommand(
      "acdc",
      "ACDC circuit discovery on a random model (4 layers, d_model 256, 8 heads, MLPs; 32 prompts x 16\n"
      "tokens): restarted, batched trials vs one full forward per edge on the same runtime; checks that\n"
      "both give the same circuit. Prints a table.");
  struct Args {
    std::string device = "cpu", json;
    int layers = 4, d_model = 256, heads = 8, vocab = 512;
    int64_t prompts = 32, seq_len = 16, max_batch = 0;
    double threshold = -1;
    uint64_t seed = 0;
    bool quick = false, attn_only = false;
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
  cmd->add_option("--max-batch", a->max_batch, "Trials per forward of the fast run (0 = memory budget)")
      ->capture_default_str();
  cmd->add_flag("--attn-only", a->attn_only, "No MLPs");
  cmd->add_flag("--quick", a->quick, "Smoke-test size: 2 layers, d_model 64, 4 heads, 8 prompts x 8 tokens (overrides the size options)");
  cmd->add_option("--seed", a->seed, "Seed of the random model and prompts")->capture_default_str();
  cmd->add_option("--json", a->json, "Also write the figures to this JSON file");
  cmd->callback([a] {
    if (a->quick) {
      a->layers = 2, a->d_model = 64, a->heads = 4, a->prompts = 8, a->seq_len = 8, a->vocab = 128;
    }
    MECHLAB_CHECK(a->d_model % a->heads == 0, "--d-model ", a->d_model, " must be a multiple of --heads ", a->heads);
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
    const auto n_edges = static_cast<int64_t>(discovery::Circuit::full(patching::CircuitGraph(cfg)).edges().size());
    std::printf("model %d layers, d_model %d, %d heads%s, %lld prompts x %lld tokens, %s, %d threads; %lld edges, "
                "tau %.4g\n",
                cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.has_mlp() ? ", MLPs" : "",
                static_cast<long long>(data.batch()), static_cast<long long>(data.seq_len()),
                c10::str(device).c_str(), at::get_num_threads(), static_cast<long long>(n_edges), tau);
    if (device.is_cuda()) std::printf("%s\n", kernels::describe_gpus().c_str());
    std::fflush(stdout);

    const auto opts = discovery::AcdcOptions().threshold(tau).max_batch(a->max_batch);
    model.forward(data.corrupted_tokens);  // warm-up (allocator, thread pool)
    const discovery::AcdcResult fast = discovery::acdc(model, data, kl, opts);
    std::printf("fast: %.2f s, %lld forwards, %lld trials, %lld of %lld edges kept\n", fast.seconds,
                static_cast<long long>(fast.forwards), static_cast<long long>(fast.trials),
                static_cast<long long>(fast.circuit.edge_count()), static_cast<long long>(n_edges));
    std::fflush(stdout);
    const discovery::AcdcResult naive = discovery::acdc_one_forward_per_edge(model, data, kl, opts);
    std::printf("one forward per edge: %.2f s, %lld forwards\n", naive.seconds,
                static_cast<long long>(naive.forwards));
    bool same = naive.steps.size() == fast.steps.size();
    for (size_t i = 0; same && i < fast.steps.size(); ++i) {
      same = fast.steps[i].edge == naive.steps[i].edge && fast.steps[i].kept == naive.steps[i].kept;
    }
    MECHLAB_CHECK(same, "bench acdc: the fast and the one-forward-per-edge runs decided differently");
    std::printf("same circuit: yes (%lld decisions identical)\n", static_cast<long long>(fast.steps.size()));

    bench::print_table("ACDC, " + std::to_string(n_edges) + " edges, " + std::to_string(data.batch()) + " x " +
                           std::to_string(data.seq_len()) + " tokens",
                       {{"one forward per edge", bench::summarize({naive.seconds * 1e3}),
                         std::to_string(naive.forwards) + " forwards from the embedding"},
                        {"fast (restart + batched trials)", bench::summarize({fast.seconds * 1e3}),
                         std::to_string(fast.forwards) + " forwards, " + std::to_string(fast.trials) + " trials"}},
                       "one forward per edge", static_cast<double>(n_edges), "edges");
    std::printf("speed-up over one forward per edge: %.1fx\n", naive.seconds / fast.seconds);
    if (!a->json.empty()) {
      nlohmann::json j = {{"edges", n_edges},
                          {"tau", tau},
                          {"kept", fast.circuit.edge_count()},
                          {"prompts", data.batch()},
                          {"seq_len", data.seq_len()},
                          {"device", c10::str(device)},
                          {"threads", at::get_num_threads()},
                          {"fast_s", fast.seconds},
                          {"fast_forwards", fast.forwards},
                          {"fast_trials", fast.trials},
                          {"naive_s", naive.seconds},
                          {"naive_forwards", naive.forwards},
                          {"speedup", naive.seconds / fast.seconds}};
      core::write_text_file(a->json, j.dump(2) + "\n");
    }
  });
}

}  // namespace mechlab::cli
