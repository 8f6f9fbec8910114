// Tests for core/formats/safetensors.h and core/formats/safetensors_header.h: the writer/reader
// round trip, memory-mapping semantics, and one hostile file per refusal with
// the message a user sees.
#include "core/formats/safetensors.h"

#include "core/util/error.h"
#include "tests/test_util.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

namespace mechlab::core {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using mechlab::testing::error_of;

std::string temp_path(const std::string& name) {
  return mechlab::testing::temp_path("safetensors_test", name);
}

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s;
}

/// Writes the length prefix (the header's own length unless `length` is
/// given), the header text and `data` bytes; returns the path.
std::string write_raw(const std::string& name, const std::string& header, const std::string& data,
                      std::optional<uint64_t> length = std::nullopt) {
  const std::string path = temp_path(name);
  std::ofstream out(path, std::ios::binary);
  out << le64(length.value_or(header.size())) << header << data;
  return path;
}

std::string open_error(const std::string& path) {
  return error_of([&] { SafetensorsFile::open(path); });
}

TEST(Safetensors, RoundTripKeepsValuesDtypesAndMetadata) {
  const std::vector<std::pair<std::string, at::Tensor>> tensors = {
      {"f32", at::randn({3, 5})},
      {"bf16", at::randn({7}).to(at::kBFloat16)},
      {"f16", at::randn({2, 3}).to(at::kHalf)},
      {"i64", at::arange(6, at::kLong).view({2, 3})},
      {"u8", at::arange(5, at::kByte)},
      {"flag", at::tensor(std::vector<uint8_t>{1, 0, 1}).to(at::kBool)},
      {"scalar", at::tensor(2.5)},
      {"empty", at::zeros({0, 4})},
      {"strided", at::randn({4, 6}).t()},  // non-contiguous input
  };
  const std::string path = temp_path("round_trip.safetensors");
  save_safetensors(path, tensors, {{"format", "pt"}, {"note", "mechlab test"}});
  const SafetensorsFile f = SafetensorsFile::open(path);
  EXPECT_EQ(f.metadata().at("note"), "mechlab test");
  ASSERT_EQ(f.names().size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    const at::Tensor back = f.tensor(name);
    EXPECT_EQ(back.scalar_type(), t.scalar_type()) << name;
    EXPECT_EQ(back.sizes(), t.sizes()) << name;
    EXPECT_TRUE(at::equal(back, t)) << name;
  }
  // Converting copies: float32 view of the bf16 tensor.
  EXPECT_TRUE(at::equal(f.tensor("bf16", at::kFloat), tensors[1].second.to(at::kFloat)));
  // Larger elements first, so every tensor is aligned after the 8-byte-padded header.
  for (const StTensorInfo& t : f.header().tensors) {
    EXPECT_EQ((f.header().data_start + t.begin) % st_dtype_size(t.dtype), 0u) << t.name;
  }
  EXPECT_EQ(f.header().data_start % 8, 0u);
}

TEST(Safetensors, MappedTensorsOutliveTheFileObjectAndNeverWriteBack) {
  const std::string path = temp_path("cow.safetensors");
  const at::Tensor original = at::arange(12, at::kFloat).view({3, 4});
  save_safetensors(path, {{"w", original}});
  at::Tensor t;
  {
    const SafetensorsFile f = SafetensorsFile::open(path);
    t = f.tensor("w");
  }  // the mapping lives on in `t`
  EXPECT_TRUE(at::equal(t, original));
  t.mul_(-1);  // copy-on-write: the file is untouched
  EXPECT_TRUE(at::equal(SafetensorsFile::open(path).tensor("w"), original));
}

TEST(Safetensors, MisalignedDataIsCopiedCorrectly) {
  // Header of 9 bytes ("{...}" padded to odd length): F32 data at file offset 17.
  std::string header = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  header += std::string((4 - (8 + header.size()) % 4) % 4 + 1, ' ');  // force misalignment
  const float values[2] = {1.5f, -2.25f};
  const std::string path =
      write_raw("misaligned.safetensors", header, std::string(reinterpret_cast<const char*>(values), 8));
  const at::Tensor t = SafetensorsFile::open(path).tensor("w");
  EXPECT_FLOAT_EQ(t[0].item<float>(), 1.5f);
  EXPECT_FLOAT_EQ(t[1].item<float>(), -2.25f);
}

TEST(Safetensors, WriterRefusesDuplicateAndEmptyNames) {
  const std::string path = temp_path("bad_names.safetensors");
  EXPECT_THAT(error_of([&] { save_safetensors(path, {{"a", at::ones({1})}, {"a", at::ones({1})}}); }),
              HasSubstr("tensor 'a' appears twice"));
  EXPECT_THAT(error_of([&] { save_safetensors(path, {{"", at::ones({1})}}); }),
              HasSubstr("cannot write a safetensors tensor named ''"));
}

// ---------------------------------------------------------------- hostile files

TEST(SafetensorsHostile, TooShortForTheLengthPrefix) {
  const std::string path = temp_path("short.safetensors");
  std::ofstream(path, std::ios::binary) << "abc";
  EXPECT_THAT(open_error(path), AllOf(HasSubstr(path), HasSubstr("3 bytes, fewer than the 8-byte")));
}

TEST(SafetensorsHostile, HeaderLengthBeyondTheFile) {
  const std::string path = write_raw("beyond.safetensors", "{}", "", 4096);
  EXPECT_THAT(open_error(path), AllOf(HasSubstr(path), HasSubstr("header length 4096 bytes runs "
                                                                 "past the end of the 10-byte file")));
}

TEST(SafetensorsHostile, AbsurdHeaderLength) {
  const std::string path = write_raw("absurd.safetensors", "{}", "", uint64_t{1} << 62);
  EXPECT_THAT(open_error(path), HasSubstr("above the 100000000-byte limit"));
}

TEST(SafetensorsHostile, ZeroHeaderLength) {
  EXPECT_THAT(open_error(write_raw("zero.safetensors", "", "", 0)), HasSubstr("header length is 0"));
}

TEST(SafetensorsHostile, MalformedJson) {
  EXPECT_THAT(open_error(write_raw("json.safetensors", R"({"w": {"dtype": "F32",)", "")),
              HasSubstr("header is not valid JSON"));
  EXPECT_THAT(open_error(write_raw("array.safetensors", "[1, 2]", "")),
              HasSubstr("header does not start with '{'"));
  EXPECT_THAT(open_error(write_raw("nul.safetensors", std::string("{\0}", 3), "")),
              HasSubstr("not valid JSON"));
  EXPECT_THAT(open_error(write_raw("utf8.safetensors", "{\"\xff\": 1}", "")),
              HasSubstr("not valid JSON"));
  const std::string deep = "{\"a\":" + std::string(100, '[') + std::string(100, ']') + "}";
  EXPECT_THAT(open_error(write_raw("deep.safetensors", deep, "")), HasSubstr("nests deeper"));
}

TEST(SafetensorsHostile, NonObjectEntry) {
  EXPECT_THAT(open_error(write_raw("entry.safetensors", R"({"w": 5})", "")),
              HasSubstr("tensor 'w': entry is not an object"));
}

TEST(SafetensorsHostile, UnknownDtype) {
  const auto path = write_raw("dtype.safetensors",
                              R"({"w": {"dtype": "F12", "shape": [1], "data_offsets": [0, 2]}})",
                              "xx");
  EXPECT_THAT(open_error(path), AllOf(HasSubstr(path),
                                      HasSubstr("tensor 'w': unknown or unsupported dtype 'F12'")));
  const auto f4 = write_raw("f4.safetensors",
                            R"({"w": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}})", "x");
  EXPECT_THAT(open_error(f4), HasSubstr("unsupported dtype 'F4'"));
}

TEST(SafetensorsHostile, MissingOrMistypedFields) {
  EXPECT_THAT(open_error(write_raw("noshape.safetensors",
                                   R"({"w": {"dtype": "F32", "data_offsets": [0, 4]}})", "xxxx")),
              HasSubstr("tensor 'w': \"shape\" is missing"));
  EXPECT_THAT(open_error(write_raw("negshape.safetensors",
                                   R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})",
                                   "xxxx")),
              HasSubstr("not an array of non-negative integers"));
  EXPECT_THAT(open_error(write_raw("floatshape.safetensors",
                                   R"({"w": {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]}})",
                                   "xxxx")),
              HasSubstr("not an array of non-negative integers"));
  EXPECT_THAT(open_error(write_raw("offsets3.safetensors",
                                   R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}})",
                                   "xxxx")),
              HasSubstr("\"data_offsets\" is missing or not [begin, end]"));
  EXPECT_THAT(open_error(write_raw("extra.safetensors",
                                   R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1}})",
                                   "xxxx")),
              HasSubstr("tensor 'w': unexpected key 'x'"));
  EXPECT_THAT(open_error(write_raw("backwards.safetensors",
                                   R"({"w": {"dtype": "U8", "shape": [0], "data_offsets": [4, 0]}})",
                                   "xxxx")),
              HasSubstr("run backwards"));
}

TEST(SafetensorsHostile, ByteCountDoesNotMatchDtypeAndShape) {
  const auto path = write_raw(
      "count.safetensors", R"({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}})",
      std::string(20, 'x'));
  EXPECT_THAT(open_error(path),
              HasSubstr("tensor 'w': data_offsets [0, 20] hold 20 bytes but dtype F32 with shape "
                        "[2, 3] needs 24"));
  // 2^62 x 2^62 elements: the byte count overflows 64 bits.
  const auto overflow = write_raw(
      "overflow.safetensors",
      R"({"w": {"dtype": "F32", "shape": [4611686018427387904, 4611686018427387904], "data_offsets": [0, 0]}})",
      "");
  EXPECT_THAT(open_error(overflow), HasSubstr("overflows 64 bits"));
  // A zero dimension must not smuggle in a dimension ATen cannot represent.
  const auto huge = write_raw(
      "hugedim.safetensors",
      R"({"w": {"dtype": "F32", "shape": [0, 18446744073709551615], "data_offsets": [0, 0]}})", "");
  EXPECT_THAT(open_error(huge), HasSubstr("above 2^63 - 1"));
}

TEST(SafetensorsHostile, OffsetsOutOfRange) {
  const auto path = write_raw(
      "range.safetensors", R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})",
      std::string(8, 'x'));
  EXPECT_THAT(open_error(path), HasSubstr("tensor 'w': data_offsets [0, 16] run past the end of the "
                                          "8-byte data buffer"));
}

TEST(SafetensorsHostile, OverlappingTensors) {
  const auto path = write_raw("overlap.safetensors",
                              R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                  "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                              std::string(12, 'x'));
  EXPECT_THAT(open_error(path), HasSubstr("tensor 'b': bytes [4, 12) overlap tensor 'a' [0, 8)"));
}

TEST(SafetensorsHostile, NestedAndAliasedTensors) {
  // One tensor wholly inside another: the later one ends before the earlier,
  // so a check on end offsets alone would miss it.
  const auto nested = write_raw("nested.safetensors",
                                R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                                    "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
                                std::string(16, 'x'));
  EXPECT_THAT(open_error(nested), HasSubstr("tensor 'b': bytes [4, 8) overlap tensor 'a' [0, 16)"));
  // Two names for the same bytes.
  const auto alias = write_raw("alias.safetensors",
                               R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                   "b": {"dtype": "I32", "shape": [2], "data_offsets": [0, 8]}})",
                               std::string(8, 'x'));
  EXPECT_THAT(open_error(alias), HasSubstr("bytes [0, 8) overlap tensor '"));
  // A zero-size tensor inside another holds no bytes but still claims a
  // place in the middle of one: refused as well.
  const auto empty_inside = write_raw("empty_inside.safetensors",
                                      R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                          "b": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]}})",
                                      std::string(8, 'x'));
  EXPECT_THAT(open_error(empty_inside), HasSubstr("tensor 'b': bytes [4, 4) overlap tensor 'a' [0, 8)"));
}

TEST(SafetensorsHostile, HoleBetweenTensors) {
  const auto path = write_raw("hole.safetensors",
                              R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                                  "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}})",
                              std::string(12, 'x'));
  EXPECT_THAT(open_error(path), HasSubstr("tensor 'b': starts at byte 8"));
}

TEST(SafetensorsHostile, DuplicateNames) {
  const auto path = write_raw("dup.safetensors",
                              R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                                  "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
                              std::string(8, 'x'));
  EXPECT_THAT(open_error(path), HasSubstr("the key 'a' twice"));
  const auto inner = write_raw(
      "dupkey.safetensors",
      R"({"a": {"dtype": "F32", "dtype": "I32", "shape": [1], "data_offsets": [0, 4]}})", "xxxx");
  EXPECT_THAT(open_error(inner), HasSubstr("the key 'dtype' twice"));
}

TEST(SafetensorsHostile, TrailingGarbage) {
  const auto path = write_raw(
      "trailing.safetensors", R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})",
      std::string(9, 'x'));
  EXPECT_THAT(open_error(path), HasSubstr("5 bytes of trailing data after the last tensor"));
}

TEST(SafetensorsHostile, BadMetadata) {
  EXPECT_THAT(open_error(write_raw("meta.safetensors", R"({"__metadata__": {"a": 1}})", "")),
              HasSubstr("\"__metadata__\" entry 'a' is not a string"));
  EXPECT_THAT(open_error(write_raw("meta2.safetensors", R"({"__metadata__": [1]})", "")),
              HasSubstr("\"__metadata__\" is not an object"));
}

TEST(SafetensorsHostile, BoolBytesOtherThanZeroOrOne) {
  const auto path = write_raw(
      "bool.safetensors", R"({"b": {"dtype": "BOOL", "shape": [2], "data_offsets": [0, 2]}})",
      std::string("\x01\x07", 2));
  const SafetensorsFile f = SafetensorsFile::open(path);  // the header is fine
  EXPECT_THAT(error_of([&] { f.tensor("b"); }), HasSubstr("tensor 'b' is BOOL but holds bytes"));
}

TEST(SafetensorsHostile, ControlCharactersInNamesAreEscaped) {
  const auto path = write_raw("ctrl.safetensors", "{\"a\\nb\": 5}", "");
  EXPECT_THAT(open_error(path), HasSubstr("tensor 'a\\x0ab'"));
}

TEST(SafetensorsHostile, MissingFileDirectoryAndMissingTensor) {
  EXPECT_THAT(open_error(temp_path("does_not_exist.safetensors")),
              HasSubstr("cannot open safetensors file"));
  EXPECT_THAT(open_error(::testing::TempDir()), HasSubstr("is not a regular file"));
  const std::string path = temp_path("one.safetensors");
  save_safetensors(path, {{"w", at::ones({2})}});
  const SafetensorsFile f = SafetensorsFile::open(path);
  EXPECT_THAT(error_of([&] { f.tensor("v"); }), HasSubstr("has no tensor 'v'"));
}

}  // namespace
}  // namespace mechlab::core
