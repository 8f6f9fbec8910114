// Tests for core/data/tokenizer/: byte-level BPE tokenizers of the GPT-2, GPT-NeoX and Llama-3
// styles against the ids and texts Hugging Face `tokenizers` 0.22.2 produced for the same
// tokenizer.json (tests/data/tokenizers/, made by scripts/fixtures/make_tokenizer_fixtures.py).
// Agreement must be exact: every id of every case, every decoded string.
#include "core/data/tokenizer/tokenizer_json.h"
#include "core/data/tokenizer/unicode.h"

#include "core/util/error.h"
#include "tests/test_util.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace mechlab::core::tokenizer {
namespace {

using ::testing::HasSubstr;
using mechlab::testing::error_of;
using nlohmann::json;

std::string data_dir(const std::string& style) { return std::string(MECHLAB_TEST_DATA) + "/tokenizers/" + style; }

std::string read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "missing fixture " << path
                         << " (regenerate: /opt/mechlab/ref-venv/bin/python scripts/fixtures/make_tokenizer_fixtures.py)";
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

json cases_of(const std::string& style) { return json::parse(read(data_dir(style) + "/cases.json")); }

std::vector<int64_t> ids_of(const json& j) { return j.get<std::vector<int64_t>>(); }

// Every recorded case of one style: ids with and without special tokens, tokens, decoding,
// to_str_tokens, and the round trip text -> ids -> text.
void check_style(const std::string& style) {
  const auto tok = load_tokenizer(data_dir(style));
  const json data = cases_of(style);
  EXPECT_EQ(tok->vocab_size(), data.at("vocab_size").get<int64_t>());
  EXPECT_EQ(tok->bos_id(), data.at("bos_id").get<int64_t>());
  EXPECT_EQ(tok->eos_id(), data.at("eos_id").get<int64_t>());
  const bool normalizes = tok->spec().normalization == Normalization::nfc;
  int checked = 0, round_trips = 0;
  for (const json& c : data.at("cases")) {
    const std::string text = c.at("text").get<std::string>();
    SCOPED_TRACE(style + " case " + json(text).dump());
    const std::vector<int64_t> ids = tok->encode(text);
    ASSERT_EQ(ids, ids_of(c.at("ids")));
    const std::vector<int64_t> plain = tok->encode(text, EncodeOptions().add_special_tokens(false));
    ASSERT_EQ(plain, ids_of(c.at("ids_plain")));
    std::vector<std::string> tokens;
    for (int64_t id : ids) tokens.push_back(tok->id_to_token(id));
    EXPECT_EQ(tokens, c.at("tokens").get<std::vector<std::string>>());
    EXPECT_EQ(tok->decode(ids), c.at("decoded").get<std::string>());
    EXPECT_EQ(tok->decode(ids, true), c.at("decoded_skip_special").get<std::string>());
    EXPECT_EQ(tok->to_str_tokens(ids), c.at("str_tokens").get<std::vector<std::string>>());
    // Round trip: decoding gives the (normalized) text back, unless an added token took part
    // (lstrip/rstrip swallow spaces; a non-ASCII added token goes through the byte-level
    // decoder, as in `tokenizers`).
    bool added = false;
    for (int64_t id : plain) added |= tok->added_vocabulary().by_id(id) != nullptr;
    if (!added) {
      EXPECT_EQ(tok->decode(plain), normalizes ? nfc(text) : text);
    }
    round_trips += !added;
    ++checked;
  }
  EXPECT_GT(checked, 450);
  EXPECT_GT(round_trips, 250);  // neox: 281 (its added tokens for space runs take part often)
  for (const json& c : data.at("decode_cases")) {
    SCOPED_TRACE(style + " decode " + c.at("ids").dump());
    EXPECT_EQ(tok->decode(ids_of(c.at("ids"))), c.at("decoded").get<std::string>());
    if (c.contains("decoded_skip_special")) {
      EXPECT_EQ(tok->decode(ids_of(c.at("ids")), true), c.at("decoded_skip_special").get<std::string>());
    }
  }
}

TEST(UnicodeTest, NfcMatchesTokenizersOnRandomStrings) {
  // 400 random strings of combining marks, Hangul jamo, singletons and composition
  // exclusions, normalized by `tokenizers`' NFC.
  int n = 0;
  const json data = cases_of("neox");
  for (const json& c : data.at("nfc_cases")) {
    const std::string text = c.at("text").get<std::string>();
    EXPECT_EQ(nfc(text), c.at("nfc").get<std::string>()) << json(text).dump();
    ++n;
  }
  EXPECT_EQ(n, 400);
}

TEST(BpeTokenizerTest, Gpt2MatchesTokenizers) { check_style("gpt2"); }
TEST(BpeTokenizerTest, NeoxMatchesTokenizers) { check_style("neox"); }
TEST(BpeTokenizerTest, Llama3MatchesTokenizers) { check_style("llama3"); }

// Variants of a style's tokenizer.json (GPT-2 with add_prefix_space; Llama 3's model with
// the Qwen2 split pattern), ids of every case.
void check_variants(const std::string& style, const std::string& expect_variant) {
  const json data = cases_of(style);
  ASSERT_TRUE(data.at("variants").contains(expect_variant));
  for (const auto& [name, v] : data.at("variants").items()) {
    const std::string file = data_dir(style) + "/" + v.at("file").get<std::string>();
    const auto tok = tokenizer_from_json(read(file), "", file);
    const json& expected = v.at("ids");
    ASSERT_EQ(expected.size(), data.at("cases").size());
    for (size_t i = 0; i < expected.size(); ++i) {
      const std::string text = data.at("cases")[i].at("text").get<std::string>();
      SCOPED_TRACE(style + "/" + name + " case " + json(text).dump());
      ASSERT_EQ(tok->encode(text), ids_of(expected[i]));
    }
  }
}

TEST(BpeTokenizerTest, Gpt2AddPrefixSpaceMatchesTokenizers) { check_variants("gpt2", "add_prefix_space"); }
TEST(BpeTokenizerTest, Qwen2PatternMatchesTokenizers) { check_variants("llama3", "qwen2"); }

TEST(BpeTokenizerTest, VocabJsonAndMergesTxtMatchTokenizers) {
  const std::string dir = data_dir("gpt2");
  const auto tok = tokenizer_from_vocab_merges(read(dir + "/vocab.json"), read(dir + "/merges.txt"),
                                               read(dir + "/tokenizer_config.json"), dir);
  const json data = cases_of("gpt2");
  const json& expected = data.at("vocab_merges_ids");
  ASSERT_EQ(expected.size(), data.at("cases").size());
  for (size_t i = 0; i < expected.size(); ++i) {
    const std::string text = data.at("cases")[i].at("text").get<std::string>();
    SCOPED_TRACE(json(text).dump());
    ASSERT_EQ(tok->encode(text), ids_of(expected[i]));
  }
  EXPECT_EQ(tok->bos_id(), data.at("bos_id").get<int64_t>());
}

TEST(BpeTokenizerTest, Llama3IgnoreMergesMatters) {
  // " mechlab" is a vocabulary token that no chain of merges builds: only ignore_merges
  // reaches it. Switching ignore_merges off must change the ids (so the fixture tests it).
  json j = json::parse(read(data_dir("llama3") + "/tokenizer.json"));
  const auto with = tokenizer_from_json(j.dump(), "", "llama3");
  j["model"]["ignore_merges"] = false;
  const auto without = tokenizer_from_json(j.dump(), "", "llama3 without ignore_merges");
  const EncodeOptions plain = EncodeOptions().add_special_tokens(false);
  EXPECT_EQ(with->encode(" mechlab", plain).size(), 1u);
  EXPECT_GT(without->encode(" mechlab", plain).size(), 1u);
}

TEST(BpeTokenizerTest, PrependBos) {
  const auto gpt2 = load_tokenizer(data_dir("gpt2"));
  const int64_t bos = *gpt2->bos_id();
  const std::vector<int64_t> ids = gpt2->encode("Hello world");
  std::vector<int64_t> with = {bos};
  with.insert(with.end(), ids.begin(), ids.end());
  EXPECT_EQ(gpt2->encode("Hello world", EncodeOptions().prepend_bos(true)), with);
  EXPECT_EQ(gpt2->encode("Hello world", EncodeOptions().prepend_bos(false)), ids);

  const auto llama = load_tokenizer(data_dir("llama3"));
  const std::vector<int64_t> l = llama->encode("Hello world");  // the template adds BOS
  ASSERT_EQ(l.front(), *llama->bos_id());
  EXPECT_EQ(llama->encode("Hello world", EncodeOptions().prepend_bos(true)), l);  // not twice
  const std::vector<int64_t> no_bos = llama->encode("Hello world", EncodeOptions().prepend_bos(false));
  EXPECT_EQ(no_bos, std::vector<int64_t>(l.begin() + 1, l.end()));
  EXPECT_EQ(llama->encode("", EncodeOptions().prepend_bos(false)), std::vector<int64_t>{});
}

// ------------------------------------------------------------------ refusals

std::string gpt2_json() { return read(data_dir("gpt2") + "/tokenizer.json"); }

std::string load_error(const json& j) {
  return error_of([&] { tokenizer_from_json(j.dump(), "", "bad.json"); });
}

TEST(BpeTokenizerTest, RefusesMissingModel) {
  json j = json::parse(gpt2_json());
  j.erase("model");
  EXPECT_THAT(load_error(j), HasSubstr("bad.json has no \"model\""));
}

TEST(BpeTokenizerTest, RefusesUnknownModelType) {
  json j = json::parse(gpt2_json());
  j["model"]["type"] = "WordPiece";
  EXPECT_THAT(load_error(j), HasSubstr("model type 'WordPiece' is not supported"));
}

TEST(BpeTokenizerTest, RefusesMergeWithUnknownToken) {
  json j = json::parse(gpt2_json());
  j["model"]["merges"].push_back(json::array({"zzz_not_a_token", "e"}));
  const std::string msg = load_error(j);
  EXPECT_THAT(msg, HasSubstr("refers to 'zzz_not_a_token', which is not in the vocabulary"));
  EXPECT_THAT(msg, HasSubstr("bad.json"));
}

TEST(BpeTokenizerTest, RefusesMergeWhoseResultIsNotInVocabulary) {
  json j = json::parse(gpt2_json());
  // Bytes 0 and 1 ("Ā", "ā") are in every byte-level vocabulary; "Āā" is not in this one.
  ASSERT_FALSE(j["model"]["vocab"].contains("\u0100\u0101"));
  j["model"]["merges"].push_back(json::array({"\u0100", "\u0101"}));
  EXPECT_THAT(load_error(j), HasSubstr("makes '\u0100\u0101', which is not in the vocabulary"));
}

TEST(BpeTokenizerTest, RefusesWhatItDoesNotImplement) {
  {
    json j = json::parse(gpt2_json());
    j["normalizer"] = {{"type", "Lowercase"}};
    EXPECT_THAT(load_error(j), HasSubstr("normalizer type 'Lowercase' is not supported"));
  }
  {
    json j = json::parse(gpt2_json());
    j["pre_tokenizer"] = {{"type", "Sequence"},
                          {"pretokenizers", json::array({{{"type", "Split"},
                                                          {"pattern", {{"Regex", "\\w+"}}},
                                                          {"behavior", "Isolated"},
                                                          {"invert", false}},
                                                         {{"type", "ByteLevel"}, {"use_regex", false}}})}};
    EXPECT_THAT(load_error(j), HasSubstr("pre-tokenizer regex '\\w+' is not one mechlab implements"));
  }
  {
    json j = json::parse(gpt2_json());
    j["pre_tokenizer"] = {{"type", "Whitespace"}};
    EXPECT_THAT(load_error(j), HasSubstr("pre-tokenizer type 'Whitespace' is not supported"));
  }
  {
    json j = json::parse(gpt2_json());
    j["model"]["dropout"] = 0.1;
    EXPECT_THAT(load_error(j), HasSubstr("BPE dropout"));
  }
  {
    json j = json::parse(gpt2_json());
    j["decoder"] = {{"type", "WordPiece"}};
    EXPECT_THAT(load_error(j), HasSubstr("decoder type 'WordPiece' is not supported"));
  }
  EXPECT_THAT(error_of([] { tokenizer_from_json("{\"model\": ", "", "cut.json"); }),
              HasSubstr("cut.json is not valid JSON"));
  EXPECT_THAT(error_of([] { load_tokenizer(std::string(MECHLAB_TEST_DATA) + "/tokenizers"); }),
              HasSubstr("has neither tokenizer.json nor vocab.json + merges.txt"));
  EXPECT_THAT(error_of([] { load_tokenizer("/nonexistent/tokenizer.json"); }), HasSubstr("does not exist"));
}

TEST(BpeTokenizerTest, RefusesBadMergesTxtLine) {
  const std::string dir = data_dir("gpt2");
  EXPECT_THAT(error_of([&] { tokenizer_from_vocab_merges(read(dir + "/vocab.json"), "#version: 0.2\na b c\n", "", "x"); }),
              HasSubstr("merges.txt line 2 'a b c' is not two tokens"));
}

TEST(BpeTokenizerTest, RefusesEmptyVocabulary) {
  // Before: an empty byte-level vocabulary encoded every text to [].
  json j = json::parse(gpt2_json());
  j["model"]["vocab"] = json::object();
  j["model"]["merges"] = json::array();
  EXPECT_THAT(load_error(j), HasSubstr("tokenizer: the vocabulary is empty"));
}

TEST(BpeTokenizerTest, RefusesIdsFarBeyondTheVocabulary) {
  // Before: an added token at 99,999,999 allocated 3.5 GB, and one at
  // 2^31 - 1 (or such a vocabulary id) ended in a bare std::bad_alloc.
  json j = json::parse(gpt2_json());
  const size_t n = j["model"]["vocab"].size() + j["added_tokens"].size();  // 800 + 1
  const int64_t limit = 2 * static_cast<int64_t>(n) + 65536;
  j["added_tokens"].push_back({{"id", 2147483647}, {"content", "<|far|>"}, {"single_word", false},
                               {"lstrip", false}, {"rstrip", false}, {"normalized", false},
                               {"special", true}});
  EXPECT_THAT(load_error(j), HasSubstr("added token '<|far|>' has id 2147483647, far beyond its " +
                                       std::to_string(n + 1) + " tokens"));
  // At the bound and just below: the id space is sparse but allowed.
  j["added_tokens"].back()["id"] = limit + 2 - 1;  // n + 1 tokens now
  EXPECT_NO_THROW(tokenizer_from_json(j.dump(), "", "sparse.json"));
  j["added_tokens"].back()["id"] = limit + 2;
  EXPECT_THAT(load_error(j), HasSubstr("ids must be below " + std::to_string(limit + 2)));

  json v = json::parse(gpt2_json());
  v["model"]["vocab"]["zzz"] = 2147483647;
  EXPECT_THAT(load_error(v), HasSubstr("vocabulary id 2147483647 is far beyond its 801 tokens"));
}

TEST(BpeTokenizerTest, RefusesInvalidUtf8AndUnknownIds) {
  const auto tok = load_tokenizer(data_dir("gpt2"));
  EXPECT_THAT(error_of([&] { tok->encode("abc\xC3(x"); }), HasSubstr("not valid UTF-8 (byte 3 of 6)"));
  EXPECT_THAT(error_of([&] { tok->encode("\xED\xA0\x80"); }), HasSubstr("not valid UTF-8 (byte 0"));
  EXPECT_THAT(error_of([&] { tok->decode({1, tok->vocab_size()}); }),
              HasSubstr("token id " + std::to_string(tok->vocab_size()) + " is not in the vocabulary"));
  EXPECT_THAT(error_of([&] { tok->id_to_token(-1); }), HasSubstr("token id -1 is not in the vocabulary"));
  EXPECT_EQ(tok->token_to_id("<|endoftext|>"), tok->bos_id());
  EXPECT_FALSE(tok->token_to_id("no such token").has_value());
}

TEST(UnicodeTest, Utf8LossyReplacesMaximalSubparts) {
  // Rust's String::from_utf8_lossy: one U+FFFD per maximal ill-formed subsequence.
  EXPECT_EQ(utf8_lossy("a\xE2\x82"), "a\uFFFD");
  EXPECT_EQ(utf8_lossy("\xE2\x82\xAC"), "\u20AC");
  EXPECT_EQ(utf8_lossy("\xED\xA0\x80"), "\uFFFD\uFFFD\uFFFD");  // surrogate: ED then two strays
  EXPECT_EQ(utf8_lossy("\xF0\x9F\x98x"), "\uFFFDx");
  EXPECT_EQ(utf8_lossy("\xC0\xAF"), "\uFFFD\uFFFD");
  EXPECT_EQ(find_invalid_utf8("plain ascii text, longer than eight"), std::string_view::npos);
  EXPECT_EQ(find_invalid_utf8("12345678\xFF"), 8u);
}

TEST(UnicodeTest, NfcComposesAndReorders) {
  EXPECT_EQ(nfc("cafe\u0301"), "caf\u00E9");
  EXPECT_EQ(nfc("e\u0323\u0301"), nfc("e\u0301\u0323"));  // canonical order: 220 before 230
  EXPECT_EQ(nfc("\u1100\u1161\u11A8"), "\uAC01");         // Hangul L V T
  EXPECT_EQ(nfc("\u212B"), "\u00C5");                      // singleton decomposition
  EXPECT_TRUE(nfc_quick_check("plain"));
  EXPECT_FALSE(nfc_quick_check("e\u0301"));
}

}  // namespace
}  // namespace mechlab::core::tokenizer
