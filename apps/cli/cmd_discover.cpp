// mechlab discover: a job file (apps/jobs/job_file.h) -> checks -> steps ->
// jobs (apps/jobs/job_runner.h) -> summary and the heads of each circuit.
#include "apps/cli/commands.h"
#include "apps/jobs/job_file.h"
#include "apps/jobs/job_runner.h"
#include "apps/jobs/shard.h"
#include "core/util/error.h"
#include "patching/metrics.h"

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>

namespace mechlab::cli {

namespace {

// A step runs the CLI's own command in-process, so a step takes exactly the
// arguments of `mechlab dataset make` / `mechlab cache` / `mechlab sae train`
// / `mechlab probe`.
// With `run` false, only parses: unknown options, values that do not
// convert and the options' own checks are found before any step runs.
void parse_step(const std::vector<std::string>& args, bool run) {
  CLI::App app{"mechlab"};
  app.require_subcommand(1);
  add_dataset_command(app);
  add_cache_command(app);
  add_probe_command(app);
  add_sae_command(app);  // the sae_train step
  // The top-level app's parse-complete callback runs once every option is
  // parsed and checked, before any subcommand's callback (which does the work).
  struct Parsed {};
  if (!run) app.parse_complete_callback([] { throw Parsed{}; });
  std::vector<std::string> words = {"mechlab"};
  words.insert(words.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& w : words) argv.push_back(w.data());
  try {
    app.parse(static_cast<int>(argv.size()), argv.data());
  } catch (const Parsed&) {
  } catch (const CLI::ParseError& e) {
    throw Error(str_cat("its arguments do not parse: ", e.what()));
  }
}

void run_step(const std::vector<std::string>& args) { parse_step(args, true); }
void check_step(const std::vector<std::string>& args) { parse_step(args, false); }

const char* kDiscoverHelp = R"(Job file (JSON, or YAML when it ends in .yaml/.yml). Relative paths are relative to
the job file's folder.
  steps:        optional list run before the jobs; a step whose `out` exists is skipped
    - dataset:  the arguments of `mechlab dataset make`: task, out, n, seed, set: {KEY: VALUE}
    - cache:    the arguments of `mechlab cache`: model, dataset, out, hooks, dtype, ...
    - probe:    the arguments of `mechlab probe`: source, dataset, out, hooks, label, ...
                (done once out/probes.h5 exists)
                (option names without "--"; a switch takes true or false, a list repeats the
                option)
  jobs:         list of jobs (may be left out when there are steps: a file of steps only), each:
    name        unique; the output folder's default name
    model       mechlab checkpoint (.h5) or Hugging Face folder
    dataset     patching dataset (.h5) with clean/corrupted pairs and answers
    method      acdc     ACDC (Conmy et al. 2023): remove edges from the output backwards,
                         keeping one when removing it raises the metric by >= threshold
                eap      edge attribution patching, one gradient (Syed et al. 2023)
                eap-ig   EAP with integrated gradients (Hanna et al. 2024)
                eap-acdc EAP (EAP-IG with `steps`) keeps edges by attribution_threshold or
                         attribution_top_n, then ACDC tries only those
    metric      default kl_to_clean; one of: @METRICS@;
                eap needs a metric with a gradient at the clean run, e.g. logit_diff;
                acdc minimises a higher-is-better metric (logit_diff, normalised_logit_diff,
                answer_prob) negated, as the reference's IOI runs use -logit_diff
    ablation    corrupted | mean | zero (default corrupted; eap, eap-ig, eap-acdc: corrupted only)
    threshold   τ >= 0: eap/eap-ig keep edges with |score| >= τ; acdc/eap-acdc remove an
                edge when removing it raises the metric by less than τ
    thresholds  a list of τ: a sweep, one output folder OUT/threshold-<τ> per τ
    top_n       eap/eap-ig: keep the N edges of largest |score| (instead of τ)
    steps       eap-ig (and eap-acdc, which then attributes by EAP-IG) interpolation steps (default 5)
    abs_value   acdc, eap-acdc: compare |metric increase| with τ (default false)
    indices_mode  acdc, eap-acdc: normal (a layer's heads from the last) | reverse (default normal)
    max_batch   acdc, eap-acdc: trials per batched forward, 0 = from the memory budget,
                1 = one at a time (default 0; the decisions are the same)
    attribution_threshold  eap-acdc: EAP edges with |score| >= this go to ACDC
    attribution_top_n      eap-acdc: or the N EAP edges of largest |score|
    reference_edges  optional: a file of edge names, one a line (e.g. "a0.h3 -> a1.h2<k>"),
                or a circuit.json (its kept edges): the ROC AUC of the job's scores against them
                (ACDC: the metric increases, 0 for edges never tried)
    split_positions  true: split the graph by token position: every edge once per
                position p ("a0.h3 -> a1.h2<k> @5"), decided (acdc) or scored (eap) per
                position; the prompts must have one length and padding (default false)
    device      cpu | cuda (default cpu)
    examples    use the first N prompt pairs (default 0 = all; at most the dataset's)
    out         output folder (default <job file's folder>/<name>)
Each job writes OUT/circuit.json (every edge with score and kept/removed, the ACDC
trace, the job, versions, and the evaluation: the metric of the full model, of the
empty circuit and of the circuit, faithfulness (m(C)-m(empty))/(m(full)-m(empty)),
the reference AUC), OUT/circuit.h5, OUT/circuit.dot and OUT/circuit.svg (Graphviz
`dot`). Finished jobs (circuit.json with the same settings, made from the same model
weights and prompt pairs) are skipped on a rerun.
Every refusal happens before any work starts. ACDC writes each decision to
OUT/journal.jsonl as it is made: a rerun after a kill or Ctrl-C resumes after the
decided edges. The journal records the job's settings: a rerun with other settings
is refused; --force discards it and starts afresh. Ctrl-C stops ACDC between trials
(exit 130), other jobs between jobs.

Job arrays: --shard I/N runs only the jobs whose index in the file (from 0) is I mod N
(a τ sweep is one job); without --shard, a Slurm array task takes I and N from
SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT. Every shard writes only its own jobs'
folders and skips finished ones, so a requeued task resumes. The steps run under a lock
(.JOBFILE.lock beside the job file): the first shard runs them, the others wait and skip
them. --summary then reads every job's circuit.json and prints the merged table; it
fails (after the table) while any run is missing. One process per task: a process
started as one of several for one step (srun -n N, WORLD_SIZE > 1) is refused, since
each would run the same jobs. See docs/SCALING.md.

Example (ioi.yaml):
  steps:
    - dataset: {task: ioi, out: ioi.h5, n: 32, seed: 1}
  jobs:
    - {name: ioi-acdc, model: ../models/ioi.h5, dataset: ioi.h5, method: acdc,
       metric: kl_to_clean, thresholds: [0.01, 0.03]}
    - {name: ioi-eap, model: ../models/ioi.h5, dataset: ioi.h5, method: eap,
       metric: logit_diff, top_n: 40}
    - {name: ioi-hybrid, model: ../models/ioi.h5, dataset: ioi.h5, method: eap-acdc,
       metric: kl_to_clean, steps: 5, attribution_top_n: 60, threshold: 0.01}
)";

}  // namespace

void add_discover_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "discover",
      "Circuit discovery from a job file: runs its steps (datasets, caches), then each job\n"
      "(ACDC, EAP, EAP-IG, EAP then ACDC) one after another, evaluates each circuit, writes it\n"
      "as JSON, HDF5 and a Graphviz picture, and prints a summary table and the heads of each circuit.");
  struct Args {
    std::string file, only, shard;
    bool force = false, no_svg = false, summary = false;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("jobfile", a->file, "Job file (.json, .yaml or .yml); its format is below")->required();
  CLI::Option* only = cmd->add_option("--only", a->only, "Run only the job of this name (steps still run)");
  cmd->add_flag("--force", a->force,
                "Rerun finished jobs, replace circuits made with other settings in their folders, and "
                "start interrupted ACDC runs afresh (their journals discarded). Steps are not rerun: a "
                "step is done once its output exists (delete the output to redo it)");
  cmd->add_flag("--no-svg", a->no_svg, "Do not draw circuit.svg (no Graphviz needed)");
  cmd->add_option("--shard", a->shard,
                  "I/N: run only the jobs whose index (from 0) is I mod N, for job arrays; default: "
                  "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT when set, else every job");
  cmd->add_flag("--summary", a->summary,
                "Run nothing: print the merged summary of every job's results (all shards); "
                "fails while a run is missing");
  std::string help = kDiscoverHelp;
  help.replace(help.find("@METRICS@"), 9, patching::metric_names());
  cmd->footer(help);
  add_threads_option(cmd, kAcdcThreadsNote);
  cmd->callback([a, only] {
    // An empty name (a script's unset variable) must not mean every job.
    MECHLAB_CHECK(only->count() == 0 || !a->only.empty(), "--only is empty; give the name of one job");
    // ACDC polls Ctrl-C after each journaled decision, the runner between jobs.
    handle_interrupts(/*polled=*/true);
    const jobs::JobFile file = jobs::parse_job_file(a->file);
    jobs::RunReport report;
    if (a->summary) {
      MECHLAB_CHECK(a->shard.empty() && a->only.empty() && !a->force,
                    "--summary reads every job's results and runs nothing; give it without --shard, "
                    "--only and --force");
      report = jobs::summarize_job_file(file);
      std::printf("%s", jobs::summary_table(report).c_str());
    } else {
      jobs::refuse_parallel_launch([](const char* name) { return std::getenv(name); });
      // --shard, else a Slurm array task's own place in its array.
      std::optional<jobs::Shard> shard;
      if (!a->shard.empty()) {
        shard = jobs::parse_shard(a->shard, "--shard");
      } else {
        shard = jobs::shard_from_slurm([](const char* name) { return std::getenv(name); });
      }
      MECHLAB_CHECK(!shard || shard->count == 1 || a->only.empty(),
                    "--only and ", a->shard.empty() ? "the Slurm array's shard" : "--shard",
                    " both select jobs; give one of them");
      jobs::RunOptions opts = jobs::RunOptions().only(a->only).force(a->force).svg(!a->no_svg);
      if (shard) opts.shard_index(shard->index).shard_count(shard->count);
      report = jobs::run_job_file(file, opts, run_step, check_step);
    }
    bool any_circuit = false;
    for (const auto& r : report.runs) any_circuit = any_circuit || r.kept >= 0;
    if (any_circuit) std::printf("\nheads and MLPs of each circuit:\n");
    for (const auto& r : report.runs) {
      if (r.kept < 0) continue;  // no circuit: failed, or (--summary) missing
      std::string nodes;
      for (const auto& n : r.nodes) nodes += " " + n;
      char label[96];
      if (r.top_n > 0) {
        std::snprintf(label, sizeof label, "%s (top %lld)", r.job.c_str(), static_cast<long long>(r.top_n));
      } else {
        std::snprintf(label, sizeof label, "%s (tau %s)", r.job.c_str(), jobs::threshold_text(r.threshold).c_str());
      }
      std::printf("  %-28s%s\n", label, nodes.empty() ? " (none)" : nodes.c_str());
    }
    MECHLAB_CHECK(report.first_error.empty(), report.first_error);
  });
}

}  // namespace mechlab::cli
