// mechlab bench runtime: the cost of hook points and caching.
//   bypassed        forward with no hook dispatch at all (the plain forward)
//   hooks-idle      forward with a hook registry attached but nothing hooked
//                   (goal: <= 1.03 x bypassed: a hook point costs one branch)
//   run_with_cache  every hook point cached
//   materialised    attention through explicit scores/pattern instead of SDPA
#include "apps/bench/bench_util.h"
#include "apps/cli/commands.h"
#include "core/presets.h"
#include "hooks/hooked_transformer.h"
#include "kernels/device_info.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstdio>

namespace mechlab::cli {

void add_bench_runtime(CLI::App& bench) {
  auto* cmd = bench.add_subcommand("runtime", "Forward-pass cost of hook points and run_with_cache");
  struct Args {
    std::string model, preset = "gpt2-small", device = "cpu", dtype = "f32", only;
    int batch = 8, pos = 128, warmup = 2, repeats = 10;
    uint64_t seed = 0;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--model", a->model, "Checkpoint to benchmark (default: a random --preset model)");
  cmd->add_option("--preset", a->preset, "Model shape when no --model is given")->capture_default_str();
  cmd->add_option("--device", a->device, "cpu, cuda or auto")->capture_default_str();
  cmd->add_option("--dtype", a->dtype, "f32, bf16 or f16")->capture_default_str();
  cmd->add_option("--batch", a->batch, "Prompts per batch")->capture_default_str();
  cmd->add_option("--pos", a->pos, "Tokens per prompt")->capture_default_str();
  cmd->add_option("--warmup", a->warmup, "Untimed runs first")->capture_default_str();
  cmd->add_option("--repeats", a->repeats, "Timed runs (the median is reported)")->capture_default_str();
  cmd->add_option("--seed", a->seed, "Seed of the random tokens (and random model)")->capture_default_str();
  cmd->add_option("--only", a->only,
                  "Run one case (bypassed, hooks-idle, run_with_cache, materialised), e.g. to "
                  "measure its peak memory alone");
  cmd->callback([a] {
    const at::Device device = parse_device(a->device);
    core::Transformer base = a->model.empty() ? core::Transformer(core::preset(a->preset), a->seed)
                                              : core::Transformer::load(a->model);
    base.to(device).to(parse_dtype(a->dtype));
    hooks::HookedTransformer model(std::move(base));
    const auto& cfg = model.cfg();
    auto gen = at::make_generator<at::CPUGeneratorImpl>(a->seed + 1);
    at::Tensor tokens =
        at::randint(cfg.d_vocab, {a->batch, a->pos}, gen, at::TensorOptions(at::kLong)).to(device);
    std::printf("mechlab bench runtime: %s (%d layers, d_model %d), batch %d x %d tokens, %s %s, "
                "%d CPU threads\n%s\n",
                cfg.name.c_str(), cfg.n_layers, cfg.d_model, a->batch, a->pos,
                c10::str(device).c_str(), a->dtype.c_str(), at::get_num_threads(),
                kernels::describe_gpus().c_str());

    at::InferenceMode guard;
    std::vector<bench::Row> rows;
    auto want = [&](const std::string& n) { return a->only.empty() || a->only == n; };
    auto measure = [&](const std::string& name, const std::function<void()>& fn,
                       const std::string& note) {
      if (!want(name)) return;
      rows.push_back({name, bench::median_ms(fn, a->warmup, a->repeats, device), note});
    };
    core::ForwardOptions bypass;  // hooks = nullptr
    measure("bypassed", [&] { model.model().forward(tokens, bypass); }, "no hook dispatch");
    measure("hooks-idle", [&] { model.forward(tokens); }, "registry attached, nothing hooked");
    int64_t cache_bytes = 0;
    measure("run_with_cache", [&] {
      auto [logits, cache] = model.run_with_cache(tokens);
      cache_bytes = cache.bytes();
    }, "every hook point");
    hooks::RunOptions mat;
    mat.materialise_attention = true;
    measure("materialised", [&] { model.forward(tokens, mat); }, "attention pattern materialised");
    if (cache_bytes) rows.back().note += "";
    const double tokens_n = static_cast<double>(a->batch) * a->pos;
    bench::print_table("forward pass, " + std::to_string(a->batch) + " x " + std::to_string(a->pos) + " tokens",
                       rows, a->only.empty() ? "bypassed" : a->only, tokens_n, "tokens");
    if (cache_bytes) std::printf("cache size: %s\n", human_bytes(cache_bytes).c_str());
    std::printf("peak RSS: %s\n", human_bytes(bench::peak_rss_bytes()).c_str());
  });
}

}  // namespace mechlab::cli
