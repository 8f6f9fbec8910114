// Attached modules (hooks/attached_module.h) through the steering vector:
// its points are hook points like the model's (cached, filtered, hooked,
// patched, refused when unknown, stored), and what it computes equals the
// same intervention written as a plain hook on the host (an independent path).
#include "core/model/presets.h"
#include "core/store/activation_store.h"
#include "hooks/activation_capture.h"
#include "hooks/hooked_transformer.h"
#include "hooks/steering_vector.h"
#include "tests/test_util.h"

#include <gmock/gmock.h>

#include <algorithm>
#include <filesystem>

namespace mechlab::hooks {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using mechlab::testing::error_of;

const char* kHost = "blocks.0.hook_resid_post";
const char* kIn = "blocks.0.hook_resid_post.steer.hook_steer_in";
const char* kOut = "blocks.0.hook_resid_post.steer.hook_steer_out";

HookedTransformer tiny_model() { return HookedTransformer(core::Transformer(core::preset("tiny"), 5)); }

at::Tensor tokens_for(const HookedTransformer& m) {
  at::manual_seed(11);
  return at::randint(0, m.cfg().d_vocab, {3, 7}, at::kLong);
}

at::Tensor direction(const HookedTransformer& m) {
  at::manual_seed(12);
  return at::randn({m.cfg().d_model});  // [d_model]
}

TEST(AttachedModule, ZeroAlphaLeavesLogitsBitForBit) {
  HookedTransformer model = tiny_model();
  const at::Tensor tokens = tokens_for(model);
  const at::Tensor clean = model.forward(tokens);
  model.attach(kHost, std::make_shared<SteeringVector>(direction(model), 0.0));
  EXPECT_TRUE(at::equal(model.forward(tokens), clean));
  // Detached, the host listens no more: the unhooked forward is back.
  model.detach(kHost, "steer");
  core::HookSite host;
  ASSERT_TRUE(core::parse_site(kHost, model.cfg().n_layers, &host));
  EXPECT_FALSE(model.hooks().listens(host));
  EXPECT_TRUE(at::equal(model.forward(tokens), clean));
}

TEST(AttachedModule, SteeringEqualsAddingTheVectorWithAHostHook) {
  HookedTransformer model = tiny_model();
  const at::Tensor tokens = tokens_for(model), v = direction(model);
  const double alpha = 3.5;
  const at::Tensor clean = model.forward(tokens);
  model.attach(kHost, std::make_shared<SteeringVector>(v, alpha));
  const at::Tensor steered = model.forward(tokens);
  model.detach(kHost, "steer");
  const at::Tensor hooked = model.run_with_hooks(
      tokens, {{kHost, [&](at::Tensor& x, const HookPoint&) { x = x + v * alpha; }}});
  EXPECT_TRUE(at::equal(steered, hooked));
  EXPECT_GT((steered - clean).abs().max().item<double>(), 1e-3);  // the vector matters
}

TEST(AttachedModule, PointsAreListedCachedAndFilteredWithTheirShapes) {
  HookedTransformer model = tiny_model();
  const at::Tensor tokens = tokens_for(model), v = direction(model);
  const double alpha = -2.0;
  model.attach(kHost, std::make_shared<SteeringVector>(v, alpha));

  const auto names = model.hook_names();
  auto host_at = std::find(names.begin(), names.end(), kHost);
  ASSERT_NE(host_at, names.end());
  ASSERT_LT(host_at + 2, names.end());
  EXPECT_EQ(*(host_at + 1), kIn);  // a module's points follow its host
  EXPECT_EQ(*(host_at + 2), kOut);

  auto [logits, by_glob] = model.run_with_cache(tokens, NamesFilter::glob("*.steer.*"));
  EXPECT_THAT(by_glob.keys(), ElementsAre(kIn, kOut));
  const auto& cfg = model.cfg();
  EXPECT_THAT(by_glob[kOut].sizes().vec(), ElementsAre(3, 7, cfg.d_model));
  EXPECT_EQ(model.hooks().hook_dims(kOut), (std::vector<core::Dim>{core::Dim::batch, core::Dim::pos,
                                                                  core::Dim::d_model}));

  // Everything: the host holds the model's activation (its hooks run before
  // the module), steer_in equals it, steer_out adds alpha * v.
  auto [logits2, all] = model.run_with_cache(tokens);
  EXPECT_TRUE(at::equal(all[kIn], all[kHost]));
  EXPECT_TRUE(at::allclose(all[kOut], all[kHost] + alpha * v, 1e-6, 1e-6));
  // Caching patterns takes the unfused attention path: equal up to rounding.
  EXPECT_TRUE(at::allclose(logits, logits2, 1e-4, 1e-5));
  // Downstream sees the steered stream.
  EXPECT_TRUE(at::equal(all["blocks.1.hook_resid_pre"], all[kOut]));

  auto [logits3, exact] = model.run_with_cache(tokens, NamesFilter({kIn}));
  EXPECT_THAT(exact.keys(), ElementsAre(kIn));
}

TEST(AttachedModule, PatchingAPointEqualsPatchingTheHostWithoutTheModule) {
  HookedTransformer model = tiny_model();
  const at::Tensor tokens = tokens_for(model);
  const at::Tensor clean = model.forward(tokens);
  auto zero = [](at::Tensor& x, const HookPoint&) { x = at::zeros_like(x); };
  model.attach(kHost, std::make_shared<SteeringVector>(direction(model), 1.5));
  const at::Tensor zeroed_point = model.run_with_hooks(tokens, {{kOut, zero}});
  model.detach(kHost, "steer");
  const at::Tensor zeroed_host = model.run_with_hooks(tokens, {{kHost, zero}});
  EXPECT_TRUE(at::equal(zeroed_point, zeroed_host));
  EXPECT_GT((zeroed_point - clean).abs().max().item<double>(), 1e-3);

  // Patching steer_in: the module adds alpha * v to whatever it is given.
  model.attach(kHost, std::make_shared<SteeringVector>(direction(model), 1.5));
  at::Tensor seen_out;
  model.run_with_hooks(tokens, {{kIn, zero}, {kOut, [&](at::Tensor& x, const HookPoint& p) {
                                                EXPECT_EQ(p.name, kOut);
                                                seen_out = x.clone();
                                              }}});
  EXPECT_TRUE(at::allclose(seen_out, (1.5 * direction(model)).expand_as(seen_out)));
}

TEST(AttachedModule, UnknownPointsAndBadAttachmentsAreRefused) {
  HookedTransformer model = tiny_model();
  const at::Tensor v = direction(model);
  auto noop = [](at::Tensor&, const HookPoint&) {};
  // Not attached yet: the point does not exist.
  EXPECT_THAT(error_of([&] { model.add_hook(kIn, noop); }),
              HasSubstr("no module attached at \"blocks.0.hook_resid_post\" declares it"));
  model.attach(kHost, std::make_shared<SteeringVector>(v, 1.0));
  const std::string bogus = std::string(kHost) + ".steer.hook_steer_mid";
  const std::string msg = error_of([&] { model.add_hook(bogus, noop); });
  EXPECT_THAT(msg, HasSubstr("unknown hook name \"" + bogus + "\""));
  EXPECT_THAT(msg, HasSubstr(kIn));  // the nearest names include the module's points
  EXPECT_THAT(error_of([&] { model.run_with_cache(tokens_for(model), NamesFilter({bogus})); }),
              HasSubstr("unknown hook name"));
  EXPECT_THAT(error_of([&] { model.attach(kHost, std::make_shared<SteeringVector>(v, 2.0)); }),
              HasSubstr("already attached"));
  EXPECT_THAT(error_of([&] { model.attach(kIn, std::make_shared<SteeringVector>(v, 2.0)); }),
              HasSubstr("modules do not nest"));
  EXPECT_THAT(error_of([&] {
                model.attach("blocks.1.attn.hook_pattern", std::make_shared<SteeringVector>(v, 1.0));
              }),
              HasSubstr("attention maps have no per-token vector"));
  EXPECT_THAT(error_of([&] {
                model.attach("blocks.1.mlp.hook_post", std::make_shared<SteeringVector>(v, 1.0));
              }),
              HasSubstr("does not fit blocks.1.mlp.hook_post [batch, pos, d_mlp]"));
  EXPECT_THAT(error_of([&] { model.detach("blocks.1.hook_resid_post", "steer"); }),
              HasSubstr("no module of that name is attached there"));
  // Detaching takes the points, and the hooks on them, away.
  model.add_hook(kOut, noop, /*permanent=*/true);
  const size_t hooks_before = model.hooks().size();
  model.detach(kHost, "steer");
  EXPECT_EQ(model.hooks().size(), hooks_before - 1);
  EXPECT_THAT(error_of([&] { model.add_hook(kOut, noop); }), HasSubstr("unknown hook name"));
}

TEST(AttachedModule, PointsGoToAnActivationStoreLikeTheModelsOwn) {
  HookedTransformer model = tiny_model();
  const at::Tensor v = direction(model);
  const double alpha = 0.75;
  model.attach(kHost, std::make_shared<SteeringVector>(v, alpha));
  core::Dataset ds;
  ds.d_vocab = model.cfg().d_vocab;
  at::manual_seed(4);
  ds.tokens = at::randint(0, ds.d_vocab, {5, 6}, at::kInt);
  const std::string path = mechlab::testing::temp_path("attached_module_test", "steer.h5");
  std::filesystem::remove(path);
  cache_activations(model, ds, path,
                    CacheOptions().hooks({"*.steer.hook_steer_out", kHost}).dtype(at::kFloat)
                        .batch_size(2).chunk_rows(8).progress(false));
  auto store = core::ActivationStore::open(path);
  ASSERT_EQ(store.num_rows(), 30);
  std::vector<std::string> stored = store.hooks();
  std::sort(stored.begin(), stored.end());
  EXPECT_THAT(stored, ElementsAre(kHost, kOut));
  // Read back: the rows are run_with_cache's, and out - host = alpha * v.
  auto [logits, cache] = model.run_with_cache(ds.tokens.to(at::kLong), NamesFilter({kOut}));
  const at::Tensor out_rows = store.rows(kOut, 0, 30);  // [rows, d_model]
  EXPECT_TRUE(at::allclose(out_rows, cache[kOut].reshape({30, -1}), 1e-6, 1e-6));
  EXPECT_TRUE(at::allclose(out_rows - store.rows(kHost, 0, 30), (alpha * v).expand({30, -1}),
                           1e-5, 1e-6));
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace mechlab::hooks
