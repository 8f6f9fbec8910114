// Hugging Face model folders against transformers' own outputs
// (tests/data/hf/, made by scripts/fixtures/make_hf_fixtures.py).
//
// Tolerances (normwise relative error max|a - b| / max|b|, see
// tests/hooks/fixture_compare.h and tests/data/hf/README.md):
//  - float32: kF32Tol (1e-5 normwise plus an element-wise bound, see
//    fixture_compare.h; measured <= 5.1e-7).
//  - half-precision files loaded as float32: kF32Tol against transformers'
//    float32 forward on the same stored weights, so the BF16/F16 decoding is
//    exact.
//  - bfloat16 forward vs transformers' bfloat16 forward: 4e-2. bfloat16 keeps
//    8 significant bits (relative rounding 2^-9 = 2e-3 per operation); both
//    implementations round after every matmul, norm and residual add, but at
//    different points (mechlab packs QKV into one GEMM, computes norm
//    statistics and attention scores in float32, uses fused attention), so
//    each side is a different chain of ~10 roundings per layer away from the
//    exact result. Measured: 1.25e-2 on llama_bf16, the same size as
//    transformers' own bfloat16-vs-float32 difference on that model (1.08e-2);
//    4e-2 is ~3x the measurement.
//  - float16 forward vs transformers' float16: 6e-3 (11 significant bits,
//    2^-12 = 2.4e-4 per rounding). Measured: 2.0e-3 on qwen2_f16 (transformers'
//    own float16-vs-float32: 1.05e-3); 6e-3 is 3x.
// Rotary inverse frequencies after rope_scaling: 1e-6 elementwise relative
// against transformers' float32 computation (float32 rounding, 6e-8, over a
// pow, a division and the llama3 blend; measured 6.4e-8 and 4.8e-8).
// The test prints each measured error ("[ measured ]" lines).
#include "core/formats/hdf5_file.h"
#include "core/hf/hf_model.h"
#include "core/model/layers/rotary.h"
#include "core/hf/model_loader.h"
#include "tests/hooks/fixture_compare.h"
#include "tests/test_util.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <cstdio>
#include <string>

namespace mechlab::core {
namespace {

using ::testing::HasSubstr;
using mechlab::testing::close;
using mechlab::testing::error_of;

using mechlab::testing::kF32Tol;
constexpr double kBf16Tol = 4e-2;
constexpr double kF16Tol = 6e-3;

/// The normwise relative error `close` bounds, printed so that the README's
/// "measured" figures can be checked on any machine.
double measured(const at::Tensor& actual, const at::Tensor& expected, const std::string& what) {
  const at::Tensor a = actual.detach().to(at::kCPU, at::kDouble);
  const at::Tensor e = expected.detach().to(at::kCPU, at::kDouble);
  const double err = (a - e).abs().max().item<double>() / std::max(e.abs().max().item<double>(), 1e-6);
  std::printf("[ measured ] %-28s relative error %.2e\n", what.c_str(), err);
  return err;
}

std::string folder(const std::string& name) { return std::string(MECHLAB_TEST_DATA) + "/hf/" + name; }

struct Reference {
  at::Tensor tokens;         // [batch, pos] int64
  at::Tensor logits;         // [batch, pos, d_vocab], HF in the stored dtype
  at::Tensor logits_f32;     // same, HF in float32 (half-precision fixtures only)
  at::Tensor hidden_states;  // [n_layers + 1, batch, pos, d_model], HF in float32
};

Reference reference(const std::string& name) {
  H5File f = H5File::open_read(folder(name + ".ref.h5"));
  Reference r;
  r.tokens = f.read_tensor("tokens");
  r.logits = f.read_tensor("logits");
  if (f.exists("logits_f32")) r.logits_f32 = f.read_tensor("logits_f32");
  r.hidden_states = f.read_tensor("hidden_states");
  return r;
}

/// Logits and every hidden state of a float32 load against transformers.
void check_float32(const std::string& name) {
  SCOPED_TRACE(name);
  const Reference ref = reference(name);
  const Transformer model = load_model(folder(name), LoadOptions().dtype(at::kFloat));
  const ModelConfig& cfg = model.config();
  ASSERT_EQ(model.dtype(), at::kFloat);
  at::InferenceMode guard;
  const at::Tensor expected = ref.logits_f32.defined() ? ref.logits_f32 : ref.logits;
  const at::Tensor logits = model.forward(ref.tokens);  // [batch, pos, d_vocab]
  measured(logits, expected, name + " f32 logits");
  EXPECT_TRUE(close(logits, expected, kF32Tol, name + " logits"));
  ASSERT_EQ(ref.hidden_states.size(0), cfg.n_layers + 1);
  for (int layer = 0; layer < cfg.n_layers; ++layer) {
    ForwardOptions opts;
    opts.stop_at_layer(layer);  // the residual stream entering `layer`
    EXPECT_TRUE(close(model.forward(ref.tokens, opts), ref.hidden_states[layer], kF32Tol,
                      name + " resid_pre " + std::to_string(layer)));
  }
  // HF's last hidden state is the final norm's output.
  ForwardOptions opts;
  opts.stop_at_layer(cfg.n_layers);
  const at::Tensor resid = model.forward(ref.tokens, opts);
  const auto& w = model.weights();
  const at::Tensor normed =
      cfg.norm == NormKind::layernorm
          ? at::layer_norm(resid, {cfg.d_model}, w.ln_final_w, w.ln_final_b, cfg.norm_eps)
          : at::rms_norm(resid, {cfg.d_model}, w.ln_final_w, cfg.norm_eps);
  EXPECT_TRUE(close(normed, ref.hidden_states[cfg.n_layers], kF32Tol, name + " final norm"));
}

TEST(HfModels, Gpt2) {
  check_float32("gpt2");
  const ModelConfig cfg = hf::read_hf_config(folder("gpt2"));
  EXPECT_EQ(cfg.name, "gpt2");
  EXPECT_EQ(cfg.positional, Positional::learned);
  EXPECT_EQ(cfg.d_mlp, 128);  // n_inner null = 4 n_embd
  EXPECT_TRUE(cfg.tied_embeddings);
  EXPECT_EQ(cfg.act, Activation::gelu_new);
}

TEST(HfModels, GptNeoXParallelPartialRotary) {
  check_float32("neox");
  const ModelConfig cfg = hf::read_hf_config(folder("neox"));
  EXPECT_TRUE(cfg.parallel_attn_mlp);
  EXPECT_EQ(cfg.rotary_dim, 2);  // int(8 * 0.25)
  EXPECT_EQ(cfg.act, Activation::gelu);
  EXPECT_FALSE(cfg.tied_embeddings);
}

TEST(HfModels, GptNeoXSequentialFullRotary) {
  check_float32("neox_seq");
  const ModelConfig cfg = hf::read_hf_config(folder("neox_seq"));
  EXPECT_FALSE(cfg.parallel_attn_mlp);
  EXPECT_EQ(cfg.rotary_dims(), 8);
  EXPECT_EQ(cfg.rotary_base, 1000.0);
}

TEST(HfModels, LlamaGqa) {
  check_float32("llama");
  const ModelConfig cfg = hf::read_hf_config(folder("llama"));
  EXPECT_EQ(cfg.n_kv_heads, 2);
  EXPECT_EQ(cfg.rotary_base, 500000.0);
  EXPECT_EQ(cfg.mlp, MlpKind::gated);
  EXPECT_EQ(cfg.norm, NormKind::rmsnorm);
}

TEST(HfModels, LlamaShardedWithBiasesAndTiedEmbeddings) {
  check_float32("llama_sharded");
  const ModelConfig cfg = hf::read_hf_config(folder("llama_sharded"));
  EXPECT_TRUE(cfg.tied_embeddings);
  const Transformer model = load_model(folder("llama_sharded"));
  EXPECT_GT(model.weights().blocks[1].b_O.abs().max().item<double>(), 0.0);  // o_proj.bias loaded
}

TEST(HfModels, MistralExplicitHeadDimAndSlidingWindow) {
  check_float32("mistral");
  const ModelConfig cfg = hf::read_hf_config(folder("mistral"));
  EXPECT_EQ(cfg.d_head, 16);  // head_dim, not hidden_size / heads = 8
  EXPECT_EQ(cfg.n_ctx, 16);   // min(max_position_embeddings 32, sliding_window 16)
  const Transformer model = load_model(folder("mistral"));
  EXPECT_THAT(error_of([&] { model.forward(at::zeros({1, 17}, at::kLong)); }),
              HasSubstr("longer than the model's n_ctx = 16"));
}

TEST(HfModels, TooLongForTheSlidingWindowSaysTheWindowIsWhy) {
  check_float32("mistral");
  const Transformer model = load_model(folder("mistral"));
  EXPECT_EQ(model.config().sliding_window, 16);
  EXPECT_THAT(error_of([&] { model.forward(at::zeros({1, 17}, at::kLong)); }),
              HasSubstr("n_ctx = 16, its sliding-window size"));
}

/// A copy of a fixture folder's config.json with `edit` applied, in a fresh
/// folder: read_hf_config reads only config.json.
std::string edited_config(const std::string& name, const std::function<void(nlohmann::json&)>& edit) {
  std::ifstream in(folder(name) + "/config.json");
  nlohmann::json j = nlohmann::json::parse(in);
  edit(j);
  const std::string dir = mechlab::testing::temp_path("hf_window", name + "_" + std::to_string(std::rand()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/config.json") << j.dump();
  return dir;
}

// transformers' MistralConfig and Qwen2Config default sliding_window to 4096
// when the key is absent; an explicit null means no window; Qwen2 windows only
// layers >= max_window_layers (default 28). Checked with transformers 5.25:
// MistralConfig().sliding_window == 4096, MistralConfig(sliding_window=None)
// .sliding_window is None, Qwen2Config(use_sliding_window=True) has
// sliding_window 4096, max_window_layers 28 and full attention in layers 0-27.
TEST(HfModels, SlidingWindowFollowsTransformersDefaults) {
  auto long_context = [](nlohmann::json& j) { j["max_position_embeddings"] = 8192; };
  const ModelConfig absent = hf::read_hf_config(edited_config("mistral", [&](nlohmann::json& j) {
    long_context(j);
    j.erase("sliding_window");
  }));
  EXPECT_EQ(absent.n_ctx, 4096);
  EXPECT_EQ(absent.sliding_window, 4096);
  const ModelConfig null_window = hf::read_hf_config(edited_config("mistral", [&](nlohmann::json& j) {
    long_context(j);
    j["sliding_window"] = nullptr;
  }));
  EXPECT_EQ(null_window.n_ctx, 8192);
  EXPECT_EQ(null_window.sliding_window, 0);
  const ModelConfig wide = hf::read_hf_config(edited_config("mistral", [&](nlohmann::json& j) {
    j["sliding_window"] = 64;  // wider than max_position_embeddings 32: no cap
  }));
  EXPECT_EQ(wide.n_ctx, 32);
  EXPECT_EQ(wide.sliding_window, 0);
  const ModelConfig qwen_on = hf::read_hf_config(edited_config("qwen2", [&](nlohmann::json& j) {
    long_context(j);
    j["use_sliding_window"] = true;
    j["max_window_layers"] = 1;  // layers 1.. use the window
    j.erase("sliding_window");
  }));
  EXPECT_EQ(qwen_on.n_ctx, 4096);
  const ModelConfig qwen_no_layer = hf::read_hf_config(edited_config("qwen2", [&](nlohmann::json& j) {
    long_context(j);
    j["use_sliding_window"] = true;
    j.erase("max_window_layers");  // 28 >= n_layers: every layer is full attention
    j.erase("sliding_window");
  }));
  EXPECT_EQ(qwen_no_layer.n_ctx, 8192);
  const ModelConfig qwen_off = hf::read_hf_config(edited_config("qwen2", [&](nlohmann::json& j) {
    long_context(j);
    j["use_sliding_window"] = false;
    j.erase("sliding_window");
  }));
  EXPECT_EQ(qwen_off.n_ctx, 8192);
}

TEST(HfModels, Qwen2QkvBiasesTiedEmbeddings) {
  check_float32("qwen2");
  const ModelConfig cfg = hf::read_hf_config(folder("qwen2"));
  EXPECT_TRUE(cfg.tied_embeddings);
  EXPECT_EQ(cfg.rotary_base, 1e6);
  EXPECT_EQ(cfg.n_ctx, 32);  // use_sliding_window false: the window does not apply
}

/// rotary_inv_freq (mechlab's, float64) against transformers' inv_freq buffer
/// after rope_scaling, elementwise: the lowest frequencies are hundreds of times
/// smaller than the first, so a normwise comparison would not see them.
void check_inv_freq(const std::string& name) {
  const at::Tensor expected =
      H5File::open_read(folder(name + ".ref.h5")).read_tensor("inv_freq").to(at::kDouble);
  const at::Tensor actual = rotary_inv_freq(hf::read_hf_config(folder(name)));
  ASSERT_EQ(actual.sizes(), expected.sizes());
  const double err = ((actual - expected).abs() / expected.abs()).max().item<double>();
  std::printf("[ measured ] %-28s relative error %.2e (elementwise)\n",
              (name + " inv_freq").c_str(), err);
  EXPECT_LE(err, 1e-6) << name << " inv_freq\n" << actual << "\n" << expected;
}

TEST(HfModels, LlamaRopeScalingLlama3) {
  check_float32("llama_rope_llama3");  // 32 positions: the scaled frequencies matter
  check_inv_freq("llama_rope_llama3");
  const ModelConfig cfg = hf::read_hf_config(folder("llama_rope_llama3"));
  ASSERT_TRUE(cfg.rope_scaling.has_value());
  EXPECT_EQ(cfg.rope_scaling->kind, RopeScalingKind::llama3);
  EXPECT_EQ(cfg.rope_scaling->factor, 4.0);
  EXPECT_EQ(cfg.rope_scaling->low_freq_factor, 1.0);
  EXPECT_EQ(cfg.rope_scaling->high_freq_factor, 4.0);
  EXPECT_EQ(cfg.rope_scaling->original_max_position_embeddings, 64);
  EXPECT_EQ(cfg.n_ctx, 128);  // max_position_embeddings, the scaled context
}

TEST(HfModels, LlamaRopeScalingLinear) {
  check_float32("llama_rope_linear");
  check_inv_freq("llama_rope_linear");
  const ModelConfig cfg = hf::read_hf_config(folder("llama_rope_linear"));
  ASSERT_TRUE(cfg.rope_scaling.has_value());
  EXPECT_EQ(cfg.rope_scaling->kind, RopeScalingKind::linear);
  EXPECT_EQ(cfg.rope_scaling->factor, 4.0);
  EXPECT_FALSE(hf::read_hf_config(folder("llama")).rope_scaling.has_value());
}

TEST(HfModels, RopeScalingSurvivesAMechlabCheckpoint) {
  for (const std::string name : {"llama_rope_llama3", "llama_rope_linear"}) {
    SCOPED_TRACE(name);
    const std::string path = mechlab::testing::temp_path("hf_models_test", name + ".h5");
    const Transformer hf_model = load_model(folder(name));
    hf_model.save(path);
    const Transformer again = load_model(path);
    ASSERT_TRUE(again.config().rope_scaling.has_value());
    EXPECT_EQ(again.config().to_json_string(), hf_model.config().to_json_string());
    const at::Tensor tokens = reference(name).tokens;
    EXPECT_TRUE(at::equal(again.forward(tokens), hf_model.forward(tokens)));
  }
}

TEST(HfModels, Bfloat16LoadsAsStoredAndMatchesTransformersBfloat16) {
  check_float32("llama_bf16");  // exact decoding of the BF16 weights
  const Reference ref = reference("llama_bf16");
  const Transformer model = load_model(folder("llama_bf16"));
  EXPECT_EQ(model.dtype(), at::kBFloat16);  // default: as stored
  at::InferenceMode guard;
  const at::Tensor logits = model.forward(ref.tokens);
  measured(logits, ref.logits, "llama_bf16 bf16 logits");
  EXPECT_TRUE(close(logits, ref.logits, kBf16Tol, "bf16 logits"));
  // Half-precision loading of float32 files converts.
  EXPECT_EQ(load_model(folder("llama"), LoadOptions().dtype(at::kBFloat16)).dtype(), at::kBFloat16);
}

TEST(HfModels, Float16LoadsAsStoredAndMatchesTransformersFloat16) {
  check_float32("qwen2_f16");
  const Reference ref = reference("qwen2_f16");
  const Transformer model = load_model(folder("qwen2_f16"));
  EXPECT_EQ(model.dtype(), at::kHalf);
  at::InferenceMode guard;
  const at::Tensor logits = model.forward(ref.tokens);
  measured(logits, ref.logits, "qwen2_f16 f16 logits");
  EXPECT_TRUE(close(logits, ref.logits, kF16Tol, "f16 logits"));
}

TEST(HfModels, LoadModelAcceptsCheckpointsToo) {
  const std::string path = mechlab::testing::temp_path("hf_models_test", "from_hf.h5");
  const Transformer hf_model = load_model(folder("gpt2"));
  hf_model.save(path);
  const Transformer again = load_model(path);
  EXPECT_EQ(again.config().to_json_string(), hf_model.config().to_json_string());
  const at::Tensor tokens = at::arange(10, at::kLong).view({1, 10});
  EXPECT_TRUE(at::equal(again.forward(tokens), hf_model.forward(tokens)));
  EXPECT_EQ(describe_model_source(path), "mechlab checkpoint");
  EXPECT_EQ(describe_model_source(folder("qwen2")), "Hugging Face folder (Qwen2ForCausalLM)");
}

}  // namespace
}  // namespace mechlab::core
