// mechlab generate: continue prompts with a model (core/model/generate.h): greedy or
// sampled, KV cache, stop tokens; text in and out when the model folder has a
// tokenizer, token ids otherwise.
#include "apps/cli/commands.h"
#include "apps/cli/prompt_input.h"
#include "core/data/tokenizer/tokenizer_json.h"
#include "core/util/error.h"
#include "core/model/generate.h"
#include "core/hf/model_loader.h"

#include <nlohmann/json.hpp>

#include <ATen/ATen.h>

#include <algorithm>
#include <iostream>

namespace mechlab::cli {
namespace {

std::string quoted(const std::string& text) {
  // JSON quoting shows newlines and tabs; bytes that are not UTF-8 become U+FFFD.
  return nlohmann::json(text).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace

void add_generate_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "generate",
      "Continue prompts with a model: greedy decoding or sampling (temperature, top-k, top-p) "
      "with a KV cache, until a stop token or --max-new-tokens. Several --prompt make a batch "
      "(left-padded). Prints text when the model folder has a tokenizer, ids otherwise.");
  struct Args {
    std::string model, device = "cpu", dtype = "f32", tokenizer;
    std::vector<std::string> prompts, stops;
    std::vector<int64_t> prompt_tokens;
    int64_t max_new_tokens = 10, top_k = 0;
    double temperature = 1.0, top_p = 1.0;
    uint64_t seed = 0;
    bool greedy = false, no_bos = false, no_stop_at_eos = false, no_kv_cache = false, json = false;
    ProcessFlags process;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("model", a->model,
                  "mechlab checkpoint (.h5) or Hugging Face model folder (config.json + "
                  "*.safetensors, and tokenizer.json or vocab.json + merges.txt for text)")
      ->required();
  auto* text = cmd->add_option("--prompt", a->prompts,
                               "Text to continue; repeat for a batch (needs a tokenizer)");
  cmd->add_option("--prompt-tokens", a->prompt_tokens, "Token ids of one prompt to continue")
      ->excludes(text);
  cmd->add_option("--max-new-tokens", a->max_new_tokens,
                  "The most tokens to add to each prompt (the longest prompt plus this must fit "
                  "in the model's n_ctx)")
      ->capture_default_str();
  cmd->add_flag("--greedy", a->greedy,
                "Take the most likely token each step (default: sample, as TransformerLens's "
                "generate)");
  cmd->add_option("--temperature", a->temperature,
                  "Divide the logits by this before sampling; >= 0, 0 = greedy")
      ->capture_default_str();
  cmd->add_option("--top-k", a->top_k, "Sample among the k most likely tokens only (0 = all)")
      ->capture_default_str();
  cmd->add_option("--top-p", a->top_p,
                  "Nucleus sampling: among the most likely tokens holding this much probability; "
                  "in (0, 1], 1 = all")
      ->capture_default_str();
  cmd->add_option("--seed", a->seed, "Seed of the sampling draws: the same seed, the same text")
      ->capture_default_str()
      ->check(non_negative());
  cmd->add_option("--stop", a->stops,
                  "Stop a prompt's continuation after this token: an id or one token's text "
                  "(e.g. '.'); repeatable");
  cmd->add_flag("--no-stop-at-eos", a->no_stop_at_eos,
                "Do not stop at the tokenizer's EOS (by default it stops, as TransformerLens's "
                "stop_at_eos=True)");
  add_tokenizer_options(cmd, a->tokenizer, a->no_bos);
  cmd->add_flag("--no-kv-cache", a->no_kv_cache,
                "Run the whole sequence every step instead of caching keys and values (slower, "
                "same result)");
  cmd->add_option("--device", a->device, "cpu, cuda, cuda:N or auto")->capture_default_str();
  cmd->add_option("--dtype", a->dtype, "f32, bf16 or f16")->capture_default_str();
  cmd->add_flag("--json", a->json,
                "Print one JSON object per prompt: {\"prompt_ids\", \"new_ids\", \"stopped\"} "
                "and, with a tokenizer, \"prompt\" and \"text\" (the decoded new ids)");
  add_process_flags(cmd, a->process);
  add_threads_option(cmd);

  cmd->callback([a] {
    const auto tok = core::tokenizer::find_model_tokenizer(a->model, a->tokenizer);
    MECHLAB_CHECK(!a->prompts.empty() || !a->prompt_tokens.empty(),
                  "nothing to continue: give --prompt TEXT or --prompt-tokens IDS");
    MECHLAB_CHECK(a->prompts.empty() || tok, "--prompt needs a tokenizer, and ", a->model,
                  " has none (no tokenizer.json or vocab.json + merges.txt): give --tokenizer "
                  "PATH or --prompt-tokens IDS");
    std::vector<std::vector<int64_t>> prompts;
    for (const std::string& p : a->prompts) prompts.push_back(tok->to_tokens(p, !a->no_bos));
    if (!a->prompt_tokens.empty()) prompts.push_back(a->prompt_tokens);

    core::GenerateOptions opts = core::GenerateOptions()
                                     .max_new_tokens(a->max_new_tokens)
                                     .greedy(a->greedy)
                                     .temperature(a->temperature)
                                     .top_k(a->top_k)
                                     .top_p(a->top_p)
                                     .seed(a->seed)
                                     .use_kv_cache(!a->no_kv_cache);
    std::vector<int64_t> stops;
    for (const std::string& s : a->stops) stops.push_back(parse_token(s, tok.get(), "--stop"));
    if (tok && tok->eos_id() && !a->no_stop_at_eos) stops.push_back(*tok->eos_id());
    opts.stop_tokens(stops);
    // Padding gets the EOS id (masked out either way), as TransformerLens pads.
    if (tok && tok->eos_id()) opts.pad_token_id(*tok->eos_id());

    const at::Device device = parse_device(a->device);
    core::Transformer model =
        core::load_model(
            a->model, core::LoadOptions().dtype(parse_dtype(a->dtype)).process(a->process.options()));
    model.to(device);
    {
      // Refused before anything is allocated (generate's own checks come
      // later): with the KV cache, keys and values of every layer for every
      // position up to prompt + --max-new-tokens, allocated up front; without
      // it, the last step's forward over the whole sequence (its logits and
      // a few residual-sized tensors). Counted in double: the products of a
      // long context overflow int64. Beyond n_ctx generate's own message
      // (lower max_new_tokens to at most N) says more.
      const core::ModelConfig& c = model.config();
      size_t longest = 0;
      for (const auto& p : prompts) longest = std::max(longest, p.size());
      const double positions = static_cast<double>(longest) + static_cast<double>(a->max_new_tokens);
      const double elem = static_cast<double>(c10::elementSize(model.dtype()));
      const double per_position =
          a->no_kv_cache ? static_cast<double>(c.d_vocab) * 4 + 8.0 * c.d_model * elem
                         : 2.0 * c.n_layers * c.kv_heads() * c.d_head * elem;
      const double bytes = static_cast<double>(prompts.size()) * positions * per_position;
      if (positions <= static_cast<double>(c.n_ctx)) {
        require_memory(bytes > 9e18 ? INT64_MAX : static_cast<int64_t>(bytes),
                     str_cat("--max-new-tokens ", a->max_new_tokens),
                     str_cat(a->no_kv_cache ? "the last step's forward" : "the KV cache", " of ",
                             prompts.size(), " prompt(s) x ", static_cast<int64_t>(positions),
                             " positions"),
                     "lower --max-new-tokens or give fewer prompts");
      }
    }
    const core::GenerateResult out = core::generate(model, prompts, opts);

    if (!a->json) {
      std::cout << "model " << model.config().name << " on " << device << " (" << model.dtype()
                << "), "
                << (a->greedy || a->temperature == 0 ? std::string("greedy")
                                                     : str_cat("sampling, seed ", a->seed))
                << ", at most " << a->max_new_tokens << " new tokens\n";
    }
    for (size_t i = 0; i < prompts.size(); ++i) {
      const std::vector<int64_t>& fresh = out.new_tokens[i];
      if (a->json) {
        nlohmann::json j{
            {"prompt_ids", prompts[i]}, {"new_ids", fresh}, {"stopped", bool(out.stopped[i])}};
        if (tok) {
          j["prompt"] = tok->decode(prompts[i]);
          j["text"] = tok->decode(fresh);
        }
        std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
        continue;
      }
      std::cout << "\nprompt " << i + 1 << " (" << prompts[i].size() << " tokens): ";
      if (tok) {
        std::cout << quoted(tok->decode(prompts[i])) << "\n";
      } else {
        std::cout << nlohmann::json(prompts[i]).dump() << "\n";
      }
      std::cout << "continuation (" << fresh.size() << " tokens, "
                << (out.stopped[i] ? "stopped at a stop token" : "reached --max-new-tokens")
                << "): ";
      if (tok) {
        std::cout << quoted(tok->decode(fresh)) << "\n"
                  << "new ids: " << nlohmann::json(fresh).dump() << "\n";
      } else {
        std::cout << nlohmann::json(fresh).dump() << "\n";
      }
    }
  });
}

}  // namespace mechlab::cli
