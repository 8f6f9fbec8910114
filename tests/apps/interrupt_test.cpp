// Ctrl-C in a long job: a child `mechlab cache` / `mechlab train` is sent
// SIGINT mid-run and must exit with code 130 and one line saying what was
// kept and how to resume, leaving outputs that the resume completes;
// `mechlab patch` stops between batched forwards, keeps nothing new and
// leaves the results already in its folder byte for byte.
#include "core/store/activation_store.h"
#include "core/data/dataset.h"
#include "core/model/presets.h"
#include "core/model/transformer.h"
#include "tests/test_util.h"

#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace mechlab {
namespace {

std::string temp_path(const std::string& name) {
  return testing::temp_path("interrupt_test", name);
}

using testing::spawn_process;
using testing::wait_exit;

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// True once `pid` catches SIGINT (its handler is installed): bit SIGINT - 1
// of SigCgt in /proc/PID/status.
bool catches_sigint(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("SigCgt:", 0) == 0) {
      return (std::stoull(line.substr(7), nullptr, 16) >> (SIGINT - 1)) & 1;
    }
  }
  return false;
}

// Waits until the child's SIGINT handler is installed (the job is about to
// start), then `extra_seconds`, sends SIGINT and returns the exit code.
int interrupt_after(pid_t pid, double extra_seconds) {
  const auto t0 = std::chrono::steady_clock::now();
  while (!catches_sigint(pid) && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(120)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(extra_seconds));
  kill(pid, SIGINT);
  return wait_exit(pid);
}

TEST(Interrupt, CacheStopsAtACommittedChunkAndResumes) {
  const std::string model = temp_path("model.h5"), data = temp_path("data.h5");
  core::Transformer(core::preset("tiny"), 11).save(model);
  core::Dataset ds;
  ds.d_vocab = core::preset("tiny").d_vocab;
  at::manual_seed(0);
  // 640000 rows in 320000 forwards of 2 examples: minutes, so every SIGINT lands mid-run.
  ds.tokens = at::randint(0, ds.d_vocab, {20000, 32}, at::kInt);
  core::save_dataset(data, ds);
  const std::string out = temp_path("store.h5"), log = temp_path("cache.log");
  std::vector<std::string> args{MECHLAB_BINARY, "cache", model, data, "--hooks",
                                "blocks.*.hook_resid_post", "--out", out, "--dtype", "f32",
                                "--batch-size", "2", "--chunk-rows", "256", "--no-progress"};
  const std::regex said(
      "interrupted at row (\\d+) of 640000; the store '.*' keeps (\\d+) committed rows and can be "
      "resumed; resume with the same command and --resume\n");
  int64_t kept_before = 0;
  for (int session = 0; session < 2; ++session) {
    const int rc = interrupt_after(spawn_process(args, log), 0.5);
    const std::string text = read_text(log);
    ASSERT_EQ(rc, 130) << "session " << session << ": " << text;
    std::smatch m;
    ASSERT_TRUE(std::regex_search(text, m, said)) << text;
    // One line (the regex's ".*" stops at line ends); a resumed run also logs that it resumes.
    EXPECT_EQ(text.find("mechlab:"), text.rfind("mechlab:")) << text;
    const int64_t reached = std::stoll(m[1]), kept = std::stoll(m[2]);
    EXPECT_LE(kept, reached);
    EXPECT_GE(reached, kept_before) << "the resumed session restarted";
    EXPECT_GE(kept, kept_before);
    auto store = core::ActivationStore::open(out);
    EXPECT_EQ(store.num_rows(), kept);
    EXPECT_FALSE(store.header().complete);
    kept_before = kept;
    // The second session resumes the first (tests/apps/cache_crash_test.cpp
    // shows a resumed store equals an uninterrupted one byte for byte).
    if (session == 0) args.push_back("--resume");
  }
  for (const auto& f : {out, model, data, log}) std::filesystem::remove(f);
}

TEST(Interrupt, TrainSavesACheckpointThatResumes) {
  const std::string dir = temp_path("run"), log = temp_path("train.log");
  const std::string config = std::string(MECHLAB_SOURCE_DIR) + "/apps/models/induction.json";
  const std::vector<std::string> args{
      MECHLAB_BINARY, "train", config, "--out", dir, "--no-progress", "--set", "steps=1000000",
      "--set", "warmup_steps=10", "--set", "eval_every=1000000", "--set", "checkpoint_every=1000000",
      "--set", "stop_at_accuracy=0", "--set", "data.options.n=400", "--set", "batch_size=8"};
  const int rc = interrupt_after(spawn_process(args, log), 1.0);
  const std::string text = read_text(log);
  ASSERT_EQ(rc, 130) << text;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(text, m, std::regex(
      "interrupted at step (\\d+) of 1000000; the checkpoint of step (\\d+) .* is saved and can "
      "be resumed; resume with the same command and --resume")))
      << text;
  EXPECT_EQ(m[1], m[2]);
  EXPECT_TRUE(std::filesystem::exists(dir + "/checkpoint.h5"));
  // --max-steps 1: one more step from the saved one, then a normal exit.
  std::vector<std::string> resume = args;
  for (const char* a : {"--resume", "--max-steps", "1"}) resume.push_back(a);
  ASSERT_EQ(wait_exit(spawn_process(resume, log)), 0) << read_text(log);
  const std::string done = read_text(log);
  EXPECT_NE(done.find(": " + std::to_string(std::stoll(m[1]) + 1) + " steps"), std::string::npos)
      << done;
}

std::vector<std::string> folder_entries(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir)) names.push_back(e.path().filename());
  std::sort(names.begin(), names.end());
  return names;
}

// [hardening] 14: Ctrl-C in `patch` used to end the process at once from the
// signal handler; now it stops at a safe point, removes what it staged and
// leaves an existing patching.h5 as it was.
TEST(Interrupt, PatchStopsBetweenForwardsAndLeavesOldResultsIntact) {
  const std::string model = temp_path("patch_model.h5"), data = temp_path("patch_ioi.h5");
  const std::string out = temp_path("patch_out"), log = temp_path("patch.log");
  ASSERT_EQ(testing::run_cli("new " + model + " --preset tiny --seed 3 --overwrite").rc, 0);
  // 4000 prompt pairs, one configuration per forward: hundreds of forwards
  // of 76000 tokens, so the SIGINT lands mid-run.
  auto made = testing::run_cli("dataset make ioi --out " + data + " --n 4000 --seed 1 --overwrite");
  ASSERT_EQ(made.rc, 0) << made.output;
  // Results already in the folder, from a short run.
  auto first = testing::run_cli("patch " + model + " " + data + " --sweep resid_pre --examples 2 --out " +
                                out);
  ASSERT_EQ(first.rc, 0) << first.output;
  const std::string old_results = read_text(out + "/patching.h5");
  ASSERT_FALSE(old_results.empty());
  const std::vector<std::string> old_entries = folder_entries(out);

  const std::vector<std::string> args{MECHLAB_BINARY, "patch", model, data, "--sweep",
                                      "resid_pre,attn_head_out_by_pos", "--direction", "both",
                                      "--max-copies", "1", "--no-skip-identical", "--overwrite",
                                      "--threads", "1", "--out", out};
  const int rc = interrupt_after(spawn_process(args, log), 1.0);
  const std::string text = read_text(log);
  ASSERT_EQ(rc, 130) << text;
  EXPECT_TRUE(std::regex_search(text, std::regex(
      "mechlab: interrupted (after \\d+ of \\d+ patch configurations )?during sweep "
      "resid_pre, attn_head_out_by_pos \\(denoising\\); results complete: none; nothing was "
      "written and the files in '.*patch_out' are as they were; run the same command again\n")))
      << text;
  EXPECT_EQ(text.find("mechlab:"), text.rfind("mechlab:")) << text;
  // Nothing staged is left, nothing new appeared, the old results are intact.
  EXPECT_EQ(folder_entries(out), old_entries);
  EXPECT_TRUE(read_text(out + "/patching.h5") == old_results) << "patching.h5 changed";
  for (const auto& f : folder_entries(out)) std::filesystem::remove(out + "/" + f);
  for (const auto& f : {out, model, data, log}) std::filesystem::remove(f);
}

}  // namespace
}  // namespace mechlab
