// Weight processing against TransformerLens 2.18's process_weights_ on the
// four runtime fixture models: tests/data/processing/processing_ref.h5, made
// by scripts/fixtures/make_processing_fixtures.py (command and layout in
// tests/data/processing/README.md).
//
// For every model and every step alone and all four together:
//  - the steps applied (TL skips center_writing_weights without LayerNorm; so
//    does mechlab with skip_inapplicable) and the norm kind left (LNPre/RMSPre);
//  - every parameter TL changed equals mechlab's (the stored slices);
//    every parameter TL left alone is bit-identical in mechlab; the
//    parameters TL removed (folded norms) are gone;
//  - every candidate activation TL changed equals mechlab's; the others equal
//    mechlab's unprocessed run; the last position's logits equal TL's.
// Tolerance: kF32Tol (tests/hooks/fixture_compare.h): normwise relative
// error max|a - b| / max|b| <= 1e-5 in float32, plus its element-wise bound. Weights are one or two elementwise float32
// operations away from the stored ones, so they agree to a few ulps (measured
// <= 2.9e-7). Activations go through a forward whose float32 rounding differs
// from TL's (fused kernels, packed QKV): measured <= 5.2e-7, so 1e-5 leaves
// room for BLAS differences between machines. The test prints its
// measurements ("[ measured ]" lines).
#include "core/formats/hdf5_file.h"
#include "core/hf/model_loader.h"
#include "core/model/weight_processing.h"
#include "hooks/hooked_transformer.h"
#include "tests/hooks/fixture_compare.h"

#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <map>
#include <string>
#include <tuple>
#include <vector>

namespace mechlab::core {
namespace {

using mechlab::testing::close;

constexpr mechlab::testing::Tolerance kTol = mechlab::testing::kF32Tol;

const std::string kData = MECHLAB_TEST_DATA;

/// Applies the fixture's [dim, start, length] narrowings (attribute "narrow").
at::Tensor narrowed(at::Tensor t, const std::string& spec_json) {
  for (const auto& d : nlohmann::json::parse(spec_json)) {
    t = t.narrow(d[0].get<int64_t>(), d[1].get<int64_t>(), d[2].get<int64_t>());
  }
  return t;
}

/// The normwise relative error `close` bounds, kept to print the largest.
double error(const at::Tensor& actual, const at::Tensor& expected) {
  const at::Tensor a = actual.detach().to(at::kCPU, at::kDouble);
  const at::Tensor e = expected.detach().to(at::kCPU, at::kDouble);
  return (a - e).abs().max().item<double>() / std::max(e.abs().max().item<double>(), 1e-6);
}

std::vector<std::string> json_strings(const std::string& text) {
  return nlohmann::json::parse(text).get<std::vector<std::string>>();
}

class AgainstTransformerLens
    : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

TEST_P(AgainstTransformerLens, WeightsAndActivationsMatch) {
  const auto& [model_name, config] = GetParam();
  const H5File ref = H5File::open_read(kData + "/processing/processing_ref.h5");
  const std::string group = model_name + "/" + config;
  ASSERT_TRUE(ref.exists(group)) << group;

  // The steps asked for, skipping (as TL) those the model cannot take.
  ProcessOptions options;
  options.skip_inapplicable(true);
  for (const auto& step : json_strings(ref.read_attr_string(group, "asked"))) {
    switch (parse_processing_step(step, "fixture")) {
      case ProcessingStep::fold_ln:
        options.fold_ln(true);
        break;
      case ProcessingStep::center_writing_weights:
        options.center_writing_weights(true);
        break;
      case ProcessingStep::center_unembed:
        options.center_unembed(true);
        break;
      case ProcessingStep::fold_value_biases:
        options.fold_value_biases(true);
        break;
    }
  }
  const std::string path = kData + "/runtime/" + model_name + ".h5";
  const Transformer plain = load_model(path);
  LoadOptions load;
  load.process(options);
  const Transformer processed = load_model(path, load);

  std::vector<std::string> applied;
  for (ProcessingStep s : processed.config().processed) applied.push_back(to_string(s));
  EXPECT_EQ(applied, json_strings(ref.read_attr_string(group, "applied")));
  const std::map<std::string, NormKind> tl_norms = {{"LN", NormKind::layernorm},
                                                    {"LNPre", NormKind::layernorm_pre},
                                                    {"RMS", NormKind::rmsnorm},
                                                    {"RMSPre", NormKind::rmsnorm_pre}};
  EXPECT_EQ(processed.config().norm,
            tl_norms.at(ref.read_attr_string(group, "normalization_type")));

  // Parameters.
  const auto tl_changed = ref.list(group + "/params");
  const auto removed = json_strings(ref.read_attr_string(group, "removed_params"));
  double weight_err = 0, act_err = 0;  // the largest, printed at the end
  std::map<std::string, at::Tensor> before;
  for (const auto& [name, t] : plain.named_parameters()) before[name] = t;
  for (const auto& [name, t] : processed.named_parameters()) {
    EXPECT_EQ(std::count(removed.begin(), removed.end(), name), 0)
        << name << " should be folded away";
    if (std::count(tl_changed.begin(), tl_changed.end(), name)) {
      const std::string ds = group + "/params/" + name;
      const at::Tensor mine = narrowed(t, ref.read_attr_string(ds, "narrow"));
      EXPECT_TRUE(close(mine, ref.read_tensor(ds), kTol, name));
      weight_err = std::max(weight_err, error(mine, ref.read_tensor(ds)));
    } else {
      ASSERT_TRUE(before.count(name)) << name << " is new";
      EXPECT_TRUE(at::equal(t, before[name])) << name << " changed; TransformerLens leaves it";
    }
  }
  const auto params = processed.named_parameters();
  for (const auto& name : tl_changed) {
    EXPECT_TRUE(
        std::any_of(params.begin(), params.end(), [&](const auto& p) { return p.first == name; }))
        << "TransformerLens has " << name << ", mechlab has not";
  }

  // Activations, on the fixture's prompt.
  const at::Tensor tokens = ref.read_tensor(model_name + "/tokens").to(at::kLong);
  const auto candidates = json_strings(ref.read_attr_string(group + "/hooks", "candidates"));
  const auto tl_hooks = ref.list(group + "/hooks");
  hooks::HookedTransformer p_model(processed), u_model(plain);
  at::InferenceMode guard;
  auto [logits, cache] = p_model.run_with_cache(tokens, hooks::NamesFilter(candidates));
  auto [u_logits, u_cache] = u_model.run_with_cache(tokens, hooks::NamesFilter(candidates));
  for (const auto& name : candidates) {
    ASSERT_TRUE(cache.contains(name)) << name;
    if (std::count(tl_hooks.begin(), tl_hooks.end(), name)) {
      const std::string ds = group + "/hooks/" + name;
      const at::Tensor mine = narrowed(cache[name], ref.read_attr_string(ds, "narrow"));
      EXPECT_TRUE(close(mine, ref.read_tensor(ds), kTol, name));
      act_err = std::max(act_err, error(mine, ref.read_tensor(ds)));
    } else {
      EXPECT_TRUE(close(cache[name], u_cache[name], kTol, name + " (unchanged in TL)"));
    }
  }
  const at::Tensor last = narrowed(logits, ref.read_attr_string(group + "/logits_last", "narrow"));
  EXPECT_TRUE(close(last, ref.read_tensor(group + "/logits_last"), kTol, "logits"));
  act_err = std::max(act_err, error(last, ref.read_tensor(group + "/logits_last")));
  std::printf("[ measured ] %-30s weights %.2e, activations and logits %.2e\n", group.c_str(),
              weight_err, act_err);
}

INSTANTIATE_TEST_SUITE_P(
    WeightProcessing, AgainstTransformerLens,
    ::testing::Combine(::testing::Values(std::string("gpt2_like"), "attn_only", "llama_like",
                                         "neox_like"),
                       ::testing::Values(std::string("fold_ln"), "center_writing_weights",
                                         "center_unembed", "fold_value_biases", "all")),
    [](const auto& info) { return std::get<0>(info.param) + "_" + std::get<1>(info.param); });

}  // namespace
}  // namespace mechlab::core
