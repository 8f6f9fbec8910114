// Job arrays on a real Slurm: scripts/slurm/local_cluster.sh starts a
// single-node cluster on localhost (munged, slurmctld, slurmd; 2 CPUs), and
// scripts/slurm/discover.sbatch runs a 4-job file as an array of 2 tasks.
// Both tasks finish, and the merged summary and every circuit equal a
// single-process run's; a task cancelled midway (its ACDC job journaled part
// of its decisions) and resubmitted finishes with the same circuits.
//
// ctest label "slurm" (tests/CMakeLists.txt). Without slurm-wlm and munge
// these tests fail, not skip: scripts/setup.sh installs them.
#include "core/data/tasks/tasks.h"
#include "core/model/presets.h"
#include "core/model/transformer.h"
#include "patching/discovery/circuit_output.h"
#include "tests/test_util.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

using mechlab::testing::CliResult;
using mechlab::testing::run_program;
using mechlab::testing::temp_path;
namespace fs = std::filesystem;

namespace {

const std::string kSource = MECHLAB_SOURCE_DIR;
const std::string kNoSlurm =
    "env -u SLURM_ARRAY_TASK_ID -u SLURM_ARRAY_TASK_COUNT -u SLURM_ARRAY_TASK_MIN -u SLURM_ARRAY_TASK_STEP ";

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// One cluster per test program, its state in the test's temporary folder and
// on ports of its own (the process id), so parallel test runs do not meet.
class LocalSlurm : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = temp_path("discover_slurm", "cluster");
    const int port = 20000 + static_cast<int>(::getpid() % 20000) * 2;
    env_ = "MECHLAB_SLURM_DIR=" + dir_ + " MECHLAB_SLURMCTLD_PORT=" + std::to_string(port) +
           " MECHLAB_SLURMD_PORT=" + std::to_string(port + 1) + " ";
    started_ = run_program(env_ + kSource + "/scripts/slurm/local_cluster.sh start");
  }
  static void TearDownTestSuite() { run_program(env_ + kSource + "/scripts/slurm/local_cluster.sh stop"); }
  void SetUp() override {
    ASSERT_EQ(run_program("command -v sbatch && command -v slurmctld && command -v munged").rc, 0)
        << "slurm-wlm and munge are not installed; scripts/setup.sh installs them";
    ASSERT_EQ(started_.rc, 0) << started_.output;
  }
  // A Slurm client command against the local cluster.
  static CliResult slurm(const std::string& command) {
    return run_program("SLURM_CONF=" + dir_ + "/slurm.conf " + command);
  }
  // Submits scripts/slurm/discover.sbatch for `array` with the local
  // cluster's resources (no GPU, 1 CPU, little memory); its job id.
  static std::string submit(const std::string& jobfile, const std::string& array, const std::string& extra = "",
                            bool wait = true) {
    const CliResult r = slurm("sbatch --parsable " + std::string(wait ? "--wait " : "") + "--array=" + array +
                              " --gres=none -c 1 --mem=500M --time=10 -o " + fs::path(jobfile).parent_path().string() +
                              "/slurm-%A_%a.out --export=ALL,MECHLAB=" + MECHLAB_BINARY + " " + kSource +
                              "/scripts/slurm/discover.sbatch " + jobfile + " --no-svg" + extra);
    EXPECT_EQ(r.rc, 0) << r.output;
    return r.output.substr(0, r.output.find_first_of(";\n"));
  }
  static inline std::string dir_, env_;
  static inline CliResult started_{-1, "not started"};
};

// Four jobs on a random 4-layer model: two EAP jobs, EAP-IG, and ACDC one
// trial at a time (max_batch 1: slow enough to cancel midway).
std::string make_job_dir(const std::string& name) {
  const std::string dir = temp_path("discover_slurm", name);
  mechlab::testing::remove_tree(dir);
  fs::create_directories(dir);
  const nlohmann::json ioi = {{"n", 16}, {"seed", 5}};
  mechlab::core::ModelConfig cfg = mechlab::core::preset("tiny");
  cfg.n_layers = 4;
  cfg.d_vocab = static_cast<int>(mechlab::core::tasks::make_task("ioi", ioi).d_vocab);
  mechlab::core::Transformer(cfg, 11).save(dir + "/model.h5");
  std::ofstream(dir + "/jobs.json") << R"({
  "steps": [{"dataset": {"task": "ioi", "out": "data.h5", "n": 16, "seed": 5}}],
  "jobs": [
    {"name": "eap", "model": "model.h5", "dataset": "data.h5", "method": "eap", "metric": "logit_diff", "top_n": 40},
    {"name": "acdc", "model": "model.h5", "dataset": "data.h5", "method": "acdc", "threshold": 0.000001,
     "max_batch": 1},
    {"name": "ig", "model": "model.h5", "dataset": "data.h5", "method": "eap-ig", "metric": "logit_diff",
     "steps": 3, "threshold": 0.0003},
    {"name": "sweep", "model": "model.h5", "dataset": "data.h5", "method": "eap", "metric": "logit_diff",
     "thresholds": [0.0001, 0.001]}
  ]
})";
  return dir;
}

std::string table_without_seconds(const std::string& output) {
  const size_t at = output.find("job                  method");
  if (at == std::string::npos) return "(no table)";
  std::string table = output.substr(at);
  table = table.substr(0, table.find("\n\n"));
  return std::regex_replace(table, std::regex(" +[0-9]+\\.[0-9]  "), " S  ");
}

std::string circuit_of(const std::string& out) {
  return mechlab::discovery::read_circuit_document(out + "/circuit.json")["circuit"].dump();
}

const char* kRuns[] = {"eap", "acdc", "ig", "sweep/threshold-0.0001", "sweep/threshold-0.001"};

// The single-process reference, made once.
const std::string& single_run_table() {
  static const std::string table = [] {
    const std::string dir = make_job_dir("single");
    const CliResult r = run_program(kNoSlurm + MECHLAB_BINARY + " discover " + dir + "/jobs.json --threads 1 --no-svg");
    EXPECT_EQ(r.rc, 0) << r.output;
    return table_without_seconds(r.output);
  }();
  return table;
}

}  // namespace

TEST_F(LocalSlurm, AnArrayOfTwoTasksMergesToTheSingleProcessRun) {
  const std::string want = single_run_table();
  const std::string dir = make_job_dir("array");
  const std::string jid = submit(dir + "/jobs.json", "0-1");
  const std::string out0 = slurp(dir + "/slurm-" + jid + "_0.out"), out1 = slurp(dir + "/slurm-" + jid + "_1.out");
  EXPECT_NE(out0.find("shard 0/2: eap, ig (of 4 jobs)"), std::string::npos) << out0;
  EXPECT_NE(out1.find("shard 1/2: acdc, sweep (of 4 jobs)"), std::string::npos) << out1;
  // The dataset step ran once, in one of the two tasks.
  EXPECT_EQ((out0 + out1).find("step 1 (dataset): writing"), (out0 + out1).rfind("step 1 (dataset): writing"));
  const CliResult merged =
      run_program(kNoSlurm + MECHLAB_BINARY + " discover " + dir + "/jobs.json --summary");
  ASSERT_EQ(merged.rc, 0) << merged.output << out0 << out1;
  EXPECT_EQ(table_without_seconds(merged.output), want);
  const std::string single = temp_path("discover_slurm", "single");
  for (const char* run : kRuns) {
    EXPECT_EQ(circuit_of(dir + "/" + run), circuit_of(single + "/" + run)) << run;
  }
}

TEST_F(LocalSlurm, ATaskCancelledMidwayAndResubmittedFinishesWithTheSameCircuits) {
  const std::string want = single_run_table();
  const std::string dir = make_job_dir("cancel");
  const std::string jid = submit(dir + "/jobs.json", "0-1", "", /*wait=*/false);
  // Task 1 runs ACDC first: cancel it once it has journaled some decisions
  // (its summary row then says interrupted, not missing).
  const std::string journal = dir + "/acdc/journal.jsonl";
  bool midway = false;
  for (int i = 0; i < 1200 && !midway; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    // Past its first line (the run's config): decisions were journaled.
    const std::string text = fs::exists(journal) ? slurp(journal) : "";
    midway = std::count(text.begin(), text.end(), '\n') >= 3 && !fs::exists(dir + "/acdc/circuit.json");
  }
  ASSERT_TRUE(midway) << "ACDC never ran, or finished before it could be cancelled\n"
                      << slurp(dir + "/slurm-" + jid + "_1.out");
  ASSERT_EQ(slurm("scancel " + jid + "_1").rc, 0);
  for (int i = 0; i < 600; ++i) {  // wait for the whole array to leave the queue
    if (slurm("squeue -h -j " + jid).output.empty()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(slurm("squeue -h -j " + jid).output, "");
  EXPECT_FALSE(fs::exists(dir + "/acdc/circuit.json"));
  const CliResult partial = run_program(kNoSlurm + MECHLAB_BINARY + " discover " + dir + "/jobs.json --summary");
  EXPECT_NE(partial.rc, 0) << partial.output;
  EXPECT_NE(partial.output.find("job 'acdc' (1e-06): interrupted"), std::string::npos) << partial.output;

  // Resubmit task 1 alone: its shard given explicitly (a one-task array has
  // SLURM_ARRAY_TASK_COUNT=1). It resumes ACDC from the journal.
  const std::string again = submit(dir + "/jobs.json", "1", " --shard 1/2");
  const std::string log = slurp(dir + "/slurm-" + again + "_1.out");
  EXPECT_NE(log.find("shard 1/2: acdc, sweep (of 4 jobs)"), std::string::npos) << log;
  const CliResult merged = run_program(kNoSlurm + MECHLAB_BINARY + " discover " + dir + "/jobs.json --summary");
  ASSERT_EQ(merged.rc, 0) << merged.output << log;
  EXPECT_EQ(table_without_seconds(merged.output), want);
  const std::string single = temp_path("discover_slurm", "single");
  for (const char* run : kRuns) {
    EXPECT_EQ(circuit_of(dir + "/" + run), circuit_of(single + "/" + run)) << run;
  }
  EXPECT_FALSE(fs::exists(journal));
  // The resumed ACDC continued after the cancelled task's decisions, and
  // its circuit is not trivial (some edges kept, some removed).
  EXPECT_NE(log.find("acdc: resuming after the "), std::string::npos) << log;
  const nlohmann::json acdc = mechlab::discovery::read_circuit_document(dir + "/acdc/circuit.json");
  EXPECT_GT(acdc["circuit"]["n_kept"].get<int64_t>(), 0);
  EXPECT_LT(acdc["circuit"]["n_kept"].get<int64_t>(), acdc["circuit"]["n_edges"].get<int64_t>());
}
