// Tests for core/data/tokenizer/word_tokenizer.h: encode/decode round trips, JSON form and the
// messages for unknown words, duplicates and foreign JSON.
#include "core/data/tokenizer/word_tokenizer.h"

#include "core/util/error.h"
#include "tests/test_util.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace mechlab::core {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

using mechlab::testing::error_of;

WordTokenizer small() { return WordTokenizer({"<pad>", "When", "Mary", "and", "John", ","}); }

TEST(WordTokenizerTest, EncodeDecodeRoundTrip) {
  const WordTokenizer tok = small();
  EXPECT_EQ(tok.size(), 6);
  const std::vector<int64_t> ids = tok.encode("When Mary and John ,");
  EXPECT_THAT(ids, ElementsAre(1, 2, 3, 4, 5));
  EXPECT_EQ(tok.decode(ids), "When Mary and John ,");
  // Any run of whitespace separates words; decode joins with single spaces.
  EXPECT_EQ(tok.decode(tok.encode("  When\tMary \n and   John ")), "When Mary and John");
  EXPECT_TRUE(tok.encode("").empty());
  EXPECT_THAT(tok.to_str_tokens({4, 0, 2}), ElementsAre("John", "<pad>", "Mary"));
  EXPECT_EQ(tok.id("John"), 4);
  EXPECT_EQ(tok.word(3), "and");
  EXPECT_TRUE(tok.contains("Mary"));
  EXPECT_FALSE(tok.contains("mary"));
  EXPECT_EQ(tok.decode(at::tensor(std::vector<int32_t>{2, 3, 4})), "Mary and John");
}

TEST(WordTokenizerTest, UnknownWordsAreNamed) {
  const WordTokenizer tok = small();
  const std::string msg = error_of([&] { tok.encode("When Marry and Jon went"); });
  EXPECT_THAT(msg, HasSubstr("\"Marry\""));
  EXPECT_THAT(msg, HasSubstr("\"Jon\""));
  EXPECT_THAT(msg, HasSubstr("\"went\""));
  EXPECT_THAT(msg, HasSubstr("add them to the vocabulary"));
  EXPECT_THAT(error_of([&] { tok.id("Bob"); }), HasSubstr("unknown word \"Bob\""));
  EXPECT_THAT(error_of([&] {
                tok.decode(std::vector<int64_t>{1, 6});
              }),
              HasSubstr("token id 6 is outside the vocabulary [0, 6)"));
  EXPECT_THAT(error_of([&] { tok.decode(std::vector<int64_t>{-1}); }), HasSubstr("token id -1"));
}

TEST(WordTokenizerTest, RefusesDuplicateEmptyAndSpacedWords) {
  EXPECT_THAT(error_of([] {
                WordTokenizer({"a", "b", "a"});
              }),
              HasSubstr("\"a\" appears twice in the vocabulary (ids 0 and 2)"));
  EXPECT_THAT(error_of([] {
                WordTokenizer({"a", ""});
              }),
              HasSubstr("word 1 of the vocabulary is empty"));
  EXPECT_THAT(error_of([] { WordTokenizer({"a b"}); }), HasSubstr("contains whitespace"));
}

TEST(WordTokenizerTest, JsonRoundTrip) {
  const WordTokenizer tok = small();
  const nlohmann::json j = tok.to_json();
  EXPECT_EQ(j["kind"], "word");
  EXPECT_EQ(j["vocab"].size(), 6u);
  const WordTokenizer back = WordTokenizer::from_json_string(tok.to_json_string());
  EXPECT_EQ(back.vocab(), tok.vocab());
  EXPECT_EQ(back.encode("Mary and John"), tok.encode("Mary and John"));
}

TEST(WordTokenizerTest, RefusesForeignJson) {
  EXPECT_THAT(error_of([] {
                WordTokenizer::from_json({{"kind", "bpe"}, {"vocab", {"a"}}});
              }),
              HasSubstr("kind \"bpe\""));
  EXPECT_THAT(error_of([] {
                WordTokenizer::from_json({{"kind", "word"}});
              }),
              HasSubstr("needs \"vocab\""));
  EXPECT_THAT(error_of([] {
                WordTokenizer::from_json({{"kind", "word"}, {"vocab", {"a", 3}}});
              }),
              HasSubstr("vocab entry 1 is 3, not a string"));
  EXPECT_THAT(error_of([] {
                WordTokenizer::from_json({{"kind", "word"}, {"vocab", {"a"}}, {"x", 1}});
              }),
              HasSubstr("unknown key \"x\""));
  EXPECT_THAT(error_of([] {
                WordTokenizer::from_json({{"kind", "word"}, {"vocab", {"a", "a"}}});
              }),
              HasSubstr("appears twice"));
  EXPECT_THAT(error_of([] { WordTokenizer::from_json_string("{not json"); }),
              HasSubstr("not valid JSON"));
}

}  // namespace
}  // namespace mechlab::core
