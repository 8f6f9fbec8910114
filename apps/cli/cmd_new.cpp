// mechlab new: write a randomly initialised model of a preset shape.
#include "apps/cli/commands.h"
#include "core/formats/output_file.h"
#include "core/model/presets.h"
#include "core/model/transformer.h"

#include "core/util/error.h"

#include "core/log/log.h"

#include <fstream>
#include <sstream>

namespace mechlab::cli {

void add_new_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "new", "Write a randomly initialised model (GPT-2-style init) as a mechlab checkpoint");
  struct Args {
    std::string out, preset = "tiny", config;
    uint64_t seed = 0;
    bool overwrite = false;
  };
  auto args = std::make_shared<Args>();
  cmd->add_option("out", args->out, "Checkpoint to write (.h5)")->required();
  std::string presets;
  for (const auto& n : core::preset_names()) presets += (presets.empty() ? "" : ", ") + n;
  cmd->add_option("--preset", args->preset, "Model shape: " + presets)->capture_default_str();
  cmd->add_option("--config", args->config,
                  "A ModelConfig JSON file instead of a preset (see docs/ARCHITECTURE.md)");
  cmd->add_option("--seed", args->seed, "Initialisation seed")
      ->capture_default_str()
      ->check(non_negative());
  cmd->add_flag("--overwrite", args->overwrite, "Replace a checkpoint already at OUT");
  cmd->callback([args] {
    core::require_replaceable(args->out, "checkpoint", args->overwrite, "--overwrite");
    if (!args->config.empty()) {
      core::require_not_same_file(args->out, "the output", args->config, "the config file");
    }
    core::ModelConfig cfg;
    if (!args->config.empty()) {
      std::ifstream in(args->config);
      MECHLAB_CHECK(in, "cannot read config file ", args->config);
      std::stringstream ss;
      ss << in.rdbuf();
      cfg = core::ModelConfig::from_json_string(ss.str());
    } else {
      cfg = core::preset(args->preset);
    }
    core::Transformer model(cfg, args->seed);
    model.save(args->out);
    log::info(str_cat("wrote ", cfg.name, " (", cfg.parameter_count(), " parameters) to ", args->out));
  });
}

}  // namespace mechlab::cli
