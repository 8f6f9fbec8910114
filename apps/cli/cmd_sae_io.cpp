// mechlab sae import / export: SAELens folders (sae/saelens_io.h).
//   import: read a folder with every check (missing, mis-shaped, non-finite or
//           unknown tensors, unknown keys are refused), print what it holds
//           and, with --model, check that it splices into the model at its hook.
//   export: write an SAE as a SAELens 6 folder: a pre-6 folder upgraded, the
//           hook renamed, the decoder norms folded; staged and renamed into place.
#include "apps/cli/commands.h"
#include "core/util/error.h"
#include "hooks/hooked_transformer.h"
#include "sae/registry.h"
#include "sae/saelens_io.h"
#include "sae/splice.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <sstream>

namespace mechlab::cli {

namespace {

namespace fs = std::filesystem;

std::string shape_of(const at::Tensor& t) {
  std::ostringstream s;
  s << t.sizes();
  return s.str();
}

/// A copy of `src` whose config has hook_name `hook`.
std::shared_ptr<sae::Sae> with_hook(const sae::Sae& src, const std::string& hook) {
  sae::SaeConfig cfg = src.cfg();
  cfg.hook_name(hook);
  auto out = sae::make_sae(cfg);
  for (const auto& [name, t] : src.named_parameters()) out->param(name).copy_(t);
  return out;
}

bool same_folder(const std::string& a, const std::string& b) {
  std::error_code ec;
  return std::filesystem::exists(a, ec) && std::filesystem::exists(b, ec) &&
         std::filesystem::equivalent(a, b, ec);
}

}  // namespace

void add_sae_import_command(CLI::App& sae) {
  auto* cmd = sae.add_subcommand(
      "import",
      "Read an SAELens folder with every check (one line naming the key or tensor when it is "
      "refused) and print what it holds; with --model, check that it splices into the model");
  struct Args {
    std::string dir, model, hook;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("sae", a->dir, "SAELens folder (cfg.json + sae_weights.safetensors)")->required();
  cmd->add_option("--model", a->model, "mechlab checkpoint (.h5) or Hugging Face folder to splice it into");
  cmd->add_option("--hook", a->hook, "Hook to splice at (default: the SAE's hook_name)");
  add_threads_option(cmd, "They run the import checks (and, with --model, the splice check).");
  cmd->callback([a] {
    MECHLAB_CHECK(a->hook.empty() || !a->model.empty(),
                  "--hook names where to splice into --model, but no --model was given; add --model M");
    auto s = sae::import_saelens(a->dir);
    const sae::SaeConfig& c = s->cfg();
    std::printf("%s: %s SAE, d_in %lld, d_sae %lld, hook %s\n", printable(a->dir).c_str(),
                s->architecture().c_str(), static_cast<long long>(s->d_in()),
                static_cast<long long>(s->d_sae()),
                c.hook_name().empty() ? "(none)" : printable(c.hook_name()).c_str());
    std::printf("  apply_b_dec_to_input %s, normalize_activations %s", c.apply_b_dec_to_input() ? "true" : "false",
                c.normalize_activations().c_str());
    if (s->architecture() == "topk" || s->architecture() == "batchtopk") {
      std::printf(", k %g, rescale_acts_by_decoder_norm %s", c.k(), c.rescale_acts_by_decoder_norm() ? "true" : "false");
    }
    std::printf("\n");
    for (const auto& [name, t] : s->named_parameters()) {
      std::printf("  %-10s %s\n", name.c_str(), shape_of(t).c_str());
    }
    if (!a->model.empty()) {
      auto model = hooks::HookedTransformer::from_pretrained(a->model);
      sae::SaeSplice splice(model, {{a->hook, s}});
      std::printf("splices into %s at %s\n", printable(a->model).c_str(), printable(splice.hooks()[0]).c_str());
    }
  });
}

void add_sae_export_command(CLI::App& sae) {
  auto* cmd = sae.add_subcommand(
      "export",
      "Write an SAE as a SAELens 6 folder (cfg.json + sae_weights.safetensors) that SAELens's "
      "SAE.load_from_disk reads: a pre-6 folder upgraded, the hook renamed, decoder norms folded");
  struct Args {
    std::string dir, out, hook;
    bool fold = false, overwrite = false;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("sae", a->dir, "SAELens folder to read")->required();
  cmd->add_option("--out", a->out, "The folder to write")->required();
  cmd->add_option("--hook", a->hook, "Record this hook_name instead of the SAE's");
  cmd->add_flag("--fold-w-dec-norm", a->fold,
                "Scale decoder rows to unit norm, folding the norms into the encoder "
                "(reconstructions unchanged; SAELens's fold_W_dec_norm)");
  cmd->add_flag("--overwrite", a->overwrite, "Replace the SAELens folder at --out");
  add_threads_option(cmd, "They run the import checks and the conversion (--fold-w-dec-norm).");
  cmd->callback([a] {
    MECHLAB_CHECK(!same_folder(a->out, a->dir), "--out ", a->out,
                  " is the SAE folder being read; choose another folder");
    // Replacing --out removes it: never when it holds the folder being read.
    std::error_code ec;
    const fs::path in = fs::weakly_canonical(a->dir, ec), out = fs::weakly_canonical(a->out, ec);
    const auto mismatch = std::mismatch(out.begin(), out.end(), in.begin(), in.end());
    MECHLAB_CHECK(mismatch.first != out.end(), "--out ", a->out, " contains the SAE folder being read (", a->dir,
                  "); choose a folder outside it");
    auto s = sae::import_saelens(a->dir);
    if (!a->hook.empty()) s = with_hook(*s, a->hook);
    if (a->fold) s->fold_W_dec_norm();
    sae::export_saelens(*s, a->out, sae::ExportOptions().overwrite(a->overwrite));
    std::printf("wrote %s (%s SAE, d_in %lld, d_sae %lld, hook %s)\n", printable(a->out).c_str(),
                s->architecture().c_str(), static_cast<long long>(s->d_in()),
                static_cast<long long>(s->d_sae()), printable(s->cfg().hook_name()).c_str());
  });
}

}  // namespace mechlab::cli
