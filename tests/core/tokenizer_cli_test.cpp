// Tests for `mechlab tokenize` (apps/cli/cmd_tokenize.cpp): ids and string tokens as the
// library gives them, decoding, and one-line errors.
#include "core/data/tokenizer/tokenizer_json.h"

#include "tests/test_util.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <string>

namespace mechlab::core::tokenizer {
namespace {

using ::testing::HasSubstr;
using mechlab::testing::run_cli;

const std::string kLlama3 = std::string(MECHLAB_TEST_DATA) + "/tokenizers/llama3";

TEST(TokenizerCliTest, PrintsIdsAndStrTokens) {
  const auto tok = load_tokenizer(kLlama3);
  const auto r = run_cli("tokenize " + kLlama3 + " --text \"Hello  world 12345\" --json");
  ASSERT_EQ(r.rc, 0) << r.output;
  const nlohmann::json j = nlohmann::json::parse(r.output);
  const std::vector<int64_t> ids = tok->encode("Hello  world 12345");
  EXPECT_EQ(j.at("ids").get<std::vector<int64_t>>(), ids);
  EXPECT_EQ(j.at("str_tokens").get<std::vector<std::string>>(), tok->to_str_tokens(ids));

  const auto plain = run_cli("tokenize " + kLlama3 + " --text \"Hi\" --no-bos");
  ASSERT_EQ(plain.rc, 0) << plain.output;
  EXPECT_THAT(plain.output, HasSubstr("pattern llama3"));
  EXPECT_THAT(plain.output, HasSubstr("tokens: \"H\" \"i\""));

  const auto dec = run_cli("tokenize " + kLlama3 + " --decode " + std::to_string(ids[1]) + "," +
                           std::to_string(ids[2]));
  ASSERT_EQ(dec.rc, 0) << dec.output;
  EXPECT_EQ(dec.output, tok->decode({ids[1], ids[2]}) + "\n");
}

TEST(TokenizerCliTest, ErrorsAreOneLine) {
  const auto missing = run_cli("tokenize /nonexistent/tok --text x");
  EXPECT_EQ(missing.rc, 1);
  EXPECT_THAT(missing.output, HasSubstr("mechlab: error: tokenizer: '/nonexistent/tok' does not exist"));
  const auto bad_id = run_cli("tokenize " + kLlama3 + " --decode 1,x");
  EXPECT_EQ(bad_id.rc, 1);
  EXPECT_THAT(bad_id.output, HasSubstr("'x' is not an integer id"));
  // Before: a directory read as empty text and encoded to [BOS] with exit 0.
  const auto dir = run_cli("tokenize " + kLlama3 + " --file " + kLlama3);
  EXPECT_EQ(dir.rc, 1) << dir.output;
  EXPECT_THAT(dir.output, HasSubstr("mechlab: error: --file '" + kLlama3 + "' is a directory; give "
                                    "the path of a UTF-8 text file"));
  const auto nothing = run_cli("tokenize " + kLlama3);
  EXPECT_EQ(nothing.rc, 1);
  EXPECT_THAT(nothing.output, HasSubstr("nothing to encode"));
}

}  // namespace
}  // namespace mechlab::core::tokenizer
