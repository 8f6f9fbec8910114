// mechlab sae train CONFIG: train a sparse autoencoder on an activation store,
// a model's live activations or the toy-superposition generator
// (sae/trainer.h). CONFIG is JSON, or YAML by extension (.yaml, .yml).
#include "apps/cli/commands.h"
#include "apps/jobs/job_file.h"
#include "core/dist/process_group.h"
#include "core/formats/output_file.h"
#include "core/util/error.h"
#include "core/util/interrupt.h"
#include "sae/trainer.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>

namespace mechlab::cli {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

json read_config(const std::string& path) {
  const std::string ext = fs::path(path).extension().string();
  if (ext == ".yaml" || ext == ".yml") {
    try {
      return jobs::read_job_document(path);
    } catch (const Error& e) {
      std::string what = e.what();
      const std::string prefix = "job file ";
      if (what.rfind(prefix, 0) == 0) what = "SAE training config " + what.substr(prefix.size());
      throw Error(what);
    }
  }
  std::ifstream in(path);
  MECHLAB_CHECK(in.good(), "SAE training config '", path, "': cannot read it (no such file?)");
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return json::parse(ss.str());
  } catch (const json::parse_error& e) {
    throw Error(str_cat("SAE training config '", path, "' is not valid JSON: ", e.what()));
  }
}

// "a.b=VALUE": sets j["a"]["b"]; VALUE is JSON when it parses, else a string.
void set_key(json& j, const std::string& setting) {
  const auto eq = setting.find('=');
  MECHLAB_CHECK(eq != std::string::npos && eq > 0, "--set wants KEY=VALUE (e.g. steps=500 or sae.k=16), got \"",
                setting, "\"");
  json value = json::parse(setting.substr(eq + 1), nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded()) value = setting.substr(eq + 1);
  json* node = &j;
  const std::string key = setting.substr(0, eq);
  size_t start = 0;
  for (size_t dot; (dot = key.find('.', start)) != std::string::npos; start = dot + 1) {
    node = &(*node)[key.substr(start, dot - start)];
    MECHLAB_CHECK(node->is_object() || node->is_null(), "--set ", key, ": \"", key.substr(0, dot),
                  "\" is not an object");
  }
  (*node)[key.substr(start)] = value;
}

}  // namespace

void add_sae_train(CLI::App& sae) {
  auto* cmd = sae.add_subcommand(
      "train",
      "Train a sparse autoencoder (SAELens's losses and training: Adam with lr warmup/decay, "
      "L1/L0 coefficient warmup, AuxK on dead latents, geometric-median b_dec).\nCONFIG is JSON "
      "or YAML (keys: docs/ARCHITECTURE.md, \"SAE training\"); data is an activation store "
      "({store: acts.h5, hook: NAME}), a model run live on a dataset's prompts ({model: M, "
      "dataset: D.h5, hook: NAME}; paths relative to CONFIG) or the toy-superposition "
      "generator ({toy: {}}). Writes checkpoint.h5 (resumable), train_log.{csv,svg}, "
      "sae_log.{csv,svg}, config.json and sae/ (an SAELens folder) into --out.\n"
      "Data parallel: started as several processes (torchrun's RANK/WORLD_SIZE, srun's SLURM_PROCID/SLURM_NTASKS, "
      "mpirun's OMPI_COMM_WORLD_RANK/OMPI_COMM_WORLD_SIZE or PMI_RANK/PMI_SIZE, with MASTER_ADDR and MASTER_PORT; "
      "under Slurm MASTER_ADDR defaults to the job's first node), the processes train one SAE together over "
      "Gloo (device cpu) or NCCL (device cuda: each process takes cuda:LOCAL_RANK, the launcher's local rank): "
      "batch_size is the global batch (it must divide by the number of processes), each process trains "
      "on its part, gradients are averaged, rank 0 writes --out (on a filesystem every rank sees). Resume with "
      "the same number of processes. docs/SCALING.md has the cluster commands.");
  struct Args {
    std::string config, out;
    std::vector<std::string> settings;
    int64_t max_steps = -1;
    bool resume = false, overwrite = false, no_progress = false;
    double dist_timeout = 300;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("config", a->config, "SAE training config (JSON or YAML)")->required();
  cmd->add_option("--out", a->out, "Output folder")->required();
  cmd->add_option("--set", a->settings, "Override a config key: KEY=VALUE, nested keys with dots "
                                        "(e.g. --set steps=500 --set sae.k=16)");
  add_threads_option(cmd, "They run the SAE's matrix products on the CPU (and a live source's model forwards).");
  cmd->add_option("--max-steps", a->max_steps,
                  "Stop after this many steps of this session (resumable; -1 = to the config's steps)")
      ->capture_default_str();
  cmd->add_flag("--resume", a->resume,
                "Continue the run in --out (same config, same result as uninterrupted; a store is matched by "
                "content, so it may have moved)");
  cmd->add_flag("--overwrite", a->overwrite,
                "Replace a run already in --out: its checkpoint, logs, config.json and sae/ are removed first "
                "(other files are kept; a config.json or sae/ mechlab did not write is refused)");
  cmd->add_flag("--no-progress", a->no_progress, "No progress bar");
  cmd->add_option("--dist-timeout", a->dist_timeout,
                  "Data parallel: seconds the processes wait for each other (rendezvous and each step's "
                  "all-reduce) before a dead or hung process stops them all with an error; default "
                  "MECHLAB_DIST_TIMEOUT, else 300")
      ->check(CLI::PositiveNumber);
  cmd->callback([a, cmd] {
    MECHLAB_CHECK(!(a->resume && a->overwrite), "--resume and --overwrite exclude each other");
    MECHLAB_CHECK(a->max_steps >= -1, "--max-steps must be -1 (to the config's steps) or >= 0, got ", a->max_steps);
    json j = read_config(a->config);
    for (const std::string& s : a->settings) set_key(j, s);
    // Store, model and dataset paths are relative to the config's folder (made
    // absolute, so that a resume from another working directory has the same config).
    if (j.is_object() && j.contains("data") && j["data"].is_object()) {
      for (const auto& [key, what] : {std::pair<const char*, const char*>{"store", "the activation store (data.store)"},
                                      {"model", "the model (data.model)"},
                                      {"dataset", "the dataset (data.dataset)"}}) {
        if (!j["data"].contains(key) || !j["data"][key].is_string()) continue;
        const fs::path input = j["data"][key].get<std::string>();
        if (input.is_relative()) {
          j["data"][key] = fs::absolute(fs::path(a->config).parent_path() / input).lexically_normal().string();
        }
        for (const char* name : {"checkpoint.h5", "config.json"}) {
          core::require_not_same_file((fs::path(a->out) / name).string(), "--out", j["data"][key].get<std::string>(),
                                      what);
        }
      }
    }
    const sae::SaeTrainConfig cfg = sae::SaeTrainConfig::from_json(j);
    cfg.validate();  // every value, before a process group, a store or --out is touched
    core::require_not_same_file((fs::path(a->out) / "config.json").string(), "--out", a->config, "the config");
    // Data parallel when the launcher says so (world size > 1).
    const core::dist::DistEnv env = core::dist::dist_env();
    std::shared_ptr<core::dist::ProcessGroup> group;
    if (env.world_size > 1) {
      const double timeout = cmd->count("--dist-timeout") > 0 ? a->dist_timeout
                                                             : core::dist::dist_timeout_from_env(a->dist_timeout);
      group = core::dist::ProcessGroup::connect(env, core::dist::GroupOptions().timeout_seconds(timeout));
    }
    handle_interrupts(/*polled=*/true);
    sae::SaeTrainer trainer(cfg, sae::SaeTrainerOptions()
                                     .out_dir(a->out)
                                     .resume(a->resume)
                                     .overwrite(a->overwrite)
                                     .progress(!a->no_progress)
                                     .process_group(group));
    sae::SaeTrainResult r;
    try {
      r = trainer.run(a->max_steps);
    } catch (const Interrupted& e) {
      throw Interrupted(str_cat(e.what(), "; resume with the same command and --resume"));
    }
    if (env.rank != 0) return;  // rank 0 reports for all
    const sae::SaeEval& e = r.eval;
    const char* note = r.already_complete ? " (already complete, nothing to resume)"
                       : r.stopped_early  ? " (reached stop_at_mmcs)"
                                          : "";
    std::printf("%s: %lld steps%s; L0 %.3f, FVU %.5f, dead fraction %.4f", cfg.name().c_str(),
                static_cast<long long>(r.steps), note, e.l0, e.fvu, e.dead_fraction);
    if (e.mmcs >= 0) std::printf(", MMCS %.5f", e.mmcs);
    if (r.seconds > 0 && r.steps_this_session > 0) {
      std::printf("; %.0f tokens/s", static_cast<double>(r.steps_this_session * cfg.batch_size()) / r.seconds);
    }
    if (env.world_size > 1) std::printf("; world size %lld", static_cast<long long>(env.world_size));
    std::printf("\n");
    const bool finished = r.steps >= cfg.steps() || r.stopped_early;
    if (finished) {
      std::printf("wrote %s/{sae/, checkpoint.h5, config.json, train_log.csv, train_log.svg, sae_log.csv, sae_log.svg}\n",
                  a->out.c_str());
    } else {
      std::printf("stopped at step %lld of %lld; continue with --resume\n", static_cast<long long>(r.steps),
                  static_cast<long long>(cfg.steps()));
    }
  });
}

}  // namespace mechlab::cli
