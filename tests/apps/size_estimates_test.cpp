// [hardening] 13: every option that allocates in proportion to a user number
// estimates the memory first and refuses, in one line, a value this machine
// cannot hold ("OPTION VALUE needs about X GB of memory for WHAT; this machine
// has Y GB; HINT"), before anything is allocated: never bad_alloc, a LibTorch
// allocator message or the OOM killer. Each absurd value below needs hundreds
// of GB or more, so the refusal holds on any test machine.
#include "core/util/error.h"
#include "tests/test_util.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <regex>
#include <string>
#include <vector>

namespace mechlab {
namespace {

using testing::run_cli;

std::string temp_path(const std::string& name) { return testing::temp_path("size_estimates", name); }

// A model with a long context and no positional tables (positional none), so
// its weights stay small however long a sequence it may take.
std::string long_context_model() {
  const std::string cfg = temp_path("long.json"), model = temp_path("long.h5");
  std::ofstream(cfg) << R"({"name": "long", "n_layers": 2, "d_model": 64, "n_heads": 4, "d_head": 16,
    "d_mlp": 256, "d_vocab": 512, "n_ctx": 2000000000, "positional": "none"})";
  const auto r = run_cli("new " + model + " --config " + cfg + " --overwrite");
  EXPECT_EQ(r.rc, 0) << r.output;
  return model;
}

// One line, "mechlab: error: " + the estimate, exit code 1.
void expect_estimate(const testing::CliResult& r, const std::string& pattern) {
  EXPECT_EQ(r.rc, 1) << r.output;
  EXPECT_TRUE(std::regex_match(r.output, std::regex("mechlab: error: " + pattern +
                                                    "; this machine has [0-9.]+ GB; .*\n")))
      << r.output;
  EXPECT_EQ(r.output.find('\n'), r.output.size() - 1) << r.output;
}

TEST(SizeEstimates, GenerateMaxNewTokensCountsTheKvCache) {
  const std::string model = long_context_model();
  // 10^9 positions x 2 layers x (K, V) x 4 heads x 16 x 4 bytes: 1024 GB.
  expect_estimate(run_cli("generate " + model + " --prompt-tokens 1 --max-new-tokens 1000000000"),
                  "--max-new-tokens 1000000000 needs about 1024\\.0 GB of memory for the KV cache of "
                  "1 prompt\\(s\\) x 1000000001 positions");
  // Without the cache, the last step's forward over the whole sequence.
  expect_estimate(run_cli("generate " + model +
                          " --prompt-tokens 1 --max-new-tokens 1000000000 --no-kv-cache"),
                  "--max-new-tokens 1000000000 needs about [0-9.]+ GB of memory for the last "
                  "step's forward of 1 prompt\\(s\\) x 1000000001 positions");
}

TEST(SizeEstimates, RunCountsTheCachedAttentionMaps) {
  const std::string model = long_context_model();
  // 100000 tokens: hook_attn_scores and hook_pattern are [4, 10^5, 10^5]
  // floats in each of 2 layers, 640 GB.
  // Spawned with an argument vector: 100000 ids are too long for one shell line.
  std::vector<std::string> args{MECHLAB_BINARY, "run", model, "--cache", "*", "--prompt-tokens"};
  args.insert(args.end(), 100000, "1");
  const std::string log = temp_path("run.log");
  const int rc = testing::wait_exit(testing::spawn_process(args, log));
  std::ifstream in(log);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  expect_estimate({rc, text},
                  "a prompt of 100000 tokens needs about [0-9.]+ GB of memory for its logits and "
                  "the cache of '\\*'");
}

TEST(SizeEstimates, PatchMemoryBudgetAndExamples) {
  // Refused before the model is even read.
  expect_estimate(run_cli("patch /nonexistent.h5 /nonexistent-data.h5 --sweep resid_pre --out " +
                          temp_path("patch_out") + " --memory-budget-mb 100000000"),
                  "--memory-budget-mb 100000000 needs about 104857\\.6 GB of memory for the patch "
                  "configurations stacked into one forward");
  EXPECT_FALSE(std::filesystem::exists(temp_path("patch_out")));
  // A vocabulary of 10^6: one forward's logits and log-softmax over 4000 IOI
  // pairs x 19 positions are 608 GB.
  const std::string cfg = temp_path("vocab.json"), model = temp_path("vocab.h5"),
                    data = temp_path("ioi.h5");
  std::ofstream(cfg) << R"({"name": "wide", "n_layers": 1, "d_model": 4, "n_heads": 1, "d_head": 4,
    "d_mlp": 4, "d_vocab": 1000000, "n_ctx": 32})";
  ASSERT_EQ(run_cli("new " + model + " --config " + cfg + " --overwrite").rc, 0);
  ASSERT_EQ(run_cli("dataset make ioi --out " + data + " --n 4000 --seed 1 --overwrite").rc, 0);
  expect_estimate(run_cli("patch " + model + " " + data + " --sweep resid_pre --out " +
                          temp_path("patch_out2") + " --examples 4000"),
                  "--examples 4000 needs about [0-9.]+ GB of memory for one forward over 4000 "
                  "prompt pairs x 19 positions \\(logits over 1000000 tokens\\)");
  EXPECT_FALSE(std::filesystem::exists(temp_path("patch_out2") + "/patching.h5"));
}

TEST(SizeEstimates, TrainBatchSizeCountsOneStep) {
  const std::string config = std::string(MECHLAB_SOURCE_DIR) + "/apps/models/induction.json";
  const std::string out = temp_path("train_out");
  // 1900 training rows of 10001 tokens in one batch: about 214 GB of activations.
  expect_estimate(run_cli("train " + config + " --out " + out + " --no-progress --set "
                          "data.options.half_len=5000 --set data.options.min_half_len=5000 --set "
                          "data.options.n=2000 --set batch_size=2000"),
                  "batch_size 2000 needs about [0-9.]+ GB of memory for one training step over "
                  "1900 examples x 10001 tokens");
  EXPECT_FALSE(std::filesystem::exists(out + "/config.json"));
}

TEST(SizeEstimates, TrainDataSizeIsCheckedBeforeGenerating) {
  const std::string config = std::string(MECHLAB_SOURCE_DIR) + "/apps/models/induction.json";
  // 10^12 induction examples of 41 int64 tokens (plus their mask): petabytes.
  expect_estimate(run_cli("train " + config + " --out " + temp_path("train_out2") +
                          " --no-progress --set data.options.n=1000000000000"),
                  "data.options.n 1000000000000 needs about [0-9.]+ GB of memory for 1000000000000 "
                  "examples \\([0-9]+ bytes each\\)");
}

}  // namespace
}  // namespace mechlab
