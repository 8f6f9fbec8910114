// Probe features from an activation store and from a live cached run: the
// same rows in the same order (padding skipped), split by head and by
// position, and per-sequence labels turned into per-row labels.
#include "probes/probe_data.h"

#include "core/model/presets.h"
#include "core/store/activation_store.h"
#include "hooks/activation_capture.h"
#include "hooks/hooked_transformer.h"
#include "tests/test_util.h"

#include <gtest/gtest.h>

#include <filesystem>

namespace mechlab::probes {
namespace {

using mechlab::testing::error_of;

struct Fixture {
  hooks::HookedTransformer model{core::Transformer(core::preset("tiny"), 7)};
  core::Dataset ds;
  std::string path;
  Fixture() {
    ds.d_vocab = model.cfg().d_vocab;
    at::manual_seed(3);
    ds.tokens = at::randint(0, ds.d_vocab, {6, 9}, at::kInt);
    ds.attention_mask = at::ones({6, 9}, at::kByte);
    for (int64_t i = 0; i < 6; ++i) {
      if (i % 3) ds.attention_mask[i].narrow(0, 9 - i % 3, i % 3).zero_();  // right padding
    }
    path = mechlab::testing::temp_path("probe_data_test", "acts.h5");
    std::filesystem::remove(path);
    hooks::cache_activations(model, ds, path,
                             hooks::CacheOptions()
                                 .hooks({"blocks.*.hook_resid_post", "blocks.0.attn.hook_z"})
                                 .dtype(at::kFloat)
                                 .batch_size(4)
                                 .progress(false));
  }
};

TEST(ProbeData, StoreAndLiveCacheGiveTheSameSweep) {
  Fixture f;
  auto store = core::ActivationStore::open(f.path);
  const std::vector<std::string> layers = {"blocks.0.hook_resid_post", "blocks.1.hook_resid_post"};
  ProbeFeatures from_store = features_from_store(store, layers);
  const int64_t N = store.num_rows();
  ASSERT_EQ(from_store.x.sizes(), (at::IntArrayRef{2, N, f.model.cfg().d_model}));
  EXPECT_EQ(from_store.names, layers);
  for (int64_t p = 0; p < 2; ++p) EXPECT_TRUE(at::equal(from_store.x[p], store.rows(layers[p], 0, N)));

  at::InferenceMode guard;
  hooks::RunOptions ro;
  ro.attention_mask(f.ds.attention_mask);
  auto [logits, cache] = f.model.run_with_cache(f.ds.tokens.to(at::kLong), {}, ro);
  ProbeFeatures live = features_from_cache(cache, layers, f.ds.attention_mask);
  EXPECT_TRUE(at::allclose(live.x, from_store.x, 1e-5, 1e-6)) << "the store's rows are the real tokens in order";

  // By head: hook_z [heads, d_head] per token -> one probe per head.
  ProbeFeatures heads = features_from_store(store, {"blocks.0.attn.hook_z"}, 0, -1, FeatureOptions().split_heads(true));
  const int64_t H = f.model.cfg().n_heads, dh = f.model.cfg().d_head;
  ASSERT_EQ(heads.x.sizes(), (at::IntArrayRef{H, N, dh}));
  at::Tensor z = store.rows("blocks.0.attn.hook_z", 0, N).view({N, H, dh});
  for (int64_t h = 0; h < H; ++h) EXPECT_TRUE(at::equal(heads.x[h], z.select(1, h))) << "head " << h;
  EXPECT_EQ(heads.names[1], "blocks.0.attn.hook_z head 1");
  EXPECT_NE(error_of([&] { features_from_store(store, layers, 0, -1, FeatureOptions().split_heads(true)); })
                .find("no head axis, so `split_heads` cannot split it"),
            std::string::npos);

  ASSERT_TRUE(cache.contains("blocks.0.mlp.hook_post"));  // d_mlp wide
  EXPECT_NE(error_of([&] { features_from_cache(cache, {layers[0], "blocks.0.mlp.hook_post"}); }).find("one width"),
            std::string::npos);
  // The message names the hook of the other width, not the sweep's last hook.
  const int64_t d_mlp = cache["blocks.0.mlp.hook_post"].size(2), d_model = f.model.cfg().d_model;
  ASSERT_NE(d_mlp, d_model);
  EXPECT_EQ(error_of([&] { features_from_cache(cache, {layers[0], "blocks.0.mlp.hook_post", layers[1]}); }),
            str_cat("hook 'blocks.0.mlp.hook_post' has width ", d_mlp, " but 'blocks.0.hook_resid_post' has ",
                    d_model, "; a sweep's probes share one width (fit hooks of different widths separately)"));

  // By position: rows are the examples.
  ProbeFeatures by_pos = features_per_position(cache, layers[1]);
  ASSERT_EQ(by_pos.x.sizes(), (at::IntArrayRef{9, 6, f.model.cfg().d_model}));
  EXPECT_TRUE(at::equal(by_pos.x[4], cache[layers[1]].select(1, 4)));
  EXPECT_EQ(by_pos.names[4], layers[1] + " pos 4");
}

TEST(ProbeData, SequenceLabelsBecomeRowLabels) {
  Fixture f;
  auto store = core::ActivationStore::open(f.path);
  at::Tensor src = store.row_source(0, store.num_rows());  // [N, 2]
  at::Tensor seq = at::tensor({10, 11, 12, 13, 14, 15}, at::kLong);
  at::Tensor rows = sequence_labels_to_rows(src, seq);
  for (int64_t r = 0; r < src.size(0); ++r) {
    EXPECT_EQ(rows[r].item<int64_t>(), 10 + src[r][0].item<int64_t>()) << "row " << r;
  }
  // Last rows: example i has 9 - i % 3 real positions.
  at::Tensor last = rows_at_position(src, -1);
  ASSERT_EQ(last.size(0), 6);
  for (int64_t i = 0; i < 6; ++i) {
    EXPECT_EQ(src[last[i].item<int64_t>()][0].item<int64_t>(), i);
    EXPECT_EQ(src[last[i].item<int64_t>()][1].item<int64_t>(), 9 - i % 3 - 1);
  }
  // From the end: -2 is each example's last but one; -9 only examples of 9 rows (0 and 3).
  at::Tensor second_last = rows_at_position(src, -2);
  ASSERT_EQ(second_last.size(0), 6);
  for (int64_t i = 0; i < 6; ++i) EXPECT_EQ(src[second_last[i].item<int64_t>()][1].item<int64_t>(), 9 - i % 3 - 2);
  at::Tensor ninth = rows_at_position(src, -9);
  ASSERT_EQ(ninth.size(0), 2);
  EXPECT_EQ(src[ninth[0].item<int64_t>()][0].item<int64_t>(), 0);
  EXPECT_EQ(src[ninth[1].item<int64_t>()][0].item<int64_t>(), 3);
  EXPECT_EQ(src[ninth[1].item<int64_t>()][1].item<int64_t>(), 0);
  EXPECT_EQ(rows_at_position(src, -10).size(0), 0);
  at::Tensor at7 = rows_at_position(src, 7);
  EXPECT_EQ(at7.size(0), 4) << "examples 0, 1, 3, 4 reach position 7";
  EXPECT_NE(error_of([&] { sequence_labels_to_rows(src, seq.narrow(0, 0, 3)); }).find("one label per example"),
            std::string::npos);
}

}  // namespace
}  // namespace mechlab::probes
