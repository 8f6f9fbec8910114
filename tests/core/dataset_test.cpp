// Tests for core/data/dataset.h: round trips of every dataset kind, validation
// messages, and the messages a user sees for files that are not (loadable)
// datasets.
#include "core/data/dataset.h"

#include "core/model/checkpoint.h"
#include "core/util/error.h"
#include "core/formats/hdf5_file.h"
#include "core/data/tokenizer/word_tokenizer.h"
#include "tests/test_util.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <vector>

namespace mechlab::core {
namespace {

using ::testing::AnyOf;
using ::testing::HasSubstr;

std::string temp_path(const std::string& name) {
  return mechlab::testing::temp_path("dataset_test", name);
}

using mechlab::testing::error_of;

bool same(const at::Tensor& a, const at::Tensor& b) {
  if (a.defined() != b.defined()) return false;
  if (!a.defined()) return true;
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  const at::Tensor ca = a.contiguous(), cb = b.contiguous();
  return std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.numel() * ca.element_size()) == 0;
}

void expect_same(const Dataset& a, const Dataset& b) {
  EXPECT_EQ(a.task, b.task);
  EXPECT_EQ(a.tokenizer, b.tokenizer);
  EXPECT_EQ(a.d_vocab, b.d_vocab);
  EXPECT_EQ(a.seed, b.seed);
  EXPECT_EQ(a.config, b.config);
  EXPECT_TRUE(same(a.tokens, b.tokens));
  EXPECT_TRUE(same(a.attention_mask, b.attention_mask));
  EXPECT_TRUE(same(a.clean_tokens, b.clean_tokens));
  EXPECT_TRUE(same(a.corrupted_tokens, b.corrupted_tokens));
  EXPECT_TRUE(same(a.answer_tokens, b.answer_tokens));
  EXPECT_TRUE(same(a.wrong_tokens, b.wrong_tokens));
  EXPECT_TRUE(same(a.answer_pos, b.answer_pos));
  EXPECT_TRUE(same(a.labels, b.labels));
}

at::Tensor ids(std::vector<int32_t> v, int64_t rows) { return at::tensor(v).view({rows, -1}); }

// tokens [3, 4] with a padding mask and per-position labels.
Dataset token_set() {
  Dataset ds;
  ds.task = "custom";
  ds.d_vocab = 10;
  ds.seed = 7;
  ds.config = R"({"note":"hand-made"})";
  ds.tokens = ids({0, 1, 2, 3, 0, 4, 5, 9, 0, 6, 7, 7}, 3);
  ds.attention_mask =
      at::tensor(std::vector<uint8_t>{1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 0, 0}).view({3, 4});
  ds.labels =
      at::tensor(std::vector<int64_t>{-1, 0, 1, 0, -1, 1, 1, -1, -1, 0, -1, -1}).view({3, 4});
  return ds;
}

// A clean/corrupted pair set with answers, answer_pos, [N] labels and a word tokenizer.
Dataset pair_set() {
  Dataset ds;
  ds.task = "ioi";
  const WordTokenizer tok({"<pad>", "Mary", "John", "Tom", "gave", "to"});
  ds.tokenizer = tok.to_json_string();
  ds.d_vocab = tok.size();
  ds.clean_tokens = ids({1, 2, 2, 4, 5, 2, 1, 2, 4, 5}, 2);
  ds.corrupted_tokens = ids({1, 2, 3, 4, 5, 2, 1, 3, 4, 5}, 2);
  ds.answer_tokens = ids({1, 2}, 2);
  ds.wrong_tokens = ids({2, 1}, 2);
  ds.answer_pos = at::tensor(std::vector<int32_t>{4, 4});
  ds.labels = at::tensor(std::vector<int64_t>{0, 3});
  return ds;
}

// ------------------------------------------------------------ round trips

TEST(DatasetTest, RoundTripTokensMaskAndPositionLabels) {
  const Dataset ds = token_set();
  const std::string path = temp_path("tokens.h5");
  save_dataset(path, ds);
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  const Dataset back = load_dataset(path);
  expect_same(ds, back);
  EXPECT_EQ(back.size(), 3);
  EXPECT_EQ(back.seq_len(), 4);
  EXPECT_TRUE(same(back.prompts(), ds.tokens));
}

TEST(DatasetTest, RoundTripPairSetWithAnswers) {
  const Dataset ds = pair_set();
  const std::string path = temp_path("pairs.h5");
  save_dataset(path, ds);
  const Dataset back = load_dataset(path);
  expect_same(ds, back);
  EXPECT_FALSE(back.tokens.defined());
  EXPECT_TRUE(same(back.prompts(), ds.clean_tokens));
  EXPECT_EQ(back.size(), 2);
  EXPECT_EQ(back.seq_len(), 5);
  EXPECT_EQ(WordTokenizer::from_json_string(back.tokenizer).decode(back.clean_tokens[1]),
            "John Mary John gave to");
}

TEST(DatasetTest, RoundTripExampleLabels) {
  Dataset ds;
  ds.d_vocab = 5;
  ds.tokens = ids({0, 1, 2, 3, 4, 0}, 2);
  ds.labels = at::tensor(std::vector<int64_t>{1, 0});
  const std::string path = temp_path("labels.h5");
  save_dataset(path, ds);
  const Dataset back = load_dataset(path);
  expect_same(ds, back);
  EXPECT_EQ(back.task, "custom");
  EXPECT_EQ(back.seed, -1);
  EXPECT_EQ(back.config, "{}");
}

TEST(DatasetTest, SaveReplacesAndValidatesFirst) {
  const std::string path = temp_path("replace.h5");
  save_dataset(path, token_set());
  Dataset bad = token_set();
  bad.tokens = bad.tokens.to(at::kLong);
  const std::string msg = error_of([&] { save_dataset(path, bad); });
  EXPECT_THAT(msg, HasSubstr("cannot save dataset '" + path + "'"));
  EXPECT_THAT(msg, HasSubstr("must be int32"));
  // The old file is untouched and no temporary is left behind.
  expect_same(load_dataset(path), token_set());
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  save_dataset(path, pair_set());
  expect_same(load_dataset(path), pair_set());
}

// ------------------------------------------------------------ validate

TEST(DatasetTest, ValidateRefusesWrongDtypes) {
  Dataset ds = token_set();
  ds.tokens = ds.tokens.to(at::kFloat);
  std::string msg = error_of([&] { ds.validate("x.h5"); });
  EXPECT_THAT(msg, HasSubstr("x.h5: /tokens has dtype float32; it must be int32 [N, T]"));

  ds = token_set();
  ds.tokens = ds.tokens.to(at::kLong);
  EXPECT_THAT(error_of([&] { ds.validate(); }),
              HasSubstr("/tokens has dtype int64; it must be int32"));

  ds = token_set();
  ds.attention_mask = ds.attention_mask.to(at::kBool);
  EXPECT_THAT(error_of([&] { ds.validate(); }),
              HasSubstr("/attention_mask has dtype bool; it must be uint8"));

  ds = token_set();
  ds.labels = ds.labels.to(at::kInt);
  EXPECT_THAT(error_of([&] { ds.validate(); }),
              HasSubstr("/labels has dtype int32; it must be int64"));

  Dataset p = pair_set();
  p.answer_pos = p.answer_pos.to(at::kLong);
  EXPECT_THAT(error_of([&] { p.validate(); }),
              HasSubstr("/answer_pos has dtype int64; it must be int32 [N]"));
}

TEST(DatasetTest, ValidateRefusesWrongRanks) {
  Dataset ds = token_set();
  ds.tokens = ds.tokens.reshape({-1});
  EXPECT_THAT(error_of([&] { ds.validate(); }),
              HasSubstr("/tokens has shape [12]; it must be [N, T]"));
  Dataset p = pair_set();
  p.answer_tokens = p.answer_tokens.reshape({-1});
  EXPECT_THAT(error_of([&] { p.validate(); }),
              HasSubstr("/answer_tokens has shape [2]; it must be [N, K]"));
  p = pair_set();
  p.labels = p.labels.view({2, 1, 1});
  EXPECT_THAT(error_of([&] { p.validate(); }), HasSubstr("it must be [N] or [N, T]"));
}

TEST(DatasetTest, ValidateRefusesMismatchedRowsAndLengths) {
  Dataset ds = token_set();
  ds.labels = ds.labels.slice(0, 0, 2);
  EXPECT_THAT(error_of([&] { ds.validate(); }), HasSubstr("/labels has 2 rows but /tokens has 3"));
  ds = token_set();
  ds.attention_mask = ds.attention_mask.slice(1, 0, 3);
  EXPECT_THAT(error_of([&] { ds.validate(); }),
              HasSubstr("/attention_mask has 3 positions but /tokens has 4"));
  Dataset p = pair_set();
  p.corrupted_tokens = p.corrupted_tokens.slice(0, 0, 1);
  EXPECT_THAT(error_of([&] { p.validate(); }),
              HasSubstr("/corrupted_tokens has 1 rows but /clean_tokens has 2"));
}

TEST(DatasetTest, ValidateRefusesIncompletePairs) {
  Dataset p = pair_set();
  p.corrupted_tokens = at::Tensor();
  EXPECT_THAT(error_of([&] { p.validate(); }),
              HasSubstr("/clean_tokens is given without /corrupted_tokens"));
  p = pair_set();
  p.clean_tokens = at::Tensor();
  p.tokens = pair_set().clean_tokens;
  EXPECT_THAT(error_of([&] { p.validate(); }),
              HasSubstr("/corrupted_tokens is given without /clean_tokens"));
  p = pair_set();
  p.wrong_tokens = at::Tensor();
  EXPECT_THAT(error_of([&] { p.validate(); }),
              HasSubstr("/answer_tokens is given without /wrong_tokens"));
  Dataset none;
  none.d_vocab = 4;
  none.labels = at::zeros({2}, at::kLong);
  EXPECT_THAT(error_of([&] { none.validate(); }), HasSubstr("neither /tokens nor /clean_tokens"));
}

TEST(DatasetTest, ValidateNamesOutOfRangeIds) {
  Dataset ds = token_set();
  ds.tokens[2][1] = 12;
  EXPECT_THAT(error_of([&] { ds.validate("f.h5"); }),
              HasSubstr("f.h5: /tokens example 2, position 1 holds token id 12, outside [0, "
                        "d_vocab = 10)"));
  ds = token_set();
  ds.tokens[1][3] = -3;
  EXPECT_THAT(error_of([&] { ds.validate(); }),
              HasSubstr("/tokens example 1, position 3 holds token id -3"));
  Dataset p = pair_set();
  p.wrong_tokens[1][0] = 6;
  EXPECT_THAT(
      error_of([&] { p.validate(); }),
      HasSubstr("/wrong_tokens example 1, answer 0 holds token id 6, outside [0, d_vocab = 6)"));
  p = pair_set();
  p.answer_pos[1] = 5;
  EXPECT_THAT(error_of([&] { p.validate(); }),
              HasSubstr("/answer_pos example 1 is 5, outside the prompt [0, 5)"));
}

TEST(DatasetTest, ValidateRefusesMaskValuesOtherThanZeroOne) {
  Dataset ds = token_set();
  ds.attention_mask[1][2] = 2;
  EXPECT_THAT(error_of([&] { ds.validate(); }),
              HasSubstr("/attention_mask example 1, position 2 is 2; the mask holds 1 (real "
                        "token) or 0 (padding)"));
}

TEST(DatasetTest, ValidateChecksAttributes) {
  Dataset ds = token_set();
  ds.d_vocab = 0;
  EXPECT_THAT(error_of([&] { ds.validate(); }), HasSubstr("d_vocab is 0"));
  Dataset p = pair_set();
  p.d_vocab = 9;
  EXPECT_THAT(error_of([&] { p.validate(); }),
              HasSubstr("the word tokenizer has 6 words but d_vocab is 9"));
  p = pair_set();
  p.tokenizer = "{oops";
  EXPECT_THAT(error_of([&] { p.validate(); }),
              HasSubstr("'tokenizer' attribute is not valid JSON"));
  p = pair_set();
  p.config = "";
  EXPECT_THAT(error_of([&] { p.validate(); }), HasSubstr("'config' attribute is not valid JSON"));
}

TEST(DatasetTest, CheckVocabAgainstASmallerModel) {
  Dataset ds = token_set();
  EXPECT_NO_THROW(ds.check_vocab(10));
  const std::string msg = error_of([&] { ds.check_vocab(8, "tokens.h5"); });
  EXPECT_THAT(msg, HasSubstr("tokens.h5: /tokens example 1, position 3 holds token id 9 but the "
                             "model's d_vocab is 8"));
  EXPECT_THAT(msg, HasSubstr("d_vocab >= 10"));
  Dataset p = pair_set();
  EXPECT_THAT(error_of([&] { p.check_vocab(3); }),
              HasSubstr("/clean_tokens example 0, position 3 holds token id 4"));
}

// ------------------------------------------------------------ bad files

// A valid token_set() file, then `edit` applied to it with H5File.
std::string edited_file(const std::string& name, const std::function<void(H5File&)>& edit) {
  const std::string path = temp_path(name);
  save_dataset(path, token_set());
  H5File f = H5File::open_readwrite(path);
  edit(f);
  f.close();
  return path;
}

TEST(DatasetTest, LoadRefusesMissingAndTruncatedFiles) {
  const std::string missing = temp_path("no_such_dataset.h5");
  EXPECT_THAT(error_of([&] { load_dataset(missing); }), HasSubstr(missing));

  Dataset big = token_set();
  big.tokens = at::randint(0, 10, {4096, 4}, at::kInt);
  big.attention_mask = at::ones({4096, 4}, at::kByte);
  big.labels = at::Tensor();
  const std::string whole = temp_path("whole.h5");
  save_dataset(whole, big);
  std::ifstream in(whole, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string half = temp_path("half.h5");
  std::ofstream(half, std::ios::binary).write(bytes.data(), bytes.size() / 2);
  const std::string msg = error_of([&] { load_dataset(half); });
  EXPECT_THAT(msg, HasSubstr(half));
  EXPECT_THAT(msg, AnyOf(HasSubstr("truncated"), HasSubstr("not an HDF5 file")));
}

TEST(DatasetTest, LoadRefusesACheckpoint) {
  ModelConfig c;
  c.n_layers = 1;
  c.d_model = 4;
  c.n_heads = 1;
  c.d_head = 4;
  c.d_mlp = 8;
  c.d_vocab = 5;
  c.n_ctx = 8;
  const std::string path = temp_path("model.h5");
  save_checkpoint(path, c, {{"embed.W_E", at::zeros({5, 4})}});
  EXPECT_THAT(error_of([&] { load_dataset(path); }),
              HasSubstr("'" + path + "': this file is a 'checkpoint', not a dataset"));
}

TEST(DatasetTest, LoadRefusesNonMechlabFiles) {
  const std::string path = temp_path("plain.h5");
  {
    H5File f = H5File::create(path);
    f.write_tensor("tokens", at::zeros({2, 3}, at::kInt));
  }
  EXPECT_THAT(error_of([&] { load_dataset(path); }),
              HasSubstr("'" + path + "' is not a mechlab file (it has no 'mechlab_format'"));
}

TEST(DatasetTest, LoadRefusesNewerVersion) {
  const std::string path =
      edited_file("newer.h5", [](H5File& f) { f.write_attr("", "mechlab_version", int64_t(2)); });
  EXPECT_THAT(error_of([&] { load_dataset(path); }),
              HasSubstr("this file is dataset version 2 but this mechlab reads up to version 1; "
                        "upgrade mechlab"));
}

TEST(DatasetTest, LoadRefusesFloatTokens) {
  const std::string path = edited_file("float_tokens.h5", [](H5File& f) {
    WriteOptions o;
    o.overwrite(true);
    f.write_tensor("tokens", at::zeros({3, 4}, at::kFloat), o);
  });
  EXPECT_THAT(error_of([&] { load_dataset(path); }),
              HasSubstr("'" + path + "': /tokens has dtype float32; it must be int32 [N, T]"));
}

TEST(DatasetTest, LoadRefusesInt64Tokens) {
  const std::string path = edited_file("int64_tokens.h5", [](H5File& f) {
    WriteOptions o;
    o.overwrite(true);
    f.write_tensor("tokens", at::zeros({3, 4}, at::kLong), o);
  });
  EXPECT_THAT(error_of([&] { load_dataset(path); }),
              HasSubstr("/tokens has dtype int64; it must be int32 [N, T]"));
}

TEST(DatasetTest, LoadRefusesMismatchedRowCounts) {
  const std::string path = edited_file("rows.h5", [](H5File& f) {
    WriteOptions o;
    o.overwrite(true);
    f.write_tensor("labels", at::zeros({5, 4}, at::kLong), o);
  });
  EXPECT_THAT(error_of([&] { load_dataset(path); }),
              HasSubstr("/labels has 5 rows but /tokens has 3; every dataset needs one row per "
                        "example"));
}

TEST(DatasetTest, LoadRefusesIdsOutsideVocab) {
  const std::string path = edited_file("big_id.h5", [](H5File& f) {
    f.write_attr("", "d_vocab", int64_t(8));  // token 9 at example 1, position 3
  });
  EXPECT_THAT(error_of([&] { load_dataset(path); }),
              HasSubstr("'" + path +
                        "': /tokens example 1, position 3 holds token id 9, outside "
                        "[0, d_vocab = 8)"));
}

TEST(DatasetTest, LoadRefusesMaskValueTwo) {
  const std::string path = edited_file("mask2.h5", [](H5File& f) {
    WriteOptions o;
    o.overwrite(true);
    at::Tensor mask = token_set().attention_mask.clone();
    mask[0][1] = 2;
    f.write_tensor("attention_mask", mask, o);
  });
  EXPECT_THAT(error_of([&] { load_dataset(path); }),
              HasSubstr("/attention_mask example 0, position 1 is 2"));
}

TEST(DatasetTest, LoadRefusesUnknownDatasetNames) {
  const std::string path = edited_file("typo.h5", [](H5File& f) {
    f.write_tensor("token", at::zeros({3, 4}, at::kInt));
  });
  EXPECT_THAT(error_of([&] { load_dataset(path); }),
              HasSubstr("unexpected dataset '/token'; a mechlab dataset holds only /tokens"));
}

}  // namespace
}  // namespace mechlab::core
