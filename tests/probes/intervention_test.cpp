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

// A per-head probe's direction lives in one head's d_head space: with a
// head, the module projects it out of that head's z only, as a plain hook on
// that head's slice does, and every other head flows on bit for bit.
TEST(ProbeIntervention, WithAHeadOnlyThatHeadsVectorsChange) {
  hooks::HookedTransformer model = tiny_model();
  const at::Tensor tokens = tokens_for(model);
  const std::string host = "blocks.0.attn.hook_z";
  const int64_t head = 1;
  const at::Tensor w = random_direction(model.cfg().d_head, 23);  // [d_head]
  const at::Tensor reference = model.run_with_hooks(
      tokens, {{host, [&](at::Tensor& z, const hooks::HookPoint&) {  // [b, p, heads, d_head]
                  const at::Tensor zd = z.select(2, head).to(at::kDouble), wd = w.to(at::kDouble);
                  z = z.clone();
                  z.select(2, head).copy_(zd - (zd * wd).sum(-1, true) / wd.dot(wd) * wd);
                }}});
  model.attach(host, std::make_shared<ProbeIntervention>(w, InterventionMode::ablate, 0.0, head));
  auto [ablated, cache] = model.run_with_cache(tokens, hooks::NamesFilter::glob("*.probe.*"));
  EXPECT_TRUE(at::allclose(ablated, reference, 1e-5, 1e-6));
  const at::Tensor in = cache[host + ".probe.hook_probe_in"], out = cache[host + ".probe.hook_probe_out"];
  for (int64_t h = 0; h < model.cfg().n_heads; ++h) {
    if (h != head) {
      EXPECT_TRUE(at::equal(out.select(2, h), in.select(2, h))) << "head " << h;
    }
  }
  const at::Tensor u = w / w.norm();
  EXPECT_GT(at::matmul(in.select(2, head), u).abs().max().item<double>(), 1e-4);
  EXPECT_LT(at::matmul(out.select(2, head), u).abs().max().item<double>(), 1e-5);
  model.detach(host, "probe");
  // A head needs a per-head host, and one the host has.
  EXPECT_THAT(error_of([&] {
                model.attach(kHost, std::make_shared<ProbeIntervention>(at::ones({model.cfg().d_model}),
                                                                        InterventionMode::ablate, 0.0, 0));
              }),
              HasSubstr("it has no head axis"));
  const int64_t heads = model.cfg().n_heads;
  EXPECT_THAT(error_of([&] {
                model.attach(host, std::make_shared<ProbeIntervention>(w, InterventionMode::ablate, 0.0, heads));
              }),
              HasSubstr("which has " + std::to_string(heads) + " heads"));
  EXPECT_THAT(error_of([&] { ProbeIntervention(w, InterventionMode::ablate, 0.0, -2); }),
              HasSubstr("must be a head index or -1"));
}

// A probe of a whole per-head hook read its heads' vectors concatenated:
// its direction (width heads * d_head) is projected out of that vector.
TEST(ProbeIntervention, WithoutAHeadAPerHeadHostIsItsHeadsConcatenated) {
  hooks::HookedTransformer model = tiny_model();
  const at::Tensor tokens = tokens_for(model);
  const std::string host = "blocks.0.attn.hook_z";
  const int64_t H = model.cfg().n_heads, dh = model.cfg().d_head;
  const at::Tensor w = random_direction(H * dh, 24).to(at::kDouble);  // [heads * d_head]
  const at::Tensor reference = model.run_with_hooks(
      tokens, {{host, [&](at::Tensor& z, const hooks::HookPoint&) {  // [b, p, heads, d_head]
                  const at::Tensor flat = z.flatten(2).to(at::kDouble);
                  z = (flat - (flat * w).sum(-1, true) / w.dot(w) * w).view(z.sizes()).to(z.scalar_type());
                }}});
  model.attach(host, std::make_shared<ProbeIntervention>(w, InterventionMode::ablate));
  EXPECT_TRUE(at::allclose(model.forward(tokens), reference, 1e-5, 1e-6));
  model.detach(host, "probe");
  const auto wrong = std::make_shared<ProbeIntervention>(at::ones({H * dh + 1}), InterventionMode::ablate);
  EXPECT_THAT(error_of([&] { model.attach(host, wrong); }),
              HasSubstr("whose last axis is " + std::to_string(dh) + " (" + std::to_string(H * dh) +
                        " for all heads)"));
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

// Ablating a span of k directions: coordinates outside the span are left
// bit for bit (directions supported on the first 4 of 16 coordinates), what
// is left has no component in the span, and the edit equals an independent
// projector A pinv(A) (a dependent column adds nothing to the rank).
TEST(ProbeIntervention, SubspaceAblationRemovesTheSpanAndNothingElse) {
  at::manual_seed(41);
  const int64_t d = 16;
  at::Tensor a = at::zeros({d, 3}, at::kDouble);  // [d, k]
  a.narrow(0, 0, 4).copy_(at::randn({4, 3}, at::kDouble));
  const ProbeIntervention local(a, InterventionMode::ablate);
  EXPECT_EQ(local.rank(), 3);
  for (const auto dtype : {at::kFloat, at::kDouble}) {
    const at::Tensor x = at::randn({2, 5, d}, dtype);  // [batch, pos, d]
    const at::Tensor y = local.apply(x);
    EXPECT_TRUE(at::equal(y.narrow(2, 4, d - 4), x.narrow(2, 4, d - 4))) << dtype;
    EXPECT_FALSE(at::allclose(y.narrow(2, 0, 4), x.narrow(2, 0, 4))) << dtype;
    const double tol = dtype == at::kFloat ? 1e-6 : 1e-12;
    EXPECT_LT(at::matmul(y.to(at::kDouble), a).abs().max().item<double>(), tol * x.abs().max().item<double>());
  }
  // A general span of 3 directions plus a fourth in their span: rank 3, and
  // the edit is x - A pinv(A) x (A pinv(A): the orthogonal projector onto
  // the span, computed by SVD, apart from Gram-Schmidt).
  at::Tensor g = at::randn({d, 3}, at::kDouble);
  g = at::cat({g, (g.select(1, 0) - 2 * g.select(1, 2)).unsqueeze(1)}, 1);  // [d, 4], rank 3
  const ProbeIntervention span(g, InterventionMode::ablate);
  EXPECT_EQ(span.rank(), 3);
  const at::Tensor x = at::randn({7, d}, at::kDouble);
  const at::Tensor proj = at::matmul(g, at::linalg_pinv(g, /*rcond=*/1e-10));  // [d, d]
  const at::Tensor want = x - at::matmul(x, proj);             // proj is symmetric
  EXPECT_TRUE(at::allclose(span.apply(x), want, 0, 1e-12));
  // A direction orthogonal to the span keeps its component exactly as it was.
  at::Tensor v = at::randn({d}, at::kDouble);
  v = v - at::matmul(proj, v);
  EXPECT_NEAR((span.apply(x) - x).matmul(v).abs().max().item<double>(), 0.0, 1e-12);
}

// A planted multiclass subspace: C = 4 classes whose means are the vertices
// of a regular simplex (circumradius 3) in a 3-dimensional subspace S of 16
// dimensions, plus isotropic noise. The fitted probe reads them (accuracy
// > 0.95). Ablating the span of its K - 1 weight differences leaves every
// logit difference at its bias difference, so it predicts one class for
// every row: on the balanced test split (500 rows per class) its accuracy
// is 1/C exactly. A probe refitted after ablating S has nothing to read:
// 1/C within 0.04 (4 sigma of an accuracy at 0.25 over 2000 rows). Ablating
// a random 3-dimensional subspace instead leaves most of the signal.
TEST(ProbeIntervention, AblatingAMulticlassProbesSpanLeavesItAtChance) {
  const int64_t n = 6000, n_train = 4000, d = 16, C = 4;
  at::manual_seed(43);
  const at::Tensor basis = std::get<0>(at::linalg_qr(at::randn({d, C - 1}, at::kDouble)));  // [d, 3] S
  // The simplex: the 4 standard basis vectors of R^4 centred, in 3 coordinates.
  const at::Tensor e = at::eye(C, at::kDouble) - 1.0 / C;                  // [4, 4], rows sum to 0
  const at::Tensor simplex = std::get<0>(at::linalg_qr(e.t())).narrow(1, 0, C - 1);  // [4, 3] orthonormal cols
  at::Tensor vertices = at::matmul(e, simplex);                              // [4, 3]
  vertices = vertices / vertices.norm(2, {1}, true) * 3.0;
  const at::Tensor means = at::matmul(vertices, basis.t());                  // [4, d]
  const at::Tensor y = at::arange(n, at::kLong) % C;                         // balanced, also per split
  const at::Tensor x = at::randn({n, d}, at::kDouble) + means.index_select(0, y);
  const at::Tensor x_train = x.slice(0, 0, n_train), x_test = x.slice(0, n_train);
  const at::Tensor y_train = y.slice(0, 0, n_train), y_test = y.slice(0, n_train);
  const LinearProbes p = fit_logistic(x_train, y_train);
  EXPECT_GT(accuracy(p.predict(x_test), y_test).item<double>(), 0.95);

  const at::Tensor dirs = probe_directions(p, 0);  // [d, 3]
  ASSERT_EQ(dirs.sizes(), (at::IntArrayRef{d, C - 1}));
  const ProbeIntervention ablate(dirs, InterventionMode::ablate);
  EXPECT_EQ(ablate.rank(), C - 1);
  const at::Tensor pred = p.predict(ablate.apply(x_test));  // [1, n_test]
  EXPECT_TRUE(pred.eq(pred[0][0]).all().item<bool>()) << "one class everywhere";
  EXPECT_DOUBLE_EQ(accuracy(pred, y_test).item<double>(), 1.0 / C);

  const ProbeIntervention planted(basis, InterventionMode::ablate);
  const LinearProbes q = fit_logistic(planted.apply(x_train), y_train);
  EXPECT_NEAR(accuracy(q.predict(planted.apply(x_test)), y_test).item<double>(), 1.0 / C, 0.04);

  const ProbeIntervention other(at::randn({d, C - 1}, at::kDouble), InterventionMode::ablate);
  const LinearProbes r = fit_logistic(other.apply(x_train), y_train);
  EXPECT_GT(accuracy(r.predict(other.apply(x_test)), y_test).item<double>(), 0.7);
}

TEST(ProbeIntervention, BadDirectionsAndHostsAreRefusedClearly) {
  EXPECT_THAT(error_of([] { ProbeIntervention(at::zeros({8}), InterventionMode::ablate); }),
              HasSubstr("the probe direction is zero"));
  at::Tensor nan = at::ones({8});
  nan[2] = std::nan("");
  EXPECT_THAT(error_of([&] { ProbeIntervention(nan, InterventionMode::ablate); }), HasSubstr("NaN or inf"));
  EXPECT_THAT(error_of([] { ProbeIntervention(at::ones({2, 4, 3}), InterventionMode::ablate); }),
              HasSubstr("must be [d] or [d, k]"));
  EXPECT_THAT(error_of([] { ProbeIntervention(at::randn({8, 2}), InterventionMode::steer, 1.0); }),
              HasSubstr("steering adds one direction, but 2 were given"));
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
