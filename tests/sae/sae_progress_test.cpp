// The SAE trainer's progress line: progress_status's text for given figures,
// and `mechlab sae train` drawing the latest evaluation's figures (those of
// the last row of its sae_log.csv) at the end of its bar's line.
#include "sae/trainer.h"
#include "tests/test_util.h"

#include <gtest/gtest.h>


#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace mechlab::sae {
namespace {

namespace fs = std::filesystem;

using mechlab::testing::remove_tree;

TEST(SaeProgressStatus, ShowsL0FvuDeadFractionAndMmcsWithAGroundTruth) {
  SaeEval e;
  EXPECT_EQ(progress_status(e), "");  // step 0: nothing evaluated yet
  e.step = 100;
  e.l0 = 31.24;
  e.fvu = 0.081234;
  e.dead_fraction = 0.00390625;  // 1 of 256 latents
  EXPECT_EQ(progress_status(e), "L0 31.2  FVU 0.0812  dead 0.4%");
  e.mmcs = 0.99137;
  EXPECT_EQ(progress_status(e), "L0 31.2  FVU 0.0812  dead 0.4%  MMCS 0.991");
}

TEST(SaeProgressStatus, TheTrainersBarEndsWithTheLastEvaluationsFigures) {
  const fs::path dir = fs::temp_directory_path() / ("mechlab_sae_progress_" + std::to_string(::getpid()));
  remove_tree(dir);
  fs::create_directories(dir);
  {
    std::ofstream cfg(dir / "cfg.json");
    cfg << R"({"name": "bar", "sae": {"architecture": "topk", "d_in": 16, "d_sae": 32, "k": 4},
      "data": {"toy": {"n_features": 24, "d": 16, "p_active": 0.1, "seed": 1}},
      "steps": 30, "batch_size": 64, "lr": 1e-3, "eval_every": 10, "eval_rows": 64, "seed": 2})";
  }
  // Not a terminal: the bar logs its final line once, at the end.
  const testing::CliResult r =
      testing::run_cli("sae train " + (dir / "cfg.json").string() + " --out " + (dir / "run").string() + " --threads 1");
  ASSERT_EQ(r.rc, 0) << r.output;
  // The last row of sae_log.csv: step,tokens,l0,mse,fvu,explained_variance,dead_fraction,mmcs.
  std::ifstream csv(dir / "run" / "sae_log.csv");
  std::string line, last;
  while (std::getline(csv, line)) last = line;
  std::vector<std::string> cols;
  std::stringstream ss(last);
  for (std::string c; std::getline(ss, c, ',');) cols.push_back(c);
  ASSERT_GE(cols.size(), 7u) << last;
  SaeEval e;
  e.step = std::stoll(cols[0]);
  e.l0 = std::stod(cols[2]);
  e.fvu = std::stod(cols[4]);
  e.dead_fraction = std::stod(cols[6]);
  e.mmcs = cols.size() > 7 && !cols[7].empty() ? std::stod(cols[7]) : -1;
  ASSERT_EQ(e.step, 30);
  const std::string want = progress_status(e);
  ASSERT_FALSE(want.empty());
  // The bar's final line: "sae train bar  [####...] 100%  ... ETA 0:00  L0 ...".
  std::string bar_line;
  std::stringstream out(r.output);
  while (std::getline(out, line)) {
    if (line.find("sae train bar  [") != std::string::npos) bar_line = line;
  }
  ASSERT_FALSE(bar_line.empty()) << r.output;
  EXPECT_NE(bar_line.find("100%"), std::string::npos) << bar_line;
  ASSERT_GE(bar_line.size(), want.size());
  EXPECT_EQ(bar_line.substr(bar_line.size() - want.size()), want) << bar_line;
  remove_tree(dir);
}

}  // namespace
}  // namespace mechlab::sae
