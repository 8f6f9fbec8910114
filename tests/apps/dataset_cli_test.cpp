// Tests of `mechlab dataset make` and `mechlab dataset inspect`, run as a user
// runs them (the built binary, MECHLAB_BINARY).
#include "core/data/dataset.h"
#include "core/data/tokenizer/word_tokenizer.h"
#include "tests/test_util.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

namespace mechlab {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

using Result = mechlab::testing::CliResult;

Result run(const std::string& args) { return mechlab::testing::run_cli(args); }

std::string temp_path(const std::string& name) {
  return mechlab::testing::temp_path("dataset_cli_test", name);
}

TEST(DatasetCliTest, MakeIoiThenInspect) {
  const std::string path = temp_path("ioi.h5");
  const Result made = run("dataset make ioi --out " + path + " --n 20 --seed 3 --set order=ABBA");
  ASSERT_EQ(made.rc, 0) << made.output;

  const core::Dataset ds = core::load_dataset(path);
  EXPECT_EQ(ds.task, "ioi");
  EXPECT_EQ(ds.seed, 3);
  EXPECT_EQ(ds.size(), 20);
  const auto config = nlohmann::json::parse(ds.config);
  EXPECT_EQ(config["order"], "ABBA");
  EXPECT_EQ(config["n"], 20);

  const Result shown = run("dataset inspect " + path + " --examples 2");
  ASSERT_EQ(shown.rc, 0) << shown.output;
  const std::string& out = shown.output;
  EXPECT_THAT(out, HasSubstr("task:       ioi"));
  EXPECT_THAT(out, HasSubstr("seed:       3"));
  EXPECT_THAT(out, HasSubstr("tokenizer:  word ("));
  EXPECT_THAT(out, HasSubstr("/clean_tokens"));
  EXPECT_THAT(out, HasSubstr("/attention_mask"));
  EXPECT_THAT(out, HasSubstr("int32"));
  EXPECT_THAT(out, HasSubstr("[20, "));
  EXPECT_THAT(out, HasSubstr("example 1:"));
  EXPECT_THAT(out, Not(HasSubstr("example 2:")));
  // The first example, decoded, with its answer and wrong words.
  const core::WordTokenizer tok = core::WordTokenizer::from_json_string(ds.tokenizer);
  std::string clean =
      tok.decode(ds.clean_tokens[0].slice(0, 0, ds.answer_pos[0].item<int64_t>() + 1));
  EXPECT_THAT(out, HasSubstr("clean:      " + clean + "\n"));
  EXPECT_THAT(out, HasSubstr("answer:     " + tok.word(ds.answer_tokens[0][0].item<int64_t>())));
  EXPECT_THAT(out, HasSubstr("wrong:      " + tok.word(ds.wrong_tokens[0][0].item<int64_t>())));
  EXPECT_THAT(out, Not(HasSubstr("<pad>")));
}

TEST(DatasetCliTest, MakeModularAdditionAndInspectItsNumberWords) {
  const std::string path = temp_path("mod.h5");
  const Result made = run("dataset make modular_addition --out " + path + " --set p=7");
  ASSERT_EQ(made.rc, 0) << made.output;
  const Result shown = run("dataset inspect " + path);
  ASSERT_EQ(shown.rc, 0) << shown.output;
  // The generator records its vocabulary: residues as their numbers, id p as "=".
  EXPECT_THAT(shown.output, HasSubstr("tokenizer:  word (8 words)"));
  EXPECT_THAT(shown.output, HasSubstr("examples:   49 (3 positions each)"));
  EXPECT_THAT(shown.output, HasSubstr("answer_pos: 2 (=)"));
}

TEST(DatasetCliTest, ErrorsAreOneClearLine) {
  Result r = run("dataset make inductoin --out " + temp_path("x.h5"));
  EXPECT_NE(r.rc, 0);
  EXPECT_THAT(r.output, HasSubstr("unknown task \"inductoin\"; the tasks are: induction"));
  r = run("dataset make induction --out " + temp_path("x.h5") + " --set halflen=3");
  EXPECT_NE(r.rc, 0);
  EXPECT_THAT(r.output, HasSubstr("unknown option \"halflen\""));
  r = run("dataset make induction --out " + temp_path("x.h5") + " --n 3 --set n=4");
  EXPECT_NE(r.rc, 0);
  EXPECT_THAT(r.output, HasSubstr("given both as --n and as --set n="));
  const std::string text = temp_path("not_a_dataset.txt");
  std::ofstream(text) << "hello\n";
  r = run("dataset inspect " + text);
  EXPECT_NE(r.rc, 0);
  EXPECT_THAT(r.output, HasSubstr(text));
  EXPECT_THAT(r.output, Not(HasSubstr("Exception raised from")));  // no LibTorch backtrace
}

TEST(DatasetCliTest, HelpListsEveryTaskAndItsOptions) {
  const Result r = run("dataset make --help");
  EXPECT_EQ(r.rc, 0);
  for (const char* task :
       {"induction", "ioi", "greater_than", "modular_addition", "reversal", "sorting", "probe"}) {
    EXPECT_THAT(r.output, HasSubstr(std::string("  ") + task + ": "));
  }
  EXPECT_THAT(r.output, HasSubstr("half_len = 20"));
  EXPECT_THAT(r.output, HasSubstr("order = \"mixed\""));
  EXPECT_THAT(r.output, HasSubstr("p = 113"));
  EXPECT_THAT(r.output, HasSubstr("label = \"seen_before\""));
}

}  // namespace
}  // namespace mechlab
