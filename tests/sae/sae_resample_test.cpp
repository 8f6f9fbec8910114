// Resampling of dead latents (SaeTrainConfig::dead_latent_strategy
// "resample"; Bricken et al. 2023, "Towards Monosemanticity", neuron
// resampling): against a naive re-implementation of the rule (which input
// each dead latent gets, drawn by squared loss from the same generator; its
// decoder row, encoder column and bias), the Adam moments of exactly those
// latents zeroed and the others untouched; through the loop, latents made
// unable to fire (b_enc -100 in a ReLU SAE) fire again after resampling
// where "none" leaves them dead, and a run stopped before a resampling step
// and resumed equals the uninterrupted one bit for bit.
#include "sae/toy_superposition.h"
#include "sae/trainer.h"
#include "tests/test_util.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <map>

namespace mechlab::sae {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using mechlab::testing::error_of;
using mechlab::testing::temp_path;
using nlohmann::json;

at::Generator seeded(uint64_t s) { return at::make_generator<at::CPUGeneratorImpl>(s); }

// Toy rows [1024, 16]: sparse features in superposition.
at::Tensor rows() {
  ToySuperposition toy(ToyOptions().n_features(24).d(16).p_active(0.2).seed(4));
  at::Generator g = seeded(5);
  return toy.sample(1024, g);
}

// A ReLU SAE on the toy rows.
json config(const std::string& strategy) {
  json j = json::parse(R"({"sae": {"architecture": "relu", "d_in": 16, "d_sae": 64, "l1_coefficient": 0.1},
      "data": {"toy": {}}, "steps": 40, "batch_size": 128, "lr": 1e-2, "eval_every": 10, "eval_rows": 128,
      "checkpoint_every": 5, "dead_feature_window": 3, "resample_every": 20, "seed": 2})");
  j["dead_latent_strategy"] = strategy;
  return j;
}

// Latents 0, 5, 10, ..., 35 can no longer fire: a ReLU latent with b_enc
// -100 has a negative pre-activation on every row, so no gradient reaches
// it either (Adam's momentum moves it by at most lr per step).
at::Tensor kill(SaeTrainer& t) {
  const at::Tensor latents = at::arange(0, 40, 5, at::kLong);  // [8]
  at::NoGradGuard no_grad;
  t.sae().param("b_enc").index_fill_(0, latents, -100.0);
  return latents;
}

SaeTrainConfig parsed(const json& j) {
  json c = j;
  c["data"] = {{"toy", json::object()}};  // from_json wants a data form; the tests give rows in memory
  return SaeTrainConfig::from_json(c);
}

TEST(SaeResample, DeadLatentsGetHighLossInputsAndTheirAdamStateIsReset) {
  SaeTrainer t(parsed(config("resample")), tensor_source(rows(), 1), SaeTrainerOptions().progress(false));
  EXPECT_EQ(t.run(10).steps, 10);  // the killed latents trained for 10 steps, so their moments are not 0
  const at::Tensor killed = kill(t);
  EXPECT_EQ(t.run(9).steps, 19);  // steps 0..18; the loop's own resampling is before step 20
  SaeTrainable& tr = t.trainable();
  const at::Tensor dead = tr.steps_since_fired().gt(3).nonzero().reshape({-1});  // [n_dead]
  const int64_t n_dead = dead.numel();
  ASSERT_TRUE(at::isin(killed, dead).all().item<bool>()) << "the killed latents are dead";
  ASSERT_LT(n_dead, 64) << "some latents must stay alive";
  const at::Tensor alive = tr.steps_since_fired().le(3);

  // Snapshots before: parameters, the SAE's losses on the batch, Adam's moments.
  at::Generator unused = seeded(0);
  const at::Tensor x = tr.source().batch(19, 128, unused);  // [128, 16]
  const at::Tensor b_dec = t.sae().param("b_dec").detach().clone();
  const at::Tensor W_enc0 = t.sae().param("W_enc").detach().clone(), W_dec0 = t.sae().param("W_dec").detach().clone();
  const at::Tensor b_enc0 = t.sae().param("b_enc").detach().clone();
  at::Tensor loss;
  {
    at::NoGradGuard no_grad;
    loss = (t.sae().reconstruct(x) - x).pow(2).sum(-1).to(at::kDouble);  // [128]
  }
  const std::vector<std::string> names = tr.parameter_names();
  std::map<std::string, std::pair<at::Tensor, at::Tensor>> moments;  // name -> (exp_avg, exp_avg_sq)
  for (size_t i = 0; i < names.size(); ++i) {
    moments[names[i]] = {t.loop().optimizer().exp_avg()[i].clone(), t.loop().optimizer().exp_avg_sq()[i].clone()};
  }
  // The dead latents trained before they died: their moments are not zero yet.
  EXPECT_GT(moments["W_dec"].second.index_select(0, dead).abs().sum().item<double>(), 0);
  EXPECT_GT(moments["W_enc"].second.index_select(1, dead).abs().sum().item<double>(), 0);

  at::Generator g = seeded(99);
  const at::Tensor resampled = tr.resample_dead_latents(x, g);
  EXPECT_TRUE(at::equal(resampled, dead));

  // The naive rule: one input per dead latent, drawn with probability
  // proportional to its squared loss (the same draws from the same seed).
  at::Generator g2 = seeded(99);
  const at::Tensor pick = at::multinomial(loss.pow(2), n_dead, true, g2);  // [n_dead]
  EXPECT_LT(pick.min().item<int64_t>(), pick.max().item<int64_t>()) << "more than one input chosen";
  const at::Tensor alive_norm = W_enc0.norm(2, {0}).masked_select(alive).mean();
  for (int64_t i = 0; i < n_dead; ++i) {
    const int64_t c = dead[i].item<int64_t>();
    const at::Tensor v = x[pick[i].item<int64_t>()] - b_dec;  // apply_b_dec_to_input: the encoder's input
    const at::Tensor unit = v / v.norm();
    EXPECT_TRUE(at::allclose(t.sae().param("W_dec").detach()[c], unit, 1e-6, 1e-7)) << "W_dec row " << c;
    EXPECT_TRUE(at::allclose(t.sae().param("W_enc").detach().select(1, c), unit * 0.2 * alive_norm, 1e-6, 1e-7))
        << "W_enc column " << c;
    EXPECT_EQ(t.sae().param("b_enc")[c].item<float>(), 0.0f);
  }
  // The alive latents are untouched.
  const at::Tensor keep = alive.nonzero().reshape({-1});
  EXPECT_TRUE(at::equal(t.sae().param("W_dec").detach().index_select(0, keep), W_dec0.index_select(0, keep)));
  EXPECT_TRUE(at::equal(t.sae().param("W_enc").detach().index_select(1, keep), W_enc0.index_select(1, keep)));
  EXPECT_TRUE(at::equal(t.sae().param("b_enc").detach().index_select(0, keep), b_enc0.index_select(0, keep)));
  EXPECT_TRUE(at::equal(tr.steps_since_fired().index_select(0, dead), at::zeros({n_dead}, at::kLong)));

  // Adam: the resampled latents' moments zeroed, every other entry as it was.
  const std::pair<const char*, int64_t> per_latent[] = {{"W_enc", 1}, {"b_enc", 0}, {"W_dec", 0}};
  for (size_t i = 0; i < names.size(); ++i) {
    const at::Tensor now[] = {t.loop().optimizer().exp_avg()[i], t.loop().optimizer().exp_avg_sq()[i]};
    const at::Tensor before[] = {moments[names[i]].first, moments[names[i]].second};
    int64_t dim = -1;
    for (const auto& [n, d] : per_latent) dim = n == names[i] ? d : dim;
    for (int m = 0; m < 2; ++m) {
      if (dim < 0) {  // b_dec: not per latent
        EXPECT_TRUE(at::equal(now[m], before[m])) << names[i];
        continue;
      }
      EXPECT_EQ(now[m].index_select(dim, dead).abs().sum().item<double>(), 0) << names[i] << " moment " << m;
      EXPECT_TRUE(at::equal(now[m].index_select(dim, keep), before[m].index_select(dim, keep))) << names[i];
    }
  }
}

TEST(SaeResample, ResampledLatentsFireAgainWhereNoneLeavesThemDead) {
  SaeTrainer none(parsed(config("none")), tensor_source(rows(), 1), SaeTrainerOptions().progress(false));
  SaeTrainer resample(parsed(config("resample")), tensor_source(rows(), 1), SaeTrainerOptions().progress(false));
  none.run(10);
  resample.run(10);
  const at::Tensor killed = kill(none);
  kill(resample);
  none.run(10);
  resample.run(10);  // the same 20 steps: nothing resampled yet
  EXPECT_TRUE(at::equal(none.trainable().steps_since_fired(), resample.trainable().steps_since_fired()));
  const at::Tensor dead = at::zeros({64}, at::kBool).index_fill_(0, killed, true);  // [d_sae]
  const int64_t n_dead = dead.sum().item<int64_t>();
  ASSERT_TRUE(none.trainable().steps_since_fired().gt(3).logical_and(dead).equal(dead));
  none.run();
  resample.run();  // resamples before step 20
  // Since the resampling (20 steps ago), how many of those latents fired at all.
  const auto fired_since = [&](SaeTrainer& t) {
    return t.trainable().steps_since_fired().lt(20).logical_and(dead).sum().item<int64_t>();
  };
  EXPECT_EQ(fired_since(none), 0) << "killed latents do not come back by themselves";
  EXPECT_EQ(fired_since(resample), n_dead) << "of " << n_dead << " resampled latents";
  // And the SAE learned meanwhile (the toy rows are reconstructible).
  EXPECT_LT(resample.trainable().last_eval().fvu, 0.9);
}

TEST(SaeResample, AStoppedAndResumedRunEqualsTheUninterruptedOne) {
  const SaeTrainConfig cfg = parsed(config("resample"));
  const std::string whole = temp_path("sae_resample", "whole"), cut = temp_path("sae_resample", "cut");
  // Latents killed after step 10 in both, so that the resampling before
  // step 20 has dead latents to act on.
  SaeTrainer a(cfg, tensor_source(rows(), 1), SaeTrainerOptions().out_dir(whole).progress(false));
  a.run(10);
  kill(a);
  a.run();
  {
    SaeTrainer b(cfg, tensor_source(rows(), 1), SaeTrainerOptions().out_dir(cut).progress(false));
    EXPECT_EQ(b.run(10).steps, 10);
    kill(b);
    EXPECT_EQ(b.run(5).steps, 15);
  }
  SaeTrainer c(cfg, tensor_source(rows(), 1), SaeTrainerOptions().out_dir(cut).resume(true).progress(false));
  EXPECT_EQ(c.run().steps, 40);
  for (const auto& [n, p] : a.sae().named_parameters()) EXPECT_TRUE(at::equal(p, c.sae().param(n))) << n;
  // The resampling ran: the killed latents (b_enc -100) have b_enc near 0 again.
  EXPECT_LT(a.sae().param("b_enc").detach().index_select(0, at::arange(0, 40, 5, at::kLong)).abs().max().item<double>(), 1.0);
  EXPECT_TRUE(at::equal(a.trainable().steps_since_fired(), c.trainable().steps_since_fired()));
}

TEST(SaeResample, RefusalsAreOneLine) {
  json j = config("resample");
  j["dead_latent_strategy"] = "ghost";
  EXPECT_EQ(error_of([&] { parsed(j).validate(); }),
            "SAE training config: \"dead_latent_strategy\" must be auxk, resample or none, got \"ghost\"");
  j = config("resample");
  j["sae"] = {{"architecture", "gated"}, {"d_in", 16}, {"d_sae", 64}};
  EXPECT_THAT(error_of([&] { parsed(j).validate(); }),
              HasSubstr("\"dead_latent_strategy\" resample needs an encoder bias b_enc (relu, topk, batchtopk, "
                        "jumprelu), not a gated SAE; use auxk or none"));
  j = config("resample");
  j["resample_every"] = 0;
  EXPECT_THAT(error_of([&] { parsed(j).validate(); }), HasSubstr("\"resample_every\" must be >= 1, got 0"));
}

}  // namespace
}  // namespace mechlab::sae
