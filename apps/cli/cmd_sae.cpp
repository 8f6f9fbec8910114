// mechlab sae: sparse autoencoders (sae/). The group only; each subcommand
// lives in its own file (cmd_sae_train.cpp, cmd_sae_eval.cpp, cmd_sae_io.cpp,
// cmd_sae_dashboard.cpp).
#include "apps/cli/commands.h"

namespace mechlab::cli {

void add_sae_command(CLI::App& app) {
  auto* sae = app.add_subcommand(
      "sae",
      "Sparse autoencoders: train one, evaluate one spliced into a model, latent dashboards, "
      "SAELens folders");
  sae->require_subcommand(1);
  add_sae_train(*sae);
  add_sae_eval_command(*sae);
  add_sae_export_command(*sae);
  add_sae_import_command(*sae);
  add_sae_dashboard_command(*sae);
}

}  // namespace mechlab::cli
