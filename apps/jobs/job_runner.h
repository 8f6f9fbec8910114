// Runs a job file (apps/jobs/job_file.h): its steps, then its jobs one after
// another, each with a progress bar, skipping finished ones, and prints a
// summary table (job, method, τ, edges kept / total, metric of the circuit,
// seconds, status).
//
// A method is one entry of a table, name -> function(context) -> JobResult;
// the context holds the job, the loaded model and data, the metric, the
// journal of an interrupted earlier run and a progress bar. eap and eap-ig
// are edge attribution + discovery/selection.h; acdc is discovery/acdc.h,
// its observer journaling each decision (fsynced) and polling Ctrl-C;
// eap-acdc is EAP (or EAP-IG) selection, then ACDC from the kept edges.
//
// Every circuit is then evaluated with a CircuitRunner on the job's data and
// ablation: the metric of the full model, of the empty circuit and of the
// circuit, and faithfulness (discovery/evaluation.h); with reference_edges,
// the ROC AUC of the job's scores against them.
//
// Job arrays: with RunOptions::shard_index/shard_count, only the jobs of
// that shard run (apps/jobs/shard.h); summarize_job_file merges the shards'
// circuits into one summary. The steps run under an exclusive lock (flock)
// on <job file's folder>/.<job file's name>.lock: concurrent shards run each
// step once, and the others skip it; a shard killed in a step releases the
// lock, and the next shard redoes (sae_train: resumes) the step.
//
// Finished: the run's circuit.json exists and records the same config; a
// rerun prints "skipped: done" (RunOptions::force reruns it). A circuit.json
// with another config is refused before any work unless forced; a file
// there that is not a circuit file is never replaced.
#pragma once

#include "apps/jobs/job_file.h"
#include "apps/jobs/journal.h"
#include "core/util/options.h"
#include "core/util/progress.h"
#include "hooks/hooked_transformer.h"
#include "patching/discovery/circuit.h"
#include "patching/discovery/circuit_runner.h"
#include "patching/edge_attribution.h"
#include "patching/metrics.h"
#include "patching/patching_data.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace mechlab::jobs {

/// What a method produced for one run.
struct JobResult {
  explicit JobResult(discovery::Circuit c) : circuit(std::move(c)) {}
  discovery::Circuit circuit;
  /// [{"edge", "kept", "metric"}...] in decision order; empty for EAP.
  nlohmann::json trace = nlohmann::json::array();
  double full_metric = NAN;     ///< the metric of the whole model
  double circuit_metric = NAN;  ///< the metric of the circuit; NaN = not evaluated
  nlohmann::json details = nlohmann::json::object();  ///< method-specific (passes, baselines)
  /// The scores a reference ROC ranks (every ranked edge scored); nullopt = the circuit's own.
  std::optional<discovery::Circuit> roc_scores;
};

/// Everything a method may use for one run.
struct MethodContext {
  const JobRun& run;
  hooks::HookedTransformer& model;
  const patching::PatchingData& data;
  const patching::Metric& metric;
  /// The decided steps of an interrupted earlier run (journal.jsonl), oldest first.
  const std::vector<nlohmann::json>& resume;
  /// Append each decided step here as it is decided.
  JournalWriter& journal;
  /// Edge scores already computed for this job (reused across its thresholds).
  std::map<std::string, patching::EdgeScores>& edge_scores;
  /// The run's progress bar, made on first use with the method's total.
  core::ProgressBar& progress(int64_t total, const std::string& unit, int64_t start = 0);
  std::unique_ptr<core::ProgressBar> bar;
  /// The job's circuit runner (its ablation), shared by the runs of its τ
  /// sweep; nullptr = the method makes its own.
  discovery::CircuitRunner* runner = nullptr;
};

using Method = std::function<JobResult(MethodContext&)>;
/// name -> method; a job whose method has no entry is refused before any work.
const std::map<std::string, Method>& method_table();

/// Runs one step's CLI arguments (the CLI parses and runs them in-process).
using StepExecutor = std::function<void(const std::vector<std::string>& argv)>;

struct RunOptions {
  /// Run only this job ("" = all).
  MECHLAB_OPTION(RunOptions, std::string, only, "")
  /// Rerun finished jobs and replace circuits of another config.
  MECHLAB_OPTION(RunOptions, bool, force, false)
  /// Render circuit.svg (Graphviz).
  MECHLAB_OPTION(RunOptions, bool, svg, true)
  MECHLAB_OPTION(RunOptions, std::string, dot_program, "dot")
  /// Job arrays (apps/jobs/shard.h): run only the jobs whose index in the
  /// file is ≡ shard_index mod shard_count. Not with `only`.
  MECHLAB_OPTION(RunOptions, int64_t, shard_index, 0)
  MECHLAB_OPTION(RunOptions, int64_t, shard_count, 1)
};

/// One row of the summary.
struct RunSummary {
  std::string job, method, out, status;  ///< status: "done", "skipped: done", "failed: ..."
  double threshold = NAN;
  int64_t top_n = 0;
  int64_t kept = -1, total = -1;
  double circuit_metric = NAN, seconds = 0;
  double faithfulness = NAN, auc = NAN;  ///< NaN: undefined / no reference_edges
  std::vector<std::string> nodes;  ///< heads and MLPs of the circuit
};

struct RunReport {
  std::vector<RunSummary> runs;
  std::string first_error;  ///< "" when every run succeeded
};

/// Checks everything (refusing before any work), runs the steps and the
/// jobs, prints progress and the summary table to stdout. A job that fails
/// while running does not stop the others; its error is in the report.
/// `check_step` (optional) parses a step's arguments without running it;
/// it is called for every step that will run, before any of them runs.
RunReport run_job_file(const JobFile& file, const RunOptions& options, const StepExecutor& execute_step,
                       const StepExecutor& check_step = {});

/// The merged results of every shard, without running anything: one row
/// per run of every job, read from its circuit.json. Status "done" (the
/// circuit records this job's settings), "missing" (no circuit.json yet:
/// its shard has not started it), "interrupted (...)" (no circuit.json but
/// a journal: stopped part-way), "stale: ..." (made with other settings) or
/// "failed: ..." (not a circuit file). first_error names the runs that are
/// not done, so a complete summary is one whose first_error is "". Prints
/// nothing.
RunReport summarize_job_file(const JobFile& file);

/// The summary table as printed ("" for a job file of steps only).
std::string summary_table(const RunReport& report);

}  // namespace mechlab::jobs
