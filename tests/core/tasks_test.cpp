// Tests for core/data/tasks/: each generator's defining property on every example,
// determinism by seed, the registry's option handling, and that every task's
// dataset validates and round-trips through a file.
#include "core/data/tasks/tasks.h"

#include "core/util/error.h"
#include "core/data/tasks/greater_than.h"
#include "core/data/tasks/induction.h"
#include "core/data/tasks/ioi.h"
#include "core/data/tasks/modular_addition.h"
#include "core/data/tasks/probe.h"
#include "core/data/tasks/reversal.h"
#include "core/data/tasks/sorting.h"
#include "core/data/tokenizer/word_tokenizer.h"
#include "tests/test_util.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace mechlab::core::tasks {
namespace {

using ::testing::HasSubstr;
using Rows = std::vector<std::vector<int64_t>>;

using mechlab::testing::error_of;

// A [N, T] or [N] tensor as rows of int64 ([N] becomes N rows of one value).
Rows rows(const at::Tensor& t) {
  at::Tensor c = t.to(at::kLong).contiguous();
  if (c.dim() == 1) c = c.unsqueeze(1);
  Rows out(c.size(0));
  const int64_t* p = c.data_ptr<int64_t>();
  for (int64_t i = 0; i < c.size(0); ++i) out[i].assign(p + i * c.size(1), p + (i + 1) * c.size(1));
  return out;
}

std::vector<std::string> split(const std::string& text) {
  std::istringstream in(text);
  std::vector<std::string> out;
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

bool contains(const std::vector<std::string>& v, const std::string& w) {
  return std::find(v.begin(), v.end(), w) != v.end();
}

bool same_tensor(const at::Tensor& a, const at::Tensor& b) {
  if (a.defined() != b.defined()) return false;
  return !a.defined() ||
         (a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type() && a.equal(b));
}

bool same_data(const Dataset& a, const Dataset& b) {
  return same_tensor(a.tokens, b.tokens) && same_tensor(a.attention_mask, b.attention_mask) &&
         same_tensor(a.clean_tokens, b.clean_tokens) &&
         same_tensor(a.corrupted_tokens, b.corrupted_tokens) &&
         same_tensor(a.answer_tokens, b.answer_tokens) &&
         same_tensor(a.wrong_tokens, b.wrong_tokens) && same_tensor(a.answer_pos, b.answer_pos) &&
         same_tensor(a.labels, b.labels) && a.tokenizer == b.tokenizer && a.d_vocab == b.d_vocab &&
         a.config == b.config;
}

// ------------------------------------------------------------ induction

TEST(TaskTest, InductionSecondHalfRepeatsTheFirst) {
  const Dataset ds =
      make_induction(InductionOptions{}.n(300).half_len(7).d_vocab(9));
  ASSERT_NO_THROW(ds.validate());
  EXPECT_EQ(ds.task, "induction");
  // The recorded vocabulary spells id 0 as "<bos>" and every other id as its number.
  const WordTokenizer words = WordTokenizer::from_json_string(ds.tokenizer);
  EXPECT_EQ(words.vocab(), (std::vector<std::string>{"<bos>", "1", "2", "3", "4", "5", "6", "7", "8"}));
  EXPECT_EQ(ds.d_vocab, 9);
  ASSERT_EQ(ds.tokens.sizes(), (c10::IntArrayRef{300, 15}));
  ASSERT_EQ(ds.labels.sizes(), (c10::IntArrayRef{300, 15}));
  const Rows tok = rows(ds.tokens), lab = rows(ds.labels);
  for (size_t i = 0; i < tok.size(); ++i) {
    EXPECT_EQ(tok[i][0], 0) << "example " << i;
    EXPECT_EQ(lab[i][0], 0);
    for (int j = 1; j <= 7; ++j) {
      EXPECT_GE(tok[i][j], 1) << "example " << i;
      EXPECT_LT(tok[i][j], 9) << "example " << i;
      EXPECT_EQ(tok[i][j + 7], tok[i][j]) << "example " << i << " position " << j + 7;
      EXPECT_EQ(lab[i][j], 0);
      EXPECT_EQ(lab[i][j + 7], 1);
    }
  }
  // Every id of [1, 9) is used.
  std::set<int64_t> used;
  for (const auto& row : tok) used.insert(row.begin() + 1, row.end());
  EXPECT_EQ(used.size(), 8u);
}

TEST(TaskTest, InductionWithMinHalfLenVariesTheRepeatLength) {
  const Dataset ds = make_induction(
      InductionOptions{}.n(400).half_len(8).min_half_len(3).d_vocab(50));
  ASSERT_NO_THROW(ds.validate());
  ASSERT_EQ(ds.tokens.sizes(), (c10::IntArrayRef{400, 17}));
  const Rows tok = rows(ds.tokens), lab = rows(ds.labels);
  std::set<int64_t> lengths;
  for (size_t i = 0; i < tok.size(); ++i) {
    int64_t len = 0;
    for (int64_t l : lab[i]) len += l;
    ASSERT_GE(len, 3) << "example " << i;
    ASSERT_LE(len, 8) << "example " << i;
    lengths.insert(len);
    for (int64_t j = 1; j <= len; ++j) {
      EXPECT_EQ(tok[i][j + len], tok[i][j]) << "example " << i << " position " << j + len;
      EXPECT_EQ(lab[i][j + len], 1);
      EXPECT_EQ(lab[i][j], 0);
    }
    for (int64_t j = 1 + 2 * len; j < 17; ++j) {
      EXPECT_EQ(lab[i][j], 0);
      EXPECT_GE(tok[i][j], 1);
    }
  }
  EXPECT_EQ(lengths.size(), 6u);  // every length 3..8 occurs
  EXPECT_THAT(error_of([] { make_induction(InductionOptions{}.half_len(4).min_half_len(5)); }),
              HasSubstr("min_half_len"));
}

TEST(TaskTest, InductionWithRandomStartMovesTheCopies) {
  const Dataset ds = make_induction(InductionOptions{}.n(300).half_len(8).min_half_len(3)
                                        .random_start(true).d_vocab(50));
  const Rows tok = rows(ds.tokens), lab = rows(ds.labels);
  std::set<int64_t> starts;
  for (size_t i = 0; i < tok.size(); ++i) {
    int64_t first = -1, len = 0;
    for (int64_t j = 0; j < 17; ++j) {
      if (lab[i][j] == 1 && first < 0) first = j;
      len += lab[i][j];
    }
    ASSERT_GE(len, 3) << "example " << i;
    ASSERT_GE(first - len, 1) << "example " << i;  // the first copy starts after BOS
    starts.insert(first - len);
    for (int64_t j = first; j < first + len; ++j) {
      EXPECT_EQ(lab[i][j], 1);
      EXPECT_EQ(tok[i][j], tok[i][j - len]) << "example " << i << " position " << j;
    }
  }
  EXPECT_GE(starts.size(), 8u);  // copies start at many positions
  EXPECT_THAT(error_of([] { make_induction(InductionOptions{}.random_start(true)); }),
              HasSubstr("random_start"));
}

TEST(TaskTest, InductionPairsDifferOnlyInTheFirstCopy) {
  const Dataset ds = make_induction(
      InductionOptions{}.n(200).half_len(6).query_len(2).pairs(true).d_vocab(4));
  ASSERT_NO_THROW(ds.validate());
  EXPECT_FALSE(ds.tokens.defined());
  ASSERT_EQ(ds.clean_tokens.sizes(), (c10::IntArrayRef{200, 9}));  // BOS + 6 + 2
  ASSERT_EQ(ds.corrupted_tokens.sizes(), (c10::IntArrayRef{200, 9}));
  ASSERT_EQ(ds.answer_tokens.sizes(), (c10::IntArrayRef{200, 1}));
  const Rows clean = rows(ds.clean_tokens), corrupted = rows(ds.corrupted_tokens);
  const Rows answer = rows(ds.answer_tokens), wrong = rows(ds.wrong_tokens), pos = rows(ds.answer_pos.view({-1, 1}));
  int64_t first_copies_equal = 0;
  for (size_t i = 0; i < clean.size(); ++i) {
    EXPECT_EQ(clean[i][0], 0);
    EXPECT_EQ(corrupted[i][0], 0);
    for (int t = 1; t <= 6; ++t) {
      EXPECT_GE(clean[i][t], 1);
      EXPECT_GE(corrupted[i][t], 1);
    }
    // The second copy a_1 a_2 is the clean first copy's start, in both prompts.
    for (int t = 0; t < 2; ++t) {
      EXPECT_EQ(clean[i][7 + t], clean[i][1 + t]) << "example " << i;
      EXPECT_EQ(corrupted[i][7 + t], clean[i][1 + t]) << "example " << i;
    }
    EXPECT_EQ(answer[i][0], clean[i][3]) << "example " << i;     // a_{j+1}
    EXPECT_EQ(wrong[i][0], corrupted[i][3]) << "example " << i;  // b_{j+1}
    EXPECT_NE(answer[i][0], wrong[i][0]) << "example " << i;
    EXPECT_EQ(pos[i][0], 8);
    bool same = true;
    for (int t = 1; t <= 6; ++t) same = same && clean[i][t] == corrupted[i][t];
    first_copies_equal += same;
  }
  EXPECT_LT(first_copies_equal, 5);  // independent draws (3^6 first copies)
  // query_len 0 = half_len / 2.
  EXPECT_EQ(make_induction(InductionOptions{}.n(3).half_len(8).pairs(true)).clean_tokens.size(1), 13);
  EXPECT_THAT(error_of([] { make_induction(InductionOptions{}.pairs(true).half_len(4).query_len(4)); }),
              HasSubstr("query_len"));
  EXPECT_THAT(error_of([] { make_induction(InductionOptions{}.query_len(2)); }), HasSubstr("set pairs=true"));
  EXPECT_THAT(error_of([] { make_induction(InductionOptions{}.pairs(true).half_len(8).min_half_len(3)); }),
              HasSubstr("pairs"));
  EXPECT_THAT(error_of([] { make_induction(InductionOptions{}.pairs(true).d_vocab(2)); }),
              HasSubstr("d_vocab"));
}

// ------------------------------------------------------------ ioi

// Checks every IOI property on every example; returns how many were ABBA.
int64_t check_ioi(const Dataset& ds) {
  const WordTokenizer tok = WordTokenizer::from_json_string(ds.tokenizer);
  EXPECT_EQ(tok.size(), ds.d_vocab);
  const auto& names = ioi_names();
  const auto& templates = ioi_templates();
  const Rows clean = rows(ds.clean_tokens), corrupted = rows(ds.corrupted_tokens),
             mask = rows(ds.attention_mask), answer = rows(ds.answer_tokens),
             wrong = rows(ds.wrong_tokens), pos = rows(ds.answer_pos), label = rows(ds.labels);
  size_t longest = 0;
  for (const auto& t : templates) longest = std::max(longest, split(t).size());
  EXPECT_EQ(static_cast<size_t>(ds.seq_len()), longest);
  EXPECT_EQ(ds.answer_tokens.size(1), 1);
  int64_t abba = 0;
  for (size_t i = 0; i < clean.size(); ++i) {
    SCOPED_TRACE("example " + std::to_string(i) + ": " + tok.decode(clean[i]));
    const std::string io = tok.word(answer[i][0]), s = tok.word(wrong[i][0]);
    EXPECT_TRUE(contains(names, io));
    EXPECT_TRUE(contains(names, s));
    EXPECT_NE(io, s);
    const int64_t t = label[i][0];
    EXPECT_GE(t, 0);
    EXPECT_LT(t, static_cast<int64_t>(templates.size()));
    const std::vector<std::string> words = split(templates[t]);
    EXPECT_EQ(pos[i][0], static_cast<int64_t>(words.size()) - 1);
    // The clean prompt is the template filled with IO and S; corrupted differs at S2 only.
    int changed = 0;
    for (size_t j = 0; j < clean[i].size(); ++j) {
      const bool real = j < words.size();
      EXPECT_EQ(mask[i][j], real ? 1 : 0);
      if (!real) {
        EXPECT_EQ(tok.word(clean[i][j]), kIoiPad);
        EXPECT_EQ(tok.word(corrupted[i][j]), kIoiPad);
        continue;
      }
      const std::string c = tok.word(clean[i][j]), x = tok.word(corrupted[i][j]);
      const std::string& w = words[j];
      if (w == "{N1}") {
        EXPECT_TRUE(c == io || c == s);
        abba += c == io;
      } else if (w == "{N2}") {
        EXPECT_TRUE(c == io || c == s);
        EXPECT_NE(c, tok.word(clean[i][j - 2]));  // "{N1} and {N2}": the other name
      } else if (w == "{S}") {
        EXPECT_EQ(c, s);
        EXPECT_TRUE(contains(names, x));
        EXPECT_NE(x, io);
        EXPECT_NE(x, s);
      } else if (w == "{PLACE}") {
        EXPECT_TRUE(contains(ioi_places(), c));
      } else if (w == "{OBJECT}") {
        EXPECT_TRUE(contains(ioi_objects(), c));
      } else {
        EXPECT_EQ(c, w);
      }
      if (w != "{S}") {
        EXPECT_EQ(x, c);
      }
      changed += x != c;
    }
    EXPECT_EQ(changed, 1);
  }
  return abba;
}

TEST(TaskTest, IoiAnswerIsTheIndirectObjectOnEveryExample) {
  const Dataset ds = make_ioi(IoiOptions{}.n(400).seed(11));
  ASSERT_NO_THROW(ds.validate());
  EXPECT_EQ(ds.task, "ioi");
  ASSERT_EQ(ds.clean_tokens.size(0), 400);
  const int64_t abba = check_ioi(ds);
  EXPECT_GT(abba, 120);  // mixed: about half each
  EXPECT_LT(abba, 280);
  // Every template is used.
  std::set<int64_t> used;
  for (const auto& row : rows(ds.labels)) used.insert(row[0]);
  EXPECT_EQ(used.size(), ioi_templates().size());
  // The brief's example prompt is one of the possible ones.
  EXPECT_NO_THROW(WordTokenizer::from_json_string(ds.tokenizer)
                      .encode("When Mary and John went to the store , John gave a drink to"));
}

TEST(TaskTest, IoiOrderOption) {
  const Dataset abba = make_ioi(IoiOptions{}.n(50).order("ABBA"));
  EXPECT_EQ(check_ioi(abba), 50);
  const Dataset baba = make_ioi(IoiOptions{}.n(50).order("BABA"));
  EXPECT_EQ(check_ioi(baba), 0);
  EXPECT_THAT(error_of([] { make_ioi(IoiOptions{}.order("ABC")); }),
              HasSubstr("ioi: option \"order\" is \"ABC\"; use ABBA, BABA or mixed"));
}

TEST(TaskTest, IoiWithAGivenTokenizer) {
  // The generated vocabulary reversed, plus an extra word: same prompts, other ids.
  const Dataset ref = make_ioi(IoiOptions{}.n(30).seed(4));
  std::vector<std::string> vocab = WordTokenizer::from_json_string(ref.tokenizer).vocab();
  std::reverse(vocab.begin(), vocab.end());
  vocab.push_back("extra");
  const WordTokenizer given(vocab);
  const Dataset ds = make_ioi(IoiOptions{}.n(30).seed(4).tokenizer(given.to_json()));
  EXPECT_EQ(ds.tokenizer, given.to_json_string());
  EXPECT_EQ(ds.d_vocab, given.size());
  check_ioi(ds);
  const WordTokenizer ref_tok = WordTokenizer::from_json_string(ref.tokenizer);
  for (int64_t i = 0; i < 30; ++i) {
    EXPECT_EQ(given.decode(ds.clean_tokens[i]), ref_tok.decode(ref.clean_tokens[i]));
    EXPECT_EQ(given.decode(ds.corrupted_tokens[i]), ref_tok.decode(ref.corrupted_tokens[i]));
  }
  // JSON text works as well as a JSON object.
  const Dataset from_text =
      make_ioi(IoiOptions{}.n(30).seed(4).tokenizer(given.to_json_string()));
  EXPECT_EQ(from_text.tokenizer, ds.tokenizer);
  EXPECT_TRUE(same_tensor(from_text.clean_tokens, ds.clean_tokens));
  EXPECT_TRUE(same_tensor(from_text.corrupted_tokens, ds.corrupted_tokens));

  std::vector<std::string> partial = WordTokenizer::from_json_string(ref.tokenizer).vocab();
  partial.erase(std::remove(partial.begin(), partial.end(), "Mary"), partial.end());
  partial.erase(std::remove(partial.begin(), partial.end(), "<pad>"), partial.end());
  const std::string msg =
      error_of([&] { make_ioi(IoiOptions{}.tokenizer(WordTokenizer(partial).to_json())); });
  EXPECT_THAT(msg, HasSubstr("lacks \"<pad>\", \"Mary\""));
  EXPECT_THAT(error_of([] {
                make_task("ioi", {{"tokenizer", {{"kind", "bpe"}}}});
              }),
              HasSubstr("option \"tokenizer\" is not a usable word tokenizer"));
}

// ------------------------------------------------------------ greater_than

TEST(TaskTest, GreaterThanAnswersYearPlusOneOnEveryExample) {
  const Dataset ds = make_greater_than(GreaterThanOptions{}.n(500).seed(2));
  ASSERT_NO_THROW(ds.validate());
  const WordTokenizer tok = WordTokenizer::from_json_string(ds.tokenizer);
  EXPECT_EQ(ds.d_vocab, 1 + 8 + 5 + 100);
  ASSERT_EQ(ds.clean_tokens.sizes(), (c10::IntArrayRef{500, 12}));
  const Rows clean = rows(ds.clean_tokens), corrupted = rows(ds.corrupted_tokens),
             answer = rows(ds.answer_tokens), wrong = rows(ds.wrong_tokens),
             pos = rows(ds.answer_pos), label = rows(ds.labels);
  std::set<int64_t> years;
  for (size_t i = 0; i < clean.size(); ++i) {
    const int64_t yy = label[i][0];
    years.insert(yy);
    ASSERT_GE(yy, 2);
    ASSERT_LE(yy, 98);
    const std::vector<std::string> w = tok.to_str_tokens(clean[i]);
    EXPECT_TRUE(contains(greater_than_nouns(), w[1]));
    EXPECT_EQ(tok.decode(clean[i]),
              "The " + w[1] + " lasted from the year 17 " + two_digit(yy) + " to the year 17");
    std::vector<int64_t> expect_corrupted = clean[i];
    expect_corrupted[7] = tok.id("01");
    EXPECT_EQ(corrupted[i], expect_corrupted);
    EXPECT_EQ(tok.word(answer[i][0]), two_digit(yy + 1));
    EXPECT_EQ(tok.word(wrong[i][0]), two_digit(yy - 1));
    EXPECT_EQ(pos[i][0], 11);
  }
  EXPECT_GT(years.size(), 90u);  // 97 possible years, 500 draws
  const Dataset c18 = make_greater_than(GreaterThanOptions{}.n(3).century(18));
  EXPECT_EQ(
      WordTokenizer::from_json_string(c18.tokenizer).word(c18.clean_tokens[0][6].item<int64_t>()),
      "18");
}

// ------------------------------------------------------------ modular_addition

TEST(TaskTest, ModularAdditionCoversEveryPairOnce) {
  const int64_t p = 13;
  const Dataset ds = make_modular_addition(ModularAdditionOptions{}.p(p).seed(3));
  ASSERT_NO_THROW(ds.validate());
  EXPECT_EQ(ds.d_vocab, p + 1);
  ASSERT_EQ(ds.tokens.sizes(), (c10::IntArrayRef{p * p, 3}));
  const Rows tok = rows(ds.tokens), lab = rows(ds.labels), answer = rows(ds.answer_tokens),
             wrong = rows(ds.wrong_tokens), pos = rows(ds.answer_pos);
  std::set<std::pair<int64_t, int64_t>> pairs;
  std::vector<int64_t> wrong_offsets(p, 0);
  for (size_t i = 0; i < tok.size(); ++i) {
    const int64_t a = tok[i][0], b = tok[i][1];
    ASSERT_GE(a, 0);
    ASSERT_LT(a, p);
    ASSERT_GE(b, 0);
    ASSERT_LT(b, p);
    EXPECT_EQ(tok[i][2], p);
    EXPECT_TRUE(pairs.insert({a, b}).second) << "pair " << a << ", " << b << " twice";
    EXPECT_EQ(lab[i][0], (a + b) % p);
    EXPECT_EQ(answer[i][0], (a + b) % p);
    EXPECT_NE(wrong[i][0], answer[i][0]);
    ASSERT_GE(wrong[i][0], 0);
    ASSERT_LT(wrong[i][0], p);
    ++wrong_offsets[(wrong[i][0] - answer[i][0] + p) % p];
    EXPECT_EQ(pos[i][0], 2);
  }
  EXPECT_EQ(pairs.size(), static_cast<size_t>(p * p));
  for (int64_t k = 1; k < p; ++k) EXPECT_GT(wrong_offsets[k], 0) << "offset " << k;
  // The recorded vocabulary reads a row as "a b =".
  const WordTokenizer words = WordTokenizer::from_json_string(ds.tokenizer);
  EXPECT_EQ(words.size(), p + 1);
  EXPECT_EQ(words.decode(std::vector<int64_t>{tok[0][0], tok[0][1], tok[0][2]}),
            std::to_string(tok[0][0]) + " " + std::to_string(tok[0][1]) + " =");
  // The rows are shuffled, not in (a, b) order.
  EXPECT_FALSE(tok[0][0] == 0 && tok[1][0] == 0 && tok[1][1] == 1);
  EXPECT_EQ(make_modular_addition(ModularAdditionOptions{}).size(), 113 * 113);
}

// ------------------------------------------------------------ reversal / sorting

void check_seq_to_seq(const Dataset& ds, int64_t L, int64_t V, bool sorting) {
  ASSERT_NO_THROW(ds.validate());
  EXPECT_EQ(ds.d_vocab, V + 2);
  ASSERT_EQ(ds.tokens.size(1), 2 * L + 2);
  const Rows tok = rows(ds.tokens), lab = rows(ds.labels);
  for (size_t i = 0; i < tok.size(); ++i) {
    SCOPED_TRACE("example " + std::to_string(i));
    EXPECT_EQ(tok[i][0], V);
    EXPECT_EQ(tok[i][L + 1], V + 1);
    std::vector<int64_t> x(tok[i].begin() + 1, tok[i].begin() + 1 + L);
    const std::vector<int64_t> y(tok[i].begin() + L + 2, tok[i].end());
    for (int64_t v : x) {
      EXPECT_GE(v, 0);
      EXPECT_LT(v, V);
    }
    if (sorting) {
      std::sort(x.begin(), x.end());
    } else {
      std::reverse(x.begin(), x.end());
    }
    EXPECT_EQ(y, x);
    for (int64_t t = 0; t < 2 * L + 2; ++t) {
      const bool predicts_output = t + 1 >= L + 2 && t + 1 < 2 * L + 2;
      EXPECT_EQ(lab[i][t], predicts_output ? tok[i][t + 1] : -1) << "position " << t;
    }
  }
}

TEST(TaskTest, ReversalOutputsAreReversedInputs) {
  check_seq_to_seq(make_reversal(ReversalOptions{}.n(200)), 5, 10, false);
  check_seq_to_seq(make_reversal(ReversalOptions{}.n(50).len(8).V(3)), 8, 3, false);
}

TEST(TaskTest, SortingOutputsAreSortedInputs) {
  check_seq_to_seq(make_sorting(SortingOptions{}.n(200)), 5, 10, true);
  check_seq_to_seq(make_sorting(SortingOptions{}.n(50).len(9).V(4)), 9, 4, true);
  EXPECT_EQ(make_sorting(SortingOptions{}.n(3)).task, "sorting");
}

// ------------------------------------------------------------ probe

TEST(TaskTest, ProbeLabelsRecomputedIndependently) {
  for (const std::string& kind : probe_label_kinds()) {
    SCOPED_TRACE(kind);
    const Dataset ds = make_probe(ProbeOptions{}
                                      .n(100)
                                      .seq_len(20)
                                      .d_vocab(30)
                                      .pool(5)
                                      .label(kind)
                                      .n_classes(3));
    ASSERT_NO_THROW(ds.validate());
    ASSERT_EQ(ds.labels.sizes(), (c10::IntArrayRef{100, 20}));
    const Rows tok = rows(ds.tokens), lab = rows(ds.labels);
    int64_t seen = 0;
    for (size_t i = 0; i < tok.size(); ++i) {
      EXPECT_EQ(tok[i][0], 0);
      EXPECT_EQ(lab[i][0], -1);
      std::set<int64_t> distinct;
      for (int64_t t = 1; t < 20; ++t) {
        const int64_t id = tok[i][t];
        EXPECT_GE(id, 1);
        EXPECT_LT(id, 30);
        int64_t expected;
        if (kind == "seen_before") {
          expected = distinct.count(id) ? 1 : 0;
          seen += expected;
        } else if (kind == "position_parity") {
          expected = t % 2;
        } else {
          expected = id % 3;
        }
        distinct.insert(id);
        EXPECT_EQ(lab[i][t], expected) << "example " << i << " position " << t;
      }
      EXPECT_LE(distinct.size(), 5u);
    }
    if (kind == "seen_before") {
      EXPECT_GT(seen, 100 * 19 / 2);  // 19 draws from 5 ids repeat often
    }
  }
  EXPECT_THAT(error_of([] { make_probe(ProbeOptions{}.label("colour")); }),
              HasSubstr("probe: option \"label\" is \"colour\""));
  EXPECT_THAT(error_of([] { make_probe(ProbeOptions{}.d_vocab(5).pool(5)); }),
              HasSubstr("option \"pool\" must be in [1, d_vocab - 1]"));
}

// ------------------------------------------------------------ all tasks

// Small options for every task, so that the loops below stay fast.
nlohmann::json small_options(const std::string& task) {
  if (task == "modular_addition") return {{"p", 11}};
  if (task == "induction") return {{"n", 40}, {"half_len", 6}};
  return {{"n", 40}};
}

TEST(TaskTest, SameSeedSameDatasetOtherSeedAnother) {
  for (const std::string& name : task_names()) {
    SCOPED_TRACE(name);
    nlohmann::json opts = small_options(name);
    opts["seed"] = 5;
    const Dataset a = make_task(name, opts), b = make_task(name, opts);
    EXPECT_TRUE(same_data(a, b));
    EXPECT_EQ(a.seed, 5);
    EXPECT_EQ(nlohmann::json::parse(a.config)["seed"], 5);
    opts["seed"] = 6;
    const Dataset c = make_task(name, opts);
    EXPECT_FALSE(same_data(a, c));
    EXPECT_FALSE(same_tensor(a.prompts(), c.prompts()));
  }
}

TEST(TaskTest, EveryTaskRoundTripsThroughAFile) {
  const std::string dir = ::testing::TempDir() + "mechlab_tasks_test/";
  std::filesystem::create_directories(dir);
  for (const std::string& name : task_names()) {
    SCOPED_TRACE(name);
    const Dataset ds = make_task(name, small_options(name));
    EXPECT_EQ(ds.task, name);
    save_dataset(dir + name + ".h5", ds);
    const Dataset back = load_dataset(dir + name + ".h5");
    EXPECT_TRUE(same_data(ds, back));
    EXPECT_EQ(back.task, name);
    // The config reproduces the dataset.
    EXPECT_TRUE(same_data(make_task(name, nlohmann::json::parse(back.config)), ds));
  }
}

TEST(TaskTest, RegistryListsEveryTaskWithItsDefaults) {
  EXPECT_EQ(task_names(),
            (std::vector<std::string>{"induction", "ioi", "greater_than", "modular_addition",
                                      "reversal", "sorting", "probe"}));
  const TaskInfo& ind = task_info("induction");
  ASSERT_EQ(ind.options.size(), 8u);
  EXPECT_EQ(ind.options[0].key, "n");
  EXPECT_EQ(ind.options[0].default_value, 1000);
  EXPECT_EQ(ind.options[1].key, "half_len");
  EXPECT_EQ(ind.options[1].default_value, 20);
  EXPECT_EQ(ind.options[2].key, "min_half_len");
  EXPECT_EQ(ind.options[2].default_value, 0);
  EXPECT_EQ(ind.options[3].default_value, false);
  EXPECT_EQ(ind.options[4].key, "d_vocab");
  EXPECT_EQ(ind.options[4].default_value, 64);
  EXPECT_EQ(ind.options[6].key, "pairs");
  EXPECT_EQ(ind.options[6].default_value, false);
  EXPECT_EQ(ind.options[7].key, "query_len");
  EXPECT_EQ(ind.options[7].default_value, 0);
  for (const auto& info : task_infos()) {
    EXPECT_FALSE(info.summary.empty());
    for (const auto& opt : info.options)
      EXPECT_FALSE(opt.help.empty()) << info.name << "." << opt.key;
  }
  EXPECT_EQ(options_to_json(ProbeOptions{})["label"], "seen_before");
}

TEST(TaskTest, MakeTaskRefusesUnknownNamesKeysAndTypes) {
  EXPECT_THAT(error_of([] { make_task("inductoin", {}); }),
              HasSubstr("unknown task \"inductoin\"; the tasks are: induction, ioi, greater_than, "
                        "modular_addition, reversal, sorting, probe"));
  EXPECT_THAT(error_of([] {
                make_task("induction", {{"length", 5}, {"n", 3}});
              }),
              HasSubstr("induction: unknown option \"length\"; the options of induction are: n, "
                        "half_len, min_half_len, random_start, d_vocab, seed, pairs, query_len"));
  EXPECT_THAT(error_of([] {
                make_task("modular_addition", {{"n", 5}});
              }),
              HasSubstr("unknown option \"n\""));
  EXPECT_THAT(error_of([] {
                make_task("induction", {{"n", "ten"}});
              }),
              HasSubstr("induction: option \"n\" must be an integer, got \"ten\""));
  EXPECT_THAT(error_of([] {
                make_task("induction", {{"n", 2.5}});
              }),
              HasSubstr("option \"n\" must be an integer, got 2.5"));
  EXPECT_THAT(error_of([] {
                make_task("ioi", {{"order", 1}});
              }),
              HasSubstr("ioi: option \"order\" must be a string, got 1"));
  EXPECT_THAT(error_of([] {
                make_task("sorting", nlohmann::json::array({1, 2}));
              }),
              HasSubstr("sorting: options must be a JSON object"));
  EXPECT_THAT(error_of([] {
                make_task("induction", {{"n", 0}});
              }),
              HasSubstr("induction: option \"n\" must be positive"));
  EXPECT_THAT(error_of([] {
                make_task("reversal", {{"seed", -1}});
              }),
              HasSubstr("reversal: option \"seed\" must be >= 0"));
  // Whole floats are integers (JSON writers may write 1e3).
  EXPECT_EQ(make_task("induction", {{"n", 3.0}, {"half_len", 2}}).size(), 3);
}

}  // namespace
}  // namespace mechlab::core::tasks
