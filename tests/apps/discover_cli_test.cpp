// `mechlab discover` end to end: a two-job file (EAP and EAP-IG on a tiny
// model, with a dataset and a cache step) writes each circuit's JSON, HDF5, DOT and SVG;
// the kept edges equal the library's selection computed directly; a rerun
// skips the steps and both jobs, --force reruns them; refusals and a missing
// Graphviz are one-line errors.
#include "core/data/dataset.h"
#include "core/data/tasks/tasks.h"
#include "core/formats/output_file.h"
#include "core/hf/model_loader.h"
#include "core/model/presets.h"
#include "core/model/transformer.h"
#include "apps/jobs/job_file.h"
#include "patching/discovery/acdc.h"
#include "patching/discovery/circuit_output.h"
#include "patching/discovery/circuit_runner.h"
#include "patching/discovery/evaluation.h"
#include "hooks/hooked_transformer.h"
#include "patching/discovery/selection.h"
#include "patching/edge_attribution.h"
#include "patching/metrics.h"
#include "patching/patching_data.h"
#include "patching/sweeps.h"
#include "tests/test_util.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <regex>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

using mechlab::testing::run_cli;
using mechlab::testing::run_program;
using mechlab::testing::temp_path;
namespace fs = std::filesystem;

namespace {

const nlohmann::json kIoi = {{"n", 6}, {"seed", 2}};
constexpr double kLogitDiffTau = 0.001;  // single edges move this tiny model's logit_diff by up to 0.003

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

size_t count_of(const std::string& text, const std::string& word) {
  size_t n = 0;
  for (size_t at = text.find(word); at != std::string::npos; at = text.find(word, at + 1)) ++n;
  return n;
}

bool have_dot() { return std::system("command -v dot >/dev/null 2>&1") == 0; }

// A tiny random model whose vocabulary covers the IOI dataset the job
// file's step makes, and the job file.
std::string make_job_dir(const std::string& name) {
  const std::string dir = temp_path("discover_cli", name);
  mechlab::testing::remove_tree(dir);
  fs::create_directories(dir);
  mechlab::core::ModelConfig cfg = mechlab::core::preset("tiny");
  cfg.d_vocab = static_cast<int>(mechlab::core::tasks::make_task("ioi", kIoi).d_vocab);
  mechlab::core::Transformer(cfg, 3).save(dir + "/model.h5");
  std::ofstream(dir + "/jobs.json") << R"({
  "steps": [{"dataset": {"task": "ioi", "out": "data.h5", "n": 6, "seed": 2}},
            {"cache": {"model": "model.h5", "dataset": "data.h5", "out": "acts.h5",
                       "hooks": "blocks.0.hook_resid_post", "no-progress": true}}],
  "jobs": [
    {"name": "eap", "model": "model.h5", "dataset": "data.h5", "method": "eap",
     "metric": "logit_diff", "top_n": 30},
    {"name": "ig", "model": "model.h5", "dataset": "data.h5", "method": "eap-ig",
     "metric": "logit_diff", "steps": 2, "threshold": 0.01}
  ]
})";
  return dir;
}

std::string discover(const std::string& dir, const std::string& extra = "") {
  return "discover " + dir + "/jobs.json --threads 1" + extra;
}

std::set<std::string> kept_in(const nlohmann::json& doc) {
  std::set<std::string> out;
  for (const auto& e : doc["circuit"]["edges"]) {
    if (e["kept"].get<bool>()) out.insert(e["edge"].get<std::string>());
  }
  return out;
}

}  // namespace

TEST(DiscoverCli, TwoJobsWriteCircuitsThenARerunSkipsAndForceReruns) {
  const std::string dir = make_job_dir("two_jobs");
  const auto first = run_cli(discover(dir));
  ASSERT_EQ(first.rc, 0) << first.output;
  EXPECT_NE(first.output.find("step 1 (dataset): writing"), std::string::npos) << first.output;
  ASSERT_TRUE(fs::exists(dir + "/data.h5"));
  EXPECT_NE(first.output.find("step 2 (cache): writing"), std::string::npos) << first.output;
  EXPECT_EQ(mechlab::core::mechlab_format_of(dir + "/acts.h5"), "activations");
  for (const char* job : {"eap", "ig"}) {
    const std::string out = dir + "/" + job;
    for (const char* f : {"circuit.json", "circuit.h5", "circuit.dot"}) {
      EXPECT_TRUE(fs::exists(out + "/" + f)) << out << "/" << f;
    }
    EXPECT_EQ(fs::exists(out + "/circuit.svg"), have_dot());
    EXPECT_FALSE(fs::exists(out + "/journal.jsonl"));
    EXPECT_EQ(mechlab::core::mechlab_format_of(out + "/circuit.h5"), "circuit");
  }

  // The kept edges equal the selection computed directly through the library.
  at::set_num_threads(1);
  using namespace mechlab;
  hooks::HookedTransformer model(core::load_model(dir + "/model.h5"));
  const patching::PatchingData data = patching::PatchingData::from_dataset(core::load_dataset(dir + "/data.h5"));
  const patching::Metric metric = patching::make_metric(patching::MetricOptions().name("logit_diff"), model, data,
                                                        patching::Direction::noising);
  const patching::EdgeScores eap = patching::edge_attribution(model, data, metric);
  const discovery::Circuit want_eap = discovery::select_edges(eap, discovery::SelectionOptions().top_n(30));
  const patching::EdgeScores ig = patching::edge_attribution(
      model, data, metric,
      patching::AttributionOptions().method(patching::AttributionMethod::eap_ig).steps(2));
  const discovery::Circuit want_ig = discovery::select_edges(ig, discovery::SelectionOptions().threshold(0.01));
  auto names = [](const discovery::Circuit& c) {
    std::set<std::string> out;
    for (const auto& e : c.edges()) {
      if (c.kept(e)) out.insert(c.edge_name(e));
    }
    return out;
  };
  const nlohmann::json doc_eap = discovery::read_circuit_document(dir + "/eap/circuit.json");
  const nlohmann::json doc_ig = discovery::read_circuit_document(dir + "/ig/circuit.json");
  EXPECT_EQ(kept_in(doc_eap), names(want_eap));
  EXPECT_EQ(kept_in(doc_ig), names(want_ig));
  EXPECT_GT(names(want_eap).size(), 0u);
  EXPECT_EQ(doc_eap["config"]["top_n"], 30);
  EXPECT_EQ(doc_eap["versions"]["model_config_hash"], model.cfg().hash());
  EXPECT_EQ(doc_eap["trace"], nlohmann::json::array());

  // A rerun, from another working directory, skips the step and both jobs,
  // leaving the files as they were.
  const std::string before = slurp(dir + "/eap/circuit.json");
  const auto second =
      run_program("cd " + dir + " && " + std::string(MECHLAB_BINARY) + " discover jobs.json --threads 1");
  ASSERT_EQ(second.rc, 0) << second.output;
  EXPECT_NE(second.output.find("step 1 (dataset): skipped"), std::string::npos) << second.output;
  EXPECT_NE(second.output.find("step 2 (cache): skipped"), std::string::npos) << second.output;
  EXPECT_EQ(count_of(second.output, "skipped: done"), 4u) << second.output;  // two lines + two table rows
  EXPECT_EQ(slurp(dir + "/eap/circuit.json"), before);

  // --force reruns both; --only runs one.
  const auto forced = run_cli(discover(dir, " --force"));
  ASSERT_EQ(forced.rc, 0) << forced.output;
  EXPECT_EQ(count_of(forced.output, "skipped: done"), 0u) << forced.output;
  EXPECT_EQ(count_of(forced.output, " edges kept -> "), 2u) << forced.output;
  const auto only = run_cli(discover(dir, " --force --only ig"));
  ASSERT_EQ(only.rc, 0) << only.output;
  EXPECT_EQ(count_of(only.output, " edges kept -> "), 1u) << only.output;
  EXPECT_NE(only.output.find("ig: "), std::string::npos);
}

// ACDC (a τ sweep), the EAP -> ACDC hybrid and EAP with reference edges:
// each circuit equals the library's, computed directly, and each is
// evaluated: circuit metric, full and empty metrics, faithfulness, AUC.
TEST(DiscoverCli, AcdcAndEapAcdcJobsEqualTheLibraryAndEveryCircuitIsEvaluated) {
  const std::string dir = make_job_dir("acdc");
  mechlab::core::save_dataset(dir + "/data.h5", mechlab::core::tasks::make_task("ioi", kIoi));
  std::ofstream(dir + "/ref.txt") << "a0.h1 -> a1.h2<q>\na1.h0 -> output\nm1 -> output\n";
  std::ofstream(dir + "/jobs.yaml") << R"(jobs:
  - {name: acdc, model: model.h5, dataset: data.h5, method: acdc, thresholds: [0.000001, 0.000004], max_batch: 3,
     reference_edges: ref.txt}
  - {name: hybrid, model: model.h5, dataset: data.h5, method: eap-acdc, steps: 2, attribution_top_n: 20,
     threshold: 0.000001, indices_mode: reverse}
  - {name: eap, model: model.h5, dataset: data.h5, method: eap, metric: logit_diff, top_n: 25,
     reference_edges: ref.txt}
)";
  const auto r = run_cli("discover " + dir + "/jobs.yaml --threads 1 --no-svg");
  ASSERT_EQ(r.rc, 0) << r.output;
  EXPECT_EQ(count_of(r.output, " edges kept -> "), 4u) << r.output;

  at::set_num_threads(1);
  using namespace mechlab;
  hooks::HookedTransformer model(core::load_model(dir + "/model.h5"));
  const patching::PatchingData data = patching::PatchingData::from_dataset(core::load_dataset(dir + "/data.h5"));
  auto metric_of = [&](const std::string& name) {
    return patching::make_metric(patching::MetricOptions().name(name), model, data, patching::Direction::noising);
  };
  const patching::Metric kl = metric_of("kl_to_clean"), ld = metric_of("logit_diff");
  auto names = [](const discovery::Circuit& c) {
    std::set<std::string> out;
    for (const auto& e : c.edges()) {
      if (c.kept(e)) out.insert(c.edge_name(e));
    }
    return out;
  };
  const std::vector<std::string> ref = {"a0.h1 -> a1.h2<q>", "a1.h0 -> output", "m1 -> output"};
  discovery::CircuitRunner runner(model, data, discovery::Ablation::corrupted);

  // ACDC at both τ: the library's circuit, scores and trace.
  // τ of the size of single edges' KL effects in this random model (about 1e-6).
  for (const double tau : {0.000001, 0.000004}) {
    char folder[64];
    std::snprintf(folder, sizeof folder, "/acdc/threshold-%g/circuit.json", tau);
    const nlohmann::json doc = discovery::read_circuit_document(dir + folder);
    // max_batch as the job's: the same stacked forwards give the same scores to the last bit.
    const discovery::AcdcResult want =
        discovery::acdc(model, data, kl, discovery::AcdcOptions().threshold(tau).max_batch(3));
    EXPECT_EQ(kept_in(doc), names(want.circuit)) << tau;
    EXPECT_GT(want.circuit.edge_count(), 0) << tau;  // neither empty nor whole: the comparison means something
    EXPECT_LT(want.circuit.edge_count(), static_cast<int64_t>(want.circuit.edges().size())) << tau;
    ASSERT_EQ(doc["trace"].size(), want.steps.size());
    for (size_t i = 0; i < want.steps.size(); ++i) {
      EXPECT_EQ(doc["trace"][i]["edge"], want.steps[i].edge);
      EXPECT_EQ(doc["trace"][i]["kept"], want.steps[i].kept);
    }
    const nlohmann::json& res = doc["results"];
    // The evaluation: a runner's full, empty and circuit metrics, and f.
    const std::vector<double> m = runner.metrics(
        kl, {discovery::Circuit::full(want.circuit.graph()), discovery::Circuit::empty(want.circuit.graph()),
             want.circuit});
    EXPECT_DOUBLE_EQ(res["full_metric"].get<double>(), m[0]);
    EXPECT_DOUBLE_EQ(res["empty_metric"].get<double>(), m[1]);
    EXPECT_DOUBLE_EQ(res["circuit_metric"].get<double>(), m[2]);
    EXPECT_NEAR(res["faithfulness"].get<double>(), (m[2] - m[1]) / (m[0] - m[1]), 1e-9);
    // KL of the clean run to itself is 0, and the full masked forward agrees
    // with ACDC's incremental one (to 1% of the metric's range: KL here is ~1e-5).
    EXPECT_NEAR(m[0], 0.0, 1e-7);
    EXPECT_NEAR(m[2], want.final_metric, 0.01 * m[1]);
    // AUC of the metric increases, 0 for edges never tried; the reference
    // names residual edges only, so the head-input edges are not ranked.
    discovery::Circuit scored = want.circuit;
    for (const auto& e : scored.edges()) {
      if (e.kind == discovery::CircuitEdge::Kind::head_input) {
        scored.set_score(e, NAN);
      } else if (std::isnan(scored.score(e))) {
        scored.set_score(e, 0.0);
      }
    }
    EXPECT_NEAR(res["reference_auc"].get<double>(), discovery::roc_curve(scored, ref).auc, 1e-12);
    int64_t residual = 0;
    for (const auto& e : scored.edges()) residual += e.kind == discovery::CircuitEdge::Kind::residual ? 1 : 0;
    EXPECT_EQ(res["evaluation"]["reference_positives"].get<int64_t>() +
                  res["evaluation"]["reference_negatives"].get<int64_t>(),
              residual)
        << "only residual edges are ranked";
  }

  // The hybrid: EAP-IG's top 20, then ACDC from there.
  {
    const patching::EdgeScores ig = patching::edge_attribution(
        model, data, kl,
        patching::AttributionOptions().method(patching::AttributionMethod::eap_ig).steps(2));
    const discovery::Circuit start = discovery::select_edges(ig, discovery::SelectionOptions().top_n(20));
    const discovery::AcdcResult want = discovery::acdc(
        model, data, kl, discovery::AcdcOptions().threshold(0.000001).indices_mode("reverse").start(start));
    // (the job's max_batch is 0 = the memory budget, as here)
    const nlohmann::json doc = discovery::read_circuit_document(dir + "/hybrid/circuit.json");
    EXPECT_EQ(kept_in(doc), names(want.circuit));
    EXPECT_LE(names(want.circuit).size(), names(start).size());
    EXPECT_GT(want.circuit.edge_count(), 0);
    EXPECT_EQ(doc["results"]["details"]["attribution_kept"], start.edge_count());
    EXPECT_NEAR(doc["results"]["circuit_metric"].get<double>(), want.final_metric,
                0.01 * doc["results"]["empty_metric"].get<double>());
  }

  // EAP: the circuit's metric by the runner, the AUC of the attribution scores.
  {
    const patching::EdgeScores eap = patching::edge_attribution(model, data, ld);
    const discovery::Circuit c = discovery::select_edges(eap, discovery::SelectionOptions().top_n(25));
    const std::vector<double> m = runner.metrics(
        ld, {discovery::Circuit::full(c.graph()), discovery::Circuit::empty(c.graph()), c});
    const nlohmann::json res = discovery::read_circuit_document(dir + "/eap/circuit.json")["results"];
    EXPECT_DOUBLE_EQ(res["full_metric"].get<double>(), m[0]);
    EXPECT_DOUBLE_EQ(res["empty_metric"].get<double>(), m[1]);
    EXPECT_DOUBLE_EQ(res["circuit_metric"].get<double>(), m[2]);
    EXPECT_NEAR(res["faithfulness"].get<double>(), (m[2] - m[1]) / (m[0] - m[1]), 1e-9);
    EXPECT_NE(m[0], m[1]);
    EXPECT_NEAR(res["reference_auc"].get<double>(), discovery::roc_curve(eap, ref).auc, 1e-12);
  }
  // The summary shows every circuit's metric, faithfulness and AUC.
  const std::string table = r.output.substr(r.output.find("job "));
  EXPECT_EQ(count_of(table, "n/a"), 0u) << table;
  EXPECT_NE(table.find("faithfulness"), std::string::npos) << table;
  EXPECT_NE(table.find("ref AUC"), std::string::npos) << table;

  // A circuit.json as the reference: its kept edges (EAP ranks residual edges).
  std::ofstream(dir + "/vs.yaml") << R"(jobs:
  - {name: vs, model: model.h5, dataset: data.h5, method: eap, metric: logit_diff, top_n: 25,
     reference_edges: acdc/threshold-1e-06/circuit.json}
)";
  const auto vs = run_cli("discover " + dir + "/vs.yaml --threads 1 --no-svg");
  ASSERT_EQ(vs.rc, 0) << vs.output;
  const patching::EdgeScores eap = patching::edge_attribution(model, data, ld);
  const discovery::Circuit acdc_circuit = discovery::Circuit::from_json(
      discovery::scored_circuit(eap).graph(),
      discovery::read_circuit_document(dir + "/acdc/threshold-1e-06/circuit.json")["circuit"]);
  EXPECT_NEAR(discovery::read_circuit_document(dir + "/vs/circuit.json")["results"]["reference_auc"].get<double>(),
              discovery::roc_curve(discovery::scored_circuit(eap), acdc_circuit).auc, 1e-12);
}

// ACDC keeps an edge when removing it raises the metric by tau; removing
// edges lowers logit_diff, so a job on it minimises -logit_diff (as the
// reference's IOI runs do) instead of removing every edge: its circuit is
// the library's on a metric written as minus logit_diff.
TEST(DiscoverCli, AcdcOnLogitDiffMinimisesItNegated) {
  const std::string dir = make_job_dir("acdc_logit_diff");
  mechlab::core::save_dataset(dir + "/data.h5", mechlab::core::tasks::make_task("ioi", kIoi));
  std::ofstream(dir + "/jobs.yaml") << "jobs:\n  - {name: ld, model: model.h5, dataset: data.h5, method: acdc, "
                                       "metric: logit_diff, threshold: " << kLogitDiffTau << "}\n";
  const auto r = run_cli("discover " + dir + "/jobs.yaml --threads 1 --no-svg");
  ASSERT_EQ(r.rc, 0) << r.output;

  at::set_num_threads(1);
  using namespace mechlab;
  hooks::HookedTransformer model(core::load_model(dir + "/model.h5"));
  const patching::PatchingData data = patching::PatchingData::from_dataset(core::load_dataset(dir + "/data.h5"));
  const patching::Metric ld = patching::logit_diff(data.answers());
  const patching::Metric minus =
      patching::Metric::custom("minus logit_diff", [&](const at::Tensor& logits) { return -ld(logits); });
  const discovery::AcdcResult want =
      discovery::acdc(model, data, minus, discovery::AcdcOptions().threshold(kLogitDiffTau));
  std::set<std::string> names;
  for (const auto& e : want.circuit.edges()) {
    if (want.circuit.kept(e)) names.insert(want.circuit.edge_name(e));
  }
  const nlohmann::json doc = discovery::read_circuit_document(dir + "/ld/circuit.json");
  EXPECT_EQ(kept_in(doc), names);
  EXPECT_GT(names.size(), 0u);  // neither empty nor whole: the comparison means something
  EXPECT_LT(static_cast<int64_t>(names.size()), static_cast<int64_t>(want.circuit.edges().size()));
  EXPECT_EQ(doc["results"]["details"]["acdc"]["minimised_metric"], "-logit_diff");
  // Reported the right way up: the full model's logit difference.
  EXPECT_NEAR(doc["results"]["evaluation"]["method_full_metric"].get<double>(),
              ld(model.forward(data.clean_tokens)).item<double>(), 1e-5);
}

// `mechlab dataset make induction --set pairs=true` through a step: the pairs
// feed a discovery job.
TEST(DiscoverCli, InductionPairsFromAStepFeedAJob) {
  const std::string dir = temp_path("discover_cli", "induction");
  mechlab::testing::remove_tree(dir);
  fs::create_directories(dir);
  mechlab::core::ModelConfig cfg = mechlab::core::preset("attn-only-2l");
  cfg.d_vocab = 20;
  mechlab::core::Transformer(cfg, 4).save(dir + "/model.h5");
  std::ofstream(dir + "/jobs.yaml") << R"(steps:
  - dataset: {task: induction, out: data.h5, n: 8, seed: 1, set: {pairs: true, half_len: 5, query_len: 2, d_vocab: 20}}
jobs:
  - {name: ig, model: model.h5, dataset: data.h5, method: eap-ig, metric: logit_diff, steps: 2, top_n: 10}
)";
  const auto r = run_cli("discover " + dir + "/jobs.yaml --threads 1 --no-svg");
  ASSERT_EQ(r.rc, 0) << r.output;
  const mechlab::core::Dataset ds = mechlab::core::load_dataset(dir + "/data.h5");
  EXPECT_EQ(ds.clean_tokens.sizes(), (c10::IntArrayRef{8, 8}));  // BOS + 5 + 2
  EXPECT_EQ(ds.answer_pos[0].item<int64_t>(), 7);
  EXPECT_TRUE(fs::exists(dir + "/ig/circuit.json"));
}

// A dataset a step makes is checked once the steps ran, before any job:
// here its ids exceed the model's vocabulary (the first check, which knew
// the model and the existing dataset already, could not see it).
TEST(DiscoverCli, ADatasetAStepMakesIsCheckedBeforeAnyJobRuns) {
  const std::string dir = temp_path("discover_cli", "step_dataset_checked");
  mechlab::testing::remove_tree(dir);
  fs::create_directories(dir);
  mechlab::core::ModelConfig cfg = mechlab::core::preset("attn-only-2l");
  cfg.d_vocab = 20;
  mechlab::core::Transformer(cfg, 4).save(dir + "/model.h5");
  const auto made = run_cli("dataset make induction --n 4 --seed 1 --set pairs=true --set half_len=5 --set "
                            "query_len=2 --set d_vocab=20 --out " + dir + "/fits.h5");
  ASSERT_EQ(made.rc, 0) << made.output;
  std::ofstream(dir + "/jobs.yaml") << R"(steps:
  - dataset: {task: induction, out: wide.h5, n: 8, seed: 1, set: {pairs: true, half_len: 5, query_len: 2, d_vocab: 300}}
jobs:
  - {name: fits, model: model.h5, dataset: fits.h5, method: eap, metric: logit_diff, top_n: 10}
  - {name: wide, model: model.h5, dataset: wide.h5, method: eap, metric: logit_diff, top_n: 10}
)";
  const auto r = run_cli("discover " + dir + "/jobs.yaml --threads 1 --no-svg");
  EXPECT_EQ(r.rc, 1) << r.output;
  EXPECT_NE(r.output.find("mechlab: error: job 'wide': field 'dataset': '" + dir + "/wide.h5' has token id "),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("but the model '" + dir + "/model.h5' has d_vocab 20"), std::string::npos) << r.output;
  EXPECT_TRUE(fs::exists(dir + "/wide.h5"));
  EXPECT_FALSE(fs::exists(dir + "/fits"));
  EXPECT_FALSE(fs::exists(dir + "/wide"));
}

TEST(DiscoverCli, WithoutGraphvizTheDataIsWrittenAndTheErrorSaysToInstallIt) {
  const std::string dir = make_job_dir("no_dot");
  const auto r = run_program("PATH=/nonexistent " + std::string(MECHLAB_BINARY) + " " +
                             discover(dir, " --only eap"));
  EXPECT_NE(r.rc, 0) << r.output;
  EXPECT_NE(r.output.find("install graphviz"), std::string::npos) << r.output;
  EXPECT_TRUE(fs::exists(dir + "/eap/circuit.json"));
  EXPECT_TRUE(fs::exists(dir + "/eap/circuit.h5"));
  EXPECT_TRUE(fs::exists(dir + "/eap/circuit.dot"));
  EXPECT_FALSE(fs::exists(dir + "/eap/circuit.svg"));
  // The error is the last line, one line.
  const std::string last = r.output.substr(r.output.rfind("mechlab: error"));
  EXPECT_EQ(count_of(last, "\n"), 1u) << last;
}

TEST(DiscoverCli, ARefusalIsOneLineAndNothingIsWritten) {
  const std::string dir = make_job_dir("refusal");
  std::ofstream(dir + "/jobs.json") << R"({"steps": [{"dataset": {"task": "ioi", "out": "data.h5"}}],
    "jobs": [{"name": "x", "model": "model.h5", "dataset": "data.h5", "method": "eapp", "top_n": 3}]})";
  const auto r = run_cli("discover " + dir + "/jobs.json");
  EXPECT_EQ(r.rc, 1) << r.output;
  EXPECT_EQ(r.output, "mechlab: error: job 'x': field 'method' is 'eapp'; did you mean 'eap'? (valid: acdc, eap, "
                      "eap-ig, eap-acdc)\n");
  EXPECT_FALSE(fs::exists(dir + "/data.h5"));
  EXPECT_FALSE(fs::exists(dir + "/x"));
}

// A bad value in a later step is found before the first step writes.
TEST(DiscoverCli, EveryStepParsesBeforeTheFirstRuns) {
  const std::string dir = make_job_dir("step_values");
  auto refusal_of = [&](const std::string& second) {
    std::ofstream(dir + "/jobs.yaml") << "steps:\n  - dataset: {task: ioi, out: one.h5, n: 4}\n  - dataset: " << second
                                      << "\njobs:\n  - {name: x, model: model.h5, dataset: one.h5, method: eap, "
                                         "metric: logit_diff, top_n: 3}\n";
    const auto r = run_cli("discover " + dir + "/jobs.yaml --threads 1");
    EXPECT_EQ(r.rc, 1) << r.output;
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
    EXPECT_FALSE(fs::exists(dir + "/one.h5")) << second;
    return r.output;
  };
  EXPECT_NE(refusal_of("{task: iio, out: two.h5}").find("step 2 (dataset): field 'task': "), std::string::npos);
  EXPECT_NE(refusal_of("{task: ioi, out: two.h5, set: {oder: mixed}}")
                .find("step 2 (dataset): field 'set': task ioi has no option 'oder'; did you mean 'order'?"),
            std::string::npos);
  EXPECT_NE(refusal_of("{task: ioi, out: two.h5, n: abc}")
                .find("step 2 (dataset): --n must be a whole number, got 'abc'"),
            std::string::npos);
}

TEST(DiscoverCli, AnEmptyOnlyIsRefusedRatherThanRunningEveryJob) {
  const std::string dir = make_job_dir("only_empty");
  const auto r = run_cli("discover " + dir + "/jobs.json --threads 1 --only ''");
  EXPECT_EQ(r.rc, 1) << r.output;
  EXPECT_EQ(r.output, "mechlab: error: --only is empty; give the name of one job\n");
  EXPECT_FALSE(fs::exists(dir + "/data.h5"));
}

TEST(DiscoverCli, HelpExplainsTheJobFile) {
  const auto r = run_cli("discover --help");
  ASSERT_EQ(r.rc, 0);
  for (const char* word : {"--only", "--force", "thresholds", "top_n", "ablation", "eap-ig", "Example", "steps:",
                           "abs_value", "indices_mode", "max_batch", "attribution_threshold",
                           "attribution_top_n", "reference_edges", "method: acdc", "eap-acdc", "journal.jsonl",
                           "faithfulness"}) {
    EXPECT_NE(r.output.find(word), std::string::npos) << word;
  }
  // Every job field and method is explained.
  for (const std::string& field : mechlab::jobs::job_field_names()) {
    EXPECT_NE(r.output.find("\n    " + field + " "), std::string::npos) << field;
  }
  for (const std::string& method : mechlab::jobs::method_names()) {
    EXPECT_NE(r.output.find(" " + method + " "), std::string::npos) << method;
  }
}

// The fields a step accepts are options of the command it runs.
TEST(DiscoverCli, StepFieldsAreOptionsOfTheirCommands) {
  for (const auto& kind : mechlab::jobs::step_kinds()) {
    std::string cmd;
    for (const auto& w : kind.command) cmd += w + " ";
    const auto r = run_cli(cmd + "--help");
    ASSERT_EQ(r.rc, 0) << cmd;
    for (const auto& flag : kind.flags) {
      // Its line in the options list ("  --seed INT", "  -o,--out TEXT").
      std::smatch line;
      ASSERT_TRUE(std::regex_search(r.output, line, std::regex("\n  (-\\w,)?--" + flag + " ")))
          << cmd << "--" << flag;
      const size_t at = static_cast<size_t>(line.position(0) + line.length(0)) - 1;
      // A switch's help line goes on with its description; an option's
      // with its type (INT, TEXT, FLOAT).
      std::istringstream rest(r.output.substr(at));
      std::string next;
      rest >> next;
      const std::string word = next.substr(0, next.find_first_of("=:[{"));  // "INT=0", "TEXT:{a,b}"
      const bool typed =
          word.size() >= 3 && std::all_of(word.begin(), word.end(), [](char c) { return std::isupper(c); });
      const bool is_switch = std::find(kind.switches.begin(), kind.switches.end(), flag) != kind.switches.end();
      EXPECT_EQ(typed, !is_switch) << cmd << "--" << flag << " is followed by '" << next << "'";
    }
  }
}

// A job file of steps alone runs them (make a dataset, probe it) and prints
// no empty jobs table; a rerun skips them. Without steps, jobs are needed.
TEST(DiscoverCli, AFileOfStepsOnlyRunsItsSteps) {
  const std::string dir = temp_path("discover_cli", "steps_only");
  mechlab::testing::remove_tree(dir);
  fs::create_directories(dir);
  const std::string model = std::string(MECHLAB_TEST_DATA) + "/../../apps/models/induction.h5";
  std::ofstream(dir + "/steps.yaml") << "steps:\n  - dataset: {task: induction, out: d.h5, n: 20, set: {d_vocab: 256}}\n"
                                        "  - probe: {source: " << model << ", dataset: d.h5, out: p, hooks: "
                                        "[blocks.0.hook_resid_post], label: repeated, resamples: 20, threads: 1}\n";
  const auto r = run_cli("discover " + dir + "/steps.yaml --threads 1");
  ASSERT_EQ(r.rc, 0) << r.output;
  EXPECT_TRUE(fs::exists(dir + "/p/probes.h5"));
  EXPECT_EQ(r.output.find("circuit metric"), std::string::npos) << r.output;
  const auto again = run_cli("discover " + dir + "/steps.yaml --threads 1");
  ASSERT_EQ(again.rc, 0) << again.output;
  EXPECT_NE(again.output.find("step 2 (probe): skipped"), std::string::npos) << again.output;
  std::ofstream(dir + "/none.yaml") << "steps: []\njobs: []\n";
  const auto none = run_cli("discover " + dir + "/none.yaml");
  EXPECT_EQ(none.rc, 1);
  EXPECT_NE(none.output.find("none.yaml has nothing to run; give a list of jobs, or of steps, or both"),
            std::string::npos)
      << none.output;
}

// A switch takes true or false; an option's value is not a boolean.
TEST(DiscoverCli, StepSwitchesTakeTrueOrFalseAndOptionsAValue) {
  const std::string dir = temp_path("discover_cli", "switches");
  fs::create_directories(dir);
  auto refusal = [&](const std::string& step) {
    return mechlab::testing::error_of([&] {
      mechlab::jobs::parse_job_document(nlohmann::json::parse(R"({"steps": [)" + step + R"(], "jobs": [{"name": "j",
          "model": "m.h5", "dataset": "d.h5", "method": "eap", "metric": "logit_diff", "top_n": 3}]})"),
                                         dir + "/job.json", dir);
    });
  };
  std::ofstream(dir + "/m.h5") << "";
  std::ofstream(dir + "/d.h5") << "";
  EXPECT_EQ(refusal(R"({"probe": {"source": "m.h5", "dataset": "d.h5", "out": "p", "hooks": "x",
                        "split-heads": "yes"}})"),
            "step 1 (probe): field 'split-heads' is a switch: give true or false, not \"yes\"");
  EXPECT_EQ(refusal(R"({"probe": {"source": "m.h5", "dataset": "d.h5", "out": "p", "hooks": "x", "seed": true}})"),
            "step 1 (probe): field 'seed' takes a value, not true");
}
