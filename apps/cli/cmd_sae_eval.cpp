// mechlab sae eval: an SAELens-format SAE spliced into a model over a
// dataset: CE loss recovered, KL, reconstruction and sparsity metrics and the
// feature-density histogram, with SAELens's definitions (sae/splice.h,
// sae/density.h).
#include "apps/cli/commands.h"
#include "core/data/dataset.h"
#include "core/formats/output_file.h"
#include "core/formats/text_file.h"
#include "core/util/error.h"
#include "hooks/hooked_transformer.h"
#include "sae/density.h"
#include "sae/saelens_io.h"
#include "sae/splice.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

namespace mechlab::cli {

namespace {

/// The dataset's prompts [n, pos] (at most max_prompts rows); refuses padding,
/// which the metrics would count as tokens.
at::Tensor dataset_prompts(const std::string& path, int64_t max_prompts) {
  const core::Dataset ds = core::load_dataset(path);
  const at::Tensor& p = ds.prompts();
  MECHLAB_CHECK(p.defined(), "dataset ", path, " holds no prompts; make one with `mechlab dataset make`");
  MECHLAB_CHECK(!ds.attention_mask.defined() || ds.attention_mask.all().item<bool>(), "dataset ", path,
                " has padded prompts, which SAE evaluation would count as text; use a dataset of "
                "equal-length prompts");
  return p.slice(0, 0, max_prompts > 0 ? std::min(max_prompts, p.size(0)) : p.size(0)).to(at::kLong);
}

}  // namespace

void add_sae_eval_command(CLI::App& sae) {
  auto* cmd = sae.add_subcommand(
      "eval",
      "Splice an SAE (SAELens folder) into a model at its hook and evaluate it on a dataset:\n"
      "CE loss recovered = (CE_zero_ablation - CE_spliced) / (CE_zero_ablation - CE_clean), KL of "
      "spliced vs clean (with and without the error term), L0, MSE, explained variance and the "
      "feature-density histogram, as SAELens's evals define them. Runs on the CPU.");
  struct Args {
    std::string model, sae, dataset, hook, out;
    std::vector<int64_t> ignore_tokens;
    int64_t batch_size = 8, max_prompts = 0, bins = 20;
    bool overwrite = false;
    ProcessFlags process;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("model", a->model, "mechlab checkpoint (.h5) or Hugging Face folder")->required();
  cmd->add_option("sae", a->sae, "SAELens folder (cfg.json + sae_weights.safetensors)")->required();
  cmd->add_option("dataset", a->dataset, "mechlab dataset (.h5) of equal-length prompts")->required();
  cmd->add_option("--hook", a->hook, "Hook to splice at (default: the SAE's hook_name)");
  cmd->add_option("--ignore-tokens", a->ignore_tokens,
                  "Token ids left out of every metric and left unreplaced (SAELens leaves out "
                  "special tokens, e.g. BOS)");
  add_count_option(cmd, "--batch-size", a->batch_size, "Prompts per forward");
  add_count_option(cmd, "--max-prompts", a->max_prompts, "Use at most this many prompts (0 = all)", 0);
  add_count_option(cmd, "--bins", a->bins, "Bins of the log10 feature-density histogram over [-10, 0]");
  cmd->add_option("--out", a->out, "Also write every metric and the density per latent as JSON");
  cmd->add_flag("--overwrite", a->overwrite, "Replace the file at --out");
  add_process_flags(cmd, a->process);
  add_threads_option(cmd, "They run the model's forward passes and the spliced SAE.");
  cmd->callback([a] {
    if (!a->out.empty()) {
      core::require_not_same_file(a->out, "--out", a->model, "the model");
      core::require_not_same_file(a->out, "--out", a->dataset, "the dataset");
      core::require_not_same_file(a->out, "--out", a->sae + "/cfg.json", "the SAE's cfg.json");
      core::require_not_same_file(a->out, "--out", a->sae + "/sae_weights.safetensors", "the SAE's weights");
      MECHLAB_CHECK(a->overwrite || !std::filesystem::exists(a->out), "--out ", a->out,
                    " already exists; pass --overwrite to replace it or choose another output path");
    }
    auto sae_ptr = sae::import_saelens(a->sae);
    const at::Tensor tokens = dataset_prompts(a->dataset, a->max_prompts);
    auto model = hooks::HookedTransformer::from_pretrained(
        a->model, hooks::PretrainedOptions().process(a->process.options()));
    const sae::SpliceMetrics m = sae::splice_metrics(
        model, sae_ptr, a->hook, tokens,
        sae::SpliceEvalOptions().batch_size(a->batch_size).ignore_tokens(a->ignore_tokens));
    const sae::DensityHistogram h = sae::density_histogram(m.feature_density, a->bins);
    const std::string hook = a->hook.empty() ? sae_ptr->cfg().hook_name() : a->hook;

    std::printf("%s SAE (d_in %lld, d_sae %lld) at %s: %lld prompts, %lld tokens counted\n",
                sae_ptr->architecture().c_str(), static_cast<long long>(sae_ptr->d_in()),
                static_cast<long long>(sae_ptr->d_sae()), printable(hook).c_str(),
                static_cast<long long>(tokens.size(0)), static_cast<long long>(m.tokens));
    const std::pair<const char*, double> rows[] = {
        {"ce_loss_score (CE loss recovered)", m.ce_loss_score},
        {"ce_loss_without_sae", m.ce_loss_without_sae},
        {"ce_loss_with_sae", m.ce_loss_with_sae},
        {"ce_loss_with_ablation", m.ce_loss_with_ablation},
        {"ce_loss_with_error_term", m.ce_loss_with_error_term},
        {"kl_div_score", m.kl_div_score},
        {"kl_div_with_sae", m.kl_div_with_sae},
        {"kl_div_with_ablation", m.kl_div_with_ablation},
        {"kl_div_with_error_term", m.kl_div_with_error_term},
        {"l0", m.l0},
        {"l1", m.l1},
        {"mse", m.mse},
        {"explained_variance", m.explained_variance},
        {"explained_variance_legacy", m.explained_variance_legacy},
        {"cossim", m.cossim},
        {"l2_norm_in", m.l2_norm_in},
        {"l2_norm_out", m.l2_norm_out},
        {"l2_ratio", m.l2_ratio},
        {"relative_reconstruction_bias", m.relative_reconstruction_bias}};
    for (const auto& [k, v] : rows) std::printf("  %-36s %.6g\n", k, v);
    const at::Tensor dead = (m.feature_density == 0);
    std::printf("feature density (log10, %lld latents, %lld dead):\n", static_cast<long long>(sae_ptr->d_sae()),
                static_cast<long long>(dead.sum().item<int64_t>()));
    int64_t most = 1;
    for (int64_t c : h.counts) most = std::max(most, c);
    for (int64_t b = 0; b < h.bins(); ++b) {
      const int64_t c = h.counts[static_cast<size_t>(b)];
      std::printf("  [%6.2f, %6.2f%c %6lld %s\n", h.edges[static_cast<size_t>(b)],
                  h.edges[static_cast<size_t>(b) + 1], b + 1 == h.bins() ? ']' : ')', static_cast<long long>(c),
                  std::string(static_cast<size_t>((c * 40 + most - 1) / most), '#').c_str());
    }
    if (!a->out.empty()) {
      nlohmann::json j;
      j["model"] = a->model;
      j["sae"] = a->sae;
      j["dataset"] = a->dataset;
      j["hook"] = hook;
      j["prompts"] = tokens.size(0);
      j["tokens"] = m.tokens;
      j["ce_tokens"] = m.ce_tokens;
      j["ignore_tokens"] = a->ignore_tokens;
      for (const auto& [k, v] : rows) {
        std::string key = k;
        key = key.substr(0, key.find(' '));
        j["metrics"][key] = std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
      }
      const at::Tensor d = m.feature_density.contiguous();
      j["feature_density"] = std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
      j["density_histogram"] = {{"edges", h.edges}, {"counts", h.counts}};
      core::write_text_file(a->out, j.dump(1) + "\n");
      std::printf("wrote %s\n", printable(a->out).c_str());
    }
  });
}

}  // namespace mechlab::cli
