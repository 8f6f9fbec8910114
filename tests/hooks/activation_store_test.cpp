// Activation stores: what `cache_activations` writes is what run_with_cache
// sees (the runtime is checked against TransformerLens elsewhere), a resumed
// store equals an uninterrupted one, the shuffled reader serves every row
// once, and damaged stores are refused with a message naming the problem.
#include "core/store/activation_store.h"
#include "core/data/dataset.h"
#include "core/formats/hdf5_file.h"
#include "core/model/presets.h"
#include "core/store/shuffled_batches.h"
#include "hooks/activation_capture.h"
#include "core/store/activation_writer.h"
#include "tests/test_util.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>

namespace mechlab::hooks {
namespace {

using ::testing::HasSubstr;
using mechlab::testing::error_of;

std::string temp_path(const std::string& name) {
  return mechlab::testing::temp_path("activation_store_test", name);
}

HookedTransformer tiny_model() { return HookedTransformer(core::Transformer(core::preset("tiny"), 7)); }

// Random prompts; with `padded`, example i has its last i % 4 positions
// padded (right padding), so row counts differ between examples.
core::Dataset random_dataset(int64_t n, int64_t t, int64_t d_vocab, bool padded) {
  core::Dataset ds;
  ds.d_vocab = d_vocab;
  at::manual_seed(3);
  ds.tokens = at::randint(0, d_vocab, {n, t}, at::kInt);
  if (padded) {
    ds.attention_mask = at::ones({n, t}, at::kByte);
    for (int64_t i = 0; i < n; ++i) {
      if (i % 4) ds.attention_mask[i].narrow(0, t - i % 4, i % 4).zero_();
    }
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

void expect_same_store(const std::string& a, const std::string& b) {
  auto sa = core::ActivationStore::open(a), sb = core::ActivationStore::open(b);
  ASSERT_EQ(sa.num_rows(), sb.num_rows());
  ASSERT_EQ(sa.hooks(), sb.hooks());
  const int64_t n = sa.num_rows();
  for (const auto& h : sa.hooks()) EXPECT_TRUE(at::equal(sa.rows(h, 0, n), sb.rows(h, 0, n))) << h;
  EXPECT_TRUE(at::equal(sa.token_ids(0, n), sb.token_ids(0, n)));
  EXPECT_TRUE(at::equal(sa.row_source(0, n), sb.row_source(0, n)));
}

TEST(ActivationStore, RowsEqualRunWithCacheAndSkipPadding) {
  auto model = tiny_model();
  const core::Dataset ds = random_dataset(10, 12, model.cfg().d_vocab, /*padded=*/true);
  const std::string path = temp_path("values.h5");
  std::filesystem::remove(path);
  const CacheResult r = cache_activations(model, ds, path, options());
  const int64_t real = ds.attention_mask.sum().item<int64_t>();
  EXPECT_EQ(r.rows_total, real);

  auto store = core::ActivationStore::open(path);
  EXPECT_TRUE(store.header().complete);
  EXPECT_EQ(store.num_rows(), real);
  EXPECT_EQ(store.header().hook_shapes.at("blocks.0.attn.hook_z"),
            (std::vector<int64_t>{model.cfg().n_heads, model.cfg().d_head}));

  // Reference: one example at a time, so the rows do not depend on batching.
  at::InferenceMode guard;
  int64_t row = 0;
  for (int64_t i = 0; i < ds.size(); ++i) {
    RunOptions ro;
    ro.attention_mask(ds.attention_mask.slice(0, i, i + 1));
    auto [logits, cache] =
        model.run_with_cache(ds.tokens.slice(0, i, i + 1).to(at::kLong), {}, ro);
    const int64_t len = ds.attention_mask[i].sum().item<int64_t>();
    for (const auto& h : store.hooks()) {
      at::Tensor want = cache[h][0].narrow(0, 0, len).reshape({len, -1});
      EXPECT_TRUE(at::allclose(store.rows(h, row, len), want, 1e-5, 1e-6)) << h << " example " << i;
    }
    EXPECT_TRUE(at::equal(store.token_ids(row, len), ds.tokens[i].narrow(0, 0, len)));
    EXPECT_TRUE(at::equal(store.row_source(row, len).select(1, 0), at::full({len}, i, at::kInt)));
    EXPECT_TRUE(at::equal(store.row_source(row, len).select(1, 1), at::arange(len, at::kInt)));
    row += len;
  }
}

TEST(ActivationStore, Bfloat16StoreHoldsTheRoundedValues) {
  auto model = tiny_model();
  const core::Dataset ds = random_dataset(4, 8, model.cfg().d_vocab, false);
  const std::string f32 = temp_path("f32.h5"), bf16 = temp_path("bf16.h5");
  cache_activations(model, ds, f32, options().overwrite(true));
  cache_activations(model, ds, bf16, options().overwrite(true).dtype(at::kBFloat16));
  auto a = core::ActivationStore::open(f32), b = core::ActivationStore::open(bf16);
  EXPECT_EQ(b.header().dtype, at::kBFloat16);
  const std::string h = "blocks.1.hook_resid_post";
  EXPECT_TRUE(at::equal(a.rows(h, 0, a.num_rows()).to(at::kBFloat16), b.rows(h, 0, b.num_rows())));
}

TEST(ActivationStore, ResumeAfterAPartialRunGivesTheSameFile) {
  auto model = tiny_model();
  const core::Dataset ds = random_dataset(13, 10, model.cfg().d_vocab, true);
  const std::string whole = temp_path("whole.h5"), part = temp_path("part.h5");
  cache_activations(model, ds, whole, options().overwrite(true));

  // A run over the first 5 examples of the same job stands for one killed
  // part-way: same spec, fewer rows committed.
  {
    auto spec_file = core::ActivationStore::open(whole).header();
    core::StoreSpec spec{spec_file, 0};
    std::filesystem::remove(part);
    auto w = core::ActivationStoreWriter::open(part, spec, /*resume=*/false);
    auto src = core::ActivationStore::open(whole);
    const int64_t n = 37;  // two whole chunks of 16 and a partial one
    std::map<std::string, at::Tensor> acts;
    for (const auto& h : src.hooks()) acts[h] = src.rows(h, 0, n);
    w.append(0, acts, src.token_ids(0, n), src.row_source(0, n));
    EXPECT_EQ(w.rows_committed(), 32);  // only whole chunks are committed
  }
  EXPECT_EQ(core::ActivationStore::open(part).num_rows(), 32);
  EXPECT_FALSE(core::ActivationStore::open(part).header().complete);
  const CacheResult r = cache_activations(model, ds, part, options().resume(true));
  EXPECT_EQ(r.rows_written, r.rows_total - 32);
  expect_same_store(whole, part);
  EXPECT_TRUE(core::ActivationStore::open(part).header().complete);
}

TEST(ActivationStore, CompressedStoreHasTheSameRows) {
  auto model = tiny_model();
  const core::Dataset ds = random_dataset(6, 9, model.cfg().d_vocab, true);
  const std::string plain = temp_path("plain.h5"), gz = temp_path("gz.h5");
  cache_activations(model, ds, plain, options().overwrite(true));
  cache_activations(model, ds, gz, options().overwrite(true).gzip_level(6));
  expect_same_store(plain, gz);
  EXPECT_FALSE(std::filesystem::exists(gz + ".gz.tmp"));
}

TEST(ActivationStore, RefusesToTouchAnExistingStoreOrAMismatchedResume) {
  auto model = tiny_model();
  const core::Dataset ds = random_dataset(4, 8, model.cfg().d_vocab, false);
  const std::string path = temp_path("exists.h5");
  cache_activations(model, ds, path, options().overwrite(true));
  EXPECT_THAT(error_of([&] { cache_activations(model, ds, path, options()); }),
              HasSubstr("already exists; pass `resume` to continue it or `overwrite` to replace it"));
  EXPECT_THAT(error_of([&] {
                cache_activations(model, ds, path, options().resume(true).dtype(at::kHalf));
              }),
              HasSubstr("its dtype is float32 but this run asks for float16"));
  EXPECT_THAT(error_of([&] {
                cache_activations(model, ds, path, options().resume(true).batch_size(2));
              }),
              HasSubstr("its job is"));
}

TEST(ActivationStore, RefusesPatternsAndUnknownHooks) {
  auto model = tiny_model();
  EXPECT_THAT(error_of([&] { resolve_store_hooks(model.cfg(), {"blocks.0.attn.hook_pattern"}); }),
              HasSubstr("not one row per token"));
  EXPECT_THAT(error_of([&] { resolve_store_hooks(model.cfg(), {"blocks.0.hook_resid_psot"}); }),
              HasSubstr("hook_resid_post"));
  // A glob keeps the per-token hooks of the attention block.
  const auto hooks = resolve_store_hooks(model.cfg(), {"blocks.0.attn.*"});
  EXPECT_EQ(std::count(hooks.begin(), hooks.end(), "blocks.0.attn.hook_z"), 1);
  for (const auto& h : hooks) EXPECT_EQ(h.find("pattern"), std::string::npos) << h;
}

TEST(ActivationStore, NanFromTheModelIsReportedWithItsExampleAndPosition) {
  auto model = tiny_model();
  const core::Dataset ds = random_dataset(4, 8, model.cfg().d_vocab, false);
  // NaN at example 2, position 5 of the last hooked activation (batch 0
  // holds examples 0-2).
  model.add_perma_hook("blocks.1.hook_resid_post", [](at::Tensor& x, const HookPoint&) {
    if (x.size(0) == 3) {
      x = x.clone();
      x[2][5][1] = std::nan("");
    }
  });
  const std::string msg = error_of([&] {
    cache_activations(model, ds, temp_path("nan.h5"), options().overwrite(true));
  });
  EXPECT_THAT(msg, HasSubstr("hook 'blocks.1.hook_resid_post' produced NaN/Inf on example 2, position 5"));
}

TEST(ActivationStore, NanInAStoreIsReportedWithItsRow) {
  auto model = tiny_model();
  const core::Dataset ds = random_dataset(4, 8, model.cfg().d_vocab, false);
  const std::string path = temp_path("nan_store.h5");
  cache_activations(model, ds, path, options().overwrite(true));
  {
    core::H5File f = core::H5File::open_readwrite(path);
    at::Tensor r = f.read_rows("acts/blocks.1.hook_resid_post", 19, 1);
    r[0][3] = std::nan("");
    f.write_rows("acts/blocks.1.hook_resid_post", 19, r);
  }
  auto store = core::ActivationStore::open(path);
  const std::string want = "hook 'blocks.1.hook_resid_post' has a non-finite value (nan) at row 19 "
                           "(example 2, position 3)";
  EXPECT_THAT(error_of([&] { store.check_all_finite(); }), HasSubstr(want));
  core::ShuffledBatches batches(store, {}, core::ShuffleOptions().batch_size(8));
  EXPECT_THAT(error_of([&] { while (batches.next()) {} }), HasSubstr(want));
}

// ------------------------------------------------------------ shuffled reads

class ShuffledReads : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto model = tiny_model();
    const core::Dataset ds = random_dataset(21, 11, model.cfg().d_vocab, true);
    cache_activations(model, ds, path(), options().overwrite(true));
  }
  static std::string path() { return temp_path("shuffle.h5"); }
};

TEST_F(ShuffledReads, AnEpochServesEveryRowOnceWithItsOwnValues) {
  auto store = core::ActivationStore::open(path());
  const int64_t n = store.num_rows();
  const std::string h = "blocks.0.hook_resid_post";
  const at::Tensor all = store.rows(h, 0, n);
  core::ShuffledBatches batches(store, {h}, core::ShuffleOptions().batch_size(10).buffer_rows(40).seed(5));
  std::vector<int64_t> served;
  int64_t batches_seen = 0;
  while (auto b = batches.next()) {
    ++batches_seen;
    EXPECT_LE(b->rows.size(0), 10);
    EXPECT_TRUE(at::equal(b->acts.at(h), all.index_select(0, b->rows)));
    EXPECT_TRUE(at::equal(b->token_ids, store.token_ids(0, n).index_select(0, b->rows)));
    for (int64_t i = 0; i < b->rows.size(0); ++i) served.push_back(b->rows[i].item<int64_t>());
  }
  EXPECT_EQ(batches_seen, (n + 9) / 10);
  std::vector<int64_t> sorted = served;
  std::sort(sorted.begin(), sorted.end());
  std::vector<int64_t> expected(n);
  std::iota(expected.begin(), expected.end(), 0);
  EXPECT_EQ(sorted, expected);
  // Shuffled: not the store's order, and far from it.
  EXPECT_NE(served, expected);
  // The next epoch starts by itself, in another order.
  std::vector<int64_t> second;
  while (auto b = batches.next()) {
    for (int64_t i = 0; i < b->rows.size(0); ++i) second.push_back(b->rows[i].item<int64_t>());
  }
  EXPECT_EQ(second.size(), served.size());
  EXPECT_NE(second, served);
}

// Data-parallel ranks read parts of the store (ShuffleOptions::part): the
// parts are disjoint, cover every row once, and each is a run of whole
// chunks in store order.
TEST_F(ShuffledReads, PartsAreDisjointAndCoverTheStore) {
  auto store = core::ActivationStore::open(path());
  const int64_t n = store.num_rows();
  const std::string h = "blocks.0.hook_resid_post";
  const auto chunks = store.chunks();
  ASSERT_GE(chunks.size(), 3u);
  for (int64_t parts : {2, 3}) {
    std::vector<int64_t> all;
    int64_t next_first = 0;  // the parts follow each other in store order
    for (int64_t part = 0; part < parts; ++part) {
      core::ShuffledBatches batches(store, {h}, core::ShuffleOptions().batch_size(7).buffer_rows(20).seed(3).part(part).parts(parts));
      std::vector<int64_t> rows;
      while (auto b = batches.next()) {
        for (int64_t i = 0; i < b->rows.size(0); ++i) rows.push_back(b->rows[i].item<int64_t>());
      }
      ASSERT_FALSE(rows.empty()) << "part " << part << " of " << parts;
      std::sort(rows.begin(), rows.end());
      // Contiguous: rows [first, last] of the store, every one of them.
      EXPECT_EQ(rows.front(), next_first) << "part " << part << " of " << parts;
      EXPECT_EQ(rows.back() - rows.front() + 1, static_cast<int64_t>(rows.size()));
      // Whole chunks: the part ends where a chunk ends.
      const int64_t end = rows.back() + 1;
      EXPECT_TRUE(std::any_of(chunks.begin(), chunks.end(), [&](const auto& c) { return c.first + c.second == end; }));
      next_first = end;
      all.insert(all.end(), rows.begin(), rows.end());
    }
    std::sort(all.begin(), all.end());
    std::vector<int64_t> expected(n);
    std::iota(expected.begin(), expected.end(), 0);
    EXPECT_EQ(all, expected) << parts << " parts must cover each row exactly once";
  }
  EXPECT_THAT(error_of([&] { core::ShuffledBatches(store, {h}, core::ShuffleOptions().part(2).parts(2)); }),
              HasSubstr("ShuffleOptions.part must be in [0, parts)"));
  EXPECT_THAT(error_of([&] {
                core::ShuffledBatches(store, {h}, core::ShuffleOptions().parts(static_cast<int64_t>(chunks.size()) + 1));
              }),
              HasSubstr("fewer than the"));
}

TEST_F(ShuffledReads, SameSeedSameOrderOtherSeedOtherOrder) {
  auto store = core::ActivationStore::open(path());
  auto order = [&](uint64_t seed) {
    core::ShuffledBatches b(store, {}, core::ShuffleOptions().batch_size(7).buffer_rows(30).seed(seed));
    std::vector<int64_t> rows;
    while (auto x = b.next()) {
      for (int64_t i = 0; i < x->rows.size(0); ++i) rows.push_back(x->rows[i].item<int64_t>());
    }
    return rows;
  };
  EXPECT_EQ(order(1), order(1));
  EXPECT_NE(order(1), order(2));
}

TEST_F(ShuffledReads, FiltersSkipFirstPositionsAndChosenTokens) {
  auto store = core::ActivationStore::open(path());
  const int64_t n = store.num_rows();
  const at::Tensor src = store.row_source(0, n), ids = store.token_ids(0, n);
  const int64_t skip_id = ids[5].item<int64_t>();
  core::ShuffledBatches batches(store, {},
                                core::ShuffleOptions()
                                    .batch_size(16)
                                    .exclude_first_position(true)
                                    .exclude_token_ids({skip_id})
                                    .drop_last(true));
  int64_t served = 0;
  while (auto b = batches.next()) {
    EXPECT_EQ(b->rows.size(0), 16);
    for (int64_t i = 0; i < 16; ++i) {
      const int64_t r = b->rows[i].item<int64_t>();
      EXPECT_NE(src[r][1].item<int64_t>(), 0);
      EXPECT_NE(ids[r].item<int64_t>(), skip_id);
    }
    served += 16;
  }
  const int64_t kept = ((src.select(1, 1) != 0) & (ids != skip_id)).sum().item<int64_t>();
  EXPECT_EQ(served, kept / 16 * 16);
}

// ------------------------------------------------------------ damaged stores

class DamagedStore : public ::testing::Test {
 protected:
  void SetUp() override {
    auto model = tiny_model();
    const core::Dataset ds = random_dataset(4, 8, model.cfg().d_vocab, false);
    path_ = temp_path(std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) +
                      ".h5");
    cache_activations(model, ds, path_, options().overwrite(true));
  }
  std::string open_error() {
    return error_of([&] { core::ActivationStore::open(path_); });
  }
  std::string path_;
};

TEST_F(DamagedStore, Truncated) {
  std::filesystem::resize_file(path_, std::filesystem::file_size(path_) / 2);
  EXPECT_THAT(open_error(), HasSubstr(path_));
}

TEST_F(DamagedStore, OtherFormat) {
  core::H5File::open_readwrite(path_).write_attr("", "mechlab_format", "checkpoint");
  EXPECT_THAT(open_error(), HasSubstr("is a mechlab 'checkpoint' file, not an activation store"));
}

TEST_F(DamagedStore, NewerVersion) {
  core::H5File::open_readwrite(path_).write_attr("", "mechlab_version", int64_t{2});
  EXPECT_THAT(open_error(), HasSubstr("is version 2 but this mechlab reads versions 1 to 1"));
}

TEST_F(DamagedStore, WrongDtype) {
  {
    core::H5File f = core::H5File::open_readwrite(path_);
    at::Tensor x = f.read_tensor("acts/blocks.0.hook_resid_post");
    core::WriteOptions w;
    w.overwrite(true);
    f.write_tensor("acts/blocks.0.hook_resid_post", x.to(at::kDouble), w);
  }
  EXPECT_THAT(open_error(),
              HasSubstr("/acts/blocks.0.hook_resid_post is float64 but the store's dtype is float32"));
}

TEST_F(DamagedStore, MismatchedRowCounts) {
  {
    core::H5File f = core::H5File::open_readwrite(path_);
    core::WriteOptions w;
    w.overwrite(true);
    f.write_tensor("token_ids", at::zeros({5}, at::kInt), w);
  }
  EXPECT_THAT(open_error(), HasSubstr("/token_ids has shape [5], expected [32]"));
}

TEST_F(DamagedStore, CommittedPastTheEnd) {
  core::H5File::open_readwrite(path_).write_attr("", "rows_committed", int64_t{99});
  EXPECT_THAT(open_error(), HasSubstr("rows_committed = 99 is outside [0, rows_total = 32]"));
}

TEST_F(DamagedStore, ReadingPastCommittedRowsSaysTheStoreIsUnfinished) {
  {
    core::H5File f = core::H5File::open_readwrite(path_);
    f.write_attr("", "rows_committed", int64_t{16});
    f.write_attr("", "complete", int64_t{0});
  }
  auto store = core::ActivationStore::open(path_);
  EXPECT_EQ(store.num_rows(), 16);
  EXPECT_THAT(error_of([&] { store.rows("blocks.0.hook_resid_post", 10, 10); }),
              HasSubstr("16 committed rows (it is unfinished: resume the job that writes it)"));
  EXPECT_THAT(error_of([&] { store.rows("blocks.9.hook_resid_post", 0, 1); }),
              HasSubstr("has no hook 'blocks.9.hook_resid_post'"));
}

// The GPU path (side-stream copies into pinned memory, events, writer
// thread) against the CPU path on the same model and data. Tolerance:
// float32 1e-4 normwise (cuBLAS vs CPU BLAS, no TF32); the token ids and
// row sources must be identical.
TEST(ActivationStore, CudaCaptureMatchesCpuCapture) {
  if (!mechlab::testing::have_cuda_or_skip()) GTEST_SKIP() << "no CUDA device";
  auto model = tiny_model();
  const core::Dataset ds = random_dataset(9, 12, model.cfg().d_vocab, true);
  const std::string cpu = temp_path("cpu.h5"), gpu = temp_path("gpu.h5");
  cache_activations(model, ds, cpu, options().overwrite(true));
  model.model().to(at::Device(at::kCUDA));
  cache_activations(model, ds, gpu, options().overwrite(true));
  auto a = core::ActivationStore::open(cpu), b = core::ActivationStore::open(gpu);
  ASSERT_EQ(a.num_rows(), b.num_rows());
  const int64_t n = a.num_rows();
  for (const auto& h : a.hooks()) {
    at::Tensor x = a.rows(h, 0, n), y = b.rows(h, 0, n);
    const double err = (x - y).abs().max().item<double>() / x.abs().max().item<double>();
    EXPECT_LE(err, 1e-4) << h;
  }
  EXPECT_TRUE(at::equal(a.token_ids(0, n), b.token_ids(0, n)));
  EXPECT_TRUE(at::equal(a.row_source(0, n), b.row_source(0, n)));
}

TEST(ActivationStore, DatasetIdsBeyondTheModelVocabAreRefused) {
  auto model = tiny_model();
  core::Dataset ds = random_dataset(2, 4, model.cfg().d_vocab + 10, false);
  ds.tokens[1][2] = static_cast<int>(model.cfg().d_vocab + 3);
  EXPECT_THAT(error_of([&] {
                cache_activations(model, ds, temp_path("vocab.h5"), options().overwrite(true));
              }),
              HasSubstr(std::to_string(model.cfg().d_vocab + 3)));
}

}  // namespace
}  // namespace mechlab::hooks
