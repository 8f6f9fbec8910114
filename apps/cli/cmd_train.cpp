// mechlab train: train a model on a task dataset from a JSON config
// (core/train/trainer.h); the recipes under apps/models/ are such configs.
#include "apps/cli/commands.h"
#include "core/formats/output_file.h"
#include "core/util/error.h"
#include "core/util/interrupt.h"
#include "core/data/dataset.h"
#include "core/data/tasks/tasks.h"
#include "core/train/train_data.h"
#include "core/train/trainer.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>

namespace mechlab::cli {
namespace {

// "a.b.c=VALUE": sets j["a"]["b"]["c"]; VALUE is read as JSON when it parses
// (numbers, true/false, objects), else as a string.
void apply_setting(nlohmann::json& j, const std::string& setting) {
  const auto eq = setting.find('=');
  MECHLAB_CHECK(eq != std::string::npos && eq > 0, "--set wants KEY=VALUE (e.g. lr=3e-4 or "
                "model.d_model=128), got \"", setting, "\"");
  const std::string key = setting.substr(0, eq), text = setting.substr(eq + 1);
  nlohmann::json value;
  try {
    value = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error&) {
    value = text;
  }
  nlohmann::json* node = &j;
  size_t start = 0;
  for (size_t dot; (dot = key.find('.', start)) != std::string::npos; start = dot + 1) {
    node = &(*node)[key.substr(start, dot - start)];
    MECHLAB_CHECK(node->is_object() || node->is_null(), "--set ", key, ": \"",
                  key.substr(0, dot), "\" is not an object");
  }
  (*node)[key.substr(start)] = value;
}

}  // namespace

void add_train_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "train",
      "Train a transformer on a task dataset (AdamW, warmup + cosine schedule, gradient "
      "clipping).\nCONFIG is a JSON file (recipes: apps/models/*.json; keys: "
      "docs/ARCHITECTURE.md, \"Training\"). Writes checkpoint.h5 (resumable), model.h5, "
      "train_log.csv and train_log.svg into --out.");
  struct Args {
    std::string config, out, device = "cpu";
    std::vector<std::string> settings;
    int64_t max_steps = -1;
    bool resume = false, overwrite = false, no_progress = false;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("config", a->config, "Training config (JSON)")->required();
  cmd->add_option("--out", a->out, "Output folder for the checkpoint, final model and log")
      ->required();
  cmd->add_option("--set", a->settings,
                  "Override a config key: KEY=VALUE, nested keys with dots "
                  "(e.g. --set steps=500 --set model.d_model=128 --set data.options.n=2000)");
  cmd->add_option("--device", a->device, "cpu, cuda, cuda:N or auto")->capture_default_str();
  add_threads_option(cmd);
  cmd->add_option("--max-steps", a->max_steps,
                  "Stop after this many steps of this session (the run stays resumable; "
                  "-1 = train to the config's steps)")
      ->capture_default_str();
  cmd->add_flag("--resume", a->resume,
                "Continue the run in --out from its checkpoint (same config, same result as an "
                "uninterrupted run)");
  cmd->add_flag("--overwrite", a->overwrite, "Replace a run already in --out");
  cmd->add_flag("--no-progress", a->no_progress, "No progress bar");
  cmd->callback([a] {
    MECHLAB_CHECK(!(a->resume && a->overwrite), "--resume and --overwrite exclude each other");
    core::train::TrainConfig cfg;
    if (a->settings.empty()) {
      cfg = core::train::TrainConfig::load(a->config);
    } else {
      nlohmann::json j = core::train::TrainConfig::load(a->config).to_json();
      for (const std::string& s : a->settings) apply_setting(j, s);
      cfg = core::train::TrainConfig::from_json(j);
    }
    // The seed is an unsigned draw: refuse a negative one, as every --seed does.
    MECHLAB_CHECK(cfg.seed >= 0, "the config's \"seed\" must be >= 0, got ", cfg.seed);
    // The run folder's files must not be what the run reads: a dataset given
    // as data.path, or the config itself. (config.json is left out: resuming
    // from a run's own config.json is how a run is continued.)
    for (const char* name : {"checkpoint.h5", "model.h5", "train_log.csv", "train_log.svg"}) {
      const std::string out = (std::filesystem::path(a->out) / name).string();
      core::require_not_same_file(out, "--out", a->config, "the config");
      if (cfg.data.contains("path")) {
        core::require_not_same_file(out, "--out", cfg.data["path"].get<std::string>(),
                                    "the dataset (data.path)");
      }
    }
    // The trainer refuses an existing run by its checkpoint.h5; a model.h5
    // alone (a finished run's checkpoint removed, a copied model) would be
    // replaced at the end without a word. And neither file is ever replaced
    // by a checkpoint when it is another kind of mechlab file.
    for (const char* name : {"checkpoint.h5", "model.h5"}) {
      core::require_replaceable((std::filesystem::path(a->out) / name).string(), "checkpoint",
                                /*overwrite=*/true, "--overwrite");
    }
    if (!a->resume) {
      core::require_replaceable((std::filesystem::path(a->out) / "model.h5").string(), "checkpoint",
                                a->overwrite, "--overwrite");
    }
    if (cfg.data.contains("task") && cfg.data.contains("options") && cfg.data["options"].contains("n") &&
        cfg.data["options"]["n"].is_number_integer() && cfg.data["options"]["n"].get<int64_t>() > 16) {
      // A generated dataset's size first, as `dataset make --n` does: 16
      // examples show the bytes per example; the generator's vectors and the
      // tensors made from them hold the data twice. In double.
      nlohmann::json sample = cfg.data["options"];
      sample["n"] = 16;
      const core::Dataset probe = core::tasks::make_task(cfg.data["task"].get<std::string>(), sample);
      int64_t bytes = 0;
      for (const at::Tensor* t : {&probe.tokens, &probe.attention_mask, &probe.clean_tokens,
                                  &probe.corrupted_tokens, &probe.answer_tokens, &probe.wrong_tokens,
                                  &probe.answer_pos, &probe.labels}) {
        if (t->defined()) bytes += static_cast<int64_t>(t->nbytes());
      }
      const int64_t n = cfg.data["options"]["n"].get<int64_t>();
      const double total = 2.0 * static_cast<double>(bytes) / 16.0 * static_cast<double>(n);
      require_memory(total > 9e18 ? INT64_MAX : static_cast<int64_t>(total), str_cat("data.options.n ", n),
                     str_cat(n, " examples (", bytes / 16, " bytes each)"),
                     "lower data.options.n (--set data.options.n=N)");
    }
    {
      // One training step's memory, refused before the model and optimizer
      // are made: the activations autograd keeps for the backward (per
      // layer a dozen residual-sized tensors, q/k/v/z, the MLP's hidden
      // layer twice; attention is fused, so no pos^2 maps) and the logits,
      // their log-softmax and gradient in float32, for a batch of
      // min(batch_size, train rows) x seq_len tokens; plus the weights with
      // AdamW's two moments and the gradient. In double: the products overflow
      // int64. The data itself is small beside it (dataset make checks --n).
      const core::train::TrainData data = core::train::load_train_data(cfg);
      const core::ModelConfig m = core::train::resolve_model_config(cfg, data.dataset);
      const int64_t rows = data.train.size(), seq = data.train.tokens.size(1);
      const int64_t batch = cfg.batch_size == 0 ? rows : std::min(cfg.batch_size, rows);
      const double per_token =
          4.0 * m.n_layers * (12.0 * m.d_model + 4.0 * m.n_heads * m.d_head + (m.has_mlp() ? 2.0 * m.d_mlp : 0)) +
          4.0 * 3 * m.d_vocab;
      const double bytes = static_cast<double>(batch) * static_cast<double>(seq) * per_token +
                           4.0 * 4 * static_cast<double>(m.parameter_count());
      require_memory(bytes > 9e18 ? INT64_MAX : static_cast<int64_t>(bytes),
                     str_cat("batch_size ", cfg.batch_size),
                     str_cat("one training step over ", batch, " examples x ", seq, " tokens"),
                     "lower batch_size (--set batch_size=N) or the sequence length");
    }
    handle_interrupts(/*polled=*/true);
    core::train::Trainer trainer(cfg, core::train::TrainerOptions()
                                          .out_dir(a->out)
                                          .device(parse_device(a->device))
                                          .resume(a->resume)
                                          .overwrite(a->overwrite)
                                          .progress(!a->no_progress));
    core::train::TrainResult r;
    try {
      r = trainer.run(a->max_steps);
    } catch (const Interrupted& e) {
      throw Interrupted(str_cat(e.what(), "; resume with the same command and --resume"));
    }
    // A finished run resumed again takes no step; it reports the evaluation
    // its checkpoint kept.
    const char* note = r.already_complete ? " (already complete, nothing to resume)"
                       : r.stopped_early  ? " (reached stop_at_accuracy)"
                                          : "";
    std::printf("%s: %lld steps%s; test loss %.4f, test accuracy %.4f (%lld predictions); "
                "train accuracy %.4f\n",
                cfg.name.c_str(), static_cast<long long>(r.steps), note, r.test.loss,
                r.test.accuracy, static_cast<long long>(r.test.scored), r.train.accuracy);
    std::printf("wrote %s/{model.h5, checkpoint.h5, train_log.csv, train_log.svg}\n",
                a->out.c_str());
  });
}

}  // namespace mechlab::cli
