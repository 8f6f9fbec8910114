// mechlab bench runtime: the cost of hook points and caching.
//   bypassed        forward with no hook dispatch at all (the plain forward)
//   hooks-idle      forward with a hook registry attached but nothing hooked
//                   (goal: <= 1.03 x bypassed: a hook point costs one branch)
//   run_with_cache  every hook point cached
//   materialised    attention through explicit scores/pattern instead of SDPA
//   gemm-floor      the physical floor on this machine: only the model's weight
//                   matmuls (x W for Q/K/V/O, the MLP and the unembedding; more
//                   than 95% of the FLOPs at 8 x 128), each one at::mm on
//                   preallocated buffers. No implementation that multiplies by
//                   every weight can be faster through the same BLAS, so
//                   forward / floor is the overhead left to remove.
//   fma-peak        the physical limit (CPU only): the floor's FLOPs at this
//                   CPU's measured peak float32 FMA rate (apps/bench/cpu_peak),
//                   i.e. a perfect GEMM with nothing else to do. Not a run of
//                   the model: a time computed from a measured rate.
#include "apps/bench/bench_util.h"
#include "apps/bench/cpu_peak.h"
#include "apps/cli/commands.h"
#include "core/model/presets.h"
#include "hooks/hooked_transformer.h"
#include "kernels/device_info.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstdio>

namespace mechlab::cli {
namespace {

/// The (k, n) of every weight matrix the forward multiplies by: x [T, k] W [k, n].
std::vector<std::pair<int64_t, int64_t>> weight_matmul_shapes(const core::ModelConfig& cfg) {
  std::vector<std::pair<int64_t, int64_t>> shapes;
  const int64_t d = cfg.d_model, qkv = int64_t(cfg.n_heads + 2 * cfg.kv_heads()) * cfg.d_head;
  for (int l = 0; l < cfg.n_layers; ++l) {
    shapes.emplace_back(d, qkv);                                        // W_Q, W_K, W_V
    shapes.emplace_back(int64_t(cfg.n_heads) * cfg.d_head, d);          // W_O
    if (!cfg.has_mlp()) continue;
    shapes.emplace_back(d, cfg.mlp == core::MlpKind::gated ? 2 * cfg.d_mlp : cfg.d_mlp);  // W_in (+ W_gate)
    shapes.emplace_back(cfg.d_mlp, d);                                  // W_out
  }
  shapes.emplace_back(d, cfg.d_vocab);                                  // W_U
  return shapes;
}

/// FLOPs of the weight matmuls for `tokens` tokens (2 per multiply-add).
double weight_matmul_flops(const core::ModelConfig& cfg, int64_t tokens) {
  double flops = 0;
  for (auto [k, n] : weight_matmul_shapes(cfg)) flops += 2.0 * static_cast<double>(tokens) * k * n;
  return flops;
}

/// One [tokens, k] x [k, n] product per weight matrix of the forward pass.
struct GemmFloor {
  std::vector<std::pair<at::Tensor, at::Tensor>> products;  // (input [T, k], weight [k, n])

  GemmFloor(const core::ModelConfig& cfg, int64_t tokens, const at::TensorOptions& opts) {
    for (auto [k, n] : weight_matmul_shapes(cfg))
      products.emplace_back(at::randn({tokens, k}, opts), at::randn({k, n}, opts));
  }

  void run() {
    for (auto& [x, w] : products) at::mm(x, w);
  }
};

}  // namespace

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
                  "Run one case (bypassed, hooks-idle, run_with_cache, materialised, gemm-floor, fma-peak), e.g. to "
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
      rows.push_back({name, bench::time_ms(fn, a->warmup, a->repeats, device), note});
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
    mat.materialise_attention(true);
    measure("materialised", [&] { model.forward(tokens, mat); }, "attention pattern materialised");
    const int64_t tokens_n = int64_t(a->batch) * a->pos;
    const double flops = weight_matmul_flops(cfg, tokens_n);
    if (want("gemm-floor")) {
      GemmFloor gemms(cfg, tokens_n, at::TensorOptions(parse_dtype(a->dtype)).device(device));
      measure("gemm-floor", [&] { gemms.run(); }, "");
      rows.back().note = "weight matmuls only: " + c10::str(flops / 1e9) + " GFLOP at " +
                         c10::str(static_cast<int>(flops / rows.back().ms.median / 1e6)) + " GFLOP/s";
    }
    if (want("fma-peak") && device.is_cpu() && a->dtype == "f32") {
      const bench::CpuPeak peak = bench::measure_cpu_fp32_peak(at::get_num_threads());
      if (peak.gflops > 0)
        // A bound derived from the measured peak, not a timing: no runs, no IQR.
        rows.push_back({"fma-peak", bench::Stats{0, flops / peak.gflops / 1e6},
                        "derived: floor's FLOPs at the measured peak: " + c10::str(static_cast<int>(peak.gflops)) +
                            " GFLOP/s (" + peak.isa + ", " + std::to_string(peak.threads) + " threads)"});
    }
    bench::print_table("forward pass, " + std::to_string(a->batch) + " x " + std::to_string(a->pos) + " tokens",
                       rows, a->only.empty() ? "bypassed" : a->only, static_cast<double>(tokens_n), "tokens");
    if (cache_bytes) std::printf("cache size: %s\n", human_bytes(cache_bytes).c_str());
    std::printf("peak RSS: %s\n", human_bytes(bench::peak_rss_bytes()).c_str());
  });
}

}  // namespace mechlab::cli
