// The statistics every `mechlab bench` figure is reported with
// (apps/bench/bench_util.h): median and quartiles by linear interpolation
// between order statistics, checked against values computed by hand.
#include "apps/bench/bench_util.h"
#include "tests/test_util.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <limits>

namespace mechlab {
namespace {

using bench::summarize;

TEST(BenchStats, EvenCountMedianIsTheMeanOfTheMiddleTwo) {
  // Sorted {1, 2, 3, 4}: median at h = 1.5 -> 2.5 (the old median_ms took
  // sorted[n / 2] = 3); q1 at h = 0.75 -> 1.75; q3 at h = 2.25 -> 3.25.
  const bench::Stats s = summarize({4, 1, 3, 2});
  EXPECT_EQ(s.n, 4);
  EXPECT_DOUBLE_EQ(s.median, 2.5);
  EXPECT_DOUBLE_EQ(s.q1, 1.75);
  EXPECT_DOUBLE_EQ(s.q3, 3.25);
  EXPECT_DOUBLE_EQ(s.iqr(), 1.5);
  EXPECT_DOUBLE_EQ(s.min, 1);
  EXPECT_DOUBLE_EQ(s.max, 4);
}

TEST(BenchStats, OddCountAndAnOutlier) {
  // Sorted {1, 3, 5}: median 3; q1 at h = 0.5 -> 2; q3 at h = 1.5 -> 4.
  const bench::Stats s = summarize({5, 1, 3});
  EXPECT_DOUBLE_EQ(s.median, 3);
  EXPECT_DOUBLE_EQ(s.q1, 2);
  EXPECT_DOUBLE_EQ(s.q3, 4);
  // {10, 20, 30, 40, 50, 1000}: median at h = 2.5 -> 35; q1 at h = 1.25 ->
  // 22.5; q3 at h = 3.75 -> 47.5: one slow run (a neighbour's job) moves
  // neither the median nor the IQR far, where a mean would be 191.67.
  const bench::Stats t = summarize({1000, 10, 50, 20, 40, 30});
  EXPECT_DOUBLE_EQ(t.median, 35);
  EXPECT_DOUBLE_EQ(t.q1, 22.5);
  EXPECT_DOUBLE_EQ(t.q3, 47.5);
  EXPECT_DOUBLE_EQ(t.max, 1000);
}

TEST(BenchStats, OneRunHasNoSpread) {
  const bench::Stats s = summarize({7});
  EXPECT_EQ(s.n, 1);
  EXPECT_DOUBLE_EQ(s.median, 7);
  EXPECT_DOUBLE_EQ(s.q1, 7);
  EXPECT_DOUBLE_EQ(s.q3, 7);
}

TEST(BenchStats, ScalingExtrapolatesEveryQuantile) {
  // Per-configuration times x configurations: the naive sweep's estimate.
  const bench::Stats s = bench::scaled(summarize({4, 1, 3, 2}), 2880);
  EXPECT_DOUBLE_EQ(s.median, 2.5 * 2880);
  EXPECT_DOUBLE_EQ(s.q1, 1.75 * 2880);
  EXPECT_DOUBLE_EQ(s.q3, 3.25 * 2880);
  EXPECT_EQ(s.n, 4);
}

TEST(BenchStats, NoMeasurementsOrANaNAreRefused) {
  EXPECT_EQ(testing::error_of([] { summarize({}); }),
            "no measurements to summarise: run at least once (repeats >= 1)");
  EXPECT_EQ(testing::error_of([] { summarize({1, std::numeric_limits<double>::quiet_NaN()}); }),
            "a measurement is NaN");
}

// The baseline row of `bench load` is a median too: its runs and spread
// must be given with it, or the table could not state them.
TEST(BenchStats, BenchLoadRefusesABaselineWithoutItsRuns) {
  const auto r = testing::run_cli("bench load /nonexistent-folder --transformers-ms 12.5");
  EXPECT_EQ(r.rc, 1) << r.output;
  EXPECT_EQ(r.output, "mechlab: error: --transformers-ms needs --transformers-runs N and "
                      "--transformers-iqr Q1,Q3: the table states each median's runs and spread\n");
}

// So are the rows a driver passes to `bench tokenize`.
TEST(BenchStats, BenchTokenizeRefusesABaselineRowWithoutItsRuns) {
  const std::string json = testing::temp_path("bench_stats", "baseline.json");
  const std::string text = testing::temp_path("bench_stats", "text.txt");
  std::ofstream(json) << R"({"baseline": "x", "rows": [{"name": "x", "ms": 2.0}]})";
  std::ofstream(text) << "hello world";
  const auto r = testing::run_cli("bench tokenize --tokenizer " + std::string(MECHLAB_TEST_DATA) +
                                  "/tokenizers/gpt2/tokenizer.json --text-file " + text +
                                  " --repeats 1 --baseline-json " + json);
  EXPECT_EQ(r.rc, 1) << r.output;
  EXPECT_EQ(r.output, "mechlab: error: --baseline-json '" + json + "': row 'x' has no \"runs\", "
                      "\"q1\" and \"q3\": give each median with its run count and quartiles\n");
}

}  // namespace
}  // namespace mechlab
