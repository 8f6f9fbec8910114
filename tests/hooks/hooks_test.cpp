// Hook semantics: replacement, scoping, permanence, backward hooks, names.
#include "core/util/error.h"
#include "hooks/act_name.h"
#include "tests/hooks/fixture_compare.h"
#include "hooks/hooked_transformer.h"
#include "tests/test_util.h"

#include <gmock/gmock.h>

using mechlab::Error;
using mechlab::hooks::act_name;
using mechlab::hooks::HookedTransformer;
using mechlab::hooks::HookPoint;
using mechlab::hooks::HookScope;
using mechlab::hooks::NamesFilter;
using mechlab::hooks::ResidOptions;
using ::testing::HasSubstr;

namespace {

HookedTransformer small_model() {
  auto cfg = mechlab::core::ModelConfig::from_json_string(
      R"({"n_layers": 2, "d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 32, "d_vocab": 20, "n_ctx": 8})");
  return HookedTransformer(mechlab::core::Transformer(cfg, /*seed=*/3));
}

at::Tensor some_tokens() {
  return at::tensor(std::vector<int64_t>{1, 5, 7, 2, 9, 3, 3, 4, 11, 0}).view({2, 5});
}

using mechlab::testing::error_of;

TEST(ActName, MatchesTransformerLensGetActName) {
  EXPECT_EQ(act_name("resid_pre", 5), "blocks.5.hook_resid_pre");
  EXPECT_EQ(act_name("blocks.0.hook_resid_post"), "blocks.0.hook_resid_post");  // full names pass
  EXPECT_EQ(act_name("hook_embed"), "hook_embed");
  EXPECT_EQ(act_name("k6"), "blocks.6.attn.hook_k");
  EXPECT_EQ(act_name("pattern", 1), "blocks.1.attn.hook_pattern");
  EXPECT_EQ(act_name("attn", 1), "blocks.1.attn.hook_pattern");
  EXPECT_EQ(act_name("scale", 2, "ln1"), "blocks.2.ln1.hook_scale");
  EXPECT_EQ(act_name("scale4ln2"), "blocks.4.ln2.hook_scale");
  EXPECT_EQ(act_name("post", 0), "blocks.0.mlp.hook_post");
  EXPECT_EQ(act_name("mlp_out", 3), "blocks.3.hook_mlp_out");
  EXPECT_EQ(act_name("embed"), "hook_embed");
  EXPECT_EQ(act_name("scale"), "ln_final.hook_scale");
  EXPECT_THAT(error_of([] { act_name("resid_pre"); }), HasSubstr("a layer is needed"));
}

TEST(Hooks, ReplacementChangesDownstreamAndScopeRemovesIt) {
  HookedTransformer model = small_model();
  at::Tensor tokens = some_tokens();
  at::Tensor clean = model.forward(tokens);
  {
    HookScope scope(model.hooks());
    scope.add("blocks.1.hook_attn_out", [](at::Tensor& x, const HookPoint&) { x = at::zeros_like(x); });
    at::Tensor ablated = model.forward(tokens);
    EXPECT_GT((ablated - clean).abs().max().item<double>(), 1e-4);
    // Zeroing attn_out means resid_mid == resid_pre in layer 1.
    auto [logits, cache] = model.run_with_cache(tokens);
    EXPECT_TRUE(at::allclose(cache["blocks.1.hook_resid_mid"], cache["blocks.1.hook_resid_pre"]));
  }
  EXPECT_EQ(model.hooks().size(), 0u);
  EXPECT_TRUE(at::equal(model.forward(tokens), clean));
}

TEST(Hooks, RunWithHooksRemovesHooksEvenOnException) {
  HookedTransformer model = small_model();
  EXPECT_THROW(model.run_with_hooks(some_tokens(), {{"blocks.0.hook_resid_post",
                                                      [](at::Tensor& x, const HookPoint&) {
                                                        x = x.narrow(1, 0, 1);  // wrong shape
                                                      }}}),
               Error);
  EXPECT_EQ(model.hooks().size(), 0u);
}

TEST(Hooks, ShapeChangingReplacementIsRefusedWithTheHookName) {
  HookedTransformer model = small_model();
  const std::string msg = error_of([&] {
    model.run_with_hooks(some_tokens(), {{"blocks.0.mlp.hook_post", [](at::Tensor& x, const HookPoint&) {
                                            x = x.sum(-1);
                                          }}});
  });
  EXPECT_THAT(msg, HasSubstr("blocks.0.mlp.hook_post"));
  EXPECT_THAT(msg, HasSubstr("must keep the shape"));
}

TEST(Hooks, PermanentHooksSurviveResetUnlessAsked) {
  HookedTransformer model = small_model();
  int calls = 0;
  model.add_perma_hook("hook_embed", [&](at::Tensor&, const HookPoint&) { ++calls; });
  model.add_hook("hook_embed", [&](at::Tensor&, const HookPoint&) { calls += 100; });
  model.reset_hooks();
  model.forward(some_tokens());
  EXPECT_EQ(calls, 1);
  model.reset_hooks(/*including_permanent=*/true);
  model.forward(some_tokens());
  EXPECT_EQ(calls, 1);
}

TEST(Hooks, UnknownHookNameSuggestsNearestNames) {
  HookedTransformer model = small_model();
  const std::string msg =
      error_of([&] { model.add_hook("blocks.0.attn.hook_patern", [](at::Tensor&, const HookPoint&) {}); });
  EXPECT_THAT(msg, HasSubstr("unknown hook name \"blocks.0.attn.hook_patern\""));
  EXPECT_THAT(msg, HasSubstr("blocks.0.attn.hook_pattern"));
  EXPECT_THAT(error_of([&] { model.add_hook("blocks.7.hook_resid_pre", [](at::Tensor&, const HookPoint&) {}); }),
              HasSubstr("the model has 2 layers"));
  EXPECT_THAT(error_of([&] { model.add_hook("blocks.0.attn.hook_rot_q", [](at::Tensor&, const HookPoint&) {}); }),
              HasSubstr("no such hook point"));
  EXPECT_THAT(error_of([&] { model.run_with_cache(some_tokens(), NamesFilter::glob("*hook_nothing")); }),
              HasSubstr("matches no hook point"));
}

TEST(Hooks, NamesFilterKindsSelectTheRightPoints) {
  HookedTransformer model = small_model();
  auto [l1, glob] = model.run_with_cache(some_tokens(), NamesFilter::glob("blocks.*.hook_resid_post"));
  EXPECT_EQ(glob.keys(), (std::vector<std::string>{"blocks.0.hook_resid_post", "blocks.1.hook_resid_post"}));
  auto [l2, exact] = model.run_with_cache(some_tokens(), {"hook_embed", "blocks.1.attn.hook_pattern"});
  EXPECT_EQ(exact.size(), 2u);
  auto [l3, pred] = model.run_with_cache(
      some_tokens(), NamesFilter::predicate([](const std::string& n) { return n.find("ln2") != std::string::npos; }));
  EXPECT_EQ(pred.size(), 4u);
  auto [l4, all] = model.run_with_cache(some_tokens());
  EXPECT_FALSE(all.contains("blocks.0.attn.hook_result"));  // opt-in: only when named
  EXPECT_TRUE(all.contains("blocks.0.attn.hook_pattern"));
}

TEST(Hooks, BackwardHookSeesAndReplacesTheGradient) {
  HookedTransformer model = small_model();
  at::Tensor tokens = some_tokens();
  at::Tensor seen;
  // Gradient of the loss w.r.t. resid_mid of layer 0, and its effect on the embedding's gradient.
  auto loss_and_embed_grad = [&](bool zero_it) {
    at::Tensor embed_grad;
    HookScope scope(model.hooks());
    scope.add("hook_embed", [&](at::Tensor& x, const HookPoint&) {
      x = x.detach().requires_grad_(true);
      x.register_hook([&embed_grad](at::Tensor g) { embed_grad = g; return g; });
    });
    scope.add_backward("blocks.0.hook_resid_post", [&, zero_it](at::Tensor& g, const HookPoint&) {
      seen = g.clone();
      if (zero_it) g = at::zeros_like(g);
    });
    at::Tensor loss = mechlab::core::mean_loss(model.forward(tokens), tokens);
    loss.backward();
    return embed_grad;
  };
  at::Tensor normal = loss_and_embed_grad(false);
  ASSERT_TRUE(seen.defined());
  EXPECT_GT(seen.abs().max().item<double>(), 0.0);
  EXPECT_EQ(seen.sizes(), (std::vector<int64_t>{2, 5, 16}));
  // Zeroing the gradient at resid_post of layer 0 cuts every path from the loss to the embedding.
  at::Tensor cut = loss_and_embed_grad(true);
  EXPECT_GT(normal.abs().max().item<double>(), 0.0);
  EXPECT_EQ(cut.abs().max().item<double>(), 0.0);
}

TEST(Hooks, DecomposeResidSumsToResidPost) {
  HookedTransformer model = small_model();
  auto [logits, cache] = model.run_with_cache(some_tokens());
  at::Tensor sum = cache.decompose_resid().tensor.sum(0);
  EXPECT_TRUE(mechlab::testing::close(sum, cache["blocks.1.hook_resid_post"], 1e-5, "sum of components"));
  auto acc = cache.accumulated_resid();
  EXPECT_EQ(acc.labels, (std::vector<std::string>{"0_pre", "1_pre", "final_post"}));
  EXPECT_TRUE(at::equal(acc.tensor[1], cache["blocks.1.hook_resid_pre"]));
  // Head results plus the output bias add up to attn_out.
  auto heads = cache.stack_head_results();
  at::Tensor layer1 = heads.tensor.narrow(0, 2, 2).sum(0) + model.model().weights().blocks[1].b_O;
  EXPECT_TRUE(mechlab::testing::close(layer1, cache["blocks.1.hook_attn_out"], 1e-5, "heads sum"));
  // An option the helper does not take is refused, not ignored.
  EXPECT_THAT(mechlab::testing::error_of([&] { cache.decompose_resid(ResidOptions().incl_mid(true)); }),
              ::testing::HasSubstr("decompose_resid does not take the option incl_mid; it takes: "
                                   "layer, mlp_input, mode, apply_ln, pos, incl_embeds"));
  // One position drops the pos axis: [component, batch, d_model].
  EXPECT_EQ(cache.decompose_resid(ResidOptions().pos(-1)).tensor.dim(), 3);
}

}  // namespace
