// mechlab heads: head-detector scores (hooks/analysis/head_detector.h) of every
// attention head — which heads are previous-token, duplicate-token and
// induction heads.
#include "apps/cli/commands.h"
#include "core/data/dataset.h"
#include "core/util/error.h"
#include "core/hf/model_loader.h"
#include "core/data/tasks/induction.h"
#include "hooks/analysis/head_detector.h"

#include <algorithm>
#include <cstdio>

namespace mechlab::cli {

void add_heads_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "heads",
      "Score every attention head against the previous-token, duplicate-token and induction "
      "patterns (TransformerLens's detect_head): a table per head type, layer x head, plus the "
      "best head of each type.");
  struct Args {
    std::string model, dataset, device = "cpu", measure = "mul";
    ProcessFlags process;
    std::vector<std::string> types = {"previous_token", "duplicate_token", "induction"};
    int64_t examples = 32, seed = 0;
    bool exclude_bos = false, exclude_current = false;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("model", a->model, "mechlab checkpoint (.h5) or Hugging Face folder")->required();
  cmd->add_option("--dataset", a->dataset,
                  "Prompts to score on (a mechlab dataset without padding); default: repeated "
                  "random tokens (the induction task) over the model's vocabulary");
  cmd->add_option("--examples", a->examples, "How many prompts (the mean score is reported)")
      ->capture_default_str()
      ->check(positive());
  cmd->add_option("--type", a->types, "Head types: previous_token, duplicate_token, induction")
      ->capture_default_str();
  cmd->add_option("--error-measure", a->measure,
                  "mul: share of attention on the detected pairs; abs: 1 - mean |pattern - "
                  "detection| per query (TransformerLens's two measures)")
      ->capture_default_str()
      ->check(CLI::IsMember({"mul", "abs"}));
  cmd->add_flag("--exclude-bos", a->exclude_bos, "Ignore attention to position 0");
  cmd->add_flag("--exclude-current-token", a->exclude_current, "Ignore attention to the query's own position");
  cmd->add_option("--seed", a->seed, "Seed of the default random prompts")
      ->capture_default_str()
      ->check(non_negative());
  cmd->add_option("--device", a->device, "cpu, cuda, cuda:N or auto")->capture_default_str();
  add_process_flags(cmd, a->process);
  add_threads_option(cmd);
  cmd->callback([a] {
    at::InferenceMode inference;
    core::Transformer base = core::load_model(
        a->model, core::LoadOptions().process(a->process.options()));
    base.to(parse_device(a->device));
    hooks::HookedTransformer model(std::move(base));
    const core::ModelConfig& cfg = model.cfg();
    at::Tensor tokens;  // [examples, pos]
    std::string source;
    if (!a->dataset.empty()) {
      core::Dataset ds = core::load_dataset(a->dataset);
      ds.check_vocab(cfg.d_vocab, a->dataset);
      MECHLAB_CHECK(!ds.attention_mask.defined() || ds.attention_mask.all().item<bool>(),
                    "'", a->dataset, "' has padded prompts; the head detector needs prompts of "
                    "one length without padding (e.g. `mechlab dataset make induction`)");
      tokens = ds.prompts().narrow(0, 0, std::min(a->examples, ds.size())).to(at::kLong);
      source = a->dataset;
    } else {
      const int64_t half = std::min<int64_t>(20, (cfg.n_ctx - 1) / 2);
      MECHLAB_CHECK(half >= 2, "the model's n_ctx (", cfg.n_ctx, ") is too short for repeated "
                    "random tokens; pass --dataset");
      tokens = core::tasks::make_induction(core::tasks::InductionOptions{}
                                               .n(a->examples)
                                               .half_len(half)
                                               .d_vocab(cfg.d_vocab)
                                               .seed(a->seed))
                   .tokens.to(at::kLong);
      source = "repeated random tokens (BOS + " + std::to_string(half) + " + " +
               std::to_string(half) + ")";
    }
    analysis::HeadDetectorOptions opt;
    opt.exclude_bos(a->exclude_bos).exclude_current_token(a->exclude_current);
    opt.error_measure(a->measure == "abs" ? analysis::ErrorMeasure::abs : analysis::ErrorMeasure::mul);
    std::printf("head detector on %s: %lld prompts of %lld tokens, measure %s\n", source.c_str(),
                static_cast<long long>(tokens.size(0)), static_cast<long long>(tokens.size(1)),
                a->measure.c_str());
    for (const std::string& name : a->types) {
      const analysis::HeadType type = analysis::parse_head_type(name);
      at::Tensor s = analysis::detect_head(model, tokens, type, opt);  // [n_layers, n_heads]
      std::printf("\n%s   (rows: layer, columns: head)\n      ", analysis::to_string(type));
      for (int h = 0; h < cfg.n_heads; ++h) std::printf("  h%-4d", h);
      for (int l = 0; l < cfg.n_layers; ++l) {
        std::printf("\n  L%-2d", l);
        for (int h = 0; h < cfg.n_heads; ++h) std::printf("  %5.2f", s[l][h].item<double>());
      }
      const int64_t best = s.argmax().item<int64_t>();
      std::printf("\n  best: %lld.%lld (%.3f)\n", static_cast<long long>(best / cfg.n_heads),
                  static_cast<long long>(best % cfg.n_heads), s.max().item<double>());
    }
  });
}

}  // namespace mechlab::cli
