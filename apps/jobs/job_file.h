// Discovery job files (`mechlab discover JOBFILE`): JSON or YAML (by
// extension: .yaml/.yml are YAML, everything else JSON), converted to one
// nlohmann::json document and checked by one validator.
//
//   steps:                       # optional, run in order before the jobs
//     - dataset: {task: ioi, out: data/ioi.h5, n: 64, seed: 1, set: {order: mixed}}
//     - cache: {model: m.h5, dataset: data/ioi.h5, out: c.h5, hooks: "blocks.*.hook_resid_post"}
//   jobs:
//     - name: ioi-eap            # unique; names the output folder
//       model: models/ioi.h5     # mechlab checkpoint or Hugging Face folder
//       dataset: data/ioi.h5     # a patching dataset (clean/corrupted pairs)
//       method: eap              # acdc | eap | eap-ig | eap-acdc
//       metric: logit_diff       # default kl_to_clean; any of patching's metric_catalog()
//       ablation: corrupted      # corrupted | mean | zero (default corrupted)
//       threshold: 0.05          # τ >= 0; or thresholds: [..] (one folder per τ); or top_n: N (eap, eap-ig)
//       steps: 5                 # EAP-IG interpolation steps (eap-ig; eap-acdc: EAP-IG instead of EAP)
//       abs_value: false         # acdc, eap-acdc: threshold on |metric increase|
//       indices_mode: normal     # acdc, eap-acdc: normal | reverse (a layer's heads from the first)
//       max_batch: 0             # acdc, eap-acdc: trials per forward (0 = memory budget); not in the config
//       attribution_threshold: 0.01  # eap-acdc: EAP edges kept for ACDC; or attribution_top_n: N
//       reference_edges: ref.txt # optional: edge names (one a line) or a circuit.json -> ROC AUC
//       split_positions: false   # true: every edge once per token position ("a0.h3 -> a1.h2<k> @5");
//                                # the prompts must share one length and padding
//       device: cpu              # cpu | cuda (default cpu)
//       examples: 32             # the first N prompt pairs (default 0 = all)
//       out: runs/ioi-eap        # default <job file's folder>/<name>
//
// Relative paths are relative to the job file's folder. A `dataset` step
// takes the arguments of `mechlab dataset make` (task positional, the rest
// by option name without "--"; `set` a map of task options), a `cache` step
// those of `mechlab cache` (model and dataset positional); true is a flag,
// a list repeats the option. A step whose `out` exists is skipped.
// A `sae_train` step takes the arguments of `mechlab sae train` (config
// positional): `- sae_train: {config: sae.yaml, out: runs/sae}`; it is
// skipped once out/sae exists and resumed when out holds only a checkpoint.
// A `probe` step takes those of `mechlab probe` (source and dataset
// positional): `- probe: {source: c.h5, dataset: d.h5, hooks: "blocks.*.hook_resid_post",
// label: repeated, out: runs/probes}`; `out` is a folder, done once
// out/probes.h5 exists.
//
// Every refusal is one line naming the job (or step) and the field, raised
// before any work starts: parse_job_file checks the syntax, the fields and
// their values; check_job_file opens the models and datasets.
#pragma once

#include "core/model/model_config.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <vector>

namespace mechlab::jobs {

/// A step kind: the CLI command it runs and the fields it accepts.
struct StepKind {
  std::string name;                      ///< "dataset", "cache"
  std::vector<std::string> command;      ///< {"dataset", "make"}, {"cache"}
  std::vector<std::string> positionals;  ///< fields passed in order before the options
  std::vector<std::string> flags;        ///< option fields (without "--"), including "out"
  std::vector<std::string> switches;     ///< the flags that take no value: true or false in a job file
};
/// The step kinds a job file may use.
const std::vector<StepKind>& step_kinds();

struct Step {
  std::string kind;               ///< a step_kinds() name
  std::string label;              ///< "step 1 (dataset)" for messages
  std::string out;                ///< the file (sae_train: folder) it writes (resolved)
  /// What exists once the step is done: `out`, or for sae_train out/sae (a
  /// run folder without it is resumed from its checkpoint), for probe out/probes.h5.
  std::string done;
  std::vector<std::string> argv;  ///< the CLI arguments, command words first
};

/// One job as validated, defaults filled in and paths resolved.
struct Job {
  std::string name, model, dataset, method, metric = "kl_to_clean", ablation = "corrupted";
  std::vector<double> thresholds;  ///< one per run; empty with top_n
  int64_t top_n = 0;
  int steps = 5;
  bool steps_given = false;  ///< eap-acdc: attribute by EAP-IG (with `steps`) instead of EAP
  // ACDC (acdc, eap-acdc): discovery/acdc.h's AcdcOptions.
  bool abs_value = false;
  std::string indices_mode = "normal";
  int64_t max_batch = 0;
  // eap-acdc: which EAP edges ACDC starts from (exactly one given).
  double attribution_threshold = std::numeric_limits<double>::quiet_NaN();
  int64_t attribution_top_n = 0;
  /// "" or a file of edge names (one a line) or a circuit.json: ROC AUC of the scores against it.
  std::string reference_edges;
  /// Split the circuit graph by token position (every method).
  bool split_positions = false;
  std::string device = "cpu";
  int64_t examples = 0;
  std::string out;
};

/// τ as %g writes it, with more digits only when needed to read back the
/// same double ("0.05", "0.0001", "0.1234561"): distinct τs of a sweep get
/// distinct folder names.
std::string threshold_text(double tau);

/// One output folder of a job: the job at one τ (or its top_n).
struct JobRun {
  const Job* job = nullptr;
  double threshold = 0;           ///< NaN with top_n
  std::string out;                ///< job.out, or job.out/threshold-<τ> in a sweep
  /// What circuit.json records and reruns compare: the job with defaults
  /// filled in, paths relative to the job file's folder (so a rerun from
  /// another working directory matches).
  nlohmann::json config;
};

struct JobFile {
  std::string path, dir;
  std::vector<Step> steps;
  std::vector<Job> jobs;
  /// Every run of every job, in file order.
  std::vector<JobRun> runs() const;
};

/// Whether a step is done: its `done` path exists.
bool step_done(const Step& step);
/// The CLI arguments that run a step that is not done: its argv, plus
/// --resume for a sae_train step whose folder holds a checkpoint (a run
/// killed part-way).
std::vector<std::string> step_command(const Step& step);

/// The methods a job may name.
const std::vector<std::string>& method_names();
/// The fields a job may have (`mechlab discover --help` explains each).
const std::vector<std::string>& job_field_names();

/// Reads a JSON or YAML job file into its document (syntax errors name the
/// file and the line).
nlohmann::json read_job_document(const std::string& path);
/// Validates a document (as read_job_document returns it) whose relative
/// paths are relative to `dir`: fields, types, values, duplicate names and
/// output folders, files that neither exist nor come from a step.
JobFile parse_job_document(const nlohmann::json& doc, const std::string& path, const std::string& dir);
/// read_job_document + parse_job_document.
JobFile parse_job_file(const std::string& path);

/// What check_job_inputs learnt about a model: its config and a hash of
/// its weights (the bytes of every parameter, in order).
struct ModelFacts {
  core::ModelConfig config;
  std::string weights_hash;
};

/// What check_job_inputs learnt: the models by path, and a hash of the
/// prompt pairs each job reads (keyed by input_key: the dataset's tokens,
/// answers and mask after its `examples` cut), so that a finished circuit
/// made from other weights or other prompts is not taken as done.
struct InputFacts {
  std::map<std::string, ModelFacts> models;
  std::map<std::string, std::string> data_hash;
};
/// The data_hash key of a job: its dataset and examples.
std::string input_key(const Job& job);

/// Opens each model and each dataset that exists (step outputs not yet
/// made are checked by the runner once the steps ran): a model that does not
/// load, a dataset without clean/corrupted pairs, token ids >= the model's
/// d_vocab, examples beyond the dataset, an output folder that is one of its
/// job's inputs. Hashes each model's weights (about a second per GB) and
/// each job's prompt pairs.
/// With `skip_missing`, datasets not there yet are left for a later call,
/// which passes what the first learnt as `known`: models and datasets in it
/// are not read again.
InputFacts check_job_inputs(const JobFile& file, bool skip_missing, const InputFacts& known = {});

/// "did you mean" helper: the name in `valid` nearest to `word` (edit
/// distance), or "" when none is close.
std::string nearest_name(const std::string& word, const std::vector<std::string>& valid);

}  // namespace mechlab::jobs
