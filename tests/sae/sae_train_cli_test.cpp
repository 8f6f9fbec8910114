// `mechlab sae train`: a run killed with SIGKILL between (or during)
// checkpoints and resumed with --resume ends with the same weights, bit for
// bit, as an uninterrupted run; Ctrl-C saves a checkpoint that resumes;
// YAML configs; one-line refusals; and the job file's sae_train step (done
// once out/sae exists, resumed when killed).
#include "apps/jobs/job_file.h"
#include "core/formats/hdf5_file.h"
#include "tests/test_util.h"

#include <gtest/gtest.h>

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

namespace mechlab {
namespace {

namespace fs = std::filesystem;
using testing::run_cli;

std::string make_dir(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("mechlab_sae_cli_" + name + "_" + std::to_string(::getpid()));
  mechlab::testing::remove_tree(d);
  fs::create_directories(d);
  return d.string();
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  ASSERT_TRUE(out.good()) << path;
}

// Long enough (a few seconds) to be killed mid-run; a checkpoint every 10 steps.
const char* kConfig = R"({"name": "kill", "sae": {"architecture": "topk", "d_in": 64, "d_sae": 256, "k": 8},
  "data": {"toy": {"n_features": 128, "d": 64, "p_active": 0.04, "seed": 3}},
  "steps": 400, "batch_size": 512, "lr": 1e-3, "eval_every": 50, "eval_rows": 256,
  "checkpoint_every": 10, "dead_feature_window": 20, "b_dec_init": "geometric_median", "seed": 5})";

int64_t checkpoint_step(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return -1;
  try {
    const core::H5File f = core::H5File::open_read(path);
    return f.read_attr_int("train", "step");
  } catch (const std::exception&) {
    return -1;  // being renamed into place
  }
}

void expect_same_sae(const std::string& a, const std::string& b) {
  const core::H5File fa = core::H5File::open_read(a), fb = core::H5File::open_read(b);
  for (const char* name : {"W_enc", "b_enc", "W_dec", "b_dec"}) {
    const std::string ds = std::string("sae/") + name;
    EXPECT_TRUE(at::equal(fa.read_tensor(ds), fb.read_tensor(ds))) << ds << " differs";
  }
  EXPECT_TRUE(at::equal(fa.read_tensor("sae_trainer/steps_since_fired"), fb.read_tensor("sae_trainer/steps_since_fired")));
}

TEST(SaeTrainCli, AfterSigkillTheResumedRunEqualsTheUninterruptedOne) {
  const std::string dir = make_dir("kill");
  write_file(dir + "/cfg.json", kConfig);
  const std::string whole = dir + "/whole", cut = dir + "/cut";
  const testing::CliResult w = run_cli("sae train " + dir + "/cfg.json --out " + whole + " --threads 1 --no-progress");
  ASSERT_EQ(w.rc, 0) << w.output;

  const pid_t pid = testing::spawn_process(
      {MECHLAB_BINARY, "sae", "train", dir + "/cfg.json", "--out", cut, "--threads", "1", "--no-progress"},
      dir + "/log");
  ASSERT_GT(pid, 0);
  int64_t seen = -1;
  for (int i = 0; i < 6000 && seen < 30; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    seen = checkpoint_step(cut + "/checkpoint.h5");
  }
  ASSERT_GE(seen, 30) << "no checkpoint of step 30 appeared";
  ::kill(pid, SIGKILL);
  ASSERT_EQ(testing::wait_exit(pid), -SIGKILL);
  const int64_t kept = checkpoint_step(cut + "/checkpoint.h5");
  ASSERT_LT(kept, 400) << "the run finished before it was killed";
  EXPECT_FALSE(fs::exists(cut + "/sae")) << "the killed run must not have written its final SAE";

  const testing::CliResult r =
      run_cli("sae train " + dir + "/cfg.json --out " + cut + " --threads 1 --no-progress --resume");
  ASSERT_EQ(r.rc, 0) << r.output;
  EXPECT_NE(r.output.find("kill: 400 steps"), std::string::npos) << r.output;
  expect_same_sae(whole + "/checkpoint.h5", cut + "/checkpoint.h5");
  std::ifstream a(whole + "/sae_log.csv"), b(cut + "/sae_log.csv");
  const std::string la{std::istreambuf_iterator<char>(a), {}}, lb{std::istreambuf_iterator<char>(b), {}};
  EXPECT_EQ(la, lb);
  EXPECT_TRUE(fs::exists(cut + "/sae/cfg.json"));
  EXPECT_TRUE(fs::exists(cut + "/sae/sae_weights.safetensors"));
}

TEST(SaeTrainCli, CtrlCSavesACheckpointThatResumes) {
  const std::string dir = make_dir("sigint");
  write_file(dir + "/cfg.json", kConfig);
  const std::string out = dir + "/run", log = dir + "/log";
  const pid_t pid = testing::spawn_process(
      {MECHLAB_BINARY, "sae", "train", dir + "/cfg.json", "--out", out, "--threads", "1", "--no-progress"}, log);
  ASSERT_GT(pid, 0);
  int64_t seen = -1;
  for (int i = 0; i < 6000 && seen < 10; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    seen = checkpoint_step(out + "/checkpoint.h5");
  }
  ASSERT_GE(seen, 10);
  ::kill(pid, SIGINT);
  ASSERT_EQ(testing::wait_exit(pid), 130);
  std::ifstream in(log);
  const std::string text{std::istreambuf_iterator<char>(in), {}};
  const int64_t step = checkpoint_step(out + "/checkpoint.h5");
  ASSERT_GT(step, 0);
  EXPECT_NE(text.find("interrupted at step " + std::to_string(step) + " of 400; the checkpoint of step " +
                      std::to_string(step)),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("resume with the same command and --resume"), std::string::npos) << text;
  const testing::CliResult r = run_cli("sae train " + dir + "/cfg.json --out " + out + " --threads 1 --no-progress --resume");
  ASSERT_EQ(r.rc, 0) << r.output;
  EXPECT_NE(r.output.find("kill: 400 steps"), std::string::npos) << r.output;
}

TEST(SaeTrainCli, ReadsYamlAndRefusesInOneLine) {
  const std::string dir = make_dir("yaml");
  write_file(dir + "/cfg.yaml",
             "name: y\nsae: {architecture: relu, d_in: 8, d_sae: 16, l1_coefficient: 0.01}\n"
             "data: {toy: {n_features: 12, d: 8, p_active: 0.2}}\nsteps: 6\nbatch_size: 32\neval_every: 3\n"
             "eval_rows: 32\n");
  const testing::CliResult r = run_cli("sae train " + dir + "/cfg.yaml --out " + dir + "/run --no-progress");
  ASSERT_EQ(r.rc, 0) << r.output;
  EXPECT_NE(r.output.find("y: 6 steps; L0 "), std::string::npos) << r.output;
  // Again without --resume or --overwrite: refused, naming the option.
  const testing::CliResult again = run_cli("sae train " + dir + "/cfg.yaml --out " + dir + "/run --no-progress");
  EXPECT_EQ(again.rc, 1);
  EXPECT_NE(again.output.find("already holds a training run"), std::string::npos) << again.output;
  // k > d_sae.
  const testing::CliResult k = run_cli("sae train " + dir + "/cfg.yaml --out " + dir +
                                       "/k --no-progress --set sae.architecture=topk --set sae.k=17");
  EXPECT_EQ(k.rc, 1);
  EXPECT_NE(k.output.find("mechlab: error: "), std::string::npos) << k.output;
  EXPECT_NE(k.output.find("16"), std::string::npos) << k.output;
  EXPECT_EQ(std::count(k.output.begin(), k.output.end(), '\n'), 1) << k.output;
}

TEST(SaeTrainCli, JobFileStepRunsSaeTrainIsDoneOnceSaeExistsAndResumesAKilledRun) {
  const std::string dir = make_dir("job");
  write_file(dir + "/sae.json", kConfig);
  write_file(dir + "/m.h5", "");  // the job's inputs need only exist to parse
  write_file(dir + "/d.h5", "");
  const nlohmann::json doc = nlohmann::json::parse(R"({"steps": [{"sae_train": {"config": "sae.json",
      "out": "runs/sae", "threads": 1, "no-progress": true}}],
      "jobs": [{"name": "j", "model": "m.h5", "dataset": "d.h5", "method": "eap", "metric": "logit_diff", "threshold": 0.1}]})");
  const jobs::JobFile file = jobs::parse_job_document(doc, dir + "/job.json", dir);
  ASSERT_EQ(file.steps.size(), 1u);
  const jobs::Step& s = file.steps[0];
  const std::string out = dir + "/runs/sae";
  // Flags in the step kind's order.
  EXPECT_EQ(s.argv, (std::vector<std::string>{"sae", "train", dir + "/sae.json", "--out", out, "--no-progress",
                                              "--threads", "1"}));
  EXPECT_EQ(s.done, out + "/sae");
  EXPECT_FALSE(jobs::step_done(s));
  EXPECT_EQ(jobs::step_command(s), s.argv);
  // Killed part-way (a checkpoint, no sae/): the command resumes it, and finishes it.
  std::string line;
  for (const auto& w : s.argv) line += " " + w;
  const testing::CliResult part = run_cli(line.substr(1) + " --max-steps 20");
  ASSERT_EQ(part.rc, 0) << part.output;
  EXPECT_FALSE(jobs::step_done(s));
  std::vector<std::string> resume = s.argv;
  resume.push_back("--resume");
  ASSERT_EQ(jobs::step_command(s), resume);
  line.clear();
  for (const auto& w : resume) line += " " + w;
  const testing::CliResult rest = run_cli(line.substr(1));
  ASSERT_EQ(rest.rc, 0) << rest.output;
  EXPECT_TRUE(jobs::step_done(s));
}

}  // namespace
}  // namespace mechlab
