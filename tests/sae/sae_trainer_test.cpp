// The SAE trainer (sae/trainer.h): geometric median against a brute-force
// search, coefficient warmup against SAELens's scheduler (re-implemented
// step by step), ground-truth recovery on the toy-superposition problem
// (TopK MMCS >= 0.99; ReLU-L1 at a lower documented bar), exact resume, and
// the refusals of bad input.
#include "core/formats/hdf5_file.h"
#include "core/store/activation_writer.h"
#include "sae/toy_superposition.h"
#include "sae/trainer.h"
#include "tests/test_util.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <limits>

namespace mechlab::sae {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::error_of;

std::string temp_dir(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("mechlab_sae_trainer_" + name + "_" + std::to_string(::getpid()));
  mechlab::testing::remove_tree(dir);
  fs::create_directories(dir);
  return dir.string();
}

double objective(const at::Tensor& points, const at::Tensor& m) {
  return (points.to(at::kDouble) - m.to(at::kDouble)).norm(2, {1}).sum().item<double>();
}

TEST(GeometricMedian, MatchesABruteForceGridSearchIn2D) {
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(3);
  // Skewed points: the mean is far from the median.
  at::Tensor p = at::cat({at::randn({20, 2}, g, at::kDouble), at::randn({5, 2}, g, at::kDouble) * 0.3 + 6.0});
  const at::Tensor m = geometric_median(p);
  // Brute force: the best point of a 0.002 grid over [-1, 1]^2 around the mean, then refined.
  double best = std::numeric_limits<double>::infinity();
  double bx = 0, by = 0;
  for (double step : {0.05, 0.002}) {
    const double cx = step == 0.05 ? 0.0 : bx, cy = step == 0.05 ? 0.0 : by, half = step == 0.05 ? 3.0 : 0.06;
    for (double x = cx - half; x <= cx + half; x += step) {
      for (double y = cy - half; y <= cy + half; y += step) {
        const double v = objective(p, at::tensor({x, y}, at::kDouble));
        if (v < best) best = v, bx = x, by = y;
      }
    }
  }
  EXPECT_NEAR(m[0].item<double>(), bx, 0.004);
  EXPECT_NEAR(m[1].item<double>(), by, 0.004);
  EXPECT_LE(objective(p, m), best + 1e-9);
  // The mean (Weiszfeld's start) is clearly worse: the iteration did move.
  EXPECT_GT(objective(p, p.mean(0)), best + 1.0);
}

TEST(GeometricMedian, IsTheMedianIn1DAndKeepsTheDtype) {
  at::Tensor p = at::tensor({0.0, 1.0, 2.0, 10.0, 100.0}, at::kFloat).unsqueeze(1);  // [5, 1]
  const at::Tensor m = geometric_median(p);
  EXPECT_EQ(m.scalar_type(), at::kFloat);
  EXPECT_NEAR(m[0].item<double>(), 2.0, 1e-4);
}

// SAELens's CoefficientScheduler, step by step: the value starts at 0 (at
// final_value without warmup), each step() sets it to final * (current_step
// + 1) / warmup while current_step < warmup, and the trainer reads the value
// before calling step().
TEST(CoefficientWarmup, FollowsSaelensSchedulerStepByStep) {
  for (int64_t warmup : {0, 1, 7}) {
    const double final_value = 2.5;
    double value = warmup > 0 ? 0.0 : final_value;
    int64_t current = 0;
    for (int64_t s = 0; s < 12; ++s) {
      EXPECT_DOUBLE_EQ(warmed_up_coefficient(final_value, warmup, s), value) << "warmup " << warmup << " step " << s;
      value = current < warmup ? final_value * static_cast<double>(current + 1) / static_cast<double>(warmup)
                               : final_value;
      ++current;
    }
  }
}

json relu_config(int64_t d_in, int64_t warmup) {
  return {{"sae", {{"architecture", "relu"}, {"d_in", d_in}, {"d_sae", 32}, {"l1_coefficient", 0.5}}},
          {"data", {{"toy", {{"n_features", 16}, {"d", d_in}}}}},
          {"batch_size", 64},
          {"steps", 20},
          {"coefficient_warmup_steps", warmup},
          {"eval_rows", 64}};
}

TEST(CoefficientWarmup, TheTrainingLossScalesTheSparsityTerm) {
  // Rows in memory: the batch of step s is known, so the loss can be
  // recomputed from the SAE's own terms with the warmed-up coefficient.
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(5);
  at::Tensor rows = at::rand({256, 8}, g, at::kFloat);
  SaeTrainConfig cfg = SaeTrainConfig::from_json(relu_config(8, 4));
  SaeTrainable t(cfg, tensor_source(rows, 0));
  at::Generator rng = at::make_generator<at::CPUGeneratorImpl>(0);
  for (int64_t s : {0, 2, 4, 9}) {
    const at::Tensor loss = t.loss(s, rng);
    auto probe = tensor_source(rows, 0);
    const at::Tensor x = probe->batch(s, 64, rng);
    const TrainStep ref = t.sae().training_forward(x);
    ASSERT_EQ(ref.losses[1].first, "l1_loss");
    const double expect = ref.losses[0].second.item<double>() +
                          warmed_up_coefficient(0.5, 4, s) / 0.5 * ref.losses[1].second.item<double>();
    EXPECT_NEAR(loss.item<double>(), expect, 1e-5 * std::abs(expect)) << "step " << s;
    if (s == 0) {
      EXPECT_NEAR(loss.item<double>(), ref.losses[0].second.item<double>(), 1e-7);
    }
  }
}

// decoder_unit_norm (SAELens 5's normalize_sae_decoder): before the step the
// rows have norm 1, and the gradient reaching the optimiser has no component
// along any row.
TEST(DecoderUnitNorm, RowsAreUnitAndTheGradientIsOrthogonalToThem) {
  json j = relu_config(8, 0);
  j["decoder_unit_norm"] = true;
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(6);
  SaeTrainable t(SaeTrainConfig::from_json(j), tensor_source(at::rand({256, 8}, g, at::kFloat), 0));
  at::Generator rng = at::make_generator<at::CPUGeneratorImpl>(0);
  const at::Tensor w = t.sae().param("W_dec");  // [32, 8]
  {
    at::NoGradGuard no_grad;
    at::Tensor wm = w;
    wm.mul_(3.0);  // off unit norm: the step must renormalise
  }
  t.loss(0, rng).backward();
  EXPECT_TRUE(at::allclose(w.norm(2, {1}), at::ones({32}), 1e-6, 1e-6));
  const at::Tensor along = (w.grad() * w).sum(1);  // [32]
  EXPECT_LT(along.abs().max().item<double>(), 1e-6 * w.grad().abs().max().item<double>() + 1e-9);
  EXPECT_GT(w.grad().abs().max().item<double>(), 0.0);
  // Without the option the same gradient has a component along the rows.
  json plain = relu_config(8, 0);
  SaeTrainable u(SaeTrainConfig::from_json(plain), tensor_source(at::rand({256, 8}, g, at::kFloat), 0));
  u.loss(0, rng).backward();
  const at::Tensor wu = u.sae().param("W_dec");
  EXPECT_GT((wu.grad() * wu).sum(1).abs().max().item<double>(), 1e-6);
}

json toy_config(const std::string& arch) {
  json sae = {{"architecture", arch}, {"d_in", 256}, {"d_sae", 1024}};
  if (arch == "topk") sae["k"] = 8;
  return {{"name", "toy-" + arch},
          {"sae", sae},
          {"data", {{"toy", {{"n_features", 512}, {"d", 256}, {"seed", 1}}}}},
          {"batch_size", 1024},
          {"lr", 1e-3},
          {"eval_every", 50},
          {"eval_rows", 4096},
          {"seed", 2}};
}

// The check: 512 ground-truth features in 256 dimensions, each active
// with probability 5/512; a TopK SAE (d_sae 1024, k 8, batch 1024, Adam lr
// 1e-3) recovers them with MMCS >= 0.99.
TEST(SaeToy, TopKRecoversTheGroundTruthFeatures) {
  json j = toy_config("topk");
  j["steps"] = 3000;
  j["stop_at_mmcs"] = 0.99;
  SaeTrainer trainer(SaeTrainConfig::from_json(j), SaeTrainerOptions().progress(false));
  const SaeTrainResult r = trainer.run();
  EXPECT_GE(r.eval.mmcs, 0.99) << "after " << r.steps << " steps";
  EXPECT_TRUE(r.stopped_early) << r.steps;
  // The MMCS reported is the decoder's against the generator's features.
  ToySuperposition toy(ToyOptions().n_features(512).d(256).seed(1));
  EXPECT_DOUBLE_EQ(r.eval.mmcs, mean_max_cosine_similarity(toy.features(), trainer.sae().param("W_dec")));
  EXPECT_LE(r.eval.l0, 8.0 + 1e-9);
}

// ReLU with the L1 penalty shrinks activations and lets crosstalk between
// features fire, so its bar is lower (docs/ARCHITECTURE.md, "SAE training"):
// MMCS >= 0.98 with l1_coefficient 0.3 warmed up over 100 steps (measured:
// 0.9918 at step 350).
TEST(SaeToy, ReluL1RecoversTheGroundTruthFeaturesAtItsBar) {
  json j = toy_config("relu");
  j["sae"]["l1_coefficient"] = 0.3;
  j["coefficient_warmup_steps"] = 100;
  j["steps"] = 1000;
  j["stop_at_mmcs"] = 0.98;
  SaeTrainer trainer(SaeTrainConfig::from_json(j), SaeTrainerOptions().progress(false));
  const SaeTrainResult r = trainer.run();
  EXPECT_GE(r.eval.mmcs, 0.98) << "after " << r.steps << " steps";
  EXPECT_TRUE(r.stopped_early) << r.steps;
}

TEST(MeanMaxCosineSimilarity, IsOneForAPermutedScaledCopyAndLowerOtherwise) {
  ToySuperposition toy(ToyOptions().n_features(64).d(32).seed(4));
  const at::Tensor f = toy.features();
  const at::Tensor learned = at::cat({f.index_select(0, at::randperm(64, at::kLong)) * 3.0, at::zeros({2, 32})});
  EXPECT_NEAR(mean_max_cosine_similarity(f, learned), 1.0, 1e-6);
  // Half the features missing: each missing one scores its best cosine with another.
  const double half = mean_max_cosine_similarity(f, f.slice(0, 0, 32));
  at::Tensor cos = f.slice(0, 32).matmul(f.slice(0, 0, 32).t());  // [32, 32]
  const double expect = (32.0 + std::get<0>(cos.max(1)).sum().item<double>()) / 64.0;
  EXPECT_NEAR(half, expect, 1e-6);
}

void expect_same_parameters(Sae& a, Sae& b) {
  for (const auto& [name, p] : a.named_parameters()) {
    EXPECT_TRUE(at::equal(p, b.param(name))) << name << " differs";
  }
}

TEST(SaeTrainerResume, StoppedAndResumedEqualsUninterrupted) {
  for (const std::string arch : {"topk", "relu"}) {
    json j = toy_config(arch);
    j["sae"]["d_in"] = 32;
    j["sae"]["d_sae"] = 64;
    j["data"]["toy"] = {{"n_features", 48}, {"d", 32}, {"p_active", 0.1}};
    j["batch_size"] = 64;
    j["steps"] = 30;
    j["eval_every"] = 7;
    j["checkpoint_every"] = 5;
    j["dead_feature_window"] = 3;  // AuxK sees dead latents, whose counters the checkpoint keeps
    j["coefficient_warmup_steps"] = 20;
    j["b_dec_init"] = "geometric_median";
    const SaeTrainConfig cfg = SaeTrainConfig::from_json(j);
    const std::string whole = temp_dir("whole_" + arch), cut = temp_dir("cut_" + arch);
    SaeTrainer a(cfg, SaeTrainerOptions().out_dir(whole).progress(false));
    a.run();
    {
      SaeTrainer b(cfg, SaeTrainerOptions().out_dir(cut).progress(false));
      EXPECT_EQ(b.run(12).steps, 12);
    }
    SaeTrainer c(cfg, SaeTrainerOptions().out_dir(cut).resume(true).progress(false));
    const SaeTrainResult r = c.run();
    EXPECT_EQ(r.steps, 30);
    expect_same_parameters(a.sae(), c.sae());
    EXPECT_TRUE(at::equal(a.trainable().steps_since_fired(), c.trainable().steps_since_fired())) << arch;
    EXPECT_EQ(a.trainable().eval_log_csv(), c.trainable().eval_log_csv()) << arch;
    EXPECT_TRUE(fs::exists(cut + "/sae/cfg.json"));
    EXPECT_TRUE(fs::exists(cut + "/sae_log.csv"));
    std::ifstream svg(cut + "/sae_log.svg");
    const std::string chart{std::istreambuf_iterator<char>(svg), {}};
    EXPECT_NE(chart.find("<svg"), std::string::npos);
    EXPECT_NE(chart.find("dead fraction"), std::string::npos);
    EXPECT_NE(chart.find("MMCS"), std::string::npos);
  }
}

// ---------------------------------------------------------------- bad input

void write_store(const std::string& path, const at::Tensor& x, int64_t chunk_rows) {
  core::StoreSpec spec;
  core::StoreHeader& h = spec.header;
  h.model = "test";
  h.config_hash = "0123456789abcdef";
  h.hooks = {"blocks.0.hook_resid_post"};
  h.hook_shapes = {{"blocks.0.hook_resid_post", {x.size(1)}}};
  h.dtype = at::kFloat;
  h.rows_total = x.size(0);
  h.chunk_rows = chunk_rows;
  auto w = core::ActivationStoreWriter::open(path, spec, /*resume=*/false);
  const int64_t n = x.size(0);
  at::Tensor source = at::stack({at::arange(n, at::kInt), at::zeros({n}, at::kInt)}, 1);  // [n, 2]
  w.append(0, {{"blocks.0.hook_resid_post", x}}, at::zeros({n}, at::kInt), source);
  w.finish();
}

json store_config(const std::string& store, int64_t d_in) {
  return {{"sae", {{"architecture", "topk"}, {"d_in", d_in}, {"d_sae", 32}, {"k", 4}}},
          {"data", {{"store", store}, {"hook", "blocks.0.hook_resid_post"}, {"buffer_rows", 256}}},
          {"batch_size", 64},
          {"steps", 200},
          {"eval_rows", 64},
          {"eval_every", 10},
          {"checkpoint_every", 4}};
}

// A store source's order is replayed on resume: the resumed run reads the
// batches the uninterrupted one did.
TEST(SaeTrainerResume, FromAStoreEqualsUninterrupted) {
  const std::string dir = temp_dir("store_resume");
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(9);
  write_store(dir + "/acts.h5", at::randn({1024, 16}, g), 128);
  json j = store_config(dir + "/acts.h5", 16);
  j["steps"] = 40;  // 16 batches an epoch: the run crosses two epoch boundaries
  j["data"]["buffer_rows"] = 256;
  const SaeTrainConfig cfg = SaeTrainConfig::from_json(j);
  SaeTrainer a(cfg, SaeTrainerOptions().out_dir(dir + "/whole").progress(false));
  a.run();
  {
    SaeTrainer b(cfg, SaeTrainerOptions().out_dir(dir + "/cut").progress(false));
    b.run(21);
  }
  SaeTrainer c(cfg, SaeTrainerOptions().out_dir(dir + "/cut").resume(true).progress(false));
  EXPECT_EQ(c.run().steps, 40);
  expect_same_parameters(a.sae(), c.sae());
}

TEST(SaeTrainerBadInput, StoreAndSaeOfDifferentWidthIsRefused) {
  const std::string dir = temp_dir("width");
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(1);
  write_store(dir + "/acts.h5", at::randn({512, 16}, g), 128);
  const std::string msg = error_of([&] { SaeTrainer t(SaeTrainConfig::from_json(store_config(dir + "/acts.h5", 24))); });
  EXPECT_EQ(msg, "the SAE's d_in is 24 but the training data's rows are 16 wide; set sae.d_in to 16 (or 0, which "
                 "takes the data's width)");
  // d_in 0 takes the store's width.
  SaeTrainer t(SaeTrainConfig::from_json(store_config(dir + "/acts.h5", 0)), SaeTrainerOptions().progress(false));
  EXPECT_EQ(t.sae().d_in(), 16);
}

TEST(SaeTrainerBadInput, KAboveDSaeIsRefused) {
  json j = toy_config("topk");
  j["sae"]["k"] = 2000;
  const std::string msg = error_of([&] { SaeTrainer t(SaeTrainConfig::from_json(j)); });
  EXPECT_NE(msg.find("k"), std::string::npos) << msg;
  EXPECT_NE(msg.find("1024"), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
}

TEST(SaeTrainerBadInput, UnknownKeysAndWrongTypesAreNamed) {
  json j = toy_config("topk");
  j["stepz"] = 5;
  EXPECT_NE(error_of([&] { SaeTrainConfig::from_json(j); }).find("unknown key \"stepz\""), std::string::npos);
  j = toy_config("topk");
  j["sae"]["d_sae"] = "big";
  EXPECT_EQ(error_of([&] { SaeTrainConfig::from_json(j); }),
            "SAE training config: \"sae.d_sae\" must be a whole number, got \"big\"");
}

TEST(SaeTrainerBadInput, NanInTheStoreStopsNamingTheRowAndKeepsTheLastCheckpoint) {
  const std::string dir = temp_dir("nan");
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(2);
  at::Tensor x = at::randn({4096, 16}, g);
  x[3000][5] = std::numeric_limits<float>::quiet_NaN();
  write_store(dir + "/acts.h5", x, 256);
  json j = store_config(dir + "/acts.h5", 16);
  j["data"]["buffer_rows"] = 128;
  SaeTrainer t(SaeTrainConfig::from_json(j), SaeTrainerOptions().out_dir(dir + "/run").progress(false));
  const std::string msg = error_of([&] { t.run(); });
  EXPECT_NE(msg.find("non-finite value (nan) at row 3000 (example 3000, position 0)"), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  // The checkpoint on disk is whole, finite and of the step the message names.
  const std::string ckpt = dir + "/run/checkpoint.h5";
  ASSERT_TRUE(fs::exists(ckpt)) << msg;
  const core::H5File f = core::H5File::open_read(ckpt);
  const int64_t step = f.read_attr_int("train", "step");
  EXPECT_GT(step, 0);
  EXPECT_EQ(step % 4, 0);
  EXPECT_NE(msg.find("training stopped, the checkpoint of step " + std::to_string(step) + " ('" + ckpt + "') is kept"),
            std::string::npos)
      << msg;
  EXPECT_TRUE(at::isfinite(f.read_tensor("sae/W_dec")).all().item<bool>());
  EXPECT_FALSE(fs::exists(ckpt + ".tmp"));
}

TEST(SaeTrainerBadInput, NanInRowsInMemoryIsRefusedNamingTheRow) {
  at::Tensor rows = at::zeros({10, 8});
  rows[7][1] = std::numeric_limits<float>::infinity();
  EXPECT_EQ(error_of([&] { tensor_source(rows, 0); }),
            "training row 7 holds NaN or Inf; clean the activations before training");
}

}  // namespace
}  // namespace mechlab::sae
