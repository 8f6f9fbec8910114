// The KV cache against running the whole sequence, and hooks during
// generation (core/model/kv_cache.h, core/model/generate.h, HookedTransformer::generate).
//
// Models: the Hugging Face fixtures gpt2 (learned positions), llama (rotary,
// GQA), neox (GPT-NeoX partial rotary, 2 of 8 dims, parallel attention + MLP),
// and a random model without positional embeddings.
//
// Tolerance: 1e-4 normwise relative (max|a - b| / max|b|) in float32, as every
// float32 reference test in mechlab. The cached and the full forward do the
// same arithmetic on different shapes (one query row vs all rows, explicit
// mask vs causal kernel), so they differ by rounding only (the test prints
// each measured error: "[ measured ]" lines).
#include "core/model/generate.h"
#include "core/model/kv_cache.h"
#include "core/hf/model_loader.h"
#include "hooks/hooked_transformer.h"
#include "tests/hooks/fixture_compare.h"
#include "tests/test_util.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cstdio>
#include <map>
#include <string>

namespace mechlab::hooks {
namespace {

using mechlab::testing::close;
using mechlab::testing::error_of;
using ::testing::HasSubstr;

constexpr double kTol = 1e-4;

// The normwise relative error, printed ("[ measured ]") so that the figures in
// docs can be checked on any machine.
void print_measured(const at::Tensor& actual, const at::Tensor& expected, const std::string& what) {
  const at::Tensor a = actual.to(at::kCPU, at::kDouble), e = expected.to(at::kCPU, at::kDouble);
  const double err = (a - e).abs().max().item<double>() / e.abs().max().item<double>();
  std::printf("[ measured ] %-32s relative error %.2e\n", what.c_str(), err);
}

core::Transformer load(const std::string& name) {
  if (name == "no_pos") {
    core::ModelConfig cfg;
    cfg.name = "no_pos";
    cfg.n_layers = 2, cfg.d_model = 32, cfg.n_heads = 4, cfg.d_head = 8, cfg.d_mlp = 64;
    cfg.d_vocab = 50, cfg.n_ctx = 32, cfg.positional = core::Positional::none;
    return core::Transformer(cfg, /*seed=*/5);
  }
  return core::load_model(std::string(MECHLAB_TEST_DATA) + "/hf/" + name);
}

// Prompts of 5, 2 and 7 tokens: padded (left) as a batch; or one of 6 alone.
std::vector<std::vector<int64_t>> prompts(bool padded) {
  if (!padded) return {{3, 14, 15, 9, 26, 5}};
  return {{3, 14, 15, 9, 26}, {35, 8}, {9, 7, 9, 3, 2, 38, 4}};
}

class KvCache : public ::testing::TestWithParam<std::tuple<std::string, bool>> {};

// Every step's logits with the cache equal the full forward's logits at the
// position that step read, run on the final sequence with its mask.
TEST_P(KvCache, StepLogitsEqualTheFullForward) {
  const auto& [name, padded] = GetParam();
  const core::Transformer model = load(name);
  for (const bool greedy : {true, false}) {
    SCOPED_TRACE(greedy ? "greedy" : "sampled");
    const auto opts =
        core::GenerateOptions().greedy(greedy).max_new_tokens(9).seed(4).return_logits(true);
    const core::GenerateResult out = core::generate(model, prompts(padded), opts);
    ASSERT_EQ(out.logits.size(0), 9);
    core::ForwardOptions f;
    f.attention_mask(out.attention_mask);
    const at::Tensor full = model.forward(out.tokens, f);  // [batch, P + 9, d_vocab]
    const at::Tensor read = full.narrow(1, out.prompt_length - 1, 9).transpose(0, 1);
    EXPECT_TRUE(close(out.logits, read, kTol, name + " step logits"));
    print_measured(out.logits, read, name + (padded ? " padded" : "") + " cache vs full");

    const core::GenerateResult no_cache =
        core::generate(model, prompts(padded), core::GenerateOptions(opts).use_kv_cache(false));
    EXPECT_TRUE(at::equal(no_cache.tokens, out.tokens));
    EXPECT_TRUE(close(no_cache.logits, out.logits, kTol, name + " without cache"));
  }
}

INSTANTIATE_TEST_SUITE_P(Positions, KvCache,
                         ::testing::Combine(::testing::Values("gpt2", "llama", "neox", "no_pos"),
                                            ::testing::Bool()));

// A prompt fed in pieces through one cache gives the one-shot logits.
TEST(KvCache, PiecewiseForwardEqualsOneShot) {
  for (const std::string name : {"gpt2", "neox"}) {
    const core::Transformer model = load(name);
    const at::Tensor tokens = at::tensor({3, 14, 15, 9, 26, 5, 35, 8}, at::kLong).view({1, -1});
    core::KVCache cache(model.config(), 1, 8, model.weights().W_E.options());
    core::ForwardOptions f;
    f.kv_cache(&cache);
    std::vector<at::Tensor> parts;
    for (auto [start, len] : {std::pair<int64_t, int64_t>{0, 3}, {3, 1}, {4, 4}}) {
      parts.push_back(model.forward(tokens.narrow(1, start, len), f));
      EXPECT_EQ(cache.length(), start + len);
    }
    EXPECT_TRUE(close(at::cat(parts, 1), model.forward(tokens), kTol, name));
    EXPECT_EQ(cache.layer(1).first.sizes(),
              (at::IntArrayRef{1, 8, model.config().kv_heads(), model.config().d_head}));
  }
}

TEST(KvCache, RefusesWhatItCannotServe) {
  const core::Transformer model = load("gpt2");
  core::KVCache cache(model.config(), 1, 4, model.weights().W_E.options());
  core::ForwardOptions f;
  f.kv_cache(&cache);
  const at::Tensor three = at::tensor({1, 2, 3}, at::kLong).view({1, 3});
  model.forward(three, f);
  EXPECT_THAT(error_of([&] { model.forward(three, f); }),
              HasSubstr("the KV cache holds 3 of at most 4 positions: 3 more do not fit"));
  EXPECT_THAT(error_of([&] {
                model.forward(three.expand({2, 3}), f);
              }),
              HasSubstr("the KV cache holds 1 sequences but the tokens have 2 rows"));
  core::ForwardOptions stop = f;
  stop.stop_at_layer(1);
  EXPECT_THAT(error_of([&] { model.forward(three.narrow(1, 0, 1), stop); }),
              HasSubstr("a KV cache needs token input and a run to the logits"));
  EXPECT_THAT(error_of([&] { core::KVCache(model.config(), 1, 33, at::TensorOptions()); }),
              HasSubstr("a KV cache holds 1 to n_ctx = 32 positions, asked for 33"));
  EXPECT_EQ(cache.length(), 3);  // refused forwards left it as it was
}

// Hooks attached during generation see the new positions with
// TransformerLens's shapes, and the values of the full forward there.
TEST(GenerateHooks, SeeTheGeneratedPositions) {
  for (const std::string name : {"gpt2", "llama"}) {
    SCOPED_TRACE(name);
    HookedTransformer model(load(name));
    const auto& cfg = model.cfg();
    std::vector<at::Tensor> resid, pattern, rot_k;
    const int64_t steps = 6;
    core::GenerateResult out;
    {
      HookScope scope(model.hooks());
      scope.add("blocks.1.hook_resid_post",
                [&](at::Tensor& x, const HookPoint&) { resid.push_back(x.clone()); });
      scope.add("blocks.0.attn.hook_pattern",
                [&](at::Tensor& x, const HookPoint&) { pattern.push_back(x.clone()); });
      if (cfg.positional == core::Positional::rotary) {
        scope.add("blocks.0.attn.hook_rot_k",
                  [&](at::Tensor& x, const HookPoint&) { rot_k.push_back(x.clone()); });
      }
      out =
          model.generate(prompts(true), core::GenerateOptions().greedy(true).max_new_tokens(steps));
    }
    const int64_t B = 3, P = out.prompt_length;
    ASSERT_EQ(resid.size(), static_cast<size_t>(steps));  // one forward per new token
    EXPECT_EQ(resid[0].sizes(), (at::IntArrayRef{B, P, cfg.d_model}));
    for (int64_t s = 1; s < steps; ++s) {
      EXPECT_EQ(resid[s].sizes(), (at::IntArrayRef{B, 1, cfg.d_model}));
      EXPECT_EQ(pattern[s].sizes(), (at::IntArrayRef{B, cfg.n_heads, 1, P + s}));
      if (!rot_k.empty()) {
        EXPECT_EQ(rot_k[s].sizes(), (at::IntArrayRef{B, P + s, cfg.kv_heads(), cfg.d_head}));
      }
    }
    // The values are the full forward's at the same positions.
    RunOptions r;
    r.attention_mask(out.attention_mask);
    auto [logits, cache] = model.run_with_cache(out.tokens, NamesFilter::glob("*"), r);
    const at::Tensor full_resid = cache.get("resid_post", 1);  // [B, P + steps, d_model]
    const at::Tensor full_pattern = cache.get("pattern", 0);   // [B, head, q_pos, k_pos]
    EXPECT_TRUE(close(resid[0], full_resid.narrow(1, 0, P), kTol, "prompt resid_post"));
    for (int64_t s = 1; s < steps; ++s) {
      EXPECT_TRUE(close(resid[s], full_resid.narrow(1, P + s - 1, 1), kTol, "resid_post"));
      EXPECT_TRUE(close(pattern[s], full_pattern.narrow(2, P + s - 1, 1).narrow(3, 0, P + s), kTol,
                        "pattern"));
      if (!rot_k.empty()) {
        EXPECT_TRUE(close(rot_k[s], cache.get("rot_k", 0).narrow(1, 0, P + s), kTol, "rot_k"));
      }
    }
  }
}

// An intervention during generation: zero-ablating a head gives the same
// tokens and logits with and without the cache, and changes the continuation.
TEST(GenerateHooks, AblationWithAndWithoutCache) {
  for (const std::string name : {"gpt2", "neox", "llama"}) {
    SCOPED_TRACE(name);
    HookedTransformer model(load(name));
    const auto opts = core::GenerateOptions().greedy(true).max_new_tokens(8).return_logits(true);
    const core::GenerateResult clean = model.generate(prompts(true), opts);
    core::GenerateResult cached, uncached;
    {
      HookScope scope(model.hooks());
      for (const char* hook : {"blocks.0.attn.hook_z", "blocks.1.attn.hook_z"}) {
        scope.add(hook, [](at::Tensor& z, const HookPoint&) {
          z = z.clone();
          z.narrow(2, 0, 2).zero_();  // heads 0 and 1
        });
      }
      cached = model.generate(prompts(true), opts);
      uncached = model.generate(prompts(true), core::GenerateOptions(opts).use_kv_cache(false));
    }
    EXPECT_TRUE(at::equal(cached.tokens, uncached.tokens));
    EXPECT_TRUE(close(cached.logits, uncached.logits, kTol, "ablated logits"));
    EXPECT_FALSE(close(cached.logits, clean.logits, 1e-2, "the ablation matters"));
    // The scope is gone: generation is clean again.
    EXPECT_TRUE(at::equal(model.generate(prompts(true), opts).tokens, clean.tokens));
  }
}

}  // namespace
}  // namespace mechlab::hooks

namespace mechlab::hooks {
namespace {

// Generation on a GPU against the CPU: the same greedy tokens, step logits
// within 1e-4 in float32 (cuBLAS without TF32, the LibTorch default; see
// cuda_runtime_test.cpp), for a learned-position and a rotary GQA model.
TEST(GenerateCuda, MatchesCpu) {
  if (!mechlab::testing::have_cuda_or_skip()) GTEST_SKIP() << "no CUDA device";
  for (const std::string name : {"gpt2", "llama"}) {
    SCOPED_TRACE(name);
    const core::Transformer cpu = load(name);
    core::Transformer gpu = load(name);
    gpu.to(at::Device("cuda"));
    const auto opts = core::GenerateOptions().greedy(true).max_new_tokens(9).return_logits(true);
    const core::GenerateResult a = core::generate(cpu, prompts(true), opts);
    const core::GenerateResult b = core::generate(gpu, prompts(true), opts);
    EXPECT_TRUE(at::equal(a.tokens, b.tokens));
    EXPECT_TRUE(close(b.logits, a.logits, kTol, name + " cuda step logits"));
    // Seeded sampling draws on the CPU from the same logits: the same tokens.
    const auto sampled = core::GenerateOptions().max_new_tokens(9).top_p(0.9).seed(8);
    EXPECT_TRUE(at::equal(core::generate(cpu, prompts(true), sampled).tokens,
                          core::generate(gpu, prompts(true), sampled).tokens));
  }
}

}  // namespace
}  // namespace mechlab::hooks
