#include "apps/jobs/job_runner.h"

#include "core/data/dataset.h"
#include "core/hf/model_loader.h"
#include "core/util/error.h"
#include "core/util/interrupt.h"
#include "core/util/version.h"
#include "patching/discovery/acdc.h"
#include "patching/discovery/circuit_output.h"
#include "patching/discovery/circuit_runner.h"
#include "patching/discovery/evaluation.h"
#include "patching/discovery/selection.h"
#include "patching/sweeps.h"

#include <ATen/ATen.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

namespace mechlab::jobs {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// EAP and EAP-IG (Syed et al. 2023; Hanna et al. 2024): score every edge by
// attribution once per job (noising: base = clean, source = corrupted, so a
// removed edge reads its corrupted contribution, as ACDC's ablation), then
// select by the run's τ or top_n.
// The job's edge scores, attributed once per job (a τ sweep reuses them).
// EAP-IG for eap-ig, and for eap-acdc when the job gives `steps`.
const patching::EdgeScores& job_edge_scores(MethodContext& ctx, bool with_bar) {
  const Job& job = *ctx.run.job;
  const bool ig = job.method == "eap-ig" || (job.method == "eap-acdc" && job.steps_given);
  auto it = ctx.edge_scores.find(job.name);
  if (it == ctx.edge_scores.end()) {
    const patching::AttributionOptions opts =
        patching::AttributionOptions()
            .method(ig ? patching::AttributionMethod::eap_ig : patching::AttributionMethod::attribution)
            .steps(job.steps)
            .direction(patching::Direction::noising)
            .split_positions(job.split_positions);
    core::ProgressBar* bar = with_bar ? &ctx.progress(1, "attribution") : nullptr;
    it = ctx.edge_scores.emplace(job.name, patching::edge_attribution(ctx.model, ctx.data, ctx.metric, opts))
             .first;
    if (bar) bar->advance(1);
  } else if (with_bar) {
    ctx.progress(1, "attribution").advance(1);  // reused from the job's first τ
  }
  return it->second;
}

json attribution_details(const patching::EdgeScores& scores) {
  json cfg = scores.config;
  cfg.erase("model_config");  // the model's hash is in versions
  return cfg;
}

JobResult run_edge_attribution(MethodContext& ctx) {
  const Job& job = *ctx.run.job;
  const patching::EdgeScores& scores = job_edge_scores(ctx, true);
  discovery::SelectionOptions sel;
  if (job.top_n > 0) {
    sel.top_n(job.top_n);
  } else {
    sel.threshold(ctx.run.threshold);
  }
  JobResult r{discovery::select_edges(scores, sel)};
  r.full_metric = scores.config.value("clean_metric", NAN);
  r.details["attribution"] = attribution_details(scores);
  r.roc_scores = discovery::scored_circuit(scores);
  return r;
}

// A journal line <-> an ACDC step (NaN as null).
json step_json(const discovery::AcdcStep& st) {
  auto num = [](double v) { return std::isnan(v) ? json(nullptr) : json(v); };
  return {{"edge", st.edge}, {"kept", st.kept}, {"tried", st.tried}, {"score", num(st.score)},
          {"metric", num(st.metric)}};
}

discovery::AcdcStep step_of(const json& j, size_t line, const std::string& path) {
  auto number = [](const json& v) { return v.is_number() ? v.get<double>() : NAN; };
  MECHLAB_CHECK(j.contains("edge") && j["edge"].is_string() && j.contains("kept") && j["kept"].is_boolean() &&
                    j.contains("tried") && j["tried"].is_boolean() && j.contains("score") &&
                    j.contains("metric"),
                "the journal '", path, "' line ", line, " is not an ACDC step (edge, kept, tried, score, metric); ",
                "delete the journal to start the job afresh");
  discovery::AcdcStep st;
  st.edge = j["edge"].get<std::string>();
  st.kept = j["kept"].get<bool>();
  st.tried = j["tried"].get<bool>();
  st.score = number(j["score"]);
  st.metric = number(j["metric"]);
  return st;
}

// ACDC (Conmy et al. 2023) from `start` (nullopt = the full model). Each
// decision is journaled (fsynced) before the next one, so a kill loses at
// most the trials in flight; Ctrl-C is honoured right after a journaled
// decision, a point from which the rerun resumes.
JobResult run_acdc_from(MethodContext& ctx, std::optional<discovery::Circuit> start) {
  const Job& job = *ctx.run.job;
  const std::string journal_path = (fs::path(ctx.run.out) / "journal.jsonl").string();
  std::vector<discovery::AcdcStep> resume;
  // The journal's line 1 is the run's config; its steps start at line 2.
  for (size_t i = 0; i < ctx.resume.size(); ++i) resume.push_back(step_of(ctx.resume[i], i + 2, journal_path));
  if (!resume.empty()) {
    std::printf("%s: resuming after the %zu decided edges in %s\n", job.name.c_str(), resume.size(),
                journal_path.c_str());
    std::fflush(stdout);
  }
  discovery::AcdcOptions opts;
  opts.threshold(ctx.run.threshold)
      .abs_value(job.abs_value)
      .ablation(discovery::parse_ablation(job.ablation))
      .indices_mode(job.indices_mode)
      .max_batch(job.max_batch)
      .split_positions(job.split_positions)
      .start(std::move(start));
  // ACDC keeps an edge when removing it raises the metric by tau: a metric
  // that is higher when the circuit is better is minimised negated, as the
  // reference's IOI runs minimise -logit_diff. The trace holds that metric.
  const bool negate = ctx.metric.higher_is_better() && !job.abs_value;
  const patching::Metric minimised = negate ? ctx.metric.negated() : ctx.metric;
  int64_t first_new = -1;
  const discovery::AcdcObserver observer = [&](const discovery::AcdcStep& st, int64_t decided, int64_t total) {
    ctx.journal.append(step_json(st));
    if (first_new < 0) first_new = decided;
    ctx.progress(total, "edges", decided - 1).advance(1);
    if (core::interrupt_requested()) {
      if (ctx.bar) ctx.bar->finish();
      ctx.journal.sync();
      throw Interrupted(str_cat("job '", job.name, "': interrupted; the journal ", journal_path, " keeps ", decided,
                                " decided edges of ", total, "; rerun the same command to resume from there"));
    }
  };
  const discovery::AcdcResult a = ctx.runner != nullptr
                                      ? discovery::acdc(*ctx.runner, minimised, opts, resume, observer)
                                      : discovery::acdc(ctx.model, ctx.data, minimised, opts, resume, observer);
  JobResult r{a.circuit};
  for (const discovery::AcdcStep& st : a.steps) r.trace.push_back(step_json(st));
  r.full_metric = negate ? -a.full_metric : a.full_metric;
  r.circuit_metric = negate ? -a.final_metric : a.final_metric;
  r.details["acdc"] = {{"minimised_metric", minimised.name()},
                       {"forwards", a.forwards},
                       {"trials", a.trials},
                       {"resumed_steps", static_cast<int64_t>(resume.size())},
                       {"first_new_step", first_new},
                       {"final_metric", a.final_metric},
                       {"seconds", a.seconds}};
  // ROC ranks every edge; one ACDC never tried (removed unused, or by the
  // EAP start) changed nothing when removed: score 0.
  discovery::Circuit roc = a.circuit;
  for (const discovery::CircuitEdge& e : roc.edges()) {
    if (std::isnan(roc.score(e))) roc.set_score(e, 0.0);
  }
  r.roc_scores = std::move(roc);
  return r;
}

JobResult run_acdc_method(MethodContext& ctx) { return run_acdc_from(ctx, std::nullopt); }

// The hybrid: EAP (EAP-IG with `steps`) scores, keep by attribution_threshold
// or attribution_top_n (selection.h), then ACDC tries only the survivors.
JobResult run_eap_acdc(MethodContext& ctx) {
  const Job& job = *ctx.run.job;
  const patching::EdgeScores& scores = job_edge_scores(ctx, false);
  discovery::SelectionOptions sel;
  if (job.attribution_top_n > 0) {
    sel.top_n(job.attribution_top_n);
  } else {
    sel.threshold(job.attribution_threshold);
  }
  discovery::Circuit start = discovery::select_edges(scores, sel);
  const int64_t survivors = start.edge_count();
  JobResult r = run_acdc_from(ctx, std::move(start));
  r.details["attribution"] = attribution_details(scores);
  r.details["attribution_kept"] = survivors;
  return r;
}

// The reference edges of a job: a circuit.json (its kept edges) or a text
// file of edge names, one a line ('#' comments and blank lines skipped).
struct Reference {
  std::vector<std::string> names;
  std::optional<discovery::Circuit> circuit;
};

Reference read_reference(const Job& j, const patching::CircuitGraph& graph, int64_t n_positions) {
  Reference ref;
  const std::string who = "job '" + j.name + "': field 'reference_edges': ";
  std::ifstream in(j.reference_edges);
  MECHLAB_CHECK(in, who, "cannot read '", j.reference_edges, "'");
  std::string first;
  in >> std::ws;
  if (in.peek() == '{') {
    try {
      const json doc = discovery::read_circuit_document(j.reference_edges);
      ref.circuit = discovery::Circuit::from_json(graph, doc.value("circuit", json::object()));
    } catch (const Error& e) {
      throw Error(str_cat(who, e.what()));
    }
    return ref;
  }
  const discovery::Circuit probe = discovery::Circuit::full(graph, n_positions);
  int line_no = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    const size_t a = line.find_first_not_of(" \t\r"), b = line.find_last_not_of(" \t\r");
    if (a == std::string::npos || line[a] == '#') continue;
    line = line.substr(a, b - a + 1);
    try {
      probe.parse_edge(line);
    } catch (const Error& e) {
      throw Error(str_cat(who, "line ", line_no, ": ", e.what()));
    }
    ref.names.push_back(line);
  }
  MECHLAB_CHECK(!ref.names.empty(), who, "'", j.reference_edges, "' names no edge; give edge names, one a line");
  return ref;
}

bool names_a_head_input(const discovery::Circuit& c, const std::vector<std::string>& names) {
  for (const std::string& n : names) {
    if (c.parse_edge(n).kind == discovery::CircuitEdge::Kind::head_input) return true;
  }
  return false;
}

std::string tau_text(const RunSummary& s) {
  char buf[32];
  if (s.top_n > 0) {
    std::snprintf(buf, sizeof buf, "top %lld", static_cast<long long>(s.top_n));
  } else {
    return threshold_text(s.threshold);
  }
  return buf;
}

// Fields of `a` and `b` (objects) that differ, for messages.
std::string differing(const json& a, const json& b) {
  std::string out;
  std::set<std::string> keys;
  for (const auto& [k, v] : a.items()) keys.insert(k);
  for (const auto& [k, v] : b.items()) keys.insert(k);
  for (const auto& k : keys) {
    if (!a.contains(k) || !b.contains(k) || a[k] != b[k]) out += (out.empty() ? "" : ", ") + k;
  }
  return out;
}


// A finished run's summary row, read back from its circuit.json.
void fill_from_record(RunSummary& row, const json& doc) {
  row.kept = doc["circuit"].value("n_kept", int64_t{-1});
  row.total = doc["circuit"].value("n_edges", int64_t{-1});
  const json& res = doc.value("results", json::object());
  row.circuit_metric = res.contains("circuit_metric") && res["circuit_metric"].is_number()
                           ? res["circuit_metric"].get<double>() : NAN;
  row.seconds = res.value("seconds", 0.0);
  for (auto [key, field] : {std::pair<const char*, double*>{"faithfulness", &row.faithfulness},
                            {"reference_auc", &row.auc}}) {
    if (res.contains(key) && res[key].is_number()) *field = res[key].get<double>();
  }
  row.nodes = res.value("nodes", std::vector<std::string>{});
}

// The steps' lock: <job file's folder>/.<job file's name>.lock, held
// (flock, exclusive) while this process runs the steps, so that the shards
// of an array, started together, run each step once. flock is released by
// the kernel when the holder dies, so a killed shard never blocks the rest.
// The file stays (removing it would race with a waiting shard).
class StepsLock {
 public:
  explicit StepsLock(const JobFile& file)
      : path_((fs::path(file.dir) / ("." + fs::path(file.path).filename().string() + ".lock")).string()) {
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    MECHLAB_CHECK(fd_ >= 0, "cannot open the steps' lock file '", path_, "': ", std::strerror(errno),
                  "; the job file's folder must be writable while steps remain to run");
    bool said = false;
    while (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      if (errno != EWOULDBLOCK && errno != EINTR) {
        const int err = errno;
        ::close(fd_);
        throw Error(str_cat("cannot lock '", path_, "': ", std::strerror(err)));
      }
      if (!said) {
        std::printf("steps: another run holds %s; waiting for it\n", path_.c_str());
        std::fflush(stdout);
        said = true;
      }
      if (core::interrupt_requested()) {
        ::close(fd_);
        throw Interrupted("interrupted while waiting for the steps' lock; nothing of this run was written");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  }
  ~StepsLock() {
    if (fd_ >= 0) ::close(fd_);  // closing releases the lock
  }
  StepsLock(const StepsLock&) = delete;
  StepsLock& operator=(const StepsLock&) = delete;

 private:
  std::string path_;
  int fd_ = -1;
};
}  // namespace

core::ProgressBar& MethodContext::progress(int64_t total, const std::string& unit, int64_t start) {
  if (!bar) bar = std::make_unique<core::ProgressBar>(run.job->name, total, unit, start);
  return *bar;
}

const std::map<std::string, Method>& method_table() {
  static const std::map<std::string, Method> table = {
      {"acdc", run_acdc_method},
      {"eap", run_edge_attribution},
      {"eap-acdc", run_eap_acdc},
      {"eap-ig", run_edge_attribution},
  };
  return table;
}

RunReport run_job_file(const JobFile& all, const RunOptions& options, const StepExecutor& execute_step,
                       const StepExecutor& check_step) {
  // The jobs asked for.
  JobFile file = all;
  if (!options.only().empty()) {
    std::vector<std::string> names;
    for (const Job& j : all.jobs) names.push_back(j.name);
    file.jobs.clear();
    for (const Job& j : all.jobs) {
      if (j.name == options.only()) file.jobs.push_back(j);
    }
    const std::string near = nearest_name(options.only(), names);
    MECHLAB_CHECK(!file.jobs.empty(), "no job named '", options.only(), "' in ", all.path,
                  near.empty() ? "" : "; did you mean '" + near + "'?");
  }
  // Job arrays: the jobs of this shard (a sweep's runs stay together).
  MECHLAB_CHECK(options.shard_count() >= 1 && options.shard_index() >= 0 &&
                    options.shard_index() < options.shard_count(),
                "the shard_index option is ", options.shard_index(), " and shard_count is ",
                options.shard_count(), "; give shard_count >= 1 and shard_index 0 to shard_count - 1");
  if (options.shard_count() > 1) {
    MECHLAB_CHECK(options.only().empty(), "the only option and a shard both select jobs; give one of them");
    file.jobs.clear();
    std::string names;
    for (size_t k = 0; k < all.jobs.size(); ++k) {
      if (static_cast<int64_t>(k) % options.shard_count() != options.shard_index()) continue;
      file.jobs.push_back(all.jobs[k]);
      names += (names.empty() ? "" : ", ") + all.jobs[k].name;
    }
    std::printf("shard %lld/%lld: %s (of %zu jobs)\n", static_cast<long long>(options.shard_index()),
                static_cast<long long>(options.shard_count()), names.empty() ? "no jobs" : names.c_str(),
                all.jobs.size());
    std::fflush(stdout);
    // A shard without jobs has nothing to do: the steps are for the jobs.
    if (file.jobs.empty()) return RunReport{};
  }
  const std::vector<JobRun> runs = file.runs();

  // ---- every refusal before any work
  for (const Job& j : file.jobs) {
    std::string available;
    for (const auto& [name, fn] : method_table()) available += (available.empty() ? "" : ", ") + name;
    MECHLAB_CHECK(method_table().count(j.method), "job '", j.name, "': field 'method' is '", j.method,
                  "', which this build cannot run yet (available: ", available, ")");
    MECHLAB_CHECK(j.device != "cuda" || at::hasCUDA(), "job '", j.name,
                  "': field 'device' is cuda but no CUDA device is available; use device: cpu");
  }
  std::vector<char> done(runs.size(), 0);
  for (size_t i = 0; i < runs.size(); ++i) {
    const JobRun& r = runs[i];
    const std::string json_path = (fs::path(r.out) / "circuit.json").string();
    if (!fs::exists(json_path)) continue;
    json doc;
    try {
      doc = discovery::read_circuit_document(json_path);
    } catch (const Error& e) {
      throw Error(str_cat("job '", r.job->name, "': field 'out': ", e.what(), "; it is never replaced"));
    }
    const json old = doc.value("config", json::object());
    if (old == r.config) {
      done[i] = 1;
      continue;
    }
    MECHLAB_CHECK(options.force(), "job '", r.job->name, "': field 'out': ", json_path,
                  " holds a circuit made with other settings (", differing(old, r.config),
                  " differ); delete it, or replace it with the force option");
  }
  // An interrupted run's journal resumes only the run it was made for: its
  // first line records that run's config. A journal means a run under way
  // (a forced rerun that was interrupted, too): it resumes rather than skips.
  std::vector<char> discard_journal(runs.size(), 0);
  for (size_t i = 0; i < runs.size(); ++i) {
    const JobRun& r = runs[i];
    const std::string journal_path = (fs::path(r.out) / "journal.jsonl").string();
    const JournalContents jc = read_journal(journal_path);
    if (jc.entries.empty()) continue;
    const json made_with = jc.entries[0].value("config", json());
    if (options.force() || (jc.entries.size() == 1 && !made_with.is_null())) {
      discard_journal[i] = 1;  // forced to start afresh, or nothing decided yet
      continue;
    }
    done[i] = 0;
    if (made_with == r.config) continue;
    throw Error(made_with.is_null()
                    ? str_cat("job '", r.job->name, "': ", journal_path, " records no settings (an older mechlab ",
                              "wrote it), so it cannot be resumed safely; delete it, or start afresh with the ",
                              "force option")
                    : str_cat("job '", r.job->name, "': ", journal_path, " is an interrupted run made with other ",
                              "settings (", differing(made_with, r.config), " differ); rerun with those settings ",
                              "to resume it, or start afresh with the force option (or delete the file)"));
  }
  InputFacts facts = check_job_inputs(file, /*skip_missing=*/true);
  // A finished circuit made from other weights or prompts (a checkpoint
  // retrained in place, a dataset made again) is stale, as one made with
  // other settings. Circuits of older mechlabs record no hashes: not compared.
  std::vector<char> inputs_checked(runs.size(), 0);
  auto check_inputs_unchanged = [&](size_t i) {
    const JobRun& r = runs[i];
    const auto data = facts.data_hash.find(input_key(*r.job));
    if (!done[i] || inputs_checked[i] || data == facts.data_hash.end()) return;
    inputs_checked[i] = 1;
    const std::string json_path = (fs::path(r.out) / "circuit.json").string();
    const json versions = discovery::read_circuit_document(json_path).value("versions", json::object());
    std::string changed;
    if (versions.contains("model_weights_hash") &&
        versions["model_weights_hash"] != facts.models.at(r.job->model).weights_hash) {
      changed = "the model's weights";
    }
    if (versions.contains("data_hash") && versions["data_hash"] != data->second) {
      changed += (changed.empty() ? "" : " and ") + std::string("the dataset's prompt pairs");
    }
    if (changed.empty()) return;
    MECHLAB_CHECK(options.force(), "job '", r.job->name, "': field 'out': ", json_path,
                  " holds a circuit made from other inputs (", changed, " differ); delete it, or replace it ",
                  "with the force option");
    done[i] = 0;
  };
  for (size_t i = 0; i < runs.size(); ++i) check_inputs_unchanged(i);
  // Reference edges name edges of their job's model.
  for (const Job& j : file.jobs) {
    if (j.reference_edges.empty()) continue;
    // A position-split job's edges carry positions: the dataset's length
    // (a dataset a step makes is checked when the job runs).
    int64_t n_positions = 0;
    if (j.split_positions) {
      if (!fs::exists(j.dataset)) continue;
      n_positions = patching::PatchingData::from_dataset(core::load_dataset(j.dataset), j.examples).seq_len();
    }
    read_reference(j, patching::CircuitGraph(facts.models.at(j.model).config), n_positions);
  }
  std::set<std::string> missing_datasets;
  for (const Job& j : file.jobs) {
    if (!fs::exists(j.dataset)) missing_datasets.insert(j.dataset);
  }

  // Each step that will run parses, so that a bad value in step 2 stops
  // the command before step 1 writes anything.
  for (const Step& s : file.steps) {
    if (!check_step || step_done(s)) continue;
    try {
      check_step(step_command(s));
    } catch (const Error& e) {
      throw Error(str_cat(s.label, ": ", e.what()));
    }
  }

  // ---- steps (under the lock only when one remains to run: steps that are
  // all done need no writable folder)
  std::unique_ptr<StepsLock> steps_lock;
  for (const Step& s : file.steps) {
    if (!steps_lock && !step_done(s)) steps_lock = std::make_unique<StepsLock>(file);
  }
  for (const Step& s : file.steps) {
    if (step_done(s)) {
      std::printf("%s: skipped: %s exists\n", s.label.c_str(), s.done.c_str());
      continue;
    }
    // An SAE run killed part-way left its checkpoint: step_command resumes it.
    const std::vector<std::string> argv = step_command(s);
    const bool resume = argv.size() > s.argv.size();
    std::printf("%s: %s %s\n", s.label.c_str(), resume ? "resuming" : "writing", s.out.c_str());
    if (fs::path(s.out).has_parent_path()) {
      std::error_code ec;
      fs::create_directories(fs::path(s.out).parent_path(), ec);
      MECHLAB_CHECK(!ec, s.label, ": cannot create the folder of '", s.out, "': ", ec.message());
    }
    std::fflush(stdout);
    try {
      execute_step(argv);
    } catch (const Error& e) {
      throw Error(str_cat(s.label, ": ", e.what()));
    }
    MECHLAB_CHECK(fs::exists(s.done), s.label, ": finished but wrote no '", s.done, "'");
    std::fflush(stdout);  // the command's own lines before the jobs' progress
  }
  steps_lock.reset();
  // Datasets that the steps made are checked now, before any job runs.
  if (!missing_datasets.empty()) {
    facts = check_job_inputs(file, /*skip_missing=*/false, facts);
    for (size_t i = 0; i < runs.size(); ++i) check_inputs_unchanged(i);
  }

  // ---- jobs
  RunReport report;
  std::map<std::string, patching::EdgeScores> edge_scores;
  const Job* loaded_for = nullptr;
  std::unique_ptr<hooks::HookedTransformer> model;
  std::unique_ptr<patching::PatchingData> data;
  std::unique_ptr<patching::Metric> metric;
  // The evaluation's runner (its clean and ablated runs) serves every τ of a job.
  std::unique_ptr<discovery::CircuitRunner> evaluator;
  std::string evaluator_for;
  for (size_t i = 0; i < runs.size(); ++i) {
    if (core::interrupt_requested()) {
      throw Interrupted("interrupted between jobs; finished jobs are kept and skipped on a rerun");
    }
    const JobRun& r = runs[i];
    const Job& j = *r.job;
    RunSummary row;
    row.job = j.name;
    row.method = j.method;
    row.out = r.out;
    row.threshold = r.threshold;
    row.top_n = j.top_n;
    if (done[i] && !options.force()) {
      const json doc = discovery::read_circuit_document((fs::path(r.out) / "circuit.json").string());
      row.status = "skipped: done";
      fill_from_record(row, doc);
      std::printf("%s: skipped: done (%s)\n", j.name.c_str(), r.out.c_str());
      report.runs.push_back(row);
      continue;
    }
    const auto t0 = std::chrono::steady_clock::now();
    try {
      if (loaded_for == nullptr || loaded_for->model != j.model || loaded_for->dataset != j.dataset ||
          loaded_for->device != j.device || loaded_for->examples != j.examples ||
          loaded_for->metric != j.metric) {
        evaluator.reset();
        metric.reset();
        data.reset();
        model.reset();
        core::Transformer base = core::load_model(j.model);
        base.to(at::Device(j.device == "cuda" ? at::kCUDA : at::kCPU));
        model = std::make_unique<hooks::HookedTransformer>(std::move(base));
        data = std::make_unique<patching::PatchingData>(
            patching::PatchingData::from_dataset(core::load_dataset(j.dataset), j.examples));
        data->validate(model->cfg());
        metric = std::make_unique<patching::Metric>(patching::make_metric(
            patching::MetricOptions().name(j.metric), *model, *data, patching::Direction::noising));
        loaded_for = &j;
      }
      std::error_code ec;
      fs::create_directories(r.out, ec);
      MECHLAB_CHECK(!ec, "cannot create the output folder '", r.out, "': ", ec.message());
      const std::string journal_path = (fs::path(r.out) / "journal.jsonl").string();
      // The journal: its config line, then the decided steps of an
      // interrupted run (checked to be this run's before any work).
      const JournalContents old = discard_journal[i] ? JournalContents{} : read_journal(journal_path);
      const std::vector<json> resume(old.entries.empty() ? old.entries.end() : old.entries.begin() + 1,
                                     old.entries.end());
      // One circuit runner per job and ablation: ACDC runs every τ of a sweep
      // on it (the clean and ablated runs made once), and it evaluates the circuits.
      const std::string eval_key = j.name + "\n" + j.ablation;
      if (!evaluator || evaluator_for != eval_key) {
        evaluator.reset();
        evaluator = std::make_unique<discovery::CircuitRunner>(*model, *data, discovery::parse_ablation(j.ablation));
        evaluator_for = eval_key;
      }
      JobResult result{discovery::Circuit::empty(patching::CircuitGraph(model->cfg()))};
      {
        JournalWriter journal(journal_path, old.valid_bytes);
        if (old.entries.empty()) journal.append({{"config", r.config}});
        MethodContext ctx{r, *model, *data, *metric, resume, journal, edge_scores, nullptr, evaluator.get()};
        result = method_table().at(j.method)(ctx);
        if (ctx.bar) ctx.bar->finish();
        journal.close();
      }
      // Evaluate the circuit whatever found it: the metric of the full model,
      // the empty circuit and the circuit, all in one call of the runner.
      const patching::CircuitGraph& graph = result.circuit.graph();
      const int64_t n_positions = result.circuit.n_positions();
      if (n_positions > 0) {
        // Token labels for the picture and circuit.json's position_labels.
        result.circuit.set_position_labels(patching::position_labels(core::load_dataset(j.dataset), j.examples));
      }
      const std::vector<double> m = evaluator->metrics(
          *metric, {discovery::Circuit::full(graph, n_positions), discovery::Circuit::empty(graph, n_positions),
                    result.circuit});
      json evaluation = {{"full_metric", m[0]}, {"empty_metric", m[1]}, {"circuit_metric", m[2]}};
      // f is undefined when the empty circuit scores as the full model.
      row.faithfulness = m[0] == m[1] ? NAN : discovery::faithfulness(m[2], m[0], m[1]);
      if (!j.reference_edges.empty()) {
        const Reference ref = read_reference(j, graph, result.circuit.n_positions());
        discovery::Circuit scored = result.roc_scores ? *result.roc_scores : result.circuit;
        // A list of names with no head-input edge ("a1.h2<k> -> a1.h2") cannot
        // name one as a positive, and such an edge carries the same signal as
        // the residual edges into its input: ranking it would count every found
        // input twice, once as a false positive. Then only residual edges are
        // ranked (as the induction ground-truth test does); a reference circuit
        // has kept edges of both kinds, and both are ranked.
        if (!ref.circuit && !names_a_head_input(scored, ref.names)) {
          for (const discovery::CircuitEdge& e : scored.edges()) {
            if (e.kind == discovery::CircuitEdge::Kind::head_input) scored.set_score(e, NAN);
          }
        }
        try {
          const discovery::RocCurve roc =
              ref.circuit ? discovery::roc_curve(scored, *ref.circuit) : discovery::roc_curve(scored, ref.names);
          row.auc = roc.auc;
          evaluation["reference_positives"] = roc.positives;
          evaluation["reference_negatives"] = roc.negatives;
        } catch (const Error& e) {
          throw Error(str_cat("field 'reference_edges': ", e.what()));
        }
      }
      if (!std::isnan(result.circuit_metric)) evaluation["method_circuit_metric"] = result.circuit_metric;
      if (!std::isnan(result.full_metric)) evaluation["method_full_metric"] = result.full_metric;
      row.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      row.kept = result.circuit.edge_count();
      row.total = static_cast<int64_t>(result.circuit.edges().size());
      row.circuit_metric = m[2];
      row.nodes = result.circuit.nodes();

      discovery::CircuitRecord rec{result.circuit};
      rec.trace = result.trace;
      rec.config = r.config;
      rec.versions = {{"mechlab", mechlab::version()},
                      {"git", mechlab::git_describe()},
                      {"model", j.model},
                      {"model_name", model->cfg().name},
                      {"model_config_hash", facts.models.at(j.model).config.hash()},
                      {"model_weights_hash", facts.models.at(j.model).weights_hash},
                      {"dataset", j.dataset},
                      {"data_hash", facts.data_hash.at(input_key(j))},
                      {"method", j.method},
                      {"metric", j.metric},
                      {"ablation", j.ablation}};
      if (j.top_n > 0) {
        rec.versions["top_n"] = j.top_n;
      } else {
        rec.versions["threshold"] = r.threshold;
      }
      auto num = [](double v) { return std::isnan(v) ? json(nullptr) : json(v); };
      rec.results = {{"full_metric", num(m[0])},
                     {"empty_metric", num(m[1])},
                     {"circuit_metric", num(m[2])},
                     {"faithfulness", num(row.faithfulness)},
                     {"reference_auc", num(row.auc)},
                     {"evaluation", evaluation},
                     {"edges_kept", row.kept},
                     {"edges_total", row.total},
                     {"nodes", row.nodes},
                     {"seconds", row.seconds},
                     {"details", result.details}};
      discovery::CircuitOutputOptions out_opts;
      out_opts.svg(options.svg()).dot_program(options.dot_program());
      out_opts.title(j.name + " (" + j.method + ", " + tau_text(row) + ")");
      const discovery::CircuitFiles files = discovery::write_circuit_outputs(r.out, rec, out_opts);
      fs::remove(journal_path, ec);
      MECHLAB_CHECK(!ec, "cannot remove the journal '", journal_path, "': ", ec.message());
      // The data files are whole, so the job is done; a missing picture is
      // still this run's error.
      MECHLAB_CHECK(files.svg_error.empty(), files.svg_error);
      row.status = "done";
      std::printf("%s: %lld of %lld edges kept -> %s\n", j.name.c_str(), static_cast<long long>(row.kept),
                  static_cast<long long>(row.total), r.out.c_str());
    } catch (const Interrupted&) {
      throw;  // Ctrl-C: the journal is whole; the message says how to resume
    } catch (const std::exception& e) {
      // mechlab::Error, or LibTorch's (whose first line is the message).
      std::string what = e.what();
      what = what.substr(0, what.find('\n'));
      row.status = "failed: " + what;
      if (row.seconds == 0) {
        row.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      }
      if (report.first_error.empty()) report.first_error = str_cat("job '", j.name, "': ", what);
      std::printf("%s: failed: %s\n", j.name.c_str(), what.c_str());
    }
    std::fflush(stdout);
    report.runs.push_back(row);
  }
  if (!report.runs.empty()) std::printf("\n%s", summary_table(report).c_str());  // a file of steps only: none
  std::fflush(stdout);
  return report;
}

RunReport summarize_job_file(const JobFile& file) {
  RunReport report;
  std::string not_done;
  int64_t n_not_done = 0;
  for (const JobRun& r : file.runs()) {
    RunSummary row;
    row.job = r.job->name;
    row.method = r.job->method;
    row.out = r.out;
    row.threshold = r.threshold;
    row.top_n = r.job->top_n;
    const std::string json_path = (fs::path(r.out) / "circuit.json").string();
    if (!fs::exists(json_path)) {
      // A journal there: a run began and was stopped; a rerun resumes it.
      row.status = fs::exists(fs::path(r.out) / "journal.jsonl") ? "interrupted (a rerun resumes its journal)"
                                                                 : "missing";
    } else {
      try {
        const json doc = discovery::read_circuit_document(json_path);
        const json old = doc.value("config", json::object());
        if (old == r.config) {
          row.status = "done";
          fill_from_record(row, doc);
        } else {
          row.status = "stale: made with other settings (" + differing(old, r.config) + " differ)";
        }
      } catch (const Error& e) {
        row.status = str_cat("failed: ", e.what());
      }
    }
    if (row.status != "done") {
      ++n_not_done;
      if (n_not_done <= 3) {
        not_done += str_cat(not_done.empty() ? "" : ", ", "job '", row.job, "' (", tau_text(row), "): ",
                            row.status.substr(0, row.status.find(" (")));
      }
    }
    report.runs.push_back(row);
  }
  if (n_not_done > 0) {
    report.first_error = str_cat(n_not_done, " of ", report.runs.size(), " runs of ", file.path,
                                 " have no current circuit: ", not_done, n_not_done > 3 ? ", ..." : "",
                                 "; run (or rerun) their shards");
  }
  return report;
}

std::string summary_table(const RunReport& report) {
  std::string out;
  if (report.runs.empty()) return out;  // a job file of steps only
  char line[512];
  std::snprintf(line, sizeof line, "%-20s %-8s %-10s %-15s %-14s %-12s %-8s %8s  %s\n", "job", "method", "tau",
                "edges kept", "circuit metric", "faithfulness", "ref AUC", "seconds", "status");
  out += line;
  for (const RunSummary& s : report.runs) {
    const std::string edges = s.kept < 0 ? "-" : std::to_string(s.kept) + " / " + std::to_string(s.total);
    char metric[32];
    if (std::isnan(s.circuit_metric)) {
      std::snprintf(metric, sizeof metric, "n/a");
    } else {
      std::snprintf(metric, sizeof metric, "%.4f", s.circuit_metric);
    }
    char faith[32] = "n/a", auc[32] = "-";
    // + 0.0: a faithfulness of -1e-5 prints as 0.000, not -0.000.
    if (!std::isnan(s.faithfulness)) {
      std::snprintf(faith, sizeof faith, "%.3f", std::fabs(s.faithfulness) < 5e-4 ? 0.0 : s.faithfulness);
    }
    if (!std::isnan(s.auc)) std::snprintf(auc, sizeof auc, "%.3f", s.auc);
    std::string status = s.status;
    if (status.size() > 80) status = status.substr(0, 77) + "...";
    std::snprintf(line, sizeof line, "%-20s %-8s %-10s %-15s %-14s %-12s %-8s %8.1f  %s\n", s.job.c_str(),
                  s.method.c_str(), tau_text(s).c_str(), edges.c_str(), metric, faith, auc, s.seconds,
                  status.c_str());
    out += line;
  }
  return out;
}

}  // namespace mechlab::jobs
