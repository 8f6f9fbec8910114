// The weight-processing flags of the commands that load a model (`mechlab
// info`, `run`, `heads`, ...), as a user runs them.
#include "tests/test_util.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <regex>
#include <string>
#include <vector>

namespace mechlab::core {
namespace {

using mechlab::testing::run_cli;
using ::testing::HasSubstr;
using ::testing::Not;

std::string runtime_fixture(const std::string& name) {
  return std::string(MECHLAB_TEST_DATA) + "/runtime/" + name + ".h5";
}

/// The loss and next-token probabilities `mechlab run` prints, in order.
std::vector<double> printed_numbers(const std::string& out) {
  std::vector<double> v;
  const std::regex number(R"((loss: |p = )([0-9.]+))");
  for (std::sregex_iterator it(out.begin(), out.end(), number), end; it != end; ++it) {
    v.push_back(std::strtod((*it)[2].str().c_str(), nullptr));
  }
  return v;
}

TEST(WeightProcessingCli, InfoShowsTheProcessedConfig) {
  const auto r = run_cli("info " + runtime_fixture("gpt2_like") + " --process");
  ASSERT_EQ(r.rc, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("\"norm\": \"layernorm_pre\""));
  EXPECT_THAT(r.output,
              HasSubstr("\"processed\": [\n    \"fold_ln\",\n    \"center_writing_weights\",\n"
                        "    \"center_unembed\",\n    \"fold_value_biases\"\n  ]"));
  EXPECT_THAT(r.output, HasSubstr("blocks.0.ln1.hook_normalized"));  // LNPre keeps its hooks
  const auto plain = run_cli("info " + runtime_fixture("gpt2_like"));
  ASSERT_EQ(plain.rc, 0) << plain.output;
  EXPECT_THAT(plain.output, Not(HasSubstr("processed")));
  EXPECT_THAT(plain.output, HasSubstr("\"norm\": \"layernorm\""));

  const auto one =
      run_cli("info " + runtime_fixture("llama_like") + " --fold-ln --fold-value-biases");
  ASSERT_EQ(one.rc, 0) << one.output;
  EXPECT_THAT(one.output, HasSubstr("\"norm\": \"rmsnorm_pre\""));
  EXPECT_THAT(one.output, HasSubstr("\"fold_value_biases\""));
  EXPECT_THAT(one.output, Not(HasSubstr("\"center_unembed\"")));
}

TEST(WeightProcessingCli, RunPredictsTheSameWithProcessedWeights) {
  const std::string args =
      "run " + runtime_fixture("neox_like") + " --prompt-tokens 3 9 27 1 40 --top-k 5";
  const auto plain = run_cli(args);
  const auto processed = run_cli(args + " --process");
  ASSERT_EQ(plain.rc, 0) << plain.output;
  ASSERT_EQ(processed.rc, 0) << processed.output;
  const auto a = printed_numbers(plain.output), b = printed_numbers(processed.output);
  ASSERT_EQ(a.size(), 6u) << plain.output;  // loss + 5 probabilities
  ASSERT_EQ(b.size(), a.size()) << processed.output;
  // Printed with 4 decimals: equal up to the last printed digit.
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1.5e-4) << i;
}

// Processing changes no attention pattern, so `mechlab heads` prints the same
// tables for a Hugging Face folder with and without --process.
TEST(WeightProcessingCli, HeadsOnAHuggingFaceFolderAreUnchangedByProcessing) {
  const std::string args = "heads " + std::string(MECHLAB_TEST_DATA) + "/hf/gpt2";
  const auto plain = run_cli(args);
  const auto processed = run_cli(args + " --process");
  ASSERT_EQ(plain.rc, 0) << plain.output;
  ASSERT_EQ(processed.rc, 0) << processed.output;
  EXPECT_THAT(plain.output, HasSubstr("induction"));
  EXPECT_EQ(plain.output, processed.output);
}

TEST(WeightProcessingCli, InapplicableStepsAndUnknownFlagsAreOneClearLine) {
  const auto r = run_cli("run " + runtime_fixture("llama_like") +
                         " --prompt-tokens 1 2 --center-writing-weights");
  EXPECT_NE(r.rc, 0);
  EXPECT_THAT(r.output, HasSubstr("cannot apply center_writing_weights to model 'llama_like'"));
  EXPECT_THAT(r.output, Not(HasSubstr("Exception raised from")));
  // --process skips it with a warning instead, as TransformerLens does.
  const auto skip =
      run_cli("run " + runtime_fixture("llama_like") + " --prompt-tokens 1 2 --process");
  EXPECT_EQ(skip.rc, 0) << skip.output;
  EXPECT_THAT(skip.output, HasSubstr("skipping center_writing_weights"));

  const auto unknown = run_cli("info " + runtime_fixture("gpt2_like") + " --fold-layernorm");
  EXPECT_NE(unknown.rc, 0);
  EXPECT_THAT(unknown.output, HasSubstr("--fold-layernorm"));
}

}  // namespace
}  // namespace mechlab::core
