// Probe directions as interventions (probes/intervention.h): the module's
// ablation and steering equal the same edits written independently (a plain
// hook on the host that projects with the raw direction; the steering
// vector), the intervention effect is the metric of those two forwards, and
// on planted data ablating the probe's direction leaves probes at chance.
#include "core/model/presets.h"
#include "hooks/hooked_transformer.h"
#include "hooks/steering_vector.h"
#include "patching/metrics.h"
#include "probes/intervention.h"
#include "probes/linear_probe.h"
#include "probes/metrics.h"
#include "tests/test_util.h"

#include <gmock/gmock.h>

#include <algorithm>
#include <cmath>

namespace mechlab::probes {
namespace {

using ::testing::HasSubstr;
using mechlab::testing::error_of;

const char* kHost = "blocks.0.hook_resid_post";

hooks::HookedTransformer tiny_model() {
  return hooks::HookedTransformer(core::Transformer(core::preset("tiny"), 5));
}

at::Tensor tokens_for(const hooks::HookedTransformer& m) {
  at::manual_seed(21);
  return at::randint(0, m.cfg().d_vocab, {3, 7}, at::kLong);
}

at::Tensor random_direction(int64_t d, uint64_t seed) {
  at::manual_seed(seed);
  return at::randn({d}) * 3.0;  // [d], deliberately not unit length
}

// Fires nothing: the module's own arithmetic, outside a model.
struct NoHooks : hooks::ModuleHooks {
  void operator()(const std::string&, at::Tensor&) override {}
};

TEST(ProbeIntervention, AblationEqualsProjectingOutWithAHostHook) {
  hooks::HookedTransformer model = tiny_model();
  const at::Tensor tokens = tokens_for(model);
  const at::Tensor w = random_direction(model.cfg().d_model, 22);  // [d_model]
  // The reference: x - (x.w / w.w) w, per position, in a plain host hook.
  const at::Tensor reference = model.run_with_hooks(
      tokens, {{kHost, [&](at::Tensor& x, const hooks::HookPoint&) {
                  const at::Tensor xd = x.to(at::kDouble), wd = w.to(at::kDouble);  // [b, p, d], [d]
                  x = (xd - (xd * wd).sum(-1, true) / wd.dot(wd) * wd).to(x.scalar_type());
                }}});
  const at::Tensor clean = model.forward(tokens);
  model.attach(kHost, std::make_shared<ProbeIntervention>(w, InterventionMode::ablate));
  auto [ablated, cache] = model.run_with_cache(tokens, hooks::NamesFilter::glob("*.probe.*"));
  EXPECT_TRUE(at::allclose(ablated, reference, 1e-5, 1e-6));
  EXPECT_GT((ablated - clean).abs().max().item<double>(), 1e-5);  // the direction mattered
  // What flows on has no component along w; what came in had one.
  const at::Tensor in = cache[std::string(kHost) + ".probe.hook_probe_in"];    // [batch, pos, d_model]
  const at::Tensor out = cache[std::string(kHost) + ".probe.hook_probe_out"];  // [batch, pos, d_model]
  const at::Tensor u = w / w.norm();
  const double along_in = at::matmul(in, u).abs().max().item<double>();
  EXPECT_GT(along_in, 1e-4);
  EXPECT_LT(at::matmul(out, u).abs().max().item<double>(), 1e-4 * along_in);
  model.detach(kHost, "probe");
  EXPECT_TRUE(at::equal(model.forward(tokens), clean));
}

TEST(ProbeIntervention, SteeringEqualsASteeringVectorOfTheUnitDirection) {
  hooks::HookedTransformer model = tiny_model();
  const at::Tensor tokens = tokens_for(model);
  const at::Tensor w = random_direction(model.cfg().d_model, 23);
  const double alpha = 2.5;
  model.attach(kHost, std::make_shared<hooks::SteeringVector>(w / w.norm(), alpha));
  const at::Tensor reference = model.forward(tokens);
  model.detach(kHost, "steer");
  model.attach(kHost, std::make_shared<ProbeIntervention>(w, InterventionMode::steer, alpha));
  EXPECT_TRUE(at::allclose(model.forward(tokens), reference, 1e-5, 1e-5));
}

TEST(ProbeIntervention, EffectIsTheMetricWithoutAndWithTheModule) {
  hooks::HookedTransformer model = tiny_model();
  const at::Tensor tokens = tokens_for(model);
  const at::Tensor w = random_direction(model.cfg().d_model, 24);
  const patching::Metric ce = patching::cross_entropy(tokens);
  const at::Tensor clean = model.forward(tokens);
  const double base = ce(clean).item<double>();
  const auto module = std::make_shared<ProbeIntervention>(w, InterventionMode::steer, 4.0);
  model.attach(kHost, module);
  const double steered = ce(model.forward(tokens)).item<double>();
  model.detach(kHost, "probe");

  const InterventionEffect e = intervention_effect(model, kHost, module, tokens, ce);
  EXPECT_DOUBLE_EQ(e.baseline, base);
  EXPECT_DOUBLE_EQ(e.intervened, steered);
  EXPECT_DOUBLE_EQ(e.change, steered - base);
  EXPECT_GT(std::abs(e.change), 1e-4);
  // Detached afterwards, also when the metric throws.
  EXPECT_TRUE(at::equal(model.forward(tokens), clean));
  const LogitsMetric bad = [](const at::Tensor& logits) { return logits.mean(-1); };
  EXPECT_THAT(error_of([&] { intervention_effect(model, kHost, module, tokens, bad); }),
              HasSubstr("must return one value"));
  EXPECT_TRUE(at::equal(model.forward(tokens), clean));
}

// Planted direction: labels written along a unit vector v with strength 2
// in isotropic noise. The fitted probe reads them (accuracy near the Bayes
// Phi(2) = 0.977); after ablating the probe's own direction that probe is at
// the majority rate and a refitted probe near chance; after ablating v, a
// refitted probe is at chance.
TEST(ProbeIntervention, AblatingAPlantedDirectionDropsProbeAccuracyToChance) {
  const int64_t n = 6000, d = 16;
  at::manual_seed(31);
  const at::Tensor v = at::randn({d}, at::kDouble);
  const at::Tensor unit = v / v.norm();                                   // [d]
  const at::Tensor y = at::randint(0, 2, {n}, at::kLong);                 // [n]
  const at::Tensor x = at::randn({n, d}, at::kDouble) + (2.0 * y.to(at::kDouble) - 1.0).unsqueeze(1) * 2.0 * unit;
  const int64_t n_train = 4000;
  const at::Tensor x_train = x.slice(0, 0, n_train), x_test = x.slice(0, n_train);  // [n, d]
  const at::Tensor y_train = y.slice(0, 0, n_train), y_test = y.slice(0, n_train);
  const LinearProbes p = fit_logistic(x_train, y_train);
  const double before = accuracy(p.predict(x_test), y_test).item<double>();
  EXPECT_GT(before, 0.95);

  ProbeIntervention ablate(p.weight[0].select(1, 0), InterventionMode::ablate);  // [d]
  NoHooks none;
  const at::Tensor a_train = ablate.forward(x_train, none), a_test = ablate.forward(x_test, none);
  const double majority = std::max(y_test.to(at::kDouble).mean().item<double>(),
                                   1.0 - y_test.to(at::kDouble).mean().item<double>());
  // The same probe now sees its bias only: one class everywhere.
  EXPECT_NEAR(accuracy(p.predict(a_test), y_test).item<double>(), majority, 0.03);
  // A probe refitted on the ablated activations finds only what the fitted
  // direction missed of v (its cosine with v is below 1): from 0.977 to
  // near chance.
  const LinearProbes q = fit_logistic(a_train, y_train);
  EXPECT_LT(accuracy(q.predict(a_test), y_test).item<double>(), 0.62);
  // Ablating v itself leaves nothing (2000 test rows: chance +- 0.011 each sigma).
  ProbeIntervention planted(unit, InterventionMode::ablate);
  const LinearProbes z = fit_logistic(planted.forward(x_train, none), y_train);
  EXPECT_LT(accuracy(z.predict(planted.forward(x_test, none)), y_test).item<double>(), 0.55);
  // Ablating a random direction instead leaves the signal.
  ProbeIntervention other(random_direction(d, 32).to(at::kDouble), InterventionMode::ablate);
  const LinearProbes r = fit_logistic(other.forward(x_train, none), y_train);
  EXPECT_GT(accuracy(r.predict(other.forward(x_test, none)), y_test).item<double>(), 0.9);
}

TEST(ProbeIntervention, BadDirectionsAndHostsAreRefusedClearly) {
  EXPECT_THAT(error_of([] { ProbeIntervention(at::zeros({8}), InterventionMode::ablate); }),
              HasSubstr("the probe direction is zero"));
  at::Tensor nan = at::ones({8});
  nan[2] = std::nan("");
  EXPECT_THAT(error_of([&] { ProbeIntervention(nan, InterventionMode::ablate); }), HasSubstr("NaN or inf"));
  EXPECT_THAT(error_of([] { ProbeIntervention(at::ones({2, 4}), InterventionMode::ablate); }),
              HasSubstr("must be one-dimensional"));
  EXPECT_THAT(error_of([] { parse_intervention_mode("erase"); }),
              HasSubstr("unknown intervention 'erase'; use ablate or steer"));
  hooks::HookedTransformer model = tiny_model();
  const int64_t wrong = model.cfg().d_model + 1;
  EXPECT_THAT(error_of([&] {
                model.attach(kHost, std::make_shared<ProbeIntervention>(at::ones({wrong}), InterventionMode::ablate));
              }),
              HasSubstr("probe direction of width " + std::to_string(wrong) + " does not fit"));
}

}  // namespace
}  // namespace mechlab::probes
