// Tests for core/data/tokenizer/word_tokenizer_adapter.h: the toy word tokenizer through the
// common Tokenizer interface.
#include "core/data/tokenizer/word_tokenizer_adapter.h"

#include "core/data/tokenizer/word_tokenizer.h"
#include "tests/test_util.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace mechlab::core::tokenizer {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using mechlab::testing::error_of;

TEST(WordTokenizerAdapterTest, BehavesAsTheWordTokenizer) {
  const WordTokenizerAdapter adapter(WordTokenizer({"<pad>", "When", "Mary", "and", "John"}));
  const Tokenizer& tok = adapter;
  EXPECT_EQ(tok.kind(), "word");
  EXPECT_EQ(tok.vocab_size(), 5);
  EXPECT_THAT(tok.encode("When Mary and John"), ElementsAre(1, 2, 3, 4));
  EXPECT_EQ(tok.decode({4, 3, 2}), "John and Mary");
  EXPECT_THAT(tok.to_str_tokens({2, 0}), ElementsAre("Mary", "<pad>"));
  EXPECT_EQ(tok.token_to_id("John"), 4);
  EXPECT_FALSE(tok.token_to_id("john").has_value());
  EXPECT_EQ(tok.id_to_token(1), "When");
  EXPECT_FALSE(tok.bos_id().has_value());
  EXPECT_THAT(error_of([&] { tok.encode("When Bob"); }), HasSubstr("unknown word(s) \"Bob\""));
  EXPECT_THAT(error_of([&] { tok.encode("When", EncodeOptions().prepend_bos(true)); }),
              HasSubstr("a word vocabulary has none"));
}

TEST(WordTokenizerAdapterTest, SplitsTrailingPunctuationThatIsAWord) {
  const WordTokenizer words({"<pad>", "the", "store", ",", ".", "John"});
  const WordTokenizerAdapter tok(words);
  // "store," is no word; "store" and "," are.
  EXPECT_EQ(tok.encode("the store, John."), (std::vector<int64_t>{1, 2, 3, 5, 4}));
  EXPECT_EQ(tok.encode("the store , John ."), (std::vector<int64_t>{1, 2, 3, 5, 4}));
  // Punctuation outside the vocabulary is not split off: the word is refused by name.
  EXPECT_THAT(mechlab::testing::error_of([&] { tok.encode("the store;"); }),
              ::testing::HasSubstr("store;"));
}

}  // namespace
}  // namespace mechlab::core::tokenizer
