#include "apps/jobs/job_runner.h"

#include "core/data/dataset.h"
#include "core/hf/model_loader.h"
#include "core/util/error.h"
#include "patching/discovery/circuit_output.h"
#include "patching/discovery/selection.h"
#include "patching/sweeps.h"

#include <ATen/ATen.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <set>

#ifndef MECHLAB_VERSION_STRING
#define MECHLAB_VERSION_STRING "unknown"
#endif
#ifndef MECHLAB_GIT_DESCRIBE
#define MECHLAB_GIT_DESCRIBE ""
#endif

namespace mechlab::jobs {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// EAP and EAP-IG (Syed et al. 2023; Hanna et al. 2024): score every edge by
// attribution once per job (noising: base = clean, source = corrupted, so a
// removed edge reads its corrupted contribution, as ACDC's ablation), then
// select by the run's τ or top_n.
JobResult run_edge_attribution(MethodContext& ctx) {
  const Job& job = *ctx.run.job;
  auto it = ctx.edge_scores.find(job.name);
  if (it == ctx.edge_scores.end()) {
    core::ProgressBar& bar = ctx.progress(1, "attribution");
    const patching::AttributionOptions opts =
        patching::AttributionOptions()
            .method(job.method == "eap-ig" ? patching::AttributionMethod::eap_ig
                                                : patching::AttributionMethod::attribution)
            .steps(job.steps)
            .direction(patching::Direction::noising);
    it = ctx.edge_scores.emplace(job.name, patching::edge_attribution(ctx.model, ctx.data, ctx.metric, opts))
             .first;
    bar.advance(1);
  } else {
    ctx.progress(1, "attribution").advance(1);  // reused from the job's first τ
  }
  const patching::EdgeScores& scores = it->second;
  discovery::SelectionOptions sel;
  if (job.top_n > 0) {
    sel.top_n(job.top_n);
  } else {
    sel.threshold(ctx.run.threshold);
  }
  JobResult r{discovery::select_edges(scores, sel)};
  r.full_metric = scores.config.value("clean_metric", NAN);
  json cfg = scores.config;
  cfg.erase("model_config");  // the model's hash is in versions
  r.details["attribution"] = cfg;
  return r;
}

std::string tau_text(const RunSummary& s) {
  char buf[32];
  if (s.top_n > 0) {
    std::snprintf(buf, sizeof buf, "top %lld", static_cast<long long>(s.top_n));
  } else {
    std::snprintf(buf, sizeof buf, "%g", s.threshold);
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

}  // namespace

core::ProgressBar& MethodContext::progress(int64_t total, const std::string& unit) {
  if (!bar) bar = std::make_unique<core::ProgressBar>(run.job->name, total, unit);
  return *bar;
}

const std::map<std::string, Method>& method_table() {
  static const std::map<std::string, Method> table = {
      {"eap", run_edge_attribution},
      {"eap-ig", run_edge_attribution},
  };
  return table;
}

RunReport run_job_file(const JobFile& all, const RunOptions& options, const StepExecutor& execute_step) {
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
  std::map<std::string, ModelFacts> facts = check_job_inputs(file, /*skip_missing=*/true);
  std::set<std::string> missing_datasets;
  for (const Job& j : file.jobs) {
    if (!fs::exists(j.dataset)) missing_datasets.insert(j.dataset);
  }

  // ---- steps
  for (const Step& s : file.steps) {
    if (fs::exists(s.out)) {
      std::printf("%s: skipped: %s exists\n", s.label.c_str(), s.out.c_str());
      continue;
    }
    std::printf("%s: writing %s\n", s.label.c_str(), s.out.c_str());
    if (fs::path(s.out).has_parent_path()) {
      std::error_code ec;
      fs::create_directories(fs::path(s.out).parent_path(), ec);
      MECHLAB_CHECK(!ec, s.label, ": cannot create the folder of '", s.out, "': ", ec.message());
    }
    std::fflush(stdout);
    try {
      execute_step(s.argv);
    } catch (const Error& e) {
      throw Error(str_cat(s.label, ": ", e.what()));
    }
    MECHLAB_CHECK(fs::exists(s.out), s.label, ": finished but wrote no '", s.out, "'");
    std::fflush(stdout);  // the command's own lines before the jobs' progress
  }
  // Datasets that the steps made are checked now, before any job runs.
  if (!missing_datasets.empty()) facts = check_job_inputs(file, /*skip_missing=*/false);

  // ---- jobs
  RunReport report;
  std::map<std::string, patching::EdgeScores> edge_scores;
  const Job* loaded_for = nullptr;
  std::unique_ptr<hooks::HookedTransformer> model;
  std::unique_ptr<patching::PatchingData> data;
  std::unique_ptr<patching::Metric> metric;
  for (size_t i = 0; i < runs.size(); ++i) {
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
      row.kept = doc["circuit"].value("n_kept", int64_t{-1});
      row.total = doc["circuit"].value("n_edges", int64_t{-1});
      const json& res = doc.value("results", json::object());
      row.circuit_metric = res.contains("circuit_metric") && res["circuit_metric"].is_number()
                               ? res["circuit_metric"].get<double>() : NAN;
      row.seconds = res.value("seconds", 0.0);
      row.nodes = res.value("nodes", std::vector<std::string>{});
      std::printf("%s: skipped: done (%s)\n", j.name.c_str(), r.out.c_str());
      report.runs.push_back(row);
      continue;
    }
    const auto t0 = std::chrono::steady_clock::now();
    try {
      if (loaded_for == nullptr || loaded_for->model != j.model || loaded_for->dataset != j.dataset ||
          loaded_for->device != j.device || loaded_for->examples != j.examples ||
          loaded_for->metric != j.metric) {
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
      const JournalContents old = read_journal(journal_path);
      JobResult result{discovery::Circuit::empty(patching::CircuitGraph(model->cfg()))};
      {
        JournalWriter journal(journal_path, old.valid_bytes);
        MethodContext ctx{r, *model, *data, *metric, old.entries, journal, edge_scores, nullptr};
        result = method_table().at(j.method)(ctx);
        if (ctx.bar) ctx.bar->finish();
        journal.close();
      }
      row.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      row.kept = result.circuit.edge_count();
      row.total = static_cast<int64_t>(result.circuit.edges().size());
      row.circuit_metric = result.circuit_metric;
      row.nodes = result.circuit.nodes();

      discovery::CircuitRecord rec{result.circuit};
      rec.trace = result.trace;
      rec.config = r.config;
      rec.versions = {{"mechlab", MECHLAB_VERSION_STRING},
                      {"git", MECHLAB_GIT_DESCRIBE},
                      {"model", j.model},
                      {"model_name", model->cfg().name},
                      {"model_config_hash", facts.at(j.model).hash},
                      {"dataset", j.dataset},
                      {"method", j.method},
                      {"metric", j.metric},
                      {"ablation", j.ablation}};
      if (j.top_n > 0) {
        rec.versions["top_n"] = j.top_n;
      } else {
        rec.versions["threshold"] = r.threshold;
      }
      auto num = [](double v) { return std::isnan(v) ? json(nullptr) : json(v); };
      rec.results = {{"full_metric", num(result.full_metric)},
                     {"circuit_metric", num(result.circuit_metric)},
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
  std::printf("\n%s", summary_table(report).c_str());
  std::fflush(stdout);
  return report;
}

std::string summary_table(const RunReport& report) {
  std::string out;
  char line[512];
  std::snprintf(line, sizeof line, "%-20s %-8s %-10s %-15s %-14s %8s  %s\n", "job", "method", "tau",
                "edges kept", "circuit metric", "seconds", "status");
  out += line;
  for (const RunSummary& s : report.runs) {
    const std::string edges = s.kept < 0 ? "-" : std::to_string(s.kept) + " / " + std::to_string(s.total);
    char metric[32];
    if (std::isnan(s.circuit_metric)) {
      std::snprintf(metric, sizeof metric, "n/a");
    } else {
      std::snprintf(metric, sizeof metric, "%.4f", s.circuit_metric);
    }
    std::string status = s.status;
    if (status.size() > 80) status = status.substr(0, 77) + "...";
    std::snprintf(line, sizeof line, "%-20s %-8s %-10s %-15s %-14s %8.1f  %s\n", s.job.c_str(), s.method.c_str(),
                  tau_text(s).c_str(), edges.c_str(), metric, s.seconds, status.c_str());
    out += line;
  }
  return out;
}

}  // namespace mechlab::jobs
