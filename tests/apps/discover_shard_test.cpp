// Job arrays (`mechlab discover --shard I/N`, apps/jobs/shard.h): each shard
// runs the jobs whose index is I mod N and writes only their folders; a
// requeued shard skips its finished jobs; `--summary` merges the shards and
// equals a single-process run's summary; a Slurm array task takes its shard
// from the environment; the steps run once under a lock while the other
// shards wait; every bad shard is a one-line refusal.
#include "core/data/tasks/tasks.h"
#include "core/model/presets.h"
#include "core/model/transformer.h"
#include "patching/discovery/circuit_output.h"
#include "tests/test_util.h"

#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

using mechlab::testing::run_program;
using mechlab::testing::temp_path;
namespace fs = std::filesystem;

namespace {

// The tests choose their shard themselves: a suite run inside a Slurm array
// must not shard these runs.
const std::string kNoSlurm =
    "env -u SLURM_ARRAY_TASK_ID -u SLURM_ARRAY_TASK_COUNT -u SLURM_ARRAY_TASK_MIN -u SLURM_ARRAY_TASK_STEP ";

mechlab::testing::CliResult discover(const std::string& dir, const std::string& extra, const std::string& env = "") {
  return run_program(kNoSlurm + env + " " + std::string(MECHLAB_BINARY) + " discover " + dir +
                     "/jobs.json --threads 1 --no-svg" + extra);
}

const char* kJobs[] = {"eap", "ig", "sweep", "acdc"};

// Four jobs (one a τ sweep: five runs) on a tiny random model, the dataset
// made by a step.
std::string make_job_dir(const std::string& name) {
  const std::string dir = temp_path("discover_shard", name);
  mechlab::testing::remove_tree(dir);
  fs::create_directories(dir);
  const nlohmann::json ioi = {{"n", 6}, {"seed", 2}};
  mechlab::core::ModelConfig cfg = mechlab::core::preset("tiny");
  cfg.d_vocab = static_cast<int>(mechlab::core::tasks::make_task("ioi", ioi).d_vocab);
  mechlab::core::Transformer(cfg, 3).save(dir + "/model.h5");
  std::ofstream(dir + "/jobs.json") << R"({
  "steps": [{"dataset": {"task": "ioi", "out": "data.h5", "n": 6, "seed": 2}}],
  "jobs": [
    {"name": "eap", "model": "model.h5", "dataset": "data.h5", "method": "eap", "metric": "logit_diff", "top_n": 30},
    {"name": "ig", "model": "model.h5", "dataset": "data.h5", "method": "eap-ig", "metric": "logit_diff",
     "steps": 2, "threshold": 0.0003},
    {"name": "sweep", "model": "model.h5", "dataset": "data.h5", "method": "eap", "metric": "logit_diff",
     "thresholds": [0.0001, 0.001]},
    {"name": "acdc", "model": "model.h5", "dataset": "data.h5", "method": "acdc", "threshold": 0.000002,
     "max_batch": 4}
  ]
})";
  return dir;
}

// The summary table (from its header line on) with the seconds column
// blanked: everything else must match between runs.
std::string table_without_seconds(const std::string& output) {
  const size_t at = output.find("job                  method");
  if (at == std::string::npos) return "(no table)";
  std::string table = output.substr(at, output.find("\n\n", at) - at);
  table = table.substr(0, table.find("\nheads and MLPs"));
  return std::regex_replace(table, std::regex(" +[0-9]+\\.[0-9]  "), " S  ");
}

std::string circuit_of(const std::string& out) {
  return mechlab::discovery::read_circuit_document(out + "/circuit.json")["circuit"].dump();
}

size_t count_of(const std::string& text, const std::string& word) {
  size_t n = 0;
  for (size_t at = text.find(word); at != std::string::npos; at = text.find(word, at + 1)) ++n;
  return n;
}

}  // namespace

TEST(DiscoverShard, TwoShardsWriteOnlyTheirJobsAndTheMergedSummaryEqualsOneProcess) {
  const std::string single = make_job_dir("single");
  const auto one = discover(single, "");
  ASSERT_EQ(one.rc, 0) << one.output;

  const std::string dir = make_job_dir("sharded");
  const auto s1 = discover(dir, " --shard 1/2");
  ASSERT_EQ(s1.rc, 0) << s1.output;
  EXPECT_NE(s1.output.find("shard 1/2: ig, acdc (of 4 jobs)"), std::string::npos) << s1.output;
  EXPECT_NE(s1.output.find("step 1 (dataset): writing"), std::string::npos) << s1.output;
  // Only shard 1's jobs (indices 1 and 3) have folders.
  EXPECT_FALSE(fs::exists(dir + "/eap"));
  EXPECT_FALSE(fs::exists(dir + "/sweep"));
  EXPECT_TRUE(fs::exists(dir + "/ig/circuit.json"));
  EXPECT_TRUE(fs::exists(dir + "/acdc/circuit.json"));

  // The merge refuses while shard 0 has not run, after printing the table.
  const auto partial = discover(dir, " --summary");
  EXPECT_NE(partial.rc, 0);
  EXPECT_NE(partial.output.find("3 of 5 runs of " + dir + "/jobs.json have no current circuit: job 'eap' (top 30): "
                                "missing, job 'sweep' (0.0001): missing, job 'sweep' (0.001): missing; run (or "
                                "rerun) their shards\n"),
            std::string::npos)
      << partial.output;
  EXPECT_EQ(count_of(partial.output, "  missing\n"), 3u) << partial.output;
  EXPECT_FALSE(fs::exists(dir + "/eap"));  // --summary runs nothing

  const auto s0 = discover(dir, " --shard 0/2");
  ASSERT_EQ(s0.rc, 0) << s0.output;
  EXPECT_NE(s0.output.find("step 1 (dataset): skipped"), std::string::npos) << s0.output;
  EXPECT_EQ(count_of(s0.output, " edges kept -> "), 3u) << s0.output;  // eap, sweep at two τ

  // A requeued task resumes: its finished jobs are skipped, nothing rewritten.
  const std::string before = mechlab::testing::run_program("cat " + dir + "/ig/circuit.json").output;
  const auto again = discover(dir, " --shard 1/2");
  ASSERT_EQ(again.rc, 0) << again.output;
  EXPECT_EQ(count_of(again.output, ": skipped: done ("), 2u) << again.output;
  EXPECT_EQ(mechlab::testing::run_program("cat " + dir + "/ig/circuit.json").output, before);

  // The merged summary equals the single process's table (statuses "done",
  // kept edges, metrics, faithfulness; the seconds blanked), and each
  // circuit is the same.
  const auto merged = discover(dir, " --summary");
  ASSERT_EQ(merged.rc, 0) << merged.output;
  const std::string want = table_without_seconds(one.output);
  EXPECT_EQ(count_of(want, "  done"), 5u) << want;
  EXPECT_EQ(table_without_seconds(merged.output), want) << merged.output << "\nsingle:\n" << one.output;
  for (const char* job : kJobs) {
    const std::string sub = std::string(job) == "sweep" ? "/threshold-0.001" : "";
    EXPECT_EQ(circuit_of(dir + "/" + job + sub), circuit_of(single + "/" + job + sub)) << job;
  }
  // The heads of each circuit follow the merged table, as after a run.
  EXPECT_NE(merged.output.find("heads and MLPs of each circuit:\n  eap (top 30)"), std::string::npos)
      << merged.output;

  // A circuit made with other settings is not merged.
  const auto forced = discover(dir, " --only eap --force");
  ASSERT_EQ(forced.rc, 0) << forced.output;
  std::string text = mechlab::testing::run_program("cat " + dir + "/jobs.json").output;
  text.replace(text.find("\"top_n\": 30"), 11, "\"top_n\": 31");
  std::ofstream(dir + "/jobs.json") << text;
  const auto stale = discover(dir, " --summary");
  EXPECT_NE(stale.rc, 0);
  EXPECT_NE(stale.output.find("stale: made with other settings (top_n differ)"), std::string::npos)
      << stale.output;
}

TEST(DiscoverShard, ASlurmArrayTaskTakesItsShardFromTheEnvironment) {
  const std::string dir = make_job_dir("slurm_env");
  // --array=1-2: task ids 1 and 2, MIN 1; id 2 is the second task, shard 1.
  const auto r = discover(dir, "",
                          "SLURM_ARRAY_TASK_ID=2 SLURM_ARRAY_TASK_COUNT=2 SLURM_ARRAY_TASK_MIN=1 "
                          "SLURM_ARRAY_TASK_STEP=1");
  ASSERT_EQ(r.rc, 0) << r.output;
  EXPECT_NE(r.output.find("shard 1/2: ig, acdc (of 4 jobs)"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir + "/eap"));
  EXPECT_TRUE(fs::exists(dir + "/acdc/circuit.json"));
  // --shard wins over the environment.
  const auto explicit_shard = discover(dir, " --shard 0/4", "SLURM_ARRAY_TASK_ID=1 SLURM_ARRAY_TASK_COUNT=2");
  ASSERT_EQ(explicit_shard.rc, 0) << explicit_shard.output;
  EXPECT_NE(explicit_shard.output.find("shard 0/4: eap (of 4 jobs)"), std::string::npos) << explicit_shard.output;
  EXPECT_TRUE(fs::exists(dir + "/eap/circuit.json"));
  EXPECT_FALSE(fs::exists(dir + "/sweep"));
}

TEST(DiscoverShard, BadShardsAreOneLineRefusalsBeforeAnyWork) {
  const std::string dir = make_job_dir("refusals");
  auto refused = [&](const std::string& extra, const std::string& env, const std::string& message) {
    const auto r = discover(dir, extra, env);
    EXPECT_NE(r.rc, 0) << extra << env;
    EXPECT_EQ(r.output, "mechlab: error: " + message + "\n") << extra << " " << env;
  };
  refused(" --shard 2/2", "", "--shard '2/2': I must be 0 to 1 (shards are numbered from 0)");
  refused(" --shard 0/0", "", "--shard '0/0': N must be at least 1");
  refused(" --shard 1of2", "", "--shard '1of2' is not I/N; write e.g. 0/4 for the first of 4 shards");
  refused(" --shard 0/2 --only eap", "", "--only and --shard both select jobs; give one of them");
  refused(" --summary --shard 0/2", "",
          "--summary reads every job's results and runs nothing; give it without --shard, --only and --force");
  refused("", "SLURM_ARRAY_TASK_ID=2 SLURM_ARRAY_TASK_COUNT=2",
          "SLURM_ARRAY_TASK_ID=2 is not one of the 2 tasks 0, 1, ... of an evenly spaced array "
          "(SLURM_ARRAY_TASK_MIN=0, SLURM_ARRAY_TASK_STEP=1); submit with --array=0-1 or give the shard "
          "explicitly");
  refused("", "SLURM_ARRAY_TASK_ID=1",
          "SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not; unset both, or give the shard "
          "explicitly");
  refused("", "SLURM_ARRAY_TASK_ID=x SLURM_ARRAY_TASK_COUNT=2",
          "SLURM_ARRAY_TASK_ID='x' is not a whole number; give the shard explicitly");
  refused("", "SLURM_ARRAY_TASK_ID=3 SLURM_ARRAY_TASK_COUNT=2 SLURM_ARRAY_TASK_MIN=0 SLURM_ARRAY_TASK_STEP=2",
          "SLURM_ARRAY_TASK_ID=3 is not one of the 2 tasks 0, 2, ... of an evenly spaced array "
          "(SLURM_ARRAY_TASK_MIN=0, SLURM_ARRAY_TASK_STEP=2); submit with --array=0-1 or give the shard "
          "explicitly");
  EXPECT_FALSE(fs::exists(dir + "/data.h5"));  // no step ran
}

// The steps run under <folder>/.jobs.json.lock: while another process holds
// it, a shard waits (writing nothing), then finds the steps done or runs
// them itself. Here the test holds the lock, as a shard running the steps
// would.
TEST(DiscoverShard, AShardWaitsForTheStepsLockThenRunsTheSteps) {
  const std::string dir = make_job_dir("lock");
  const int fd = ::open((dir + "/.jobs.json.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::flock(fd, LOCK_EX), 0);
  const std::string log = dir + "/shard.log";
  const pid_t pid = mechlab::testing::spawn_process(
      {"/usr/bin/env", "-u", "SLURM_ARRAY_TASK_ID", "-u", "SLURM_ARRAY_TASK_COUNT", MECHLAB_BINARY, "discover",
       dir + "/jobs.json", "--threads", "1", "--no-svg", "--shard", "0/4"},
      log);
  ASSERT_GT(pid, 0);
  std::string text;
  for (int i = 0; i < 600 && text.find("waiting for it") == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    text = run_program("cat " + log).output;
  }
  EXPECT_NE(text.find("steps: another run holds " + dir + "/.jobs.json.lock; waiting for it"), std::string::npos)
      << text;
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_FALSE(fs::exists(dir + "/data.h5"));  // nothing written while the lock is held
  EXPECT_FALSE(fs::exists(dir + "/eap"));
  ASSERT_EQ(::close(fd), 0);  // releases the lock
  EXPECT_EQ(mechlab::testing::wait_exit(pid), 0) << run_program("cat " + log).output;
  text = run_program("cat " + log).output;
  EXPECT_NE(text.find("step 1 (dataset): writing"), std::string::npos) << text;
  EXPECT_TRUE(fs::exists(dir + "/eap/circuit.json"));

  // Steps all done: no lock is taken (a read-only folder would do).
  const int fd2 = ::open((dir + "/.jobs.json.lock").c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd2, 0);
  ASSERT_EQ(::flock(fd2, LOCK_EX), 0);
  const auto r = discover(dir, " --shard 0/4");
  EXPECT_EQ(r.rc, 0) << r.output;
  EXPECT_EQ(r.output.find("waiting"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("step 1 (dataset): skipped"), std::string::npos) << r.output;
  ::close(fd2);
}

// Two shards started together: the step runs once, the other shard skips it.
TEST(DiscoverShard, ConcurrentShardsRunEachStepOnce) {
  const std::string dir = make_job_dir("concurrent");
  const auto r = run_program("cd " + dir + " && (" + kNoSlurm + MECHLAB_BINARY +
                             " discover jobs.json --threads 1 --no-svg --shard 0/4 > a.log 2>&1 & " + kNoSlurm +
                             MECHLAB_BINARY +
                             " discover jobs.json --threads 1 --no-svg --shard 1/4 > b.log 2>&1; rb=$?; wait $!; "
                             "ra=$?; cat a.log b.log; test $ra = 0 && test $rb = 0)");
  ASSERT_EQ(r.rc, 0) << r.output;
  EXPECT_EQ(count_of(r.output, "step 1 (dataset): writing"), 1u) << r.output;
  EXPECT_EQ(count_of(r.output, "step 1 (dataset): skipped"), 1u) << r.output;
  EXPECT_TRUE(fs::exists(dir + "/eap/circuit.json"));
  EXPECT_TRUE(fs::exists(dir + "/ig/circuit.json"));
  EXPECT_FALSE(fs::exists(dir + "/sweep"));
}

// A shard beyond the jobs has nothing to do: no step, no folder.
TEST(DiscoverShard, AShardWithoutJobsDoesNothing) {
  const std::string dir = make_job_dir("empty_shard");
  const auto r = discover(dir, " --shard 5/8");
  ASSERT_EQ(r.rc, 0) << r.output;
  EXPECT_NE(r.output.find("shard 5/8: no jobs (of 4 jobs)"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir + "/data.h5"));
  EXPECT_FALSE(fs::exists(dir + "/.jobs.json.lock"));
}
