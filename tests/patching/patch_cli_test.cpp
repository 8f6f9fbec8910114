// `mechlab patch` end to end, as a user runs it: an IOI dataset and a tiny
// random model made by the CLI itself, sweeps in both directions, the results
// file and heatmaps; and the CLI's one-line errors.
#include "patching/sweep_file.h"
#include "tests/test_util.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
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
    // A results folder per test: run in one process the tests share the temp
    // folder, and patch refuses to replace results without --overwrite.
    out_ = temp_path("patch_cli",
                     std::string("out_") + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    ASSERT_EQ(run_cli("new " + model_ + " --preset tiny --seed 3 --overwrite").rc, 0);
    ASSERT_EQ(run_cli("dataset make ioi --out " + data_ + " --n 6 --seed 1 --overwrite").rc, 0);
  }
  std::string model_, data_, out_;
};

TEST_F(PatchCli, PointSweepsByNameEqualTheTableSweepOfTheSameHook) {
  // point:blocks.1.hook_resid_pre patches what resid_pre's layer-1 row
  // patches, through another path (PatchTarget::at by name, not the table).
  auto r = run_cli("patch " + model_ + " " + data_ +
                   " --sweep resid_pre,point:blocks.1.hook_resid_pre,point_all_pos:blocks.0.hook_mlp_out --out " +
                   out_);
  ASSERT_EQ(r.rc, 0) << r.output;
  auto results = mechlab::patching::read_sweep_file(out_ + "/patching.h5");
  ASSERT_EQ(results.size(), 3u);
  std::map<std::string, const mechlab::patching::SweepResult*> by_name;
  for (const auto& res : results) by_name[res.sweep] = &res;
  ASSERT_EQ(by_name.size(), 3u);
  const at::Tensor table = by_name.at("resid_pre")->values;  // [layer, pos]
  const auto& point = *by_name.at("point:blocks.1.hook_resid_pre");
  EXPECT_EQ(point.axes, std::vector<std::string>{"pos"});
  EXPECT_TRUE(at::equal(point.values, table[1]));
  const auto& all = *by_name.at("point_all_pos:blocks.0.hook_mlp_out");
  EXPECT_EQ(all.values.sizes(), at::IntArrayRef({1}));
  EXPECT_TRUE(std::isfinite(all.values[0].item<double>()));
  // Unknown points are refused by name before any forward.
  r = run_cli("patch " + model_ + " " + data_ + " --sweep point:blocks.1.hook_nope --out " + out_ + "_x");
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.output.find("blocks.1.hook_nope"), std::string::npos) << r.output;
}

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
  // Position columns name IOI template slots that hold across the examples
  // ("9: S2", "3: IO|S1"), not one example's words.
  EXPECT_TRUE(std::regex_search(svg, std::regex(">[0-9]+: [^<]*S2[^<]*<"))) << svg.substr(0, 2000);
  EXPECT_TRUE(std::regex_search(svg, std::regex(">[0-9]+: [^<]*IO[^<]*<")));
  EXPECT_FALSE(std::regex_search(svg, std::regex(">[0-9]+: [A-Z][a-z]+/[A-Z][a-z]+<")));
  // Exact patching with distinct baselines: the normalised metric, said in the legend.
  EXPECT_NE(svg.find("colour: normalised metric, 0 = corrupted"), std::string::npos);
  EXPECT_NE(svg.find("white = unpatched (0)"), std::string::npos);  // denoising: unpatched = corrupted
  EXPECT_NE(slurp(out_ + "/resid_pre.noising.svg").find("white = unpatched (1)"), std::string::npos);
}

// [hardening] 15: the top heads by effect are printed with the baselines
// they are measured against, and agree with the results file.
TEST_F(PatchCli, PrintsTheTopEffectsWithTheBaselines) {
  auto r = run_cli("patch " + model_ + " " + data_ + " --sweep attn_head_out_all_pos --out " + out_);
  ASSERT_EQ(r.rc, 0) << r.output;
  auto results = mechlab::patching::read_sweep_file(out_ + "/patching.h5");
  ASSERT_EQ(results.size(), 1u);
  const auto& res = results[0];
  char baselines[160];
  std::snprintf(baselines, sizeof baselines, "top 5 by |change| (logit_diff: clean %.4f, corrupted %.4f, "
                "unpatched %.4f):", res.config["clean_metric"].get<double>(),
                res.config["corrupted_metric"].get<double>(), res.config["corrupted_metric"].get<double>());
  const size_t at = r.output.find(baselines);
  ASSERT_NE(at, std::string::npos) << baselines << "\n" << r.output;
  // The first row is the head of largest |value - corrupted| in the file.
  at::Tensor change = (res.values - res.config["corrupted_metric"].get<double>()).abs();  // [layer, head]
  const int64_t best = change.argmax().item<int64_t>(), heads = res.values.size(1);
  char row[64];
  std::snprintf(row, sizeof row, "\n    L%lld H%lld ", static_cast<long long>(best / heads),
                static_cast<long long>(best % heads));
  EXPECT_EQ(r.output.find(row, at), r.output.find('\n', at)) << row << "\n" << r.output;
  // Its change is that largest |value - corrupted|, and it is normalised.
  const size_t row_at = r.output.find('\n', at) + 1;
  const std::string first = r.output.substr(row_at, r.output.find('\n', row_at) - row_at);
  const size_t c = first.find("  change ");
  ASSERT_NE(c, std::string::npos) << first;
  EXPECT_NEAR(std::fabs(std::stod(first.substr(c + 9))), change.max().item<double>(), 1e-4) << first;
  EXPECT_NE(first.find("  normalised "), std::string::npos) << first;
}

TEST_F(PatchCli, PathPatchingAndAttributionThroughTheCli) {
  // Path sweep and one explicit path (noising by default), then edge and node
  // attribution with EAP-IG: results file groups, JSON outputs, printed top edges.
  auto r = run_cli("patch " + model_ + " " + data_ + " --sweep 'path:a1.h0<q>+a1.h1<k>' " +
                   "--path 'a0.h1+m0 -> a1.h2<q>+output' --out " + out_);
  ASSERT_EQ(r.rc, 0) << r.output;
  EXPECT_NE(r.output.find("path a0.h1+m0 -> a1.h2<q>+output"), std::string::npos) << r.output;
  auto results = mechlab::patching::read_sweep_file(out_ + "/patching.h5");
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].sweep, "path:a1.h0<q>+a1.h1<k>");
  EXPECT_EQ(results[0].config["direction"], "noising");
  EXPECT_EQ(results[0].values.sizes(), (std::vector<int64_t>{2, 4}));
  EXPECT_TRUE(std::filesystem::exists(out_ + "/path_a1.h0_q__a1.h1_k_.noising.svg"));
  const auto paths = nlohmann::json::parse(slurp(out_ + "/paths.json"));
  ASSERT_EQ(paths.size(), 1u);
  EXPECT_EQ(paths[0]["path"], "a0.h1+m0 -> a1.h2<q>+output");

  const std::string out2 = temp_path("patch_cli", "out_attr");
  r = run_cli("patch " + model_ + " " + data_ + " --method eap-ig --steps 3 --edges --top 5 " +
              "--sweep attn_head_out_by_pos --out " + out2);
  ASSERT_EQ(r.rc, 0) << r.output;
  EXPECT_TRUE(std::regex_search(r.output, std::regex("\\n  [a-z0-9.]+ -> [a-z0-9.<>]+ +[-+][0-9]")))
      << r.output;
  results = mechlab::patching::read_sweep_file(out2 + "/patching.h5");
  ASSERT_EQ(results.size(), 2u);
  for (const auto& res : results) {
    EXPECT_EQ(res.config["method"], "eap-ig");
    EXPECT_EQ(res.config["steps"], 3);
  }
  const auto edges = nlohmann::json::parse(slurp(out2 + "/edges.eap-ig.noising.json"));
  ASSERT_EQ(edges["top_edges"].size(), 5u);
  const double first = std::abs(edges["top_edges"][0]["score"].get<double>());
  EXPECT_GE(first, std::abs(edges["top_edges"][4]["score"].get<double>()));
  EXPECT_TRUE(std::filesystem::exists(out2 + "/eap-ig_attn_head_out_by_pos.noising.svg"));

  r = run_cli("patch " + model_ + " " + data_ + " --edges --out " + out2);
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.output.find("--edges scores edges by attribution"), std::string::npos) << r.output;
  r = run_cli("patch " + model_ + " " + data_ + " --path 'a1.h0 -> a0.h1<q>' --overwrite --out " + out2);
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.output.find("no sender writes the residual stream before a receiver reads it"),
            std::string::npos) << r.output;
}

TEST_F(PatchCli, HelpExplainsEveryOption) {
  auto r = run_cli("patch --help");
  ASSERT_EQ(r.rc, 0);
  for (const char* opt : {"--sweep", "--out", "--direction", "--metric", "--examples", "--device",
                          "--dtype", "--memory-budget-mb", "--max-copies", "--no-skip-identical",
                          "--no-svg", "--progress", "attn_head_pattern_dest_src_pos",
                          "attn_head_by_pos_every", "normalised_logit_diff", "--method",
                          "--steps", "--edges", "--top", "--path", "path:RECEIVERS", "eap-ig",
                          "a0.h3 -> a1.h2<q>"}) {
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
  // The library's hint names make_task; the CLI user is shown the command instead.
  EXPECT_NE(r.output.find("(e.g. the ioi generator's, `mechlab dataset make ioi --out ioi.h5`)"),
            std::string::npos)
      << r.output;
}

}  // namespace
