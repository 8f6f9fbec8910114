// mechlab sae dashboard: latent dashboards of an SAE spliced into a model
// over a dataset (sae/dashboard.h): stored in HDF5 (--out) and rendered as
// one static HTML page (--html) that opens with no network.
#include "apps/cli/commands.h"
#include "core/data/dataset.h"
#include "core/formats/output_file.h"
#include "core/formats/text_file.h"
#include "core/util/error.h"
#include "hooks/hooked_transformer.h"
#include "sae/dashboard.h"
#include "sae/saelens_io.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>

namespace mechlab::cli {

void add_sae_dashboard_command(CLI::App& sae) {
  auto* cmd = sae.add_subcommand(
      "dashboard",
      "Latent dashboards of an SAE (SAELens folder) spliced into a model over a dataset: per latent "
      "the top-activating contexts with per-token activations, the activation histogram and the top "
      "logit effects (W_dec W_U); HDF5 (--out) and one self-contained HTML page (--html). Runs on the CPU. "
      "The dataset's prompts must be of equal length: a padded dataset is refused.");
  struct Args {
    std::string model, sae, dataset, hook, out, html, title;
    std::vector<int64_t> latents;
    int64_t first = 16, top_k = 8, bins = 24, top_logits = 8, batch_size = 8, max_prompts = 0;
    int64_t before = 8, after = 4;
    bool overwrite = false;
    ProcessFlags process;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("model", a->model, "mechlab checkpoint (.h5) or Hugging Face folder")->required();
  cmd->add_option("sae", a->sae, "SAELens folder (cfg.json + sae_weights.safetensors)")->required();
  cmd->add_option("dataset", a->dataset, "mechlab dataset (.h5) whose prompts are searched")->required();
  cmd->add_option("--out", a->out, "The dashboard file to write (.h5)")->required();
  cmd->add_option("--html", a->html, "Also render the dashboards as one static HTML page");
  cmd->add_option("--title", a->title, "Page title (default: the SAE folder and hook)");
  cmd->add_option("--hook", a->hook, "Hook to splice at (default: the SAE's hook_name)");
  cmd->add_option("--latents", a->latents, "Latent indices (default: the first --first latents)");
  add_count_option(cmd, "--first", a->first, "Without --latents: this many latents from 0 (0 = all)", 0);
  add_count_option(cmd, "--top-k", a->top_k, "Contexts per latent");
  add_count_option(cmd, "--before", a->before, "Tokens shown before a context's top token", 0);
  add_count_option(cmd, "--after", a->after, "Tokens shown after it", 0);
  add_count_option(cmd, "--bins", a->bins, "Activation histogram bins");
  add_count_option(cmd, "--top-logits", a->top_logits, "Logit effects listed each way");
  add_count_option(cmd, "--batch-size", a->batch_size, "Prompts per forward");
  add_count_option(cmd, "--max-prompts", a->max_prompts, "Use at most this many prompts (0 = all)", 0);
  cmd->add_flag("--overwrite", a->overwrite, "Replace the files at --out and --html");
  add_process_flags(cmd, a->process);
  add_threads_option(cmd, "They run the model's forward passes and the spliced SAE.");
  cmd->callback([a] {
    for (size_t i = 0; i < a->latents.size(); ++i) {
      MECHLAB_CHECK(std::find(a->latents.begin(), a->latents.begin() + static_cast<std::ptrdiff_t>(i),
                              a->latents[i]) == a->latents.begin() + static_cast<std::ptrdiff_t>(i),
                    "--latents lists latent ", a->latents[i], " twice; list each latent once");
    }
    for (const std::string* out : {&a->out, &a->html}) {
      if (out->empty()) continue;
      const std::string flag = out == &a->out ? "--out" : "--html";
      core::require_not_same_file(*out, flag, a->model, "the model");
      core::require_not_same_file(*out, flag, a->dataset, "the dataset");
      core::require_not_same_file(*out, flag, a->sae + "/cfg.json", "the SAE's cfg.json");
      core::require_not_same_file(*out, flag, a->sae + "/sae_weights.safetensors", "the SAE's weights");
    }
    if (!a->html.empty()) {
      // Neither need exist yet, so compare the paths as well as the files.
      core::require_not_same_file(a->html, "--html", a->out, "--out");
      MECHLAB_CHECK(std::filesystem::weakly_canonical(a->html) != std::filesystem::weakly_canonical(a->out),
                    "--html ", a->html, " is the same file as --out; give the page its own path");
      MECHLAB_CHECK(a->overwrite || !std::filesystem::exists(a->html), "--html ", a->html,
                    " already exists; pass --overwrite to replace it or choose another output path");
    }
    core::require_replaceable(a->out, "sae_dashboard", a->overwrite, "--overwrite");
    auto s = sae::import_saelens(a->sae);
    const core::Dataset ds = core::load_dataset(a->dataset);
    const at::Tensor& prompts = ds.prompts();
    MECHLAB_CHECK(prompts.defined(), "dataset ", a->dataset, " holds no prompts; make one with `mechlab dataset make`");
    MECHLAB_CHECK(!ds.attention_mask.defined() || ds.attention_mask.all().item<bool>(), "dataset ", a->dataset,
                  " has padded prompts; use a dataset of equal-length prompts");
    const int64_t n = a->max_prompts > 0 ? std::min(a->max_prompts, prompts.size(0)) : prompts.size(0);
    const at::Tensor tokens = prompts.slice(0, 0, n).to(at::kLong);  // [n, pos]
    std::vector<int64_t> latents = a->latents;
    if (latents.empty()) {
      const int64_t count = a->first == 0 ? s->d_sae() : std::min(a->first, s->d_sae());
      for (int64_t i = 0; i < count; ++i) latents.push_back(i);
    }
    auto model = hooks::HookedTransformer::from_pretrained(
        a->model, hooks::PretrainedOptions().process(a->process.options()));
    const sae::Dashboard d = sae::compute_dashboard(
        model, s, a->hook, tokens,
        sae::DashboardOptions().latents(latents).top_k(a->top_k).window_before(a->before)
            .window_after(a->after).histogram_bins(a->bins).top_logits(a->top_logits)
            .batch_size(a->batch_size));
    sae::write_dashboard(d, a->out, a->overwrite);
    std::printf("wrote %s: %lld latents of %s at %s over %lld prompts\n", printable(a->out).c_str(),
                static_cast<long long>(latents.size()), printable(a->sae).c_str(), printable(d.hook).c_str(),
                static_cast<long long>(n));
    if (!a->html.empty()) {
      core::write_text_file(a->html, sae::dashboard_html(d, a->title.empty() ? a->sae + " at " + d.hook : a->title));
      std::printf("wrote %s\n", printable(a->html).c_str());
    }
  });
}

}  // namespace mechlab::cli
