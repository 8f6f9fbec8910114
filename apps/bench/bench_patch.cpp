// mechlab bench patch: the full head-output-by-position sweep
// (TransformerLens get_act_patch_attn_head_out_by_pos: one patch per layer x
// position x head) on a GPT-2-small-shaped model, 32 prompts x 20 tokens.
//   naive        TransformerLens's algorithm on mechlab's runtime: one full
//                forward per configuration with a patching hook; each of a
//                sample of configurations spread over the layers is timed
//                alone, and the median per-configuration time (with its
//                interquartile range and the number sampled) is extrapolated
//                (every configuration costs the same forward)
//   bulk         BulkPatcher: restart at the patched layer from cached
//                residuals, configurations stacked along the batch, only the
//                answer positions unembedded; every configuration run
//   bulk+skip    the default: also skips configurations that are bit-exact
//                no-ops (positions before the first corrupted token)
// Corrupted prompts differ from their clean prompts at one position, drawn
// per prompt from [12, 16) of 20 (like IOI's S2, about two thirds in).
// The numbers of the naive sample are compared with the bulk sweep's.
// Then edge attribution patching of every circuit-graph edge (one clean
// forward+backward (head-input gradients from hook_q/k/v), one corrupted forward, the score
// products) against one plain forward of the same prompts: the ratio is its
// cost in forward-pass equivalents (the goal: at most 4).
// scripts/bench/patch_vs_transformerlens.sh runs TransformerLens itself on the
// same weights and tokens (--model/--dataset) and prints the ratio.
#include "apps/bench/bench_util.h"
#include "apps/cli/commands.h"
#include "core/data/dataset.h"
#include "core/formats/text_file.h"
#include "core/util/error.h"
#include "core/model/presets.h"
#include "core/util/rng.h"
#include "hooks/hooked_transformer.h"
#include "kernels/device_info.h"
#include "patching/bulk_patcher.h"
#include "patching/edge_attribution.h"
#include "patching/metrics.h"
#include "patching/patching_data.h"
#include "patching/sweep_file.h"
#include "patching/sweeps.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <fstream>

namespace mechlab::cli {

namespace {

using namespace mechlab::patching;

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Random prompts: clean ids uniform in [1, d_vocab); the corrupted prompt
// differs at one position in [lo, hi); answers and wrong answers random.
PatchingData random_pairs(int64_t n, int64_t t, int64_t d_vocab, uint64_t seed) {
  core::Rng rng(seed);
  PatchingData d;
  d.clean_tokens = at::empty({n, t}, at::kInt);
  d.answer_tokens = at::empty({n, 1}, at::kInt);
  d.wrong_tokens = at::empty({n, 1}, at::kInt);
  auto c = d.clean_tokens.accessor<int32_t, 2>();
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < t; ++j) c[i][j] = static_cast<int32_t>(1 + rng.below(d_vocab - 1));
  }
  d.corrupted_tokens = d.clean_tokens.clone();
  auto x = d.corrupted_tokens.accessor<int32_t, 2>();
  const int64_t lo = std::min<int64_t>(t - 1, t * 3 / 5), hi = std::min<int64_t>(t, lo + 4);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t p = lo + static_cast<int64_t>(rng.below(hi - lo));
    x[i][p] = static_cast<int32_t>(1 + (c[i][p] - 1 + 1 + rng.below(d_vocab - 2)) % (d_vocab - 1));
    d.answer_tokens[i][0] = static_cast<int32_t>(rng.below(d_vocab));
    d.wrong_tokens[i][0] = static_cast<int32_t>((d.answer_tokens[i][0].item<int32_t>() + 1 +
                                                 rng.below(d_vocab - 1)) % d_vocab);
  }
  return d;
}

}  // namespace

void add_bench_patch(CLI::App& bench) {
  auto* cmd = bench.add_subcommand(
      "patch",
      "Full attention-head-output-by-position patching sweep (TL get_act_patch_attn_head_out_by_pos)\n"
      "on a GPT-2-small-shaped model, 32 prompts x 20 tokens: mechlab's bulk patcher vs one\n"
      "forward per configuration (TransformerLens's algorithm) on the same runtime. Prints a table.");
  struct Args {
    std::string device = "cpu", model, dataset, json, out;
    int64_t prompts = 32, seq_len = 20, naive_sample = 24, memory_mb = 0, max_copies = 0;
    int repeats = 3;
    uint64_t seed = 0;
    bool with_no_skip = false, edges_only = false;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--device", a->device, "Where the model runs: cpu, cuda, cuda:N or auto")
      ->capture_default_str();
  cmd->add_option("--model", a->model,
                  "mechlab checkpoint to use instead of a random gpt2-small (seed --seed)");
  cmd->add_option("--dataset", a->dataset,
                  "Patching dataset to use instead of random prompt pairs (its first --prompts pairs)");
  cmd->add_option("--prompts", a->prompts, "Prompt pairs per forward")
      ->capture_default_str()
      ->check(positive());
  cmd->add_option("--seq-len", a->seq_len, "Tokens per prompt (random prompts only)")
      ->capture_default_str()
      ->check(CLI::Range(2, 1024));
  cmd->add_option("--naive-sample", a->naive_sample,
                  "Configurations the naive baseline runs (spread over all layers, positions and "
                  "heads), each timed alone; the median per-configuration time is extrapolated to "
                  "the full sweep, with its interquartile range")
      ->capture_default_str()
      ->check(positive());
  cmd->add_option("--repeats", a->repeats,
                  "Timed runs of each bulk sweep and of the edge-attribution cases (medians reported)")
      ->capture_default_str()
      ->check(positive());
  cmd->add_option("--memory-budget-mb", a->memory_mb, "BulkPatcher memory budget in MiB (0 = auto)")
      ->capture_default_str();
  cmd->add_option("--max-copies", a->max_copies, "BulkPatcher copies per forward cap (0 = budget)")
      ->capture_default_str();
  cmd->add_flag("--with-no-skip", a->with_no_skip,
                "Also time the bulk sweep with no-op skipping off (every configuration run)");
  cmd->add_flag("--edges-only", a->edges_only,
                "Only time all-edge attribution against one forward (skip the head-out sweep)");
  cmd->add_option("--seed", a->seed, "Seed of the random model and prompts")->capture_default_str();
  cmd->add_option("--json", a->json, "Also write the figures to this JSON file");
  cmd->add_option("--out", a->out, "Write the bulk sweep's result to this HDF5 file (patching format)");
  cmd->callback([a] {
    const at::Device device = parse_device(a->device);
    core::Transformer base = a->model.empty()
                                 ? core::Transformer(core::preset("gpt2-small"), a->seed)
                                 : core::Transformer::load(a->model);
    base.to(device);
    hooks::HookedTransformer model(std::move(base));
    const auto& cfg = model.cfg();
    PatchingData data = a->dataset.empty()
                            ? random_pairs(a->prompts, a->seq_len, cfg.d_vocab, a->seed + 1)
                            : PatchingData::from_dataset(core::load_dataset(a->dataset), a->prompts);
    data.validate(cfg);
    const Metric metric = logit_diff(data.answers());
    const std::string sweep = "attn_head_out_by_pos";
    std::vector<int64_t> shape;
    const auto configs = sweep_configs(find_sweep(sweep), cfg, data.seq_len(), &shape);
    const int64_t n = static_cast<int64_t>(configs.size());
    std::printf("model %s (%d layers, d_model %d, %d heads), %lld prompts x %lld tokens, %s, %d "
                "threads; %lld configurations\n",
                cfg.name.c_str(), cfg.n_layers, cfg.d_model, cfg.n_heads,
                static_cast<long long>(data.batch()), static_cast<long long>(data.seq_len()),
                c10::str(device).c_str(), at::get_num_threads(), static_cast<long long>(n));
    if (device.is_cuda()) std::printf("%s\n", kernels::describe_gpus().c_str());
    std::fflush(stdout);
    at::InferenceMode guard;
    auto sync = [&] {
      if (device.is_cuda()) model.forward(data.clean_tokens.slice(0, 0, 1)).cpu();  // drains the queue
    };

    SweepResult result;
    double bulk_skip_s = -1, bulk_s = -1, naive_s = -1, max_err = 0;
    bench::Stats bulk_skip_ms, bulk_ms, naive_config_ms;
    int64_t sample = 0;
    nlohmann::json stats_skip, stats_all;
    if (!a->edges_only) {
      // ---- bulk sweeps
      // --repeats timed sweeps; the median is reported with its IQR.
      auto bulk_run = [&](bool skip, SweepResult* keep) {
        SweepOptions o;
        o.bulk().memory_budget_bytes(a->memory_mb << 20);
        o.bulk().max_copies(a->max_copies);
        o.bulk().skip_identical(skip);
        std::vector<double> ms;
        nlohmann::json stats;
        for (int r = 0; r < a->repeats; ++r) {
          sync();
          const auto t0 = std::chrono::steady_clock::now();
          SweepResult res = run_sweep(model, data, sweep, metric, o);
          sync();
          ms.push_back(seconds_since(t0) * 1e3);
          if (keep) *keep = res;
          stats = res.config["bulk"];
        }
        return std::make_pair(bench::summarize(ms), stats);
      };
      // Warm-up (allocator, thread pool): one forward.
      model.forward(data.corrupted_tokens);
      std::tie(bulk_skip_ms, stats_skip) = bulk_run(true, &result);
      bulk_skip_s = bulk_skip_ms.median / 1e3;
      std::printf("bulk+skip: median %.2f s of %lld runs (%s)\n", bulk_skip_s,
                  static_cast<long long>(bulk_skip_ms.n), stats_skip.dump().c_str());
      std::fflush(stdout);
      if (a->with_no_skip) {
        SweepResult r2;
        std::tie(bulk_ms, stats_all) = bulk_run(false, &r2);
        bulk_s = bulk_ms.median / 1e3;
        std::printf("bulk: median %.2f s of %lld runs (%s); max |bulk - bulk+skip| = %.3g\n", bulk_s,
                    static_cast<long long>(bulk_ms.n), stats_all.dump().c_str(),
                    (r2.values - result.values).abs().max().item<double>());
        std::fflush(stdout);
      }

      // ---- naive baseline on a sample
      auto [corr_logits, clean_cache] = model.run_with_cache(data.clean_tokens,
                                                             hooks::NamesFilter::glob("*attn.hook_z"));
      (void)corr_logits;
      sample = std::min(a->naive_sample, n);
      auto naive_config = [&](int64_t i) {
        const PatchTarget& t = configs[static_cast<size_t>(i)].targets[0];
        const at::Tensor& clean_z = clean_cache[t.hook_name()];
        at::Tensor logits = model.run_with_hooks(
            data.corrupted_tokens,
            {{t.hook_name(), [&](at::Tensor& z, const hooks::HookPoint&) { write_patch(z, t, clean_z); }}});
        return metric(logits).item<double>();  // reading it synchronises the device
      };
      naive_config(0);  // warm-up at the batch size timed
      // Each sampled configuration timed alone: the spread of the per-config
      // time is the error bar of the extrapolation.
      std::vector<double> per_config_ms;
      for (int64_t s = 0; s < sample; ++s) {
        const int64_t i = (s * n) / sample + (s * 7919) % std::max<int64_t>(1, n / sample);
        sync();
        const auto t0 = std::chrono::steady_clock::now();
        const double v = naive_config(i);
        sync();
        per_config_ms.push_back(seconds_since(t0) * 1e3);
        max_err = std::max(max_err, std::abs(v - result.values.view(-1)[i].item<double>()));
      }
      naive_config_ms = bench::summarize(per_config_ms);
      const bench::Stats naive_ms = bench::scaled(naive_config_ms, static_cast<double>(n));
      naive_s = naive_ms.median / 1e3;
      std::printf("naive: %lld sampled configs, per config median %.2f ms (IQR %.2f - %.2f ms), "
                  "extrapolated %.3g s (IQR %.3g - %.3g s); max |naive - bulk| = %.3g\n",
                  static_cast<long long>(sample), naive_config_ms.median, naive_config_ms.q1,
                  naive_config_ms.q3, naive_s, naive_ms.q1 / 1e3, naive_ms.q3 / 1e3, max_err);

      // The naive row's runs are the sampled configurations, each timed once.
      std::vector<bench::Row> rows = {
          {"naive (1 forward per config)", naive_ms,
           str_cat("median per-config time x ", n, "; runs = configs sampled")},
          {"bulk+skip (default)", bulk_skip_ms,
           std::to_string(stats_skip["forwards"].get<int64_t>()) + " forwards, " +
               std::to_string(stats_skip["skipped_noop"].get<int64_t>()) + " no-ops skipped"}};
      if (bulk_s > 0) {
        rows.push_back({"bulk (no skipping)", bulk_ms,
                        std::to_string(stats_all["forwards"].get<int64_t>()) + " forwards"});
      }
      bench::print_table("head-out-by-position sweep, " + std::to_string(data.batch()) + " x " +
                             std::to_string(data.seq_len()) + " tokens, " + std::to_string(n) +
                             " configurations",
                         rows, "naive (1 forward per config)", static_cast<double>(n), "configs");
      std::printf("speed-up over naive: bulk+skip %.1fx", naive_s / bulk_skip_s);
      if (bulk_s > 0) std::printf(", bulk %.1fx", naive_s / bulk_s);
      std::printf("\n");
    }

    // ---- all-edge attribution vs one forward
    const int reps = a->repeats;
    const bench::Stats forward_ms =
        bench::time_ms([&] { model.forward(data.clean_tokens); }, 1, reps, device);
    int64_t n_edges = 0;
    bench::Stats edges_ms;
    {
      // Attribution differentiates: leave inference mode (the forward above stays in it).
      c10::InferenceMode autograd_on(false);
      edges_ms = bench::time_ms(
          [&] { n_edges = edge_attribution(model, data, metric).config["n_edges"].get<int64_t>(); },
          1, reps, device);
    }
    bench::print_table("edge attribution patching, all " + std::to_string(n_edges) + " edges, " +
                           std::to_string(data.batch()) + " x " + std::to_string(data.seq_len()) +
                           " tokens",
                       {{"one forward", forward_ms, "plain forward, no hooks, inference mode"},
                        {"all-edge attribution", edges_ms,
                         "clean fwd+bwd + corrupted fwd + scores"}},
                       "one forward", static_cast<double>(n_edges), "edges");
    const double edge_ratio = edges_ms.median / forward_ms.median;
    std::printf("all-edge attribution = %.2f forward-pass equivalents (goal <= 4)\n", edge_ratio);

    if (!a->out.empty() && !a->edges_only) write_sweep_file(a->out, {result});
    if (!a->json.empty()) {
      nlohmann::json j = {{"configs", n},
                          {"prompts", data.batch()},
                          {"seq_len", data.seq_len()},
                          {"device", c10::str(device)},
                          {"threads", at::get_num_threads()},
                          {"repeats", a->repeats},
                          {"bulk_skip_s", bulk_skip_s},
                          {"bulk_skip_iqr_s", {bulk_skip_ms.q1 / 1e3, bulk_skip_ms.q3 / 1e3}},
                          {"bulk_skip_stats", stats_skip},
                          {"bulk_s", bulk_s},
                          {"naive_extrapolated_s", naive_s},
                          {"naive_sample", sample},
                          {"naive_per_config_ms", {{"median", naive_config_ms.median},
                                                   {"q1", naive_config_ms.q1},
                                                   {"q3", naive_config_ms.q3}}},
                          {"max_abs_naive_minus_bulk", max_err},
                          {"forward_ms", forward_ms.median},
                          {"edge_attribution_ms", edges_ms.median},
                          {"edges", n_edges},
                          {"edge_attribution_forward_equivalents", edge_ratio}};
      core::write_text_file(a->json, j.dump(2) + "\n");  // checked, written whole
    }
  });
}

}  // namespace mechlab::cli
