// Tests for core/model/checkpoint.h: round trip, atomic save, and the messages a user
// sees for files that are not (loadable) checkpoints.
#include "core/model/checkpoint.h"

#include "core/util/error.h"
#include "core/formats/hdf5_file.h"
#include "tests/test_util.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

namespace mechlab::core {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string temp_path(const std::string& name) {
  return mechlab::testing::temp_path("checkpoint_test", name);
}

using mechlab::testing::error_of;

ModelConfig tiny_config() {
  ModelConfig c;
  c.name = "tiny";
  c.n_layers = 1;
  c.d_model = 8;
  c.n_heads = 2;
  c.d_head = 4;
  c.d_mlp = 16;
  c.d_vocab = 10;
  c.n_ctx = 16;
  c.positional = Positional::rotary;
  c.norm = NormKind::rmsnorm;
  c.attn_scale = 3.0;
  return c;
}

using Params = std::vector<std::pair<std::string, at::Tensor>>;

Params tiny_params() {
  return {
      {"embed.W_E", at::randn({10, 8})},
      {"blocks.0.attn.W_Q", at::randn({2, 8, 4}).to(at::kBFloat16)},
      {"blocks.0.ln1.w", at::randn({8}).to(at::kHalf)},
      {"unembed.b_U", at::randn({10})},
  };
}

bool same_bytes(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  const at::Tensor ca = a.contiguous(), cb = b.contiguous();
  return std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.numel() * ca.element_size()) == 0;
}

// A file with the checkpoint's attributes as given (nullptr = left out).
std::string write_header(const std::string& name, const char* format, int64_t version,
                         const char* config, bool with_params = true) {
  const std::string path = temp_path(name);
  H5File f = H5File::create(path);
  if (format) f.write_attr("", "mechlab_format", std::string(format));
  if (version) f.write_attr("", "mechlab_version", version);
  if (config) f.write_attr("", "config", std::string(config));
  if (with_params) f.write_tensor("params/embed.W_E", at::zeros({10, 8}));
  return path;
}

TEST(CheckpointTest, RoundTripsConfigAndParamsInSortedOrder) {
  const std::string path = temp_path("roundtrip.h5");
  const ModelConfig config = tiny_config();
  const Params params = tiny_params();
  save_checkpoint(path, config, params);
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));

  const Checkpoint ckpt = load_checkpoint(path);
  EXPECT_EQ(ckpt.config.to_json_string(), config.to_json_string());
  EXPECT_EQ(ckpt.config.name, "tiny");
  ASSERT_TRUE(ckpt.config.attn_scale.has_value());
  EXPECT_EQ(*ckpt.config.attn_scale, 3.0);

  std::vector<std::string> names;
  for (const auto& [name, t] : ckpt.params) names.push_back(name);
  EXPECT_THAT(names,
              ElementsAre("blocks.0.attn.W_Q", "blocks.0.ln1.w", "embed.W_E", "unembed.b_U"));
  for (const auto& [name, t] : ckpt.params) {
    SCOPED_TRACE(name);
    EXPECT_TRUE(t.device().is_cpu());
    bool found = false;
    for (const auto& [orig_name, orig] : params) {
      if (orig_name != name) continue;
      found = true;
      EXPECT_TRUE(same_bytes(t, orig));  // dtype as stored, bit-exact
    }
    EXPECT_TRUE(found);
  }

  // The documented layout, as other tools (h5py) see it.
  H5File f = H5File::open_read(path);
  EXPECT_EQ(f.read_attr_string("", "mechlab_format"), "checkpoint");
  EXPECT_EQ(f.read_attr_int("", "mechlab_version"), 1);
  EXPECT_EQ(f.read_attr_string("", "config"), config.to_json_string());
  EXPECT_THAT(f.list(""), ElementsAre("params"));
  EXPECT_EQ(f.dtype("params/blocks.0.attn.W_Q"), at::kBFloat16);
  EXPECT_EQ(f.read_attr_string("params/blocks.0.attn.W_Q", "mechlab_dtype"), "bfloat16");
}

TEST(CheckpointTest, SaveReplacesAnExistingFileAndAcceptsNoParams) {
  const std::string path = temp_path("replace.h5");
  save_checkpoint(path, tiny_config(), tiny_params());
  save_checkpoint(path, tiny_config(), {{"only", at::ones({3})}});
  Checkpoint ckpt = load_checkpoint(path);
  ASSERT_EQ(ckpt.params.size(), 1u);
  EXPECT_EQ(ckpt.params[0].first, "only");

  save_checkpoint(path, tiny_config(), {});
  EXPECT_TRUE(load_checkpoint(path).params.empty());
}

TEST(CheckpointTest, FailedSaveLeavesTheOldFileAndNoTemporary) {
  const std::string path = temp_path("failed_save.h5");
  save_checkpoint(path, tiny_config(), tiny_params());
  const auto size_before = std::filesystem::file_size(path);

  EXPECT_THAT(error_of([&] {
                save_checkpoint(path, tiny_config(), {{"ids", at::ones({2}, at::kLong)}});
              }),
              HasSubstr("parameter 'ids' has dtype int64"));
  EXPECT_THAT(error_of([&] {
                save_checkpoint(path, tiny_config(), {{"a", at::ones({1})}, {"a", at::ones({1})}});
              }),
              HasSubstr("'a' appears twice"));
  EXPECT_THAT(error_of([&] {
                save_checkpoint(path, tiny_config(), {{"blocks/0", at::ones({1})}});
              }),
              HasSubstr("may not contain '/'"));
  EXPECT_THAT(error_of([&] {
                save_checkpoint(path, tiny_config(), {{"", at::ones({1})}});
              }),
              HasSubstr("empty name"));
  ModelConfig bad = tiny_config();
  bad.n_heads = 3;  // not a multiple of n_kv_heads
  bad.n_kv_heads = 2;
  EXPECT_THAT(error_of([&] { save_checkpoint(path, bad, tiny_params()); }),
              HasSubstr("must be a multiple of n_kv_heads"));

  // A save into a directory that does not exist fails before touching `path`.
  EXPECT_THAT(error_of([&] { save_checkpoint(temp_path("missing_dir/x.h5"), tiny_config(), {}); }),
              HasSubstr("does not exist"));

  EXPECT_EQ(std::filesystem::file_size(path), size_before);
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  EXPECT_EQ(load_checkpoint(path).params.size(), tiny_params().size());
}

TEST(CheckpointTest, StaleTemporaryFromAKilledSaveIsHarmless) {
  // A killed save leaves only `path.tmp` behind; `path` itself is untouched and
  // the next save overwrites the temporary.
  const std::string path = temp_path("killed.h5");
  save_checkpoint(path, tiny_config(), tiny_params());
  {
    H5File half = H5File::create(path + ".tmp");
    half.write_attr("", "mechlab_format", "checkpoint");
  }
  EXPECT_EQ(load_checkpoint(path).params.size(), tiny_params().size());
  save_checkpoint(path, tiny_config(), {{"x", at::ones({1})}});
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  EXPECT_EQ(load_checkpoint(path).params.size(), 1u);
}

TEST(CheckpointTest, RefusesAFileThatIsNotAMechlabFile) {
  const std::string path = write_header("plain.h5", nullptr, 1, "{}");
  const std::string msg = error_of([&] { load_checkpoint(path); });
  EXPECT_THAT(msg, HasSubstr(path));
  EXPECT_THAT(msg, HasSubstr("not a mechlab file"));
  EXPECT_THAT(msg, HasSubstr("mechlab_format"));
}

TEST(CheckpointTest, RefusesTheWrongFormatName) {
  const std::string config = tiny_config().to_json_string();
  const std::string path = write_header("dataset.h5", "dataset", 1, config.c_str());
  const std::string msg = error_of([&] { load_checkpoint(path); });
  EXPECT_THAT(msg, HasSubstr(path));
  EXPECT_THAT(msg, HasSubstr("this file is a 'dataset', not a checkpoint"));
}

TEST(CheckpointTest, RefusesANewerVersion) {
  const std::string config = tiny_config().to_json_string();
  const std::string path = write_header("v2.h5", "checkpoint", 2, config.c_str());
  const std::string msg = error_of([&] { load_checkpoint(path); });
  EXPECT_THAT(msg, HasSubstr(path));
  EXPECT_THAT(msg, HasSubstr("this file is version 2 but this mechlab reads up to version 1; "
                             "upgrade mechlab"));
}

TEST(CheckpointTest, RefusesAMissingVersion) {
  const std::string config = tiny_config().to_json_string();
  const std::string path = write_header("noversion.h5", "checkpoint", 0, config.c_str());
  EXPECT_THAT(error_of([&] { load_checkpoint(path); }), HasSubstr("no 'mechlab_version'"));
}

TEST(CheckpointTest, RefusesAMissingConfig) {
  const std::string path = write_header("noconfig.h5", "checkpoint", 1, nullptr);
  const std::string msg = error_of([&] { load_checkpoint(path); });
  EXPECT_THAT(msg, HasSubstr(path));
  EXPECT_THAT(msg, HasSubstr("no 'config' attribute"));
}

TEST(CheckpointTest, RefusesAnInvalidConfigWithTheConfigMessage) {
  std::string path = write_header("badjson.h5", "checkpoint", 1, "{not json");
  std::string msg = error_of([&] { load_checkpoint(path); });
  EXPECT_THAT(msg, HasSubstr("invalid config"));
  EXPECT_THAT(msg, HasSubstr("config is not valid JSON"));

  path = write_header("missingkey.h5", "checkpoint", 1, R"({"n_layers": 1})");
  msg = error_of([&] { load_checkpoint(path); });
  EXPECT_THAT(msg, HasSubstr(path));
  EXPECT_THAT(msg, HasSubstr("missing required key"));
}

TEST(CheckpointTest, RefusesMissingParams) {
  const std::string config = tiny_config().to_json_string();
  const std::string path = write_header("noparams.h5", "checkpoint", 1, config.c_str(), false);
  const std::string msg = error_of([&] { load_checkpoint(path); });
  EXPECT_THAT(msg, HasSubstr(path));
  EXPECT_THAT(msg, HasSubstr("no '/params' group"));
}

TEST(CheckpointTest, RefusesNonFloatParamsAndNestedGroups) {
  const std::string config = tiny_config().to_json_string();
  std::string path = write_header("intparam.h5", "checkpoint", 1, config.c_str());
  H5File::open_readwrite(path).write_tensor("params/tokens", at::ones({2}, at::kLong));
  EXPECT_THAT(error_of([&] { load_checkpoint(path); }),
              HasSubstr("parameter 'tokens' has dtype int64"));

  path = write_header("nested.h5", "checkpoint", 1, config.c_str());
  H5File::open_readwrite(path).write_tensor("params/blocks/0/W_Q", at::ones({2}));
  EXPECT_THAT(error_of([&] { load_checkpoint(path); }), HasSubstr("'/params/blocks' is a group"));
}

TEST(CheckpointTest, RefusesNonFiniteParamsByName) {
  // Before: NaN and Inf weights loaded silently.
  Params params = tiny_params();
  params[0].second[3][2] = std::numeric_limits<float>::quiet_NaN();
  const std::string path = temp_path("nan.h5");
  save_checkpoint(path, tiny_config(), params);
  EXPECT_THAT(error_of([&] { load_checkpoint(path); }),
              AllOf(HasSubstr(path), HasSubstr("parameter 'embed.W_E' holds 1 NaN or infinite value;")));
  params = tiny_params();
  params[2].second[0] = -std::numeric_limits<float>::infinity();  // float16
  save_checkpoint(path, tiny_config(), params);
  EXPECT_THAT(error_of([&] { load_checkpoint(path); }),
              HasSubstr("parameter 'blocks.0.ln1.w' holds 1 NaN or infinite value"));
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
  ASSERT_TRUE(out.good()) << path;
}

TEST(CheckpointTest, AFlippedByteInTheDataIsACorruptFileError) {
  // Before: checkpoints had no checksum, and a changed byte in a tensor's
  // data loaded as silently different weights.
  Params params = tiny_params();
  params[0].second = at::randn({10, 8});
  const std::string path = temp_path("checksummed.h5");
  save_checkpoint(path, tiny_config(), params);
  std::string bytes = read_bytes(path);
  // W_E's raw float32 bytes sit verbatim in the file (Fletcher-32 does not
  // transform the data); flip one bit in the middle of them.
  const at::Tensor w = params[0].second.contiguous();
  const std::string raw(static_cast<const char*>(w.const_data_ptr()), w.numel() * 4);
  const size_t at_ = bytes.find(raw);
  ASSERT_NE(at_, std::string::npos);
  ASSERT_EQ(bytes.find(raw, at_ + 1), std::string::npos);
  bytes[at_ + raw.size() / 2] ^= 0x10;
  const std::string bad = temp_path("flipped.h5");
  write_bytes(bad, bytes);
  EXPECT_THAT(error_of([&] { load_checkpoint(bad); }),
              AllOf(HasSubstr(bad), HasSubstr("params/embed.W_E"), HasSubstr("file is corrupt")));
  // The untouched original still loads, bit for bit.
  const Checkpoint good = load_checkpoint(path);
  ASSERT_EQ(good.params[2].first, "embed.W_E");
  EXPECT_TRUE(same_bytes(good.params[2].second, params[0].second));
}

TEST(CheckpointTest, CheckpointsWithoutChecksumsStillLoad) {
  // Files written before checksums (contiguous datasets, no filter).
  const std::string config = tiny_config().to_json_string();
  const std::string path = write_header("old.h5", "checkpoint", 1, config.c_str(), false);
  const at::Tensor w = at::randn({10, 8});
  H5File::open_readwrite(path).write_tensor("params/embed.W_E", w);
  const Checkpoint ckpt = load_checkpoint(path);
  ASSERT_EQ(ckpt.params.size(), 1u);
  EXPECT_TRUE(same_bytes(ckpt.params[0].second, w));
}

TEST(CheckpointTest, LoadOfMissingOrTruncatedFileNamesThePath) {
  const std::string missing = temp_path("missing.h5");
  EXPECT_THAT(error_of([&] { load_checkpoint(missing); }), HasSubstr(missing));
}

}  // namespace
}  // namespace mechlab::core
