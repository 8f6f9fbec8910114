// Store sets (core/store/store_set.h): a dataset cached in shards and read as
// one store gives exactly the rows of one unsharded store (the reference is
// an ordinary cache_activations run); ShuffledBatches serves every row of the
// set once; sets whose shards disagree, are missing, unfinished or truncated
// are refused naming the shard.
#include "core/store/store_set.h"
#include "core/data/dataset.h"
#include "core/formats/hdf5_file.h"
#include "core/formats/text_file.h"
#include "core/model/presets.h"
#include "core/store/activation_store.h"
#include "core/store/shuffled_batches.h"
#include "hooks/activation_capture.h"
#include "tests/test_util.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>

namespace mechlab::hooks {
namespace {

using ::testing::HasSubstr;
using mechlab::testing::error_of;

std::string temp_path(const std::string& name) { return mechlab::testing::temp_path("store_set_test", name); }

HookedTransformer tiny_model() { return HookedTransformer(core::Transformer(core::preset("tiny"), 7)); }

// Random prompts, example i with its last i % 4 positions padded, so
// examples have different row counts and shard boundaries fall mid-chunk.
core::Dataset random_dataset(int64_t n, int64_t t, int64_t d_vocab) {
  core::Dataset ds;
  ds.d_vocab = d_vocab;
  at::manual_seed(3);
  ds.tokens = at::randint(0, d_vocab, {n, t}, at::kInt);
  ds.attention_mask = at::ones({n, t}, at::kByte);
  for (int64_t i = 0; i < n; ++i) {
    if (i % 4) ds.attention_mask[i].narrow(0, t - i % 4, i % 4).zero_();
  }
  return ds;
}

CacheOptions options() {
  return CacheOptions()
      .hooks({"blocks.*.hook_resid_post", "blocks.0.attn.hook_z"})
      .dtype(at::kFloat)
      .batch_size(3)
      .chunk_rows(16)
      .progress(false);
}

// Caches `ds` in `n` shards beside `manifest`; the set is complete after the last.
void cache_shards(HookedTransformer& model, const core::Dataset& ds, const std::string& manifest, int64_t n,
                  CacheOptions opt = options()) {
  for (int64_t i = 0; i < n; ++i) {
    cache_activations(model, ds, core::shard_store_path(manifest, i, n),
                      opt.overwrite(true).shard_index(i).shard_count(n));
  }
}

using Range = std::pair<int64_t, int64_t>;

TEST(StoreSet, ShardsBatchAlignedDisjointAndCovering) {
  // 10 examples, batches of 3: batches [0,3) [3,6) [6,9) [9,10), in 3 shards
  // of whole batches.
  EXPECT_EQ(shard_examples(10, 3, 0, 3), Range(0, 3));
  EXPECT_EQ(shard_examples(10, 3, 1, 3), Range(3, 6));
  EXPECT_EQ(shard_examples(10, 3, 2, 3), Range(6, 10));
  EXPECT_EQ(shard_examples(10, 3, 0, 1), Range(0, 10));
  for (int64_t n = 1; n <= 7; ++n) {
    int64_t next = 0;
    for (int64_t i = 0; i < n; ++i) {
      const auto [a, b] = shard_examples(20, 3, i, n);
      EXPECT_EQ(a, next);
      EXPECT_EQ(a % 3, 0);
      EXPECT_GT(b, a);
      next = b;
    }
    EXPECT_EQ(next, 20);
  }
  EXPECT_THAT(error_of([] { shard_examples(10, 3, 0, 5); }), HasSubstr("use at most 4 shards"));
  EXPECT_THAT(error_of([] { shard_examples(10, 3, 3, 3); }), HasSubstr("shard 3 of 3 does not exist"));
  EXPECT_EQ(core::shard_store_path("/a/b/acts.json", 1, 3), "/a/b/acts.shard-1-of-3.h5");
}

TEST(StoreSet, ThreeShardsReadAsOneAreTheUnshardedStore) {
  auto model = tiny_model();
  const core::Dataset ds = random_dataset(20, 9, model.cfg().d_vocab);
  const std::string whole = temp_path("whole.h5"), manifest = temp_path("acts.json");
  cache_activations(model, ds, whole, options().overwrite(true));
  std::filesystem::remove(manifest);

  // The manifest appears only once every shard is complete.
  cache_activations(model, ds, core::shard_store_path(manifest, 0, 3),
                    options().overwrite(true).shard_index(0).shard_count(3));
  EXPECT_EQ(core::complete_store_set(manifest, 3), 1);
  EXPECT_FALSE(std::filesystem::exists(manifest));
  cache_shards(model, ds, manifest, 3);
  EXPECT_EQ(core::complete_store_set(manifest, 3), 3);
  ASSERT_TRUE(core::is_store_set(manifest));
  EXPECT_FALSE(core::is_store_set(whole));

  const auto ref = core::ActivationStore::open(whole);
  const auto set = core::ActivationStore::open(manifest);
  EXPECT_EQ(set.shard_count(), 3);
  const int64_t n = ref.num_rows();
  ASSERT_EQ(set.num_rows(), n);
  EXPECT_EQ(set.header().rows_total, n);
  EXPECT_TRUE(set.header().complete);
  EXPECT_EQ(set.hooks(), ref.hooks());
  EXPECT_EQ(set.header().hook_shapes, ref.header().hook_shapes);
  EXPECT_EQ(nlohmann::json::parse(set.header().job)["dataset_fingerprint"],
            nlohmann::json::parse(ref.header().job)["dataset_fingerprint"]);
  // Every row, bit for bit (the shards compute the unsharded run's batches).
  for (const auto& h : ref.hooks()) EXPECT_TRUE(at::equal(set.rows(h, 0, n), ref.rows(h, 0, n))) << h;
  EXPECT_TRUE(at::equal(set.token_ids(0, n), ref.token_ids(0, n)));
  EXPECT_TRUE(at::equal(set.row_source(0, n), ref.row_source(0, n)));  // dataset example numbers

  // Reads across a shard boundary, and the chunks stay within shards.
  int64_t boundary = 0;
  {
    const auto s0 = core::ActivationStore::open(core::shard_store_path(manifest, 0, 3));
    boundary = s0.num_rows();
    // 7 batches of 3 in 3 shards: batches 0-1, i.e. examples 0..5.
    EXPECT_EQ(s0.row_source(0, boundary).select(1, 0).max().item<int>(), 5);
  }
  const std::string h = "blocks.1.hook_resid_post";
  EXPECT_TRUE(at::equal(set.rows(h, boundary - 5, 11), ref.rows(h, boundary - 5, 11)));
  int64_t covered = 0;
  for (const auto& [start, count] : set.chunks()) {
    EXPECT_EQ(start, covered);
    EXPECT_LE(count, 16);
    EXPECT_TRUE(start >= boundary || start + count <= boundary) << "chunk straddles shards";
    covered += count;
  }
  EXPECT_EQ(covered, n);

  // An epoch of shuffled batches serves every row of the set once, with its values.
  core::ShuffledBatches batches(set, {h}, core::ShuffleOptions().batch_size(10).buffer_rows(40).seed(5));
  const at::Tensor all = ref.rows(h, 0, n);
  std::vector<int64_t> served;
  while (auto b = batches.next()) {
    EXPECT_TRUE(at::equal(b->acts.at(h), all.index_select(0, b->rows)));
    for (int64_t i = 0; i < b->rows.size(0); ++i) served.push_back(b->rows[i].item<int64_t>());
  }
  std::sort(served.begin(), served.end());
  std::vector<int64_t> expected(static_cast<size_t>(n));
  std::iota(expected.begin(), expected.end(), 0);
  EXPECT_EQ(served, expected);
}

TEST(StoreSet, ASetOfShardsThatDisagreeIsRefusedNamingTheShard) {
  auto model = tiny_model();
  const core::Dataset ds = random_dataset(9, 7, model.cfg().d_vocab);
  const std::string manifest = temp_path("mixed.json");
  const std::string s0 = core::shard_store_path(manifest, 0, 2), s1 = core::shard_store_path(manifest, 1, 2);
  auto shard = [&](int64_t i, CacheOptions o) {
    cache_activations(model, ds, core::shard_store_path(manifest, i, 2),
                      o.overwrite(true).shard_index(i).shard_count(2));
  };
  shard(0, options());
  shard(1, options().hooks({"blocks.0.hook_resid_post"}));
  std::string e = error_of([&] { core::complete_store_set(manifest, 2); });
  EXPECT_THAT(e, HasSubstr("shard '" + s1 + "'"));
  EXPECT_THAT(e, HasSubstr("other hooks"));
  EXPECT_THAT(e, ::testing::Not(HasSubstr("\n")));
  shard(1, options().dtype(at::kHalf));
  EXPECT_THAT(error_of([&] { core::complete_store_set(manifest, 2); }),
              HasSubstr("it is float16, the first shard float32"));
  {
    core::ModelConfig one_layer = core::preset("tiny");
    one_layer.n_layers = 1;
    auto other = HookedTransformer(core::Transformer(one_layer, 7));
    cache_activations(other, ds, s1, options().hooks({"blocks.0.hook_resid_post"}).overwrite(true)
                                         .shard_index(1).shard_count(2));
    shard(0, options().hooks({"blocks.0.hook_resid_post"}));
    EXPECT_THAT(error_of([&] { core::complete_store_set(manifest, 2); }),
                HasSubstr("another model"));
  }
  core::Dataset other_ds = random_dataset(9, 7, model.cfg().d_vocab);
  other_ds.tokens[0][0] = (other_ds.tokens[0][0].item<int>() + 1) % model.cfg().d_vocab;
  cache_activations(model, other_ds, s1, options().overwrite(true).shard_index(1).shard_count(2));
  shard(0, options());
  EXPECT_THAT(error_of([&] { core::complete_store_set(manifest, 2); }), HasSubstr("another dataset"));
  EXPECT_FALSE(std::filesystem::exists(manifest));
}

class DamagedSet : public ::testing::Test {
 protected:
  void SetUp() override {
    auto model = tiny_model();
    const core::Dataset ds = random_dataset(12, 7, model.cfg().d_vocab);
    manifest_ = temp_path(std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) +
                          ".json");
    cache_shards(model, ds, manifest_, 3);
    ASSERT_EQ(core::complete_store_set(manifest_, 3), 3);
    shard1_ = core::shard_store_path(manifest_, 1, 3);
  }
  std::string open_error() {
    return error_of([&] { core::ActivationStore::open(manifest_); });
  }
  std::string manifest_, shard1_;
};

TEST_F(DamagedSet, MissingShard) {
  std::filesystem::remove(shard1_);
  const std::string e = open_error();
  EXPECT_THAT(e, HasSubstr("shard 1 '" + shard1_ + "' is missing"));
  EXPECT_THAT(e, ::testing::Not(HasSubstr("\n")));
}

TEST_F(DamagedSet, TruncatedShardFile) {
  std::filesystem::resize_file(shard1_, std::filesystem::file_size(shard1_) / 2);
  EXPECT_THAT(open_error(), HasSubstr("shard 1 '" + shard1_ + "' cannot be read"));
}

TEST_F(DamagedSet, ShardWithOtherRowsThanTheManifestLists) {
  auto j = nlohmann::json::parse(std::ifstream(manifest_));
  const int64_t rows = j["shards"][1]["rows"].get<int64_t>();
  j["shards"][1]["rows"] = rows + 3;
  core::write_text_file(manifest_, j.dump());
  EXPECT_THAT(open_error(), HasSubstr("shard 1 '" + shard1_ + "' holds " + std::to_string(rows) +
                                      " rows but the manifest lists " + std::to_string(rows + 3)));
}

TEST_F(DamagedSet, UnfinishedShard) {
  core::H5File::open_readwrite(shard1_).write_attr("", "complete", int64_t{0});
  EXPECT_THAT(open_error(), HasSubstr("shard 1 '" + shard1_ + "' is unfinished"));
}

TEST_F(DamagedSet, NewerManifestVersionAndNotAManifest) {
  auto j = nlohmann::json::parse(std::ifstream(manifest_));
  j["mechlab_version"] = 2;
  core::write_text_file(manifest_, j.dump());
  EXPECT_THAT(open_error(), HasSubstr("is version 2 but this mechlab reads versions 1 to 1"));
  core::write_text_file(manifest_, "{\"shards\": []}");
  EXPECT_THAT(open_error(), HasSubstr("is not an activation store set"));
}

}  // namespace
}  // namespace mechlab::hooks
