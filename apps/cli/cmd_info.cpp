// mechlab info: a model's config, parameter count and hook points.
#include "apps/cli/commands.h"
#include "apps/cli/prompt_input.h"
#include "core/data/tokenizer/tokenizer_json.h"
#include "core/hf/model_loader.h"
#include "core/util/error.h"
#include "core/model/transformer.h"
#include "kernels/device_info.h"

#include <nlohmann/json.hpp>

#include <iostream>

namespace mechlab::cli {

void add_info_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("info", "Print a model's config, parameter count and hook points");
  auto model_path = std::make_shared<std::string>();
  cmd->add_option("model", *model_path,
                  "mechlab checkpoint (.h5) or Hugging Face model folder (config.json + "
                  "*.safetensors)")
      ->required();
  auto process = std::make_shared<ProcessFlags>();
  add_process_flags(cmd, *process);
  cmd->callback([model_path, process] {
    core::LoadOptions load;
    load.process(process->options());
    core::Transformer model = core::load_model(*model_path, load);
    const auto tok = core::tokenizer::find_model_tokenizer(*model_path, "");
    std::string tokenizer = "none (no tokenizer.json or vocab.json + merges.txt beside the "
                            "model, no vocabulary in the checkpoint)";
    if (const auto* bpe = dynamic_cast<const core::tokenizer::BpeTokenizer*>(tok.get())) {
      tokenizer = bpe->describe();
    } else if (tok) {
      tokenizer = str_cat("word vocabulary of ", tok->vocab_size(), " words (stored in the checkpoint)");
    }
    const auto& cfg = model.config();
    std::cout << "model:      " << *model_path << "\n"
              << "source:     " << core::describe_model_source(*model_path) << "\n"
              << "tokenizer:  " << tokenizer << "\n"
              << "parameters: " << cfg.parameter_count() << " (" << model.dtype() << ")\n"
              << "config:     " << cfg.to_json().dump(2) << "\n"
              << "devices:    cpu; " << kernels::describe_gpus() << "\n\n"
              << "hook points (opt-in ones are computed only where hooked):\n";
    for (const auto& site : core::all_sites(cfg)) {
      std::string name = site.name();
      name.resize(std::max<size_t>(name.size(), 36), ' ');
      std::cout << "  " << name << " " << core::site_shape(cfg, site)
                << (core::is_opt_in(site.kind) ? "  (opt-in)" : "") << "\n";
    }
  });
}

}  // namespace mechlab::cli
