// Transformer runtime: input checks, checkpoints, config, dtypes, layer ranges.
// (Numerical agreement with TransformerLens: tests/hooks/transformerlens_test.cpp.)
#include "core/model/checkpoint.h"
#include "core/util/error.h"
#include "core/formats/hdf5_file.h"
#include "core/model/presets.h"
#include "core/model/transformer.h"
#include "tests/test_util.h"

#include <ATen/ATen.h>
#include <cmath>
#include <limits>
#include <gmock/gmock.h>

#include <nlohmann/json.hpp>

using mechlab::Error;
using mechlab::core::ForwardOptions;
using mechlab::core::ModelConfig;
using mechlab::core::Transformer;
using ::testing::AllOf;
using ::testing::HasSubstr;

namespace {

using mechlab::testing::error_of;

std::string temp_path(const std::string& name) {
  return mechlab::testing::temp_path("transformer_test", name);
}

double rel_err(const at::Tensor& a, const at::Tensor& b) {
  return ((a.to(at::kDouble) - b.to(at::kDouble)).abs().max() / b.to(at::kDouble).abs().max()).item<double>();
}

TEST(ModelConfig, JsonRoundTripKeepsEveryField) {
  for (const auto& name : mechlab::core::preset_names()) {
    ModelConfig c = mechlab::core::preset(name);
    c.attn_scale = 3.5;
    ModelConfig back = ModelConfig::from_json_string(c.to_json_string());
    EXPECT_EQ(back.to_json(), c.to_json()) << name;
    EXPECT_EQ(back.hash(), c.hash());
  }
}

TEST(ModelConfig, BadValuesAreRefusedByName) {
  EXPECT_THAT(error_of([] { ModelConfig::from_json_string(R"({"n_layers": 1})"); }),
              HasSubstr("missing required key \"d_model\""));
  const std::string base = R"("n_layers": 1, "d_model": 8, "n_heads": 2, "d_head": 4, "d_mlp": 8, "d_vocab": 5, "n_ctx": 4)";
  EXPECT_THAT(error_of([&] { ModelConfig::from_json_string("{" + base + R"(, "norm": "batchnorm"})"); }),
              HasSubstr("expected one of: layernorm, rmsnorm, none"));
  EXPECT_THAT(error_of([&] { ModelConfig::from_json_string("{" + base + R"(, "n_kv_heads": 3})"); }),
              HasSubstr("multiple of n_kv_heads"));
  EXPECT_THAT(error_of([&] { ModelConfig::from_json_string("{" + base + R"(, "dmodel": 3})"); }),
              HasSubstr("unknown key \"dmodel\""));
  EXPECT_THAT(error_of([&] { ModelConfig::from_json_string("{" + base + R"(, "d_vocab": "x"})"); }),
              HasSubstr("\"d_vocab\" must be a number"));
  EXPECT_THAT(error_of([] { ModelConfig::from_json_string("{not json"); }), HasSubstr("not valid JSON"));
}

TEST(ModelConfig, OutOfRangeNumbersAreRefusedNotWrapped) {
  // Before: integers wrapped modulo 2^32 (n_layers 4294967297 loaded as 1),
  // and Inf or absurd floats passed.
  const std::string base = R"("d_model": 8, "n_heads": 2, "d_head": 4, "d_mlp": 8, "d_vocab": 5, "n_ctx": 4)";
  auto refusal = [&](const std::string& extra) {
    return error_of([&] { ModelConfig::from_json_string("{" + base + ", " + extra + "}"); });
  };
  EXPECT_THAT(refusal(R"("n_layers": 4294967297)"),
              HasSubstr("config: \"n_layers\" must be at most 2147483647, got 4294967297"));
  EXPECT_THAT(refusal(R"("n_layers": 4294967297.0)"),
              HasSubstr("\"n_layers\" must be at most 2147483647"));
  EXPECT_THAT(refusal(R"("n_layers": 18446744073709551615)"),
              HasSubstr("\"n_layers\" must be at most 2147483647"));
  EXPECT_THAT(refusal(R"("n_layers": 1, "n_kv_heads": -4294967294)"),
              HasSubstr("\"n_kv_heads\" must be >= 0, got -4294967294"));
  EXPECT_THAT(refusal(R"("n_layers": 0)"), HasSubstr("\"n_layers\" must be > 0, got 0"));
  EXPECT_THAT(refusal(R"("n_layers": 1, "positional": "rotary", "rotary_dim": -2)"),
              HasSubstr("\"rotary_dim\" must be >= 0 (0 means d_head), got -2"));
  EXPECT_THAT(refusal(R"("n_layers": 1, "norm_eps": 0)"), HasSubstr("\"norm_eps\" must be > 0, got 0"));
  EXPECT_THAT(refusal(R"("n_layers": 1, "norm_eps": 1e5)"),
              HasSubstr("\"norm_eps\" must be at most 1, got 100000"));
  // A number beyond double is a JSON error, not an escaping nlohmann exception.
  EXPECT_THAT(refusal(R"("n_layers": 1, "norm_eps": 1e999)"),
              HasSubstr("config is not valid JSON: [json.exception.out_of_range.406]"));
  // JSON cannot spell Inf or NaN, but a config built in code (or by the
  // Hugging Face reader) can hold them.
  const double inf = std::numeric_limits<double>::infinity();
  ModelConfig c = mechlab::core::preset("llama-tiny");
  c.norm_eps = inf;
  EXPECT_THAT(error_of([&] { c.validate(); }), HasSubstr("\"norm_eps\" must be > 0, got inf"));
  c = mechlab::core::preset("llama-tiny");
  c.norm_eps = std::nan("");
  EXPECT_THAT(error_of([&] { c.validate(); }), HasSubstr("\"norm_eps\" must be > 0, got nan"));
  c = mechlab::core::preset("llama-tiny");
  c.rotary_base = inf;
  EXPECT_THAT(error_of([&] { c.validate(); }),
              HasSubstr("\"rotary_base\" must be finite and > 0, got inf"));
  c = mechlab::core::preset("llama-tiny");
  c.attn_scale = inf;
  EXPECT_THAT(error_of([&] { c.validate(); }),
              HasSubstr("\"attn_scale\" must be finite and > 0, got inf"));
  // Each size fits an int, but together they need zettabytes: refused before
  // anything is allocated, with the size it would need.
  const std::string huge = R"({"n_layers": 2000000000, "d_model": 65536, "n_heads": 1024, "d_head": 64, "d_mlp": 262144, "d_vocab": 1000000, "n_ctx": 4})";
  EXPECT_THAT(error_of([&] { ModelConfig::from_json_string(huge); }),
              AllOf(HasSubstr("config: the model needs about 2.1e+11 GB"),
                    HasSubstr("more than this machine's")));
  c = mechlab::core::preset("attn-only-2l");
  c.n_layers = 100000, c.d_model = 100000, c.d_head = 25000;
  EXPECT_THAT(error_of([&] { Transformer model(c, 0); }), HasSubstr("the model needs about 8e+06 GB for its 4e+15 parameters"));
}

TEST(ModelConfig, RopeScalingRoundTripsAndIsValidated) {
  using mechlab::core::RopeScaling;
  using mechlab::core::RopeScalingKind;
  const ModelConfig plain = mechlab::core::preset("llama-tiny");
  EXPECT_FALSE(plain.to_json().contains("rope_scaling"));  // unset: hashes stay as they were
  ModelConfig llama3 = plain;
  llama3.rope_scaling = RopeScaling{RopeScalingKind::llama3, 8.0, 1.0, 4.0, 64};
  ModelConfig back = ModelConfig::from_json_string(llama3.to_json_string());
  ASSERT_TRUE(back.rope_scaling.has_value());
  EXPECT_EQ(back.rope_scaling->kind, RopeScalingKind::llama3);
  EXPECT_EQ(back.rope_scaling->original_max_position_embeddings, 64);
  EXPECT_EQ(back.to_json(), llama3.to_json());
  EXPECT_NE(back.hash(), plain.hash());
  ModelConfig linear = plain;
  linear.rope_scaling = RopeScaling{RopeScalingKind::linear, 2.0, 1.0, 4.0, 0};
  EXPECT_EQ(linear.to_json()["rope_scaling"],
            nlohmann::json({{"kind", "linear"}, {"factor", 2.0}}));
  EXPECT_EQ(ModelConfig::from_json_string(linear.to_json_string()).to_json(), linear.to_json());

  auto refusal = [&](const nlohmann::json& scaling, const std::string& positional = "rotary") {
    nlohmann::json j = plain.to_json();
    j["rope_scaling"] = scaling;
    j["positional"] = positional;
    return error_of([&] { ModelConfig::from_json(j); });
  };
  const nlohmann::json good = llama3.to_json()["rope_scaling"];
  nlohmann::json bad = good;
  bad["factor"] = 0.0;
  EXPECT_THAT(refusal(bad), HasSubstr("config: rope_scaling factor must be positive, got 0"));
  bad = good;
  bad["low_freq_factor"] = 5.0;
  EXPECT_THAT(refusal(bad),
              HasSubstr("high_freq_factor (4) must be greater than low_freq_factor (5)"));
  bad = good;
  bad["original_max_position_embeddings"] = 0;
  EXPECT_THAT(refusal(bad), HasSubstr("original_max_position_embeddings must be positive, got 0"));
  bad = good;
  bad.erase("high_freq_factor");
  EXPECT_THAT(refusal(bad), HasSubstr("llama3 \"rope_scaling\" needs \"high_freq_factor\""));
  bad = good;
  bad["kind"] = "yarn";
  EXPECT_THAT(refusal(bad),
              HasSubstr("\"rope_scaling.kind\" is \"yarn\"; expected one of: linear, llama3"));
  EXPECT_THAT(refusal({{"kind", "linear"}, {"factor", 2.0}, {"low_freq_factor", 1.0}}),
              HasSubstr("of kind linear has an unknown key \"low_freq_factor\""));
  EXPECT_THAT(refusal(good, "learned"), HasSubstr("rope_scaling needs rotary positions"));
}

TEST(Transformer, ParameterCountMatchesTheTensors) {
  for (const auto& name : mechlab::core::preset_names()) {
    if (name == "gpt2-small") continue;
    Transformer m(mechlab::core::preset(name));
    int64_t n = 0;
    for (const auto& [k, t] : m.named_parameters()) n += t.numel();
    EXPECT_EQ(n, m.config().parameter_count()) << name;
  }
  // Hugging Face's gpt2 (tied embeddings, no unembedding bias) has 124,439,808
  // parameters; mechlab adds b_U [d_vocab].
  ModelConfig gpt2 = mechlab::core::preset("gpt2-small");
  gpt2.tied_embeddings = true;
  EXPECT_EQ(gpt2.parameter_count() - gpt2.d_vocab, 124439808);
}

TEST(Transformer, BadTokensAreRefusedWithClearMessages) {
  Transformer m(mechlab::core::preset("tiny"));
  EXPECT_THAT(error_of([&] { m.forward(at::ones({1, 4}, at::kFloat)); }), HasSubstr("int64 or int32"));
  EXPECT_THAT(error_of([&] { m.forward(at::ones({1, 2, 4}, at::kLong)); }), HasSubstr("[batch, pos]"));
  EXPECT_THAT(error_of([&] { m.forward(at::tensor(std::vector<int64_t>{1, 512}).view({1, 2})); }),
              HasSubstr("token id 512 is out of range: d_vocab is 512"));
  EXPECT_THAT(error_of([&] { m.forward(at::tensor(std::vector<int64_t>{1, -3}).view({1, 2})); }), HasSubstr("negative"));
  EXPECT_THAT(error_of([&] { m.forward(at::zeros({1, 129}, at::kLong)); }),
              HasSubstr("longer than the model's n_ctx = 128"));
  ForwardOptions bad_mask;
  bad_mask.attention_mask(at::ones({1, 3}, at::kLong));
  EXPECT_THAT(error_of([&] { m.forward(at::zeros({1, 4}, at::kLong), bad_mask); }),
              HasSubstr("attention_mask must have shape"));
  // Values other than 0/1 would read as "real token" through ne(0); refused
  // as the dataset loader refuses them.
  ForwardOptions two;
  two.attention_mask(at::tensor(std::vector<int64_t>{1, 1, 2, 0}).view({1, 4}));
  EXPECT_THAT(error_of([&] { m.forward(at::zeros({1, 4}, at::kLong), two); }),
              HasSubstr("attention_mask must hold only 0 (padding) and 1 (real token); found 2 at [0, 2]"));
  ForwardOptions negative;
  negative.attention_mask(at::tensor(std::vector<int>{1, 1, 1, -1}).view({1, 4}));
  EXPECT_THAT(error_of([&] { m.forward(at::zeros({1, 4}, at::kLong), negative); }),
              HasSubstr("found -1 at [0, 3]"));
  ForwardOptions boolean;  // bool masks are 0/1 by type
  boolean.attention_mask(at::ones({1, 4}, at::kBool));
  EXPECT_EQ(m.forward(at::zeros({1, 4}, at::kLong), boolean).size(1), 4);
}

TEST(Transformer, CheckpointRoundTripAndBadCheckpoints) {
  Transformer m(mechlab::core::preset("llama-tiny"), 7);
  const std::string path = temp_path("llama.h5");
  m.save(path);
  Transformer back = Transformer::load(path);
  at::Tensor tokens = at::arange(10, at::kLong).unsqueeze(0);
  EXPECT_TRUE(at::equal(back.forward(tokens), m.forward(tokens)));

  // Missing and mis-shaped tensors are named.
  auto params = m.named_parameters();
  auto without = params;
  without.erase(without.begin() + 3);
  mechlab::core::save_checkpoint(temp_path("missing.h5"), m.config(), without);
  EXPECT_THAT(error_of([&] { Transformer::load(temp_path("missing.h5")); }),
              HasSubstr("parameter \"" + params[3].first + "\" is missing"));
  auto misshaped = params;
  misshaped[5].second = at::zeros({3, 3});
  mechlab::core::save_checkpoint(temp_path("misshaped.h5"), m.config(), misshaped);
  const std::string msg = error_of([&] { Transformer::load(temp_path("misshaped.h5")); });
  EXPECT_THAT(msg, HasSubstr("parameter \"" + params[5].first + "\" has shape [3, 3]"));
  EXPECT_THAT(msg, HasSubstr("misshaped.h5"));
}

TEST(Transformer, ParametersOfTheModelsDtypeBecomeItsWeightsWithoutACopy) {
  // Transformer::load relies on this: the checkpoint's tensors are the model's
  // weights, so loading holds one model in memory, not two.
  Transformer m(mechlab::core::preset("llama-tiny"), 3);
  auto params = m.named_parameters();
  for (auto& [name, t] : params) t = t.clone();
  Transformer loaded(m.config(), mechlab::core::weights_from_params(m.config(), params, at::kFloat));
  const auto named = loaded.named_parameters();
  ASSERT_EQ(named.size(), params.size());
  for (size_t i = 0; i < named.size(); ++i) {
    EXPECT_EQ(named[i].second.data_ptr(), params[i].second.data_ptr()) << named[i].first;
  }
  // Another dtype is converted (a copy), and the values survive.
  auto half = mechlab::core::weights_from_params(m.config(), params, at::kBFloat16);
  EXPECT_EQ(half.W_E.scalar_type(), at::kBFloat16);
  EXPECT_TRUE(at::allclose(half.W_E.to(at::kFloat), params[0].second, 1e-2, 1e-2));
}

TEST(Transformer, TiedEmbeddingsEqualAnUntiedCopy) {
  ModelConfig tied = mechlab::core::preset("tiny");
  tied.tied_embeddings = true;
  Transformer a(tied, 1);
  ModelConfig untied = tied;
  untied.tied_embeddings = false;
  auto params = a.named_parameters();
  params.emplace_back("unembed.W_U", a.weights().W_E.t().contiguous());
  Transformer b(untied, 2);
  b.load_parameters(params);
  at::Tensor tokens = at::arange(12, at::kLong).view({2, 6});
  EXPECT_TRUE(at::allclose(a.forward(tokens), b.forward(tokens), 1e-5, 1e-6));
}

TEST(Transformer, HalfPrecisionForwardsStayCloseToFloat32) {
  // bf16 keeps 8 mantissa bits: a few 1e-2 relative error after 2 layers;
  // f16 keeps 11: a few 1e-3. Tolerances are 3x what was measured.
  for (const auto& name : {"tiny", "llama-tiny", "neox-tiny"}) {
    Transformer ref(mechlab::core::preset(name), 5);
    at::Tensor tokens = at::randint(512, {2, 16}, at::kLong);
    at::Tensor logits = ref.forward(tokens);
    Transformer bf = ref;
    bf.to(at::kBFloat16);
    EXPECT_LT(rel_err(bf.forward(tokens), logits), 6e-2) << name;
    Transformer h = ref;
    h.to(at::kHalf);
    EXPECT_LT(rel_err(h.forward(tokens), logits), 1e-2) << name;
  }
}

TEST(Transformer, StartAndStopAtLayerComposeToTheFullForward) {
  Transformer m(mechlab::core::preset("neox-tiny"), 9);
  at::Tensor tokens = at::randint(512, {2, 8}, at::kLong);
  ForwardOptions first;
  first.stop_at_layer(1);
  at::Tensor resid = m.forward(tokens, first);
  EXPECT_EQ(resid.sizes(), (std::vector<int64_t>{2, 8, 64}));
  ForwardOptions rest;
  rest.start_at_layer(1);
  EXPECT_TRUE(at::allclose(m.forward(resid, rest), m.forward(tokens), 1e-5, 1e-6));
  EXPECT_THAT(error_of([&] { m.forward(tokens, [] { ForwardOptions o; o.stop_at_layer(5); return o; }()); }),
              HasSubstr("stop_at_layer = 5"));
}

TEST(Transformer, WeightsMadeUnderInferenceModeWork) {
  at::InferenceMode guard;  // weights become inference tensors (no version counter)
  Transformer m(mechlab::core::preset("tiny"), 2);
  m.to(at::kDouble);
  at::Tensor tokens = at::arange(6, at::kLong).unsqueeze(0);
  EXPECT_TRUE(at::equal(m.forward(tokens), m.forward(tokens)));
}

TEST(Transformer, RightPaddingLeavesRealTokensUnchanged) {
  Transformer m(mechlab::core::preset("llama-tiny"), 4);
  at::Tensor tokens = at::randint(512, {1, 6}, at::kLong);
  at::Tensor padded = at::cat({tokens, at::zeros({1, 3}, at::kLong)}, 1);
  ForwardOptions opts;
  opts.attention_mask(at::cat({at::ones({1, 6}, at::kLong), at::zeros({1, 3}, at::kLong)}, 1));
  at::Tensor a = m.forward(tokens);
  at::Tensor b = m.forward(padded, opts).narrow(1, 0, 6);
  EXPECT_TRUE(at::allclose(a, b, 1e-5, 1e-6));
}

}  // namespace
