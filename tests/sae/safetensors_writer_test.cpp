// write_safetensors (core/formats/safetensors_writer.h), the format SAELens
// folders hold: what it writes, mechlab's independent reader
// (core/formats/safetensors.h, itself checked against files from the Python
// safetensors library) reads back bit for bit; bad input and unwritable
// paths are refused with nothing left behind.
#include "core/formats/safetensors.h"
#include "core/formats/safetensors_writer.h"
#include "tests/test_util.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

namespace mechlab::core {
namespace {

using ::testing::HasSubstr;
using mechlab::testing::error_of;
using mechlab::testing::temp_path;

TEST(SafetensorsWriter, ReaderGetsBackEveryDtypeShapeAndTheMetadata) {
  at::manual_seed(4);
  const std::vector<std::pair<std::string, at::Tensor>> tensors{
      {"w", at::randn({3, 5})},
      {"half", at::randn({7}).to(at::kHalf)},
      {"bf", at::randn({2, 2}).to(at::kBFloat16)},
      {"d", at::randn({4}, at::kDouble)},
      {"i", at::arange(6, at::kLong).reshape({2, 3})},
      {"mask", at::tensor({1, 0, 1}, at::kByte).to(at::kBool)},
      {"scalar", at::tensor(2.5f)},
      {"empty", at::zeros({0, 3})},
      {"strided", at::randn({4, 6}).t()},  // non-contiguous: written row-major
  };
  const std::string path = temp_path("st_writer", "all.safetensors");
  write_safetensors(path, tensors, {{"format", "pt"}});
  const SafetensorsFile f = SafetensorsFile::open(path);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.names().size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    const at::Tensor got = f.tensor(name);
    EXPECT_EQ(got.scalar_type(), t.scalar_type()) << name;
    EXPECT_TRUE(at::equal(got, t)) << name;
  }
  // The header (8-byte length, then JSON) is padded to a multiple of 8.
  std::ifstream in(path, std::ios::binary);
  unsigned char len[8];
  in.read(reinterpret_cast<char*>(len), 8);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | len[i];
  EXPECT_EQ(n % 8, 0u);
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
}

TEST(SafetensorsWriter, RefusesRepeatedNamesAndUnwritablePaths) {
  const std::string path = temp_path("st_writer", "dup.safetensors");
  EXPECT_THAT(error_of([&] { write_safetensors(path, {{"a", at::zeros({1})}, {"a", at::ones({1})}}); }),
              HasSubstr("tensor name \"a\" is empty, reserved or repeated"));
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_THAT(error_of([&] { write_safetensors(path, {{"c", at::zeros({2}, at::kComplexFloat)}}); }),
              HasSubstr("tensor c has dtype ComplexFloat"));
  const std::string nowhere = temp_path("st_writer", "no/such/folder/x.safetensors");
  EXPECT_THAT(error_of([&] { write_safetensors(nowhere, {{"a", at::zeros({1})}}); }),
              HasSubstr("cannot write '" + nowhere + "': creating '" + nowhere + ".tmp' failed"));
}

TEST(SafetensorsWriter, AFullDiskFailsTheWriteAndKeepsTheOldFile) {
  ASSERT_TRUE(std::filesystem::exists("/dev/full")) << "this test needs Linux's /dev/full";
  // The temporary is a symlink to /dev/full, which opens and then fails
  // every write with ENOSPC.
  const std::string dir = temp_path("st_writer", "full");
  std::filesystem::create_directories(dir);
  const std::string path = dir + "/w.safetensors";
  { std::ofstream(path) << "old"; }
  std::filesystem::create_symlink("/dev/full", path + ".tmp");
  const std::string msg = error_of([&] { write_safetensors(path, {{"a", at::zeros({4096})}}); });
  EXPECT_THAT(msg, ::testing::AnyOf(HasSubstr("writing"), HasSubstr("flushing"), HasSubstr("closing")));
  EXPECT_THAT(msg, HasSubstr("no space left on device"));
  std::ifstream in(path);
  std::string old;
  in >> old;
  EXPECT_EQ(old, "old");  // the previous file stays
}

}  // namespace
}  // namespace mechlab::core
