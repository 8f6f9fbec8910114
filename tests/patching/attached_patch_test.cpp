// Patching the hook points of attached modules (hooks/attached_module.h)
// through the patching library: PatchTarget::at(name, model), the bulk
// patcher, the point sweeps and the plan. Each patched metric is compared
// with the same intervention written by hand as a plain hook, on a forward
// that does not go through the bulk patcher (no restart at a layer, no
// stacked copies): a steering vector's output equals the host's value plus
// alpha * v (an analytic identity), an SAE's output with its error term is
// decode(latents) + x - reconstruct(x).
#include "core/formats/hdf5_file.h"
#include "hooks/hooked_transformer.h"
#include "hooks/steering_vector.h"
#include "patching/bulk_patcher.h"
#include "patching/metrics.h"
#include "patching/patching_data.h"
#include "patching/plan.h"
#include "patching/sweeps.h"
#include "sae/registry.h"
#include "tests/patching/patching_fixtures.h"
#include "tests/test_util.h"

#include <gmock/gmock.h>

#include <memory>

namespace mechlab::patching {
namespace {

using hooks::HookedTransformer;
using hooks::HookPoint;
using ::testing::HasSubstr;
using ::testing::Not;
using mechlab::testing::error_of;

const std::string kHost = "blocks.0.hook_resid_post";
const std::string kSteerOut = kHost + ".steer.hook_steer_out";
const std::string kActsPost = kHost + ".sae.hook_sae_acts_post";

class AttachedPatchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = std::make_unique<HookedTransformer>(
        HookedTransformer::load(mechlab::testing::runtime_model("gpt2_like")));
    const core::H5File ref =
        core::H5File::open_read(std::string(MECHLAB_TEST_DATA) + "/patching/gpt2_like.h5");
    data_ = mechlab::testing::read_fixture_inputs(ref);
  }
  // The metric of one plain forward on `tokens` with `fn` hooked at `hook`.
  double hooked_metric(const Metric& m, const at::Tensor& tokens, const std::string& hook,
                       hooks::HookFn fn) {
    at::NoGradGuard no_grad;
    return m(model_->run_with_hooks(tokens, {{hook, std::move(fn)}})).item<double>();
  }
  std::unique_ptr<HookedTransformer> model_;
  PatchingData data_;
};

std::shared_ptr<sae::Sae> random_relu_sae(int64_t d_in, uint64_t seed) {
  auto s = sae::make_sae(sae::SaeConfig().architecture("relu").d_in(d_in).d_sae(3 * d_in));
  at::manual_seed(seed);
  for (auto& [name, t] : s->named_parameters()) {
    at::Tensor p = t;
    p.copy_(at::randn(p.sizes()) * 0.3);
  }
  s->use_error_term(true);
  return s;
}

TEST_F(AttachedPatchTest, SteeringOutputPatchedFromCleanIsTheCleanHostPlusAlphaV) {
  // Denoising hook_steer_out (= host + alpha v) with the clean run's value:
  // the corrupted run continues from clean_host + alpha v, at every position
  // (point_all_pos) or at one position p (point:), where the others keep
  // corrupted_host + alpha v. Written by hand with the module detached, that
  // is a host hook: x = where(pos == p, clean_x, x) + alpha v.
  const Metric m = logit_diff(data_.answers());
  at::manual_seed(3);
  const at::Tensor v = at::randn({model_->cfg().d_model});  // [d_model]
  const double alpha = 2.5;
  at::Tensor clean_x;  // [batch, pos, d_model], the host's clean value (no module)
  {
    auto [logits, cache] = model_->run_with_cache(data_.clean_tokens, hooks::NamesFilter({kHost}));
    clean_x = cache[kHost];
  }
  const int64_t seq = data_.seq_len();
  std::vector<double> by_hand;  // [pos], then the all-positions value
  for (int64_t p = 0; p <= seq; ++p) {
    by_hand.push_back(hooked_metric(m, data_.corrupted_tokens, kHost, [&](at::Tensor& x, const HookPoint&) {
      at::Tensor y = x.clone();
      if (p == seq) y.copy_(clean_x);
      else y.select(1, p).copy_(clean_x.select(1, p));
      x = y + alpha * v;
    }));
  }

  model_->attach(kHost, std::make_shared<hooks::SteeringVector>(v, alpha));
  const auto results =
      run_sweeps(*model_, data_, {"point:" + kSteerOut, "point_all_pos:" + kSteerOut}, m);
  ASSERT_EQ(results.size(), 2u);
  const at::Tensor per_pos = results[0].values;  // [pos]
  ASSERT_EQ(per_pos.sizes(), at::IntArrayRef({seq}));
  EXPECT_EQ(results[0].axes, std::vector<std::string>{"pos"});
  EXPECT_EQ(results[1].axes, std::vector<std::string>{"point"});
  EXPECT_EQ(results[1].labels, std::vector<std::vector<std::string>>{{kSteerOut}});
  double spread = 0;
  for (int64_t p = 0; p < seq; ++p) {
    EXPECT_NEAR(per_pos[p].item<double>(), by_hand[static_cast<size_t>(p)], 1e-4) << "pos " << p;
    spread = std::max(spread, std::abs(by_hand[static_cast<size_t>(p)] - by_hand.back()));
  }
  EXPECT_NEAR(results[1].values[0].item<double>(), by_hand.back(), 1e-4);
  EXPECT_GT(spread, 1e-2);  // the positions differ: a wrong slice would show

  // The plan runs the same sweep and records the point's name.
  const auto plan_results =
      run_patching(*model_, data_, PatchPlan().sweeps({"point:" + kSteerOut}));
  ASSERT_EQ(plan_results.size(), 1u);
  EXPECT_TRUE(at::allclose(plan_results[0].values, per_pos, 1e-6, 1e-6));
}

TEST_F(AttachedPatchTest, SaeLatentsPatchedFromTheCorruptedRunEqualAManualHook) {
  // Noising (run clean, patch in corrupted) an SAE's hook_sae_acts_post at
  // one position and at all: compared with (1) a hook on that point in a
  // plain forward and (2) the SAE detached and its effect written by hand at
  // the host: x -> decode(acts) + x - reconstruct(x), acts = encode(x) with
  // the patched positions taken from the corrupted run.
  const Metric m = logit_diff(data_.answers());
  auto sae = random_relu_sae(model_->cfg().d_model, 9);
  at::Tensor corr_x;  // [batch, pos, d_model]
  {
    auto [logits, cache] = model_->run_with_cache(data_.corrupted_tokens, hooks::NamesFilter({kHost}));
    corr_x = cache[kHost];
  }
  const at::Tensor corr_acts = sae->encode(corr_x);  // [batch, pos, d_sae]
  const int64_t seq = data_.seq_len(), p = seq - 2;
  auto splice = [&](bool one_pos) {
    return [&, one_pos](at::Tensor& x, const HookPoint&) {
      at::Tensor acts = sae->encode(x).clone();  // [batch, pos, d_sae]
      if (one_pos) acts.select(1, p).copy_(corr_acts.select(1, p));
      else acts.copy_(corr_acts);
      x = sae->decode(acts) + (x - sae->reconstruct(x));
    };
  };
  const double by_host_one = hooked_metric(m, data_.clean_tokens, kHost, splice(true));
  const double by_host_all = hooked_metric(m, data_.clean_tokens, kHost, splice(false));

  model_->attach(kHost, sae);
  EXPECT_EQ(model_->hooks().hook_dims(kActsPost),
            (std::vector<core::Dim>{core::Dim::batch, core::Dim::pos, core::Dim::d_sae}));
  EXPECT_EQ(core::shape_string(model_->cfg(), model_->hooks().hook_dims(kActsPost)), "[batch, pos, d_sae]");
  at::Tensor corr_point;  // [batch, pos, d_sae], the point's value on the corrupted run
  {
    auto [logits, cache] = model_->run_with_cache(data_.corrupted_tokens, hooks::NamesFilter({kActsPost}));
    corr_point = cache[kActsPost];
  }
  const double by_point_one = hooked_metric(m, data_.clean_tokens, kActsPost, [&](at::Tensor& a, const HookPoint&) {
    a = a.clone();
    a.select(1, p).copy_(corr_point.select(1, p));
  });

  const auto results = run_sweeps(*model_, data_, {"point:" + kActsPost, "point_all_pos:" + kActsPost}, m,
                                  SweepOptions().direction(Direction::noising));
  const double bulk_one = results[0].values[p].item<double>(), bulk_all = results[1].values[0].item<double>();
  EXPECT_NEAR(bulk_one, by_point_one, 1e-4);
  EXPECT_NEAR(bulk_one, by_host_one, 1e-4);
  EXPECT_NEAR(bulk_all, by_host_all, 1e-4);
  // The patch matters (it moves the metric away from the clean run's).
  const double clean_metric = m(model_->forward(data_.clean_tokens)).item<double>();
  EXPECT_GT(std::abs(bulk_all - clean_metric), 1e-2);

  // The bulk patcher directly, with a target made by name, stacking several
  // configs per forward: the same numbers.
  BulkPatcher patcher(*model_, data_.clean_tokens, {}, m, BulkOptions().skip_identical(false));
  PatchTarget t = PatchTarget::at(kActsPost, *model_);
  EXPECT_TRUE(t.attached());
  EXPECT_EQ(t.hook_name(), kActsPost);
  const at::Tensor direct = patcher.run({PatchConfig{{PatchTarget(t).with_pos(p)}}, PatchConfig{{t}}},
                                        {{kActsPost, corr_point}});
  EXPECT_NEAR(direct[0].item<double>(), by_point_one, 1e-4);
  EXPECT_NEAR(direct[1].item<double>(), by_host_all, 1e-4);
}

TEST_F(AttachedPatchTest, UnknownOrDetachedPointsAndMissingAxesAreRefused) {
  auto sae = random_relu_sae(model_->cfg().d_model, 4);
  model_->attach(kHost, sae);
  const std::string unknown = kHost + ".sae.hook_sae_nope";
  const std::string e = error_of([&] { PatchTarget::at(unknown, *model_); });
  EXPECT_THAT(e, HasSubstr(unknown));
  EXPECT_THAT(e, HasSubstr("nearest valid names: " + kHost + ".sae.hook_sae_"));  // the module's points
  EXPECT_THAT(e, Not(HasSubstr("\n")));
  // The plan refuses it before any forward, naming it.
  EXPECT_THAT(error_of([&] { run_patching(*model_, data_, PatchPlan().sweeps({"point:" + unknown})); }),
              HasSubstr(unknown));
  EXPECT_THAT(error_of([&] { run_patching(*model_, data_, PatchPlan().sweeps({"point:"})); }),
              HasSubstr("names no hook point"));
  EXPECT_THAT(error_of([&] {
                run_patching(*model_, data_,
                             PatchPlan().sweeps({"point:" + kActsPost}).method(PatchMethod::attribution));
              }),
              HasSubstr("use method activation"));
  // An SAE latent point has no head axis.
  BulkPatcher patcher(*model_, data_.clean_tokens, {}, logit_diff(data_.answers()));
  auto [logits, cache] = model_->run_with_cache(data_.corrupted_tokens, hooks::NamesFilter({kActsPost}));
  const PatchTarget t = PatchTarget::at(kActsPost, *model_);
  EXPECT_THAT(error_of([&] { patcher.run({PatchConfig{{PatchTarget(t).with_head(0)}}}, cache.items()); }),
              HasSubstr("[batch, pos, d_sae] has no head axis"));
  // A target made while the module was attached is refused once it is gone.
  model_->detach(kHost, "sae");
  const std::string gone = error_of([&] { patcher.run({PatchConfig{{t}}}, cache.items()); });
  EXPECT_THAT(gone, HasSubstr(kActsPost));
  EXPECT_THAT(gone, HasSubstr("attach the module again"));
}

}  // namespace
}  // namespace mechlab::patching
