// Discovery job files (apps/jobs/job_file.h) and the resume journal
// (apps/jobs/journal.h). Each refusal of a bad job file is checked through
// run_job_file, which must refuse before any work: the message names the job
// (or step) and the field, and the folder holds exactly what it held before.
#include "apps/jobs/job_file.h"
#include "apps/jobs/job_runner.h"
#include "apps/jobs/journal.h"
#include "apps/jobs/shard.h"
#include "core/data/dataset.h"
#include "core/data/tasks/tasks.h"
#include "core/hf/model_loader.h"
#include "core/model/presets.h"
#include "core/model/transformer.h"
#include "core/util/interrupt.h"
#include "patching/discovery/circuit_output.h"
#include "tests/test_util.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <fstream>
#include <set>

using mechlab::testing::error_of;
using mechlab::testing::temp_path;
namespace fs = std::filesystem;
namespace jobs = mechlab::jobs;

namespace {

// A folder with a tiny model (model.h5) whose vocabulary covers an IOI
// dataset (data.h5), and one whose vocabulary (5 ids) does not (small.h5).
class JobFile : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = temp_path("job_file", ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
    const mechlab::core::Dataset ds = mechlab::core::tasks::make_task("ioi", {{"n", 4}, {"seed", 1}});
    mechlab::core::save_dataset(dir_ + "/data.h5", ds);
    mechlab::core::ModelConfig cfg = mechlab::core::preset("tiny");
    cfg.d_vocab = static_cast<int>(ds.d_vocab);
    mechlab::core::Transformer(cfg, 1).save(dir_ + "/model.h5");
    cfg.d_vocab = 5;
    mechlab::core::Transformer(cfg, 1).save(dir_ + "/small.h5");
  }

  std::set<std::string> listing() const {
    std::set<std::string> out;
    for (const auto& e : fs::recursive_directory_iterator(dir_)) out.insert(e.path().string());
    return out;
  }

  std::string write(const std::string& name, const std::string& text) const {
    const std::string p = dir_ + "/" + name;
    std::ofstream(p) << text;
    return p;
  }

  // The refusal of a YAML job file: its message, after checking that nothing
  // ran and nothing was written.
  std::string refusal(const std::string& yaml) {
    const std::string path = write("jobs.yaml", yaml);
    const std::set<std::string> before = listing();
    bool stepped = false;
    const std::string msg = error_of([&] {
      const jobs::JobFile f = jobs::parse_job_file(path);
      jobs::run_job_file(f, jobs::RunOptions(),
                         [&](const std::vector<std::string>&) { stepped = true; });
    });
    EXPECT_FALSE(stepped) << "a step ran before the refusal";
    EXPECT_EQ(listing(), before) << "the refusal wrote files";
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    return msg;
  }

  std::string dir_;
};

std::string job(const std::string& extra) {
  return "jobs:\n  - name: a\n    model: model.h5\n    dataset: data.h5\n" + extra;
}

#define EXPECT_HAS(msg, text) EXPECT_NE((msg).find(text), std::string::npos) << (msg)

}  // namespace

TEST_F(JobFile, RefusesAnUnknownMethodNamingTheNearest) {
  const std::string m = refusal(job("    method: acdcc\n    threshold: 0.1\n"));
  EXPECT_HAS(m, "job 'a': field 'method' is 'acdcc'; did you mean 'acdc'?");
}

TEST_F(JobFile, RefusesAnUnknownJobFieldNamingTheNearest) {
  const std::string m = refusal(job("    method: eap\n    metric: logit_diff\n    tresholds: [0.1]\n"));
  EXPECT_HAS(m, "job 'a': unknown field 'tresholds'; did you mean 'thresholds'?");
}

TEST_F(JobFile, RefusesAnUnknownTopLevelField) {
  const std::string m = refusal("job:\n  - name: a\n");
  EXPECT_HAS(m, "unknown field 'job'; did you mean 'jobs'?");
}

TEST_F(JobFile, RefusesAnUnknownStepField) {
  const std::string m = refusal("steps:\n  - dataset: {task: ioi, outt: d2.h5}\n" +
                                job("    method: eap\n    metric: logit_diff\n    top_n: 5\n"));
  EXPECT_HAS(m, "step 1 (dataset): unknown field 'outt'; did you mean 'out'?");
}

TEST_F(JobFile, RefusesAMissingModel) {
  const std::string m = refusal(
      "jobs:\n  - {name: a, model: nope.h5, dataset: data.h5, method: eap, metric: logit_diff, top_n: 5}\n");
  EXPECT_HAS(m, "job 'a': field 'model': no file or folder");
  EXPECT_HAS(m, "nope.h5");
}

TEST_F(JobFile, RefusesAMissingDatasetThatNoStepMakes) {
  const std::string m = refusal(
      "jobs:\n  - {name: a, model: model.h5, dataset: d2.h5, method: eap, metric: logit_diff, top_n: 5}\n");
  EXPECT_HAS(m, "job 'a': field 'dataset': no file");
  // The same job with a step that makes d2.h5 parses.
  const std::string ok = write("ok.yaml",
                               "steps:\n  - dataset: {task: ioi, out: d2.h5, n: 4}\n"
                               "jobs:\n  - {name: a, model: model.h5, dataset: d2.h5, method: eap, "
                               "metric: logit_diff, top_n: 5}\n");
  EXPECT_EQ(jobs::parse_job_file(ok).jobs.size(), 1u);
}

TEST_F(JobFile, RefusesANegativeThreshold) {
  const std::string m = refusal(job("    method: acdc\n    threshold: -0.5\n"));
  EXPECT_HAS(m, "job 'a': field 'threshold' is -0.5; τ must be >= 0");
}

TEST_F(JobFile, RefusesAThresholdThatIsNotANumber) {
  const std::string m = refusal(job("    method: acdc\n    thresholds: [0.1, high]\n"));
  EXPECT_HAS(m, "job 'a': field 'thresholds' must be a number");
  EXPECT_HAS(refusal(job("    method: acdc\n    threshold: \"0.1\"\n")), "field 'threshold' must be a number");
}

TEST_F(JobFile, RefusesDuplicateJobNames) {
  const std::string m = refusal(
      "jobs:\n  - {name: a, model: model.h5, dataset: data.h5, method: eap, metric: logit_diff, top_n: 5}\n"
      "  - {name: a, model: model.h5, dataset: data.h5, method: eap-ig, threshold: 0.1, out: b}\n");
  EXPECT_HAS(m, "job 'a': field 'name' is used by two jobs");
}

TEST_F(JobFile, RefusesADatasetOutsideTheModelsVocabulary) {
  const std::string m = refusal(
      "jobs:\n  - {name: a, model: small.h5, dataset: data.h5, method: eap, metric: logit_diff, top_n: 5}\n");
  EXPECT_HAS(m, "job 'a': field 'dataset':");
  EXPECT_HAS(m, "has d_vocab 5");
}

TEST_F(JobFile, RefusesAnOutputFolderThatIsAnInput) {
  const std::string m = refusal(job("    method: eap\n    metric: logit_diff\n    top_n: 5\n    out: data.h5\n"));
  EXPECT_HAS(m, "job 'a': field 'out'");
  EXPECT_HAS(m, "an output must not be an input");
}

TEST_F(JobFile, RefusesAMissingName) {
  const std::string m = refusal("jobs:\n  - {model: model.h5, dataset: data.h5, method: eap, top_n: 5}\n");
  EXPECT_HAS(m, "job 1: field 'name' is missing");
}

TEST_F(JobFile, RefusesBothThresholdAndTopN) {
  const std::string m = refusal(job("    method: eap\n    metric: logit_diff\n    top_n: 5\n    threshold: 0.1\n"));
  EXPECT_HAS(m, "job 'a': give exactly one of fields 'threshold', 'thresholds' and 'top_n' (2 given)");
}

TEST_F(JobFile, RefusesEapWithAMetricWithoutGradientAtTheCleanRun) {
  const std::string m = refusal(job("    method: eap\n    top_n: 5\n"));  // metric defaults to kl_to_clean
  EXPECT_HAS(m, "job 'a': field 'metric' is kl_to_clean");
}

TEST_F(JobFile, RefusesAnUnknownMetricNamingTheNearest) {
  const std::string m = refusal(job("    method: eap\n    metric: logit_dif\n    top_n: 5\n"));
  EXPECT_HAS(m, "job 'a': field 'metric' is 'logit_dif'; did you mean 'logit_diff'?");
}

TEST_F(JobFile, EveryMethodAJobMayNameHasARunner) {
  // The runner's refusal of a method without a table entry cannot fire for
  // a name the job file accepts.
  std::vector<std::string> table;
  for (const auto& [name, fn] : jobs::method_table()) table.push_back(name);
  std::vector<std::string> names = jobs::method_names();
  std::sort(names.begin(), names.end());
  EXPECT_EQ(table, names);
}

TEST_F(JobFile, RefusesAcdcOptionsForEap) {
  for (const char* field : {"abs_value: true", "indices_mode: reverse", "max_batch: 4"}) {
    const std::string m = refusal(job(std::string("    method: eap\n    metric: logit_diff\n    top_n: 5\n    ") +
                                      field + "\n"));
    EXPECT_HAS(m, "job 'a': field '" + std::string(field).substr(0, std::string(field).find(':')) +
                      "' is an ACDC option (methods acdc, eap-acdc); drop it for eap");
  }
}

TEST_F(JobFile, RefusesBadAcdcOptionValues) {
  EXPECT_HAS(refusal(job("    method: acdc\n    threshold: 0.1\n    indices_mode: revers\n")),
             "job 'a': field 'indices_mode' is 'revers'; did you mean 'reverse'?");
  EXPECT_HAS(refusal(job("    method: acdc\n    threshold: 0.1\n    abs_value: 1\n")),
             "job 'a': field 'abs_value' must be true or false, not 1");
  EXPECT_HAS(refusal(job("    method: acdc\n    threshold: 0.1\n    max_batch: -1\n")),
             "job 'a': field 'max_batch' must be a whole number >= 0, not -1");
  EXPECT_HAS(refusal(job("    method: acdc\n    top_n: 5\n")),
             "job 'a': field 'top_n' selects EAP edges (methods eap, eap-ig); give 'threshold' for acdc");
}

TEST_F(JobFile, RefusesEapAcdcWithoutExactlyOneAttributionSelection) {
  EXPECT_HAS(refusal(job("    method: eap-acdc\n    steps: 2\n    threshold: 0.1\n")),
             "job 'a': method eap-acdc needs exactly one of fields 'attribution_threshold' and "
             "'attribution_top_n' (the EAP edges ACDC starts from; 0 given)");
  EXPECT_HAS(refusal(job("    method: eap-acdc\n    steps: 2\n    threshold: 0.1\n    attribution_top_n: 3\n"
                         "    attribution_threshold: 0.2\n")),
             "(the EAP edges ACDC starts from; 2 given)");
  EXPECT_HAS(refusal(job("    method: eap-acdc\n    steps: 2\n    threshold: 0.1\n    attribution_threshold: -1\n")),
             "job 'a': field 'attribution_threshold' is -1; τ must be >= 0");
  EXPECT_HAS(refusal(job("    method: acdc\n    threshold: 0.1\n    attribution_top_n: 3\n")),
             "job 'a': field 'attribution_top_n' chooses the EAP edges of method eap-acdc; drop it for acdc");
  EXPECT_HAS(refusal(job("    method: eap-acdc\n    threshold: 0.1\n    attribution_top_n: 3\n")),
             "job 'a': field 'metric' is kl_to_clean, whose gradient at the clean run is zero, so eap-acdc's EAP");
  EXPECT_HAS(refusal(job("    method: eap-acdc\n    steps: 2\n    threshold: 0.1\n    attribution_top_n: 3\n"
                         "    ablation: mean\n")),
             "job 'a': field 'ablation' is 'mean' but method eap-acdc attributes edges against the corrupted run");
}

TEST_F(JobFile, RefusesBadReferenceEdges) {
  EXPECT_HAS(refusal(job("    method: acdc\n    threshold: 0.1\n    reference_edges: nowhere.txt\n")),
             "job 'a': field 'reference_edges': no file '");
  write("ref.txt", "# the reference\na0.h0 -> a1.h1<q>\n\na0.h9 -> output\n");
  const std::string m = refusal(job("    method: acdc\n    threshold: 0.1\n    reference_edges: ref.txt\n"));
  EXPECT_HAS(m, "job 'a': field 'reference_edges': line 4: ");
  EXPECT_HAS(m, "a0.h9");
  write("empty.txt", "# nothing\n");
  EXPECT_HAS(refusal(job("    method: acdc\n    threshold: 0.1\n    reference_edges: empty.txt\n")),
             "names no edge; give edge names, one a line");
}

TEST_F(JobFile, ACtrlCBeforeAJobStopsBetweenJobs) {
  const std::string path = write("jobs.yaml", job("    method: eap\n    metric: logit_diff\n    top_n: 5\n"));
  mechlab::core::set_interrupt_requested(true);
  std::string m;
  try {
    jobs::run_job_file(jobs::parse_job_file(path), jobs::RunOptions(), [](const std::vector<std::string>&) {});
  } catch (const mechlab::Interrupted& e) {
    m = e.what();
  }
  mechlab::core::set_interrupt_requested(false);
  EXPECT_HAS(m, "interrupted between jobs; finished jobs are kept and skipped on a rerun");
  EXPECT_FALSE(fs::exists(dir_ + "/a"));
}

TEST_F(JobFile, AcdcFieldsAreInTheConfigExceptMaxBatch) {
  const std::string path = write("jobs.yaml", job("    method: eap-acdc\n    steps: 3\n    threshold: 0.1\n"
                                                  "    attribution_top_n: 7\n    indices_mode: reverse\n"
                                                  "    max_batch: 2\n"));
  const jobs::JobFile f = jobs::parse_job_file(path);
  ASSERT_EQ(f.jobs.size(), 1u);
  EXPECT_EQ(f.jobs[0].max_batch, 2);
  EXPECT_EQ(f.jobs[0].attribution_top_n, 7);
  EXPECT_TRUE(f.jobs[0].steps_given);
  const nlohmann::json c = f.runs().at(0).config;
  EXPECT_EQ(c.at("indices_mode"), "reverse");
  EXPECT_EQ(c.at("abs_value"), false);
  EXPECT_EQ(c.at("attribution_top_n"), 7);
  EXPECT_EQ(c.at("steps"), 3);
  EXPECT_FALSE(c.contains("max_batch"));  // speed only: the decisions are the same
  EXPECT_FALSE(c.contains("attribution_threshold"));
}

TEST_F(JobFile, RefusesToReplaceACircuitMadeWithOtherSettings) {
  fs::create_directories(dir_ + "/a");
  std::ofstream(dir_ + "/a/circuit.json") << R"({"mechlab_format": "circuit", "config": {"name": "a", "top_n": 3}})";
  const std::string m = refusal(job("    method: eap\n    metric: logit_diff\n    top_n: 5\n"));
  EXPECT_HAS(m, "job 'a': field 'out':");
  EXPECT_HAS(m, "holds a circuit made with other settings (");
  EXPECT_HAS(m, "top_n");
}

TEST_F(JobFile, NeverReplacesAFileThatIsNotACircuit) {
  fs::create_directories(dir_ + "/a");
  std::ofstream(dir_ + "/a/circuit.json") << R"({"mechlab_format": "patching"})";
  const std::string path = write("jobs.yaml", job("    method: eap\n    metric: logit_diff\n    top_n: 5\n"));
  const std::string m = error_of([&] {
    jobs::run_job_file(jobs::parse_job_file(path), jobs::RunOptions().force(true),
                       [](const std::vector<std::string>&) {});
  });
  EXPECT_HAS(m, "is not a mechlab circuit file");
  EXPECT_HAS(m, "never replaced");
}

TEST_F(JobFile, YamlAndJsonGiveTheSameJobs) {
  const std::string yaml = write("j.yaml",
                                 "steps:\n"
                                 "  - dataset: {task: ioi, out: d2.h5, n: 8, seed: 3, set: {order: ABBA}}\n"
                                 "jobs:\n"
                                 "  - name: a\n    model: model.h5\n    dataset: d2.h5\n    method: eap-ig\n"
                                 "    thresholds: [0.1, 0.25]\n    steps: 3\n    examples: 2\n"
                                 "  - {name: b, model: model.h5, dataset: data.h5, method: eap, metric: logit_diff,"
                                 " top_n: 7, out: elsewhere}\n");
  const std::string json = write("j.json", R"({
    "steps": [{"dataset": {"task": "ioi", "out": "d2.h5", "n": 8, "seed": 3, "set": {"order": "ABBA"}}}],
    "jobs": [
      {"name": "a", "model": "model.h5", "dataset": "d2.h5", "method": "eap-ig",
       "thresholds": [0.1, 0.25], "steps": 3, "examples": 2},
      {"name": "b", "model": "model.h5", "dataset": "data.h5", "method": "eap", "metric": "logit_diff",
       "top_n": 7, "out": "elsewhere"}]})");
  const jobs::JobFile y = jobs::parse_job_file(yaml), j = jobs::parse_job_file(json);
  ASSERT_EQ(y.steps.size(), 1u);
  ASSERT_EQ(j.steps.size(), 1u);
  EXPECT_EQ(y.steps[0].argv, j.steps[0].argv);
  EXPECT_EQ(y.steps[0].argv, (std::vector<std::string>{"dataset", "make", "ioi", "--out", dir_ + "/d2.h5", "--n",
                                                      "8", "--seed", "3", "--set", "order=ABBA"}));
  const auto yr = y.runs(), jr = j.runs();
  ASSERT_EQ(yr.size(), 3u);  // two thresholds of a, one top_n of b
  ASSERT_EQ(jr.size(), 3u);
  for (size_t i = 0; i < yr.size(); ++i) EXPECT_EQ(yr[i].config, jr[i].config) << i;
  EXPECT_EQ(yr[0].out, dir_ + "/a/threshold-0.1");
  EXPECT_EQ(yr[1].out, dir_ + "/a/threshold-0.25");
  EXPECT_EQ(yr[2].out, dir_ + "/elsewhere");
  EXPECT_EQ(yr[0].config["metric"], "kl_to_clean");  // the default
  EXPECT_EQ(yr[0].config["steps"], 3);
}

TEST_F(JobFile, YamlSyntaxErrorsNameTheLine) {
  const std::string p = write("bad.yaml", "jobs:\n  - name: a\n   model: [\n");
  const std::string m = error_of([&] { jobs::parse_job_file(p); });
  EXPECT_HAS(m, "is not valid YAML: line");
}

TEST_F(JobFile, ANanThresholdIsNamedAsTheFileWroteIt) {
  EXPECT_HAS(refusal(job("    method: acdc\n    threshold: .nan\n")),
             "field 'threshold' must be a number (τ >= 0), not .nan");
}

TEST_F(JobFile, SweepFoldersNameEveryTauExactly) {
  // %g would give both of the first two "threshold-0.123456": one folder, two runs.
  const std::string path =
      write("jobs.yaml", job("    method: eap\n    metric: logit_diff\n    thresholds: [0.1234561, 0.1234564, 0.05, "
                             "0.000001, 0.0001]\n"));
  const std::vector<jobs::JobRun> runs = jobs::parse_job_file(path).runs();
  ASSERT_EQ(runs.size(), 5u);
  EXPECT_EQ(runs[0].out, dir_ + "/a/threshold-0.1234561");
  EXPECT_EQ(runs[1].out, dir_ + "/a/threshold-0.1234564");
  EXPECT_EQ(runs[2].out, dir_ + "/a/threshold-0.05");
  // As %g wrote them: the folders of finished sweeps keep their names.
  EXPECT_EQ(runs[3].out, dir_ + "/a/threshold-1e-06");
  EXPECT_EQ(runs[4].out, dir_ + "/a/threshold-0.0001");
}

TEST_F(JobFile, RefusesAReferenceThatTheJobWouldOverwrite) {
  fs::create_directories(dir_ + "/a");
  write("a/circuit.json", "{}");
  const std::string m =
      refusal(job("    method: eap\n    metric: logit_diff\n    top_n: 5\n    reference_edges: a/circuit.json\n"));
  EXPECT_HAS(m, "job 'a': field 'out': '");
  EXPECT_HAS(m, "circuit.json' would overwrite the job's reference_edges");
}

TEST_F(JobFile, RefusesTwoStepsWritingOneFile) {
  const std::string m = refusal("steps:\n  - dataset: {task: ioi, out: d2.h5, n: 4}\n"
                                "  - dataset: {task: ioi, out: d2.h5, n: 8}\n" +
                                job("    method: eap\n    metric: logit_diff\n    top_n: 5\n"));
  EXPECT_HAS(m, "step 2 (dataset): field 'out' is '");
  EXPECT_HAS(m, "which step 1 (dataset) writes; give each step its own output");
}

TEST_F(JobFile, RefusesMoreExamplesThanTheDatasetHas) {
  // data.h5 holds 4 prompt pairs; a silent cut to 4 would record examples: 5.
  const std::string m = refusal(job("    method: eap\n    metric: logit_diff\n    top_n: 5\n    examples: 5\n"));
  EXPECT_HAS(m, "job 'a': field 'examples' is 5 but '");
  EXPECT_HAS(m, "has 4 prompt pairs; give at most 4 (0 = all)");
}

TEST_F(JobFile, JsonRefusesAFieldGivenTwiceAsYamlDoes) {
  const std::string twice = write("twice.json", R"({"jobs": [{"name": "a", "model": "model.h5", "dataset": "data.h5",
      "method": "eap", "metric": "logit_diff", "top_n": 5, "top_n": 9}]})");
  EXPECT_HAS(error_of([&] { jobs::parse_job_file(twice); }),
             "twice.json: field 'top_n' is given twice in one object; give it once");
  // The same key in two objects is no repetition.
  const std::string two = write("two.json", R"({"jobs": [
      {"name": "a", "model": "model.h5", "dataset": "data.h5", "method": "eap", "metric": "logit_diff", "top_n": 5},
      {"name": "b", "model": "model.h5", "dataset": "data.h5", "method": "eap", "metric": "logit_diff", "top_n": 5,
       "out": "b"}]})");
  EXPECT_EQ(jobs::parse_job_file(two).jobs.size(), 2u);
}

TEST_F(JobFile, RefusesAFolderAsTheJobFile) {
  fs::create_directories(dir_ + "/jobs.yaml");
  EXPECT_HAS(error_of([&] { jobs::parse_job_file(dir_ + "/jobs.yaml"); }),
             "jobs.yaml' is a folder; give a .json, .yaml or .yml file");
}

// One decided ACDC step as the journal holds it.
constexpr const char* kStepLine =
    "{\"edge\": \"m1 -> output\", \"kept\": true, \"tried\": true, \"score\": 0.5, \"metric\": 0.1}\n";

TEST_F(JobFile, AJournalOfOtherSettingsIsRefusedAndTheForceOptionStartsAfresh) {
  // An interrupted run with ablation zero: resuming its decisions under
  // another ablation would give neither run's circuit.
  fs::create_directories(dir_ + "/a");
  const std::string journal = dir_ + "/a/journal.jsonl";
  write("a/journal.jsonl", "{\"config\": {\"name\": \"a\", \"ablation\": \"zero\"}}\n" + std::string(kStepLine));
  const std::string m = refusal(job("    method: acdc\n    threshold: 0.1\n"));
  EXPECT_HAS(m, "job 'a': " + journal + " is an interrupted run made with other settings (");
  EXPECT_HAS(m, "ablation");
  EXPECT_HAS(m, "start afresh with the force option");

  const std::string path = write("jobs.yaml", job("    method: acdc\n    threshold: 0.1\n"));
  const jobs::RunReport rep = jobs::run_job_file(jobs::parse_job_file(path), jobs::RunOptions().force(true).svg(false),
                                                 [](const std::vector<std::string>&) {});
  ASSERT_EQ(rep.first_error, "");
  const nlohmann::json doc = mechlab::discovery::read_circuit_document(dir_ + "/a/circuit.json");
  EXPECT_EQ(doc["results"]["details"]["acdc"]["resumed_steps"], 0);
  EXPECT_EQ(doc["config"]["ablation"], "corrupted");
  EXPECT_FALSE(fs::exists(journal));
}

// A forced rerun of a finished job, interrupted: its journal is this run's,
// and the next plain rerun resumes it instead of skipping the old circuit.
TEST_F(JobFile, AJournalBesideAFinishedCircuitIsResumedNotSkipped) {
  const std::string path = write("jobs.yaml", job("    method: acdc\n    threshold: 0.1\n"));
  auto run = [&] {
    return jobs::run_job_file(jobs::parse_job_file(path), jobs::RunOptions().svg(false),
                              [](const std::vector<std::string>&) {});
  };
  ASSERT_EQ(run().first_error, "");
  const nlohmann::json first = mechlab::discovery::read_circuit_document(dir_ + "/a/circuit.json");
  ASSERT_GE(first["trace"].size(), 2u);
  // What the forced rerun had journaled when it was stopped: its config and one decision.
  const nlohmann::json config = jobs::parse_job_file(path).runs().at(0).config;
  write("a/journal.jsonl", nlohmann::json{{"config", config}}.dump() + "\n" + first["trace"][0].dump() + "\n");
  const jobs::RunReport again = run();
  ASSERT_EQ(again.first_error, "");
  EXPECT_EQ(again.runs.at(0).status, "done");
  const nlohmann::json doc = mechlab::discovery::read_circuit_document(dir_ + "/a/circuit.json");
  EXPECT_EQ(doc["results"]["details"]["acdc"]["resumed_steps"], 1);
  EXPECT_EQ(doc["circuit"], first["circuit"]);
  EXPECT_FALSE(fs::exists(dir_ + "/a/journal.jsonl"));
}

TEST_F(JobFile, AJournalThatRecordsNoSettingsIsRefused) {
  fs::create_directories(dir_ + "/a");
  write("a/journal.jsonl", kStepLine);
  EXPECT_HAS(refusal(job("    method: acdc\n    threshold: 0.1\n")),
             "journal.jsonl records no settings (an older mechlab wrote it), so it cannot be resumed safely");
}

TEST_F(JobFile, ACircuitMadeFromOtherWeightsOrPromptsIsNotDone) {
  const std::string path = write("jobs.yaml", job("    method: eap\n    metric: logit_diff\n    top_n: 5\n"));
  auto run = [&](bool force) {
    return jobs::run_job_file(jobs::parse_job_file(path), jobs::RunOptions().force(force).svg(false),
                              [](const std::vector<std::string>&) {});
  };
  ASSERT_EQ(run(false).first_error, "");
  EXPECT_EQ(run(false).runs.at(0).status, "skipped: done");
  // The same config, other weights: a checkpoint retrained in place.
  mechlab::core::ModelConfig cfg = mechlab::core::load_model(dir_ + "/model.h5").config();
  mechlab::core::Transformer(cfg, 2).save(dir_ + "/model.h5");
  std::string m = refusal(job("    method: eap\n    metric: logit_diff\n    top_n: 5\n"));
  EXPECT_HAS(m, "holds a circuit made from other inputs (the model's weights differ); delete it, or replace it");
  ASSERT_EQ(run(true).first_error, "");
  EXPECT_EQ(run(false).runs.at(0).status, "skipped: done");
  // Other prompts under the same name: a dataset made again with another seed.
  mechlab::core::save_dataset(dir_ + "/data.h5", mechlab::core::tasks::make_task("ioi", {{"n", 4}, {"seed", 9}}));
  m = refusal(job("    method: eap\n    metric: logit_diff\n    top_n: 5\n"));
  EXPECT_HAS(m, "(the dataset's prompt pairs differ)");
}

// ------------------------------------------------------------ journal

TEST(Journal, WritesReadsAndIgnoresATruncatedLastLine) {
  const std::string path = temp_path("journal", "truncated.jsonl");
  fs::remove(path);
  EXPECT_TRUE(jobs::read_journal(path).entries.empty());  // missing = empty
  {
    jobs::JournalWriter w(path);
    w.append({{"edge", "a0.h0 -> output"}, {"kept", false}, {"metric", 0.5}});
    w.append({{"edge", "input -> output"}, {"kept", true}, {"metric", 0.25}});
    w.close();
  }
  // A kill in the middle of the third write.
  { std::ofstream(path, std::ios::app) << "{\"edge\": \"a0.h1 -> out"; }
  const jobs::JournalContents c = jobs::read_journal(path);
  ASSERT_EQ(c.entries.size(), 2u);
  EXPECT_EQ(c.entries[1]["edge"], "input -> output");
  EXPECT_TRUE(c.truncated_tail);
  // Resuming cuts the torn line away before appending.
  {
    jobs::JournalWriter w(path, c.valid_bytes);
    w.append({{"edge", "m0 -> output"}, {"kept", true}, {"metric", 0.1}});
    w.close();
  }
  const jobs::JournalContents again = jobs::read_journal(path);
  ASSERT_EQ(again.entries.size(), 3u);
  EXPECT_EQ(again.entries[2]["edge"], "m0 -> output");
  EXPECT_FALSE(again.truncated_tail);
}

TEST(Journal, AMalformedLineBeforeTheLastIsRefusedNamingIt) {
  const std::string path = temp_path("journal", "malformed.jsonl");
  { std::ofstream(path) << "{\"edge\": \"x\"}\nnot json\n{\"edge\": \"y\"}\n"; }
  EXPECT_HAS(error_of([&] { jobs::read_journal(path); }), "line 2 is not JSON");
  { std::ofstream(path) << "{\"edge\": \"x\"}\n[1, 2]\n"; }
  EXPECT_HAS(error_of([&] { jobs::read_journal(path); }), "line 2 is not a JSON object");
}

// Job arrays (apps/jobs/shard.h): I/N text, a Slurm array's environment
// (its task ids mapped to 0..COUNT-1) and the jobs a shard owns.
TEST(JobShard, ParsesIOverNAndRefusesBadShards) {
  using mechlab::jobs::parse_shard;
  const auto s = parse_shard("2/3");
  EXPECT_EQ(s.index, 2);
  EXPECT_EQ(s.count, 3);
  EXPECT_EQ(parse_shard("0/1").count, 1);
  EXPECT_EQ(error_of([] { parse_shard("3/3"); }), "shard '3/3': I must be 0 to 2 (shards are numbered from 0)");
  EXPECT_EQ(error_of([] { parse_shard("0/0"); }), "shard '0/0': N must be at least 1");
  for (const char* bad : {"", "1", "1/", "/2", "a/2", "1/2/3", " 1/2", "-1/2", "1/-2", "1234567890/2"}) {
    EXPECT_EQ(error_of([&] { parse_shard(bad); }),
              std::string("shard '") + bad + "' is not I/N; write e.g. 0/4 for the first of 4 shards")
        << bad;
  }
  // Shard I of N owns the jobs ≡ I mod N: each job exactly one shard.
  for (int64_t n = 1; n <= 4; ++n) {
    for (int64_t job = 0; job < 9; ++job) {
      int owners = 0;
      for (int64_t i = 0; i < n; ++i) owners += mechlab::jobs::Shard{i, n}.owns(job) ? 1 : 0;
      EXPECT_EQ(owners, 1);
      EXPECT_TRUE((mechlab::jobs::Shard{job % n, n}.owns(job)));
    }
  }
}

// srun -n 2 (or torchrun with 2 processes) would start two copies of the
// same job file into the same folders: refused, naming the variable.
TEST(JobShard, RefusesAProcessStartedAsOneOfSeveralForOneStep) {
  using Env = std::map<std::string, std::string>;
  auto check = [](const Env& env) {
    mechlab::jobs::refuse_parallel_launch([&env](const char* name) -> const char* {
      auto it = env.find(name);
      return it == env.end() ? nullptr : it->second.c_str();
    });
  };
  EXPECT_NO_THROW(check({}));
  EXPECT_NO_THROW(check({{"SLURM_STEP_NUM_TASKS", "1"}, {"WORLD_SIZE", "1"}, {"SLURM_NTASKS", "4"}}));
  EXPECT_EQ(error_of([&] { check({{"SLURM_STEP_NUM_TASKS", "2"}}); }),
            "this process is one of 2 started together (SLURM_STEP_NUM_TASKS=2): each would run the same jobs "
            "into the same folders; start mechlab discover once per task (srun -n 1; several tasks: sbatch "
            "--array or --shard I/N)");
  EXPECT_EQ(error_of([&] { check({{"WORLD_SIZE", "3"}}); }),
            "this process is one of 3 started together (WORLD_SIZE=3): each would run the same jobs into the "
            "same folders; start mechlab discover once per task (srun -n 1; several tasks: sbatch --array or "
            "--shard I/N)");
}

TEST(JobShard, TakesTheShardOfASlurmArrayTask) {
  using Env = std::map<std::string, std::string>;
  auto shard_of = [](const Env& env) {
    return mechlab::jobs::shard_from_slurm([&env](const char* name) -> const char* {
      auto it = env.find(name);
      return it == env.end() ? nullptr : it->second.c_str();
    });
  };
  EXPECT_FALSE(shard_of({}).has_value());
  EXPECT_FALSE(shard_of({{"SLURM_JOB_ID", "7"}}).has_value());
  auto s = shard_of({{"SLURM_ARRAY_TASK_ID", "1"}, {"SLURM_ARRAY_TASK_COUNT", "2"}});
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->index, 1);
  EXPECT_EQ(s->count, 2);
  // --array=1-4: ids 1..4 are shards 0..3.
  s = shard_of({{"SLURM_ARRAY_TASK_ID", "4"}, {"SLURM_ARRAY_TASK_COUNT", "4"}, {"SLURM_ARRAY_TASK_MIN", "1"}});
  EXPECT_EQ(s->index, 3);
  // --array=10-16:3: ids 10, 13, 16 are shards 0, 1, 2.
  s = shard_of({{"SLURM_ARRAY_TASK_ID", "13"},
                {"SLURM_ARRAY_TASK_COUNT", "3"},
                {"SLURM_ARRAY_TASK_MIN", "10"},
                {"SLURM_ARRAY_TASK_STEP", "3"}});
  EXPECT_EQ(s->index, 1);
  EXPECT_EQ(s->count, 3);

  EXPECT_EQ(error_of([&] { shard_of({{"SLURM_ARRAY_TASK_COUNT", "2"}}); }),
            "SLURM_ARRAY_TASK_COUNT is set but SLURM_ARRAY_TASK_ID is not; unset both, or give the shard "
            "explicitly");
  EXPECT_EQ(error_of([&] { shard_of({{"SLURM_ARRAY_TASK_ID", "0"}, {"SLURM_ARRAY_TASK_COUNT", "two"}}); }),
            "SLURM_ARRAY_TASK_COUNT='two' is not a whole number; give the shard explicitly");
  EXPECT_EQ(error_of([&] { shard_of({{"SLURM_ARRAY_TASK_ID", "0"}, {"SLURM_ARRAY_TASK_COUNT", "0"}}); }),
            "SLURM_ARRAY_TASK_COUNT=0 is not at least 1; give the shard explicitly");
  EXPECT_EQ(error_of([&] {
              shard_of({{"SLURM_ARRAY_TASK_ID", "5"}, {"SLURM_ARRAY_TASK_COUNT", "4"}, {"SLURM_ARRAY_TASK_MIN", "1"}});
            }),
            "SLURM_ARRAY_TASK_ID=5 is not one of the 4 tasks 1, 2, ... of an evenly spaced array "
            "(SLURM_ARRAY_TASK_MIN=1, SLURM_ARRAY_TASK_STEP=1); submit with --array=0-3 or give the shard "
            "explicitly");
  EXPECT_EQ(error_of([&] {
              shard_of({{"SLURM_ARRAY_TASK_ID", "0"}, {"SLURM_ARRAY_TASK_COUNT", "4"}, {"SLURM_ARRAY_TASK_MIN", "1"}});
            }),
            "SLURM_ARRAY_TASK_ID=0 is not one of the 4 tasks 1, 2, ... of an evenly spaced array "
            "(SLURM_ARRAY_TASK_MIN=1, SLURM_ARRAY_TASK_STEP=1); submit with --array=0-3 or give the shard "
            "explicitly");
}

TEST(JobShard, TheRunnerRefusesAShardOutsideItsCount) {
  const mechlab::jobs::JobFile file{};
  for (auto [i, n] : {std::pair<int64_t, int64_t>{2, 2}, {0, 0}, {-1, 2}}) {
    EXPECT_EQ(error_of([&] {
                mechlab::jobs::run_job_file(file, mechlab::jobs::RunOptions().shard_index(i).shard_count(n),
                                            [](const std::vector<std::string>&) {});
              }),
              "the shard_index option is " + std::to_string(i) + " and shard_count is " + std::to_string(n) +
                  "; give shard_count >= 1 and shard_index 0 to shard_count - 1");
  }
}
