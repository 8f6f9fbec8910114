// mechlab sae: sparse autoencoders. The group only; each subcommand lives in
// its own file (cmd_sae_train.cpp, ...) and adds itself here.
#include "apps/cli/commands.h"

namespace mechlab::cli {

void add_sae_command(CLI::App& app) {
  auto* sae = app.add_subcommand("sae", "Sparse autoencoders (SAELens-compatible): train one.");
  sae->require_subcommand(1);
  add_sae_train(*sae);
}

}  // namespace mechlab::cli
