// Training from live model activations (sae/live_source.h) against the store
// path it replaces: on a dataset without padding, and a store cached with one
// model batch per chunk, the live source serves the store source's batches
// bit for bit (same buffer scheme, same seeds), so a training run from the
// model equals one from the store, parameters and counters bit for bit, also
// when stopped and resumed; with padding the chunks differ from the model
// batches (so the orders differ) but one epoch serves exactly the store's
// rows. And the refusals of bad data configs.
#include "core/data/dataset.h"
#include "core/formats/hdf5_file.h"
#include "core/model/transformer.h"
#include "core/store/activation_store.h"
#include "hooks/activation_capture.h"
#include "hooks/hooked_transformer.h"
#include "sae/live_source.h"
#include "sae/trainer.h"
#include "tests/test_util.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>


#include <cstdio>
#include <filesystem>
#include <fstream>

namespace mechlab::sae {
namespace {

namespace fs = std::filesystem;

using mechlab::testing::remove_tree;
using ::testing::HasSubstr;
using mechlab::testing::error_of;
using mechlab::testing::temp_path;
using nlohmann::json;

const std::string kModel = std::string(MECHLAB_TEST_DATA) + "/runtime/gpt2_like.h5";
const char* kHook = "blocks.0.hook_resid_post";
constexpr int64_t kN = 12, kT = 6, kPrompts = 4;  // 3 model batches of 24 rows

std::shared_ptr<hooks::HookedTransformer> model() {
  return std::make_shared<hooks::HookedTransformer>(core::Transformer::load(kModel));
}

core::Dataset dataset(bool padded) {
  core::Dataset ds;
  ds.d_vocab = 61;
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(21);
  ds.tokens = at::randint(1, ds.d_vocab, {kN, kT}, g, at::kLong).to(at::kInt);
  if (padded) {  // right padding: example i keeps its first 2 + i % 5 tokens
    ds.attention_mask = at::zeros({kN, kT}, at::kByte);
    for (int64_t i = 0; i < kN; ++i) ds.attention_mask[i].slice(0, 0, 2 + i % 5).fill_(1);
  }
  return ds;
}

// A float32 store of the dataset at kHook, batched as the live source batches.
std::string cache(const core::Dataset& ds, const std::string& name, int64_t chunk_rows) {
  const std::string path = temp_path("sae_live", name);
  fs::remove(path);
  auto m = model();
  hooks::cache_activations(*m, ds, path,
                           hooks::CacheOptions().hooks({kHook}).dtype(at::kFloat).batch_size(kPrompts)
                               .chunk_rows(chunk_rows).progress(false));
  return path;
}

LiveSourceOptions live_options(int64_t batch, int64_t buffer, bool exclude_first) {
  return LiveSourceOptions().hook(kHook).seed(7).batch_size(batch).buffer_rows(buffer)
      .exclude_first_position(exclude_first).prompts_per_forward(kPrompts);
}

TEST(LiveSource, ServesTheStoreSourcesBatchesBitForBit) {
  const core::Dataset ds = dataset(false);
  const std::string store = cache(ds, "plain.h5", kPrompts * kT);  // chunk c = model batch c
  auto from_store = store_source(store, kHook, 7, 16, 32, /*exclude_first_position=*/true);
  auto live = live_source(model(), ds, live_options(16, 32, true));
  ASSERT_EQ(live->d_in(), 32);
  at::Generator rng = at::make_generator<at::CPUGeneratorImpl>(0);
  // 60 rows an epoch (position 0 excluded): 3 batches, 12 rows dropped; 4 epochs.
  at::Tensor first;
  for (int64_t step = 0; step < 12; ++step) {
    const at::Tensor a = from_store->batch(step, 16, rng), b = live->batch(step, 16, rng);
    ASSERT_EQ(b.sizes(), (std::vector<int64_t>{16, 32}));
    EXPECT_TRUE(at::equal(a, b)) << "step " << step;
    if (step == 0) first = b;
    if (step > 0) {
      EXPECT_FALSE(at::equal(b, first)) << "step " << step;  // the order moves on
    }
  }
  EXPECT_TRUE(at::equal(from_store->eval_rows(40), live->eval_rows(40)));  // dataset order, position 0 kept
  EXPECT_TRUE(at::equal(from_store->init_rows(7), live->init_rows(7)));
  fs::remove(store);
}

TEST(LiveSource, WithPaddingOneEpochServesExactlyTheStoresRows) {
  const core::Dataset ds = dataset(true);
  const std::string store = cache(ds, "padded.h5", 10);  // chunks that are not model batches
  const auto s = core::ActivationStore::open(store);
  const int64_t R = s.num_rows();
  ASSERT_EQ(R, ds.attention_mask.sum().item<int64_t>());
  auto live = live_source(model(), ds, live_options(R, R, false));
  at::Generator rng = at::make_generator<at::CPUGeneratorImpl>(0);
  const at::Tensor got = live->batch(0, R, rng);       // the whole epoch, shuffled
  const at::Tensor want = s.rows(kHook, 0, R);          // [R, 32] in dataset order
  // The same multiset of rows (two prompts with one first token have equal
  // position-0 rows): each stored row is served as often as it is stored,
  // and every served row is a stored one.
  const at::Tensor same = (got.unsqueeze(1) == want.unsqueeze(0)).all(-1);     // [R, R]
  const at::Tensor stored = (want.unsqueeze(1) == want.unsqueeze(0)).all(-1);  // [R, R]
  EXPECT_TRUE(at::equal(same.sum(0), stored.sum(0)));
  EXPECT_TRUE(same.any(1).all().item<bool>());
  EXPECT_FALSE(at::equal(got, want));  // and shuffled
  fs::remove(store);
}

TEST(LiveSource, AnEarlierOrLaterStepReplaysTheSameOrder) {
  const core::Dataset ds = dataset(false);
  auto a = live_source(model(), ds, live_options(16, 32, false));
  auto b = live_source(model(), ds, live_options(16, 32, false));
  at::Generator rng = at::make_generator<at::CPUGeneratorImpl>(0);
  std::vector<at::Tensor> seq;
  for (int64_t s = 0; s < 6; ++s) seq.push_back(a->batch(s, 16, rng));
  EXPECT_TRUE(at::equal(b->batch(5, 16, rng), seq[5]));  // a resume at step 5
  EXPECT_TRUE(at::equal(b->batch(2, 16, rng), seq[2]));  // back: started again
  EXPECT_TRUE(at::equal(b->batch(3, 16, rng), seq[3]));
}

json train_config(const json& data) {
  json j = json::parse(R"({"sae": {"architecture": "topk", "d_in": 0, "d_sae": 64, "k": 4},
      "steps": 10, "batch_size": 16, "lr": 3e-3, "eval_every": 5, "eval_rows": 32,
      "b_dec_init": "geometric_median", "dead_feature_window": 3, "seed": 7})");
  j["data"] = data;
  return j;
}

void expect_same(SaeTrainer& x, SaeTrainer& y) {
  for (const auto& [n, t] : x.sae().named_parameters()) {
    EXPECT_TRUE(at::equal(t, y.sae().param(n))) << n;
  }
  EXPECT_TRUE(at::equal(x.trainable().steps_since_fired(), y.trainable().steps_since_fired()));
  EXPECT_EQ(x.trainable().last_eval().fvu, y.trainable().last_eval().fvu);
}

TEST(LiveSource, TrainingFromTheModelEqualsTrainingFromItsStoreAndResumes) {
  const core::Dataset ds = dataset(false);
  const std::string store = cache(ds, "train.h5", kPrompts * kT);
  const std::string ds_path = temp_path("sae_live", "prompts.h5");
  core::save_dataset(ds_path, ds);
  const json live = {{"model", kModel}, {"dataset", ds_path}, {"hook", kHook}, {"buffer_rows", 32},
                     {"exclude_first_position", true}, {"prompts_per_forward", kPrompts}};
  const json stored = {{"store", store}, {"hook", kHook}, {"buffer_rows", 32}, {"exclude_first_position", true}};
  SaeTrainer from_model(SaeTrainConfig::from_json(train_config(live)), SaeTrainerOptions().progress(false));
  SaeTrainer from_store(SaeTrainConfig::from_json(train_config(stored)), SaeTrainerOptions().progress(false));
  from_model.run();
  from_store.run();
  expect_same(from_model, from_store);
  EXPECT_EQ(from_model.sae().cfg().hook_name(), kHook);
  // Stopped after 4 steps and resumed from its checkpoint: the same run.
  const std::string out = temp_path("sae_live", "run");
  remove_tree(out);
  {
    SaeTrainer part(SaeTrainConfig::from_json(train_config(live)), SaeTrainerOptions().out_dir(out).progress(false));
    EXPECT_EQ(part.run(4).steps, 4);
  }
  SaeTrainer rest(SaeTrainConfig::from_json(train_config(live)),
                  SaeTrainerOptions().out_dir(out).resume(true).progress(false));
  EXPECT_EQ(rest.run().steps, 10);
  expect_same(rest, from_model);
  remove_tree(out);
  fs::remove(store);
  fs::remove(ds_path);
}

// `mechlab sae train` with live data: the dataset path is relative to the
// config's folder, and an SAE trained live at hook_z is exported as a hook_z
// SAE (SAELens's reshape_activations) at that hook.
TEST(LiveSource, TheCliTrainsLiveAtHookZWithPathsRelativeToTheConfig) {
  const std::string dir = temp_path("sae_live", "cli");
  remove_tree(dir);
  fs::create_directories(dir);
  core::save_dataset(dir + "/prompts.h5", dataset(false));
  json cfg = train_config({{"model", kModel}, {"dataset", "prompts.h5"}, {"hook", "blocks.1.attn.hook_z"},
                           {"prompts_per_forward", kPrompts}});
  cfg["steps"] = 6;
  cfg["eval_every"] = 3;
  {
    std::ofstream out(dir + "/cfg.json");
    out << cfg.dump();
    ASSERT_TRUE(out.good());
  }
  const testing::CliResult r = testing::run_cli("sae train " + dir + "/cfg.json --out " + dir + "/run --no-progress");
  ASSERT_EQ(r.rc, 0) << r.output;
  std::ifstream saved(dir + "/run/sae/cfg.json"), used(dir + "/run/config.json");
  const json s = json::parse(saved), u = json::parse(used);
  EXPECT_EQ(s["reshape_activations"], "hook_z");
  EXPECT_EQ(s["metadata"]["hook_name"], "blocks.1.attn.hook_z");
  EXPECT_EQ(s["d_in"], 32);
  EXPECT_EQ(fs::path(u["data"]["dataset"].get<std::string>()), fs::path(dir) / "prompts.h5");
  remove_tree(dir);
}

TEST(LiveSource, RefusesBadDataInOneLine) {
  const core::Dataset ds = dataset(false);
  EXPECT_THAT(error_of([&] { live_source(model(), ds, live_options(16, 32, false).hook("blocks.*.hook_resid_post")); }),
              HasSubstr("is not one hook point of the model; set data.hook to one per-token hook (no pattern)"));
  EXPECT_THAT(error_of([&] { live_source(model(), ds, live_options(16, 32, false).hook("blocks.0.attn.hook_pattern")); }),
              HasSubstr("blocks.0.attn.hook_pattern"));
  EXPECT_THAT(error_of([&] { live_source(model(), ds, live_options(100, 32, true)); }),
              HasSubstr("'dataset' gives 60 rows at blocks.0.hook_resid_post, fewer than one batch (batch_size 100)"));
  EXPECT_THAT(error_of([] {
                SaeTrainConfig::from_json(train_config({{"model", kModel}, {"store", "x.h5"}, {"hook", kHook}}));
              }),
              HasSubstr("SAE training config: \"data\" must be {\"toy\": {...}}, {\"store\": PATH, \"hook\": NAME} or "
                        "{\"model\": PATH, \"dataset\": PATH, \"hook\": NAME}"));
  EXPECT_THAT(error_of([] { SaeTrainConfig::from_json(train_config({{"model", kModel}, {"hook", kHook}})); }),
              HasSubstr("\"data.dataset\" is missing: name the dataset whose prompts the model runs on"));
  EXPECT_THAT(error_of([] {
                SaeTrainConfig::from_json(
                    train_config({{"model", kModel}, {"dataset", "d.h5"}, {"hook", kHook}, {"prompts", 4}}));
              }),
              HasSubstr("unknown key \"data.prompts\""));
}

// Data-parallel ranks get parts of a store; a live source has none (every
// rank would run the model on the whole global batch), so it is refused
// before the model is loaded.
TEST(LiveSource, DataParallelPartsAreRefused) {
  const SaeTrainConfig cfg = SaeTrainConfig::from_json(nlohmann::json::parse(R"({
      "sae": {"architecture": "topk", "d_in": 16, "d_sae": 32, "k": 4},
      "data": {"model": "no-such-model.h5", "dataset": "no-such-data.h5", "hook": "blocks.0.hook_resid_post"},
      "batch_size": 8})"));
  EXPECT_THAT(error_of([&] { make_source(cfg, 1, 2); }),
              HasSubstr("runs in one process; for 2 data-parallel processes cache the activations first"));
}

}  // namespace
}  // namespace mechlab::sae
