// `mechlab patch` end to end, as a user runs it: an IOI dataset and a tiny
// random model made by the CLI itself, sweeps in both directions, the results
// file and heatmaps; and the CLI's one-line errors.
#include "patching/sweep_file.h"
#include "tests/test_util.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

using mechlab::testing::run_cli;
using mechlab::testing::temp_path;

namespace {

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

class PatchCli : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = temp_path("patch_cli", "tiny.h5");
    data_ = temp_path("patch_cli", "ioi.h5");
    out_ = temp_path("patch_cli", "out");
    ASSERT_EQ(run_cli("new " + model_ + " --preset tiny --seed 3").rc, 0);
    ASSERT_EQ(run_cli("dataset make ioi --out " + data_ + " --n 6 --seed 1").rc, 0);
  }
  std::string model_, data_, out_;
};

TEST_F(PatchCli, SweepsBothDirectionsAndWritesResultsAndHeatmaps) {
  auto r = run_cli("patch " + model_ + " " + data_ +
                   " --sweep resid_pre,attn_head_out_by_pos --direction both --out " + out_);
  ASSERT_EQ(r.rc, 0) << r.output;
  EXPECT_NE(r.output.find("attn_head_out_by_pos"), std::string::npos) << r.output;
  auto results = mechlab::patching::read_sweep_file(out_ + "/patching.h5");
  ASSERT_EQ(results.size(), 4u);
  for (const auto& res : results) {
    EXPECT_EQ(res.config["dataset_task"], "ioi");
    EXPECT_EQ(res.values.size(1), 19);  // IOI prompts are padded to 19 words
  }
  const std::string svg = slurp(out_ + "/attn_head_out_by_pos.denoising.svg");
  ASSERT_FALSE(svg.empty());
  // Position labels carry the words of the first prompt; where its corrupted
  // prompt differs (S2 replaced by a third name) both words: "9: James/Laura".
  EXPECT_NE(svg.find(">2: and<"), std::string::npos);
  EXPECT_TRUE(std::regex_search(svg, std::regex(">[0-9]+: [A-Z][a-z]+/[A-Z][a-z]+<")));
  EXPECT_TRUE(std::filesystem::exists(out_ + "/resid_pre.noising.svg"));
}

TEST_F(PatchCli, HelpExplainsEveryOption) {
  auto r = run_cli("patch --help");
  ASSERT_EQ(r.rc, 0);
  for (const char* opt : {"--sweep", "--out", "--direction", "--metric", "--examples", "--device",
                          "--dtype", "--memory-budget-mb", "--max-copies", "--no-skip-identical",
                          "--no-svg", "--progress", "attn_head_pattern_dest_src_pos",
                          "attn_head_by_pos_every", "normalised_logit_diff"}) {
    EXPECT_NE(r.output.find(opt), std::string::npos) << opt;
  }
}

TEST_F(PatchCli, UserErrorsAreOneLine) {
  auto r = run_cli("patch " + model_ + " " + data_ + " --sweep head_out --out " + out_);
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.output.find("mechlab: error: unknown sweep \"head_out\""), std::string::npos) << r.output;
  r = run_cli("patch " + model_ + " " + data_ + " --sweep resid_pre --metric lgoit_diff --out " + out_);
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.output.find("unknown metric \"lgoit_diff\""), std::string::npos) << r.output;
  const std::string plain = temp_path("patch_cli", "induction.h5");
  ASSERT_EQ(run_cli("dataset make induction --out " + plain + " --n 4").rc, 0);
  r = run_cli("patch " + model_ + " " + plain + " --sweep resid_pre --out " + out_);
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.output.find("has no /clean_tokens and /corrupted_tokens"), std::string::npos) << r.output;
}

}  // namespace
