// mechlab run: one forward pass on a prompt (token ids, or text with the
// model folder's tokenizer); loss, top-k next tokens, and optionally a summary
// of the cached activations.
#include "apps/cli/commands.h"
#include "apps/cli/prompt_input.h"
#include "core/data/tokenizer/tokenizer_json.h"
#include "core/util/error.h"
#include "core/hf/model_loader.h"
#include "core/model/hook_site.h"
#include "hooks/hooked_transformer.h"
#include "hooks/names_filter.h"

#include <nlohmann/json.hpp>

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <iostream>

namespace mechlab::cli {

void add_run_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("run", "Run a model on a prompt: loss and top-k next tokens");
  struct Args {
    std::string model, device = "cpu", dtype = "f32", cache, prompt, tokenizer;
    std::vector<int64_t> tokens;
    int top_k = 5;
    bool no_bos = false;
    ProcessFlags process;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("model", a->model,
                  "mechlab checkpoint (.h5) or Hugging Face model folder (config.json + "
                  "*.safetensors)")
      ->required();
  auto* text = cmd->add_option("--prompt", a->prompt,
                               "Text of one prompt, tokenised with the model folder's tokenizer "
                               "(or --tokenizer)");
  cmd->add_option("--prompt-tokens", a->tokens, "Token ids of one prompt")->excludes(text);
  add_tokenizer_options(cmd, a->tokenizer, a->no_bos);
  cmd->add_option("--top-k", a->top_k, "How many next-token predictions to print")
      ->capture_default_str();
  cmd->add_option("--device", a->device, "cpu, cuda, cuda:N or auto")->capture_default_str();
  cmd->add_option("--dtype", a->dtype, "f32, bf16 or f16")->capture_default_str();
  cmd->add_option("--cache", a->cache,
                  "Cache the hook points matching this glob (e.g. '*' or 'blocks.*.hook_resid_post') "
                  "and print a summary");
  add_process_flags(cmd, a->process);
  add_threads_option(cmd);
  cmd->callback([a] {
    const at::Device device = parse_device(a->device);
    core::Transformer base = core::load_model(
        a->model, core::LoadOptions().dtype(parse_dtype(a->dtype)).process(a->process.options()));
    base.to(device);
    hooks::HookedTransformer model(std::move(base));
    MECHLAB_CHECK(a->top_k > 0, "--top-k must be positive");
    const auto tok = core::tokenizer::find_model_tokenizer(a->model, a->tokenizer);
    MECHLAB_CHECK(!a->prompt.empty() || !a->tokens.empty(),
                  "nothing to run: give --prompt TEXT or --prompt-tokens IDS");
    MECHLAB_CHECK(a->prompt.empty() || tok, "--prompt needs a tokenizer, and ", a->model,
                  " has none (no tokenizer.json or vocab.json + merges.txt): give --tokenizer "
                  "PATH or --prompt-tokens IDS");
    const std::vector<int64_t> ids =
        a->prompt.empty() ? a->tokens : tok->to_tokens(a->prompt, !a->no_bos);
    at::Tensor tokens = at::tensor(ids, at::kLong).unsqueeze(0);  // [1, pos]
    {
      // Refused before the forward: its logits and log-softmax [pos, d_vocab]
      // in float32, and every cached hook at its full shape (attention maps
      // grow as pos^2). Counted in double: a long context's products overflow
      // int64. Beyond n_ctx the model's own check speaks.
      const core::ModelConfig& c = model.cfg();
      const double pos = static_cast<double>(ids.size());
      const double elem = static_cast<double>(c10::elementSize(model.model().dtype()));
      double bytes = pos * static_cast<double>(c.d_vocab) * 4 * 2;
      double cached = 0;
      if (!a->cache.empty()) {
        for (const std::string& h : model.hook_names()) {
          if (!hooks::glob_match(a->cache, h)) continue;
          double n = elem;
          for (core::Dim d : model.hooks().hook_dims(h)) {
            n *= static_cast<double>(core::dim_size(c, d, 1, static_cast<int64_t>(ids.size())));
          }
          cached += n;
        }
      }
      bytes += cached;
      if (pos <= static_cast<double>(c.n_ctx)) {
        require_memory(bytes > 9e18 ? INT64_MAX : static_cast<int64_t>(bytes),
                       str_cat("a prompt of ", ids.size(), " tokens"),
                       a->cache.empty() ? std::string("its logits")
                                        : str_cat("its logits and the cache of '", a->cache, "'"),
                       a->cache.empty() ? "shorten the prompt"
                                        : "shorten the prompt or cache fewer hooks (--cache)");
      }
    }

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
              << "), " << ids.size() << " tokens\n";
    const bool decodable = tok && std::all_of(ids.begin(), ids.end(), [&](int64_t id) {
      return id >= 0 && id < tok->vocab_size();
    });
    if (decodable) {
      std::cout << "tokens: ";
      for (const std::string& t : tok->to_str_tokens(ids)) {
        std::cout << nlohmann::json(t).dump(-1, ' ', false,
                                            nlohmann::json::error_handler_t::replace)
                  << " ";
      }
      std::cout << "\n";
    }
    if (ids.size() > 1) {
      std::printf("loss: %.4f nats/token\n", core::mean_loss(logits, tokens).item<double>());
    }
    at::Tensor probs = at::softmax(logits[0][-1].to(at::kFloat), -1).cpu();
    auto [p, top_ids] = probs.topk(std::min<int64_t>(a->top_k, cfg.d_vocab));
    std::cout << "top-" << p.size(0) << " next tokens:\n";
    for (int64_t i = 0; i < p.size(0); ++i) {
      const int64_t id = top_ids[i].item<int64_t>();
      std::printf("  %2lld. token %-8lld p = %.4f", static_cast<long long>(i + 1),
                  static_cast<long long>(id), p[i].item<double>());
      // A model's vocabulary can be larger than its tokenizer's (padded embeddings).
      if (tok && id < tok->vocab_size()) {
        std::printf("  %s", nlohmann::json(tok->decode({id}))
                                .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
                                .c_str());
      }
      std::printf("\n");
    }
    if (!a->cache.empty()) {
      std::cout << "cache: " << cache.size() << " activations, " << human_bytes(cache.bytes())
                << "\n";
      for (const auto& [name, t] : cache.items()) {
        at::Tensor f = t.to(at::kFloat);
        at::Tensor finite = f.masked_select(f.isfinite());
        std::printf("  %-36s %-22s mean %+.4f  std %.4f", name.c_str(),
                    c10::str(t.sizes()).c_str(), finite.numel() ? finite.mean().item<double>() : 0.0,
                    finite.numel() > 1 ? finite.std().item<double>() : 0.0);
        // The statistics are over the finite entries only: say how many were
        // left out, or a NaN activation would pass for a healthy one.
        const int64_t nonfinite = f.numel() - finite.numel();
        if (nonfinite > 0) {
          std::printf("  NON-FINITE %lld of %lld (%lld NaN)", static_cast<long long>(nonfinite),
                      static_cast<long long>(f.numel()),
                      static_cast<long long>(f.isnan().sum().item<int64_t>()));
        }
        std::printf("\n");
      }
    }
  });
}

}  // namespace mechlab::cli
