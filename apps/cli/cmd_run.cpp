// mechlab run: one forward pass on given token ids; loss, top-k next tokens,
// and optionally a summary of the cached activations.
#include "apps/cli/commands.h"
#include "core/error.h"
#include "core/model_loader.h"
#include "hooks/hooked_transformer.h"

#include <ATen/ATen.h>

#include <cstdio>
#include <iostream>

namespace mechlab::cli {

void add_run_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("run", "Run a model on token ids: loss and top-k next tokens");
  struct Args {
    std::string model, device = "cpu", dtype = "f32", cache;
    std::vector<int64_t> tokens;
    int top_k = 5;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("model", a->model,
                  "mechlab checkpoint (.h5) or Hugging Face model folder (config.json + "
                  "*.safetensors)")
      ->required();
  cmd->add_option("--prompt-tokens", a->tokens, "Token ids of one prompt")->required();
  cmd->add_option("--top-k", a->top_k, "How many next-token predictions to print")
      ->capture_default_str();
  cmd->add_option("--device", a->device, "cpu, cuda, cuda:N or auto")->capture_default_str();
  cmd->add_option("--dtype", a->dtype, "f32, bf16 or f16")->capture_default_str();
  cmd->add_option("--cache", a->cache,
                  "Cache the hook points matching this glob (e.g. '*' or 'blocks.*.hook_resid_post') "
                  "and print a summary");
  cmd->callback([a] {
    const at::Device device = parse_device(a->device);
    core::Transformer base = core::load_model(a->model, {parse_dtype(a->dtype)});
    base.to(device);
    hooks::HookedTransformer model(std::move(base));
    MECHLAB_CHECK(a->top_k > 0, "--top-k must be positive");
    at::Tensor tokens = at::tensor(a->tokens, at::kLong).unsqueeze(0);  // [1, pos]

    at::InferenceMode guard;
    at::Tensor logits;
    hooks::ActivationCache cache;
    if (!a->cache.empty()) {
      std::tie(logits, cache) = model.run_with_cache(tokens, hooks::NamesFilter::glob(a->cache));
    } else {
      logits = model.forward(tokens);
    }
    const auto& cfg = model.cfg();
    std::cout << "model " << cfg.name << " on " << device << " (" << model.model().dtype()
              << "), " << a->tokens.size() << " tokens\n";
    if (a->tokens.size() > 1) {
      std::printf("loss: %.4f nats/token\n", core::mean_loss(logits, tokens).item<double>());
    }
    at::Tensor probs = at::softmax(logits[0][-1].to(at::kFloat), -1).cpu();
    auto [p, ids] = probs.topk(std::min<int64_t>(a->top_k, cfg.d_vocab));
    std::cout << "top-" << p.size(0) << " next tokens:\n";
    for (int64_t i = 0; i < p.size(0); ++i) {
      std::printf("  %2lld. token %-8lld p = %.4f\n", static_cast<long long>(i + 1),
                  static_cast<long long>(ids[i].item<int64_t>()), p[i].item<double>());
    }
    if (!a->cache.empty()) {
      std::cout << "cache: " << cache.size() << " activations, " << human_bytes(cache.bytes())
                << "\n";
      for (const auto& [name, t] : cache.items()) {
        at::Tensor f = t.to(at::kFloat);
        at::Tensor finite = f.masked_select(f.isfinite());
        std::printf("  %-36s %-22s mean %+.4f  std %.4f\n", name.c_str(),
                    c10::str(t.sizes()).c_str(), finite.numel() ? finite.mean().item<double>() : 0.0,
                    finite.numel() > 1 ? finite.std().item<double>() : 0.0);
      }
    }
  });
}

}  // namespace mechlab::cli
