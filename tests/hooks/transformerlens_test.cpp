// Differential tests against TransformerLens 2.18 HookedTransformer.
// Fixtures: tests/data/runtime/*.h5, made by scripts/fixtures/make_runtime_fixtures.py
// (see tests/data/runtime/README.md for the command and the layout).
// Tolerance: kF32Tol, float32 normwise relative error <= 1e-5 plus an
// element-wise bound (fixture_compare.h).
#include "core/formats/hdf5_file.h"
#include "core/util/error.h"
#include "tests/test_util.h"
#include "tests/hooks/fixture_compare.h"
#include "hooks/hooked_transformer.h"

#include <nlohmann/json.hpp>

#include <cstdio>

using mechlab::core::H5File;
using mechlab::hooks::HookedTransformer;
using mechlab::hooks::NamesFilter;
using mechlab::hooks::PosSlice;
using mechlab::hooks::ResidOptions;
using mechlab::testing::close;

namespace {

constexpr mechlab::testing::Tolerance kTol = mechlab::testing::kF32Tol;

std::string fixture(const std::string& name) {
  return std::string(MECHLAB_TEST_DATA) + "/runtime/" + name + ".h5";
}

// A group a fixture must hold. Its sub-check used to be skipped when the group
// was missing (an old or partly written fixture), so the test passed having
// checked less; now a missing group fails, naming it and the fix.
void require_group(const H5File& file, const std::string& fixture_path, const std::string& group) {
  MECHLAB_CHECK(file.exists(group), "fixture '", fixture_path, "' has no group '", group,
                "': regenerate it (tests/data/runtime/README.md)");
}

class TransformerLensFixture : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    file_ = std::make_unique<H5File>(H5File::open_read(fixture(GetParam())));
    model_ = std::make_unique<HookedTransformer>(HookedTransformer::load(fixture(GetParam())));
  }
  at::Tensor ref(const std::string& path) { return file_->read_tensor("reference/" + path); }
  std::unique_ptr<H5File> file_;
  std::unique_ptr<HookedTransformer> model_;
};

TEST_P(TransformerLensFixture, EveryHookAndLogitsMatch) {
  at::Tensor tokens = ref("tokens");
  auto [logits, cache] = model_->run_with_cache(tokens);
  EXPECT_TRUE(close(logits, ref("logits"), kTol, "logits"));
  const auto tl_names = file_->list("reference/hooks");
  for (const auto& name : tl_names) {
    ASSERT_TRUE(cache.contains(name)) << "mechlab has no hook " << name;
    EXPECT_TRUE(close(cache[name], ref("hooks/" + name), kTol, name));
  }
  // And no hook point of ours (opt-in aside) is missing from TransformerLens.
  for (const auto& name : cache.keys()) {
    if (name.find("hook_result") != std::string::npos || name.find("_input") != std::string::npos ||
        name.find("hook_mlp_in") != std::string::npos) {
      continue;
    }
    EXPECT_NE(std::find(tl_names.begin(), tl_names.end(), name), tl_names.end())
        << name << " is not a TransformerLens hook of this model";
  }
}

TEST_P(TransformerLensFixture, LossMatches) {
  at::Tensor tokens = ref("tokens");
  at::Tensor logits = model_->forward(tokens);
  EXPECT_TRUE(close(mechlab::core::loss_per_token(logits, tokens), ref("loss_per_token"), kTol, "loss_per_token"));
  EXPECT_TRUE(close(mechlab::core::mean_loss(logits, tokens), ref("loss"), kTol, "loss"));
}

TEST_P(TransformerLensFixture, FusedAttentionEqualsMaterialised) {
  at::Tensor tokens = ref("tokens");
  at::Tensor fused = model_->forward(tokens);
  mechlab::hooks::RunOptions opts;
  opts.materialise_attention(true);
  EXPECT_TRUE(close(fused, model_->forward(tokens, opts), 1e-5, "fused vs materialised"));
}

TEST_P(TransformerLensFixture, OptInHooksMatch) {
  at::Tensor tokens = ref("tokens");
  const auto names = file_->list("reference/opt_in_hooks");
  ASSERT_FALSE(names.empty());
  auto [logits, cache] = model_->run_with_cache(tokens, NamesFilter(names));
  EXPECT_TRUE(close(logits, ref("logits"), kTol, "logits with opt-in hooks"));
  for (const auto& name : names) {
    EXPECT_TRUE(close(cache[name], ref("opt_in_hooks/" + name), kTol, name));
  }
  // In split mode ln1 runs per q/k/v input; the cache keeps the last (v) call.
  // make_runtime_fixtures.py writes the group for every model.
  require_group(*file_, fixture(GetParam()), "reference/opt_in_hooks_ln1");
  {
    std::vector<std::string> ln1 = file_->list("reference/opt_in_hooks_ln1");
    std::vector<std::string> all = names;
    all.insert(all.end(), ln1.begin(), ln1.end());
    auto [l2, c2] = model_->run_with_cache(tokens, NamesFilter(all));
    for (const auto& name : ln1) {
      EXPECT_TRUE(close(c2[name], ref("opt_in_hooks_ln1/" + name), kTol, "split-mode " + name));
    }
  }
}

TEST_P(TransformerLensFixture, LeftPaddedBatchMatches) {
  at::Tensor tokens = ref("padded/tokens");
  mechlab::hooks::RunOptions opts;
  opts.attention_mask(ref("padded/attention_mask"));
  auto [logits, cache] = model_->run_with_cache(tokens, {}, opts);
  EXPECT_TRUE(close(logits, ref("padded/logits"), kTol, "padded logits"));
  for (const auto& name : file_->list("reference/padded/hooks")) {
    ASSERT_TRUE(cache.contains(name)) << name;
    EXPECT_TRUE(close(cache[name], ref("padded/hooks/" + name), kTol, "padded " + name));
  }
  EXPECT_TRUE(close(mechlab::core::mean_loss(logits, tokens, opts.attention_mask()), ref("padded/loss"), kTol, "padded loss"));
  // The SDPA path with padding agrees with the materialised one.
  EXPECT_TRUE(close(model_->forward(tokens, opts), logits, 1e-5, "padded fused vs materialised"));
}

std::vector<std::string> labels(H5File& f, const std::string& path) {
  return nlohmann::json::parse(f.read_attr_string("reference/cache/" + path, "labels"))
      .get<std::vector<std::string>>();
}

TEST_P(TransformerLensFixture, CacheHelpersMatch) {
  at::Tensor tokens = ref("tokens");
  auto [logits, cache] = model_->run_with_cache(tokens);
  const bool has_mid = model_->cfg().has_mlp() && !model_->cfg().parallel_attn_mlp;

  auto check = [&](const mechlab::hooks::Stack& s, const std::string& name) {
    EXPECT_TRUE(close(s.tensor, ref("cache/" + name), kTol, name));
    EXPECT_EQ(s.labels, labels(*file_, name)) << name;
  };
  check(cache.accumulated_resid(), "accumulated_resid");
  if (has_mid) {
    check(cache.accumulated_resid(ResidOptions().incl_mid(true).apply_ln(true)), "accumulated_resid_mid_ln");
  } else {
    check(cache.accumulated_resid(ResidOptions().apply_ln(true)), "accumulated_resid_ln");
  }
  check(cache.decompose_resid(), "decompose_resid");
  check(cache.decompose_resid(ResidOptions().apply_ln(true)), "decompose_resid_ln");
  check(cache.stack_head_results(), "stack_head_results");
  check(cache.stack_head_results(ResidOptions().apply_ln(true)), "stack_head_results_ln");

  at::Tensor stack = cache.accumulated_resid().tensor;
  EXPECT_TRUE(close(cache.apply_ln_to_stack(stack), ref("cache/apply_ln_to_stack"), kTol, "apply_ln_to_stack"));
  at::Tensor last = cache.accumulated_resid(ResidOptions().layer(1).pos(-1)).tensor;
  EXPECT_TRUE(close(cache.apply_ln_to_stack(last, ResidOptions().layer(1).pos(-1)),
                    ref("cache/apply_ln_to_stack_layer1_last"), kTol, "apply_ln_to_stack layer 1"));
  // Written for every model with an MLP (TL has no MLP input otherwise).
  if (model_->cfg().has_mlp()) {
    require_group(*file_, fixture(GetParam()), "reference/cache/apply_ln_to_stack_layer1_mlp_last");
    at::Tensor mlp_in = cache.decompose_resid(ResidOptions().layer(1).mlp_input(true).pos(-1)).tensor;
    EXPECT_TRUE(close(cache.apply_ln_to_stack(mlp_in, ResidOptions().layer(1).mlp_input(true).pos(-1)),
                      ref("cache/apply_ln_to_stack_layer1_mlp_last"), kTol, "apply_ln_to_stack mlp"));
  }
  at::Tensor resid_last = cache.decompose_resid(ResidOptions().pos(-1)).tensor;
  EXPECT_TRUE(close(cache.logit_attrs(resid_last, ref("cache/logit_attrs_tokens"),
                                      ref("cache/logit_attrs_incorrect_tokens"), PosSlice(-1)),
                    ref("cache/logit_attrs"), kTol, "logit_attrs"));
}

TEST(TransformerLensFixtureFile, AMissingGroupIsRefusedNotSkipped) {
  const std::string path = ::testing::TempDir() + "mechlab_tl_fixture_missing_group.h5";
  {
    H5File f = H5File::create(path);
    f.write_tensor("reference/tokens", at::zeros({1, 2}, at::kInt));
    f.close();
  }
  const H5File f = H5File::open_read(path);
  require_group(f, path, "reference/tokens");  // present: no error
  EXPECT_EQ(mechlab::testing::error_of([&] { require_group(f, path, "reference/opt_in_hooks_ln1"); }),
            "fixture '" + path + "' has no group 'reference/opt_in_hooks_ln1': regenerate it "
            "(tests/data/runtime/README.md)");
  std::remove(path.c_str());
}

INSTANTIATE_TEST_SUITE_P(Models, TransformerLensFixture,
                         ::testing::Values("gpt2_like", "attn_only", "llama_like", "neox_like"));

}  // namespace
