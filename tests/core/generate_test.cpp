// Text generation against Hugging Face transformers (tests/data/generate/, made
// by scripts/fixtures/make_generate_fixtures.py): greedy continuations token for
// token on every architecture, stop tokens, the logits warpers; and the
// refusals of bad options and prompts.
//
// Tolerances: logits kF32Tol (1e-5 normwise relative plus an element-wise
// bound, as every float32 reference test in mechlab; fixture_compare.h);
// greedy tokens exactly. The fixture
// generator checks that every greedy choice wins by at least 1e-3 (min_gap
// attribute; the smallest is 1.5e-2), so float differences of 1e-6 cannot
// change a token. Warpers: 1e-6 (one division, one softmax and cumsum apart;
// -inf entries must match exactly).
#include "core/model/generate.h"
#include "core/formats/hdf5_file.h"
#include "core/hf/model_loader.h"
#include "core/model/sampling.h"
#include "tests/hooks/fixture_compare.h"
#include "tests/test_util.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <string>

namespace mechlab::core {
namespace {

using mechlab::testing::close;
using mechlab::testing::error_of;
using ::testing::HasSubstr;

std::string data(const std::string& name) {
  return std::string(MECHLAB_TEST_DATA) + "/generate/" + name;
}
std::string hf_folder(const std::string& name) {
  return std::string(MECHLAB_TEST_DATA) + "/hf/" + name;
}

struct GreedyRef {
  at::Tensor prompt, mask;  // [3, P] left-padded
  at::Tensor greedy;        // [3, P + 8]
  at::Tensor logits;        // [4, 3, d_vocab]: the first steps' logits
  at::Tensor stop_ids;      // [2]
  at::Tensor stopped;       // [3, P + steps]
};

GreedyRef greedy_ref(const std::string& name) {
  H5File f = H5File::open_read(data("greedy.ref.h5"));
  GreedyRef r;
  r.prompt = f.read_tensor(name + "/prompt_tokens");
  r.mask = f.read_tensor(name + "/prompt_mask");
  r.greedy = f.read_tensor(name + "/greedy");
  r.logits = f.read_tensor(name + "/greedy_logits");
  r.stop_ids = f.read_tensor(name + "/stop_ids");
  r.stopped = f.read_tensor(name + "/stopped");
  return r;
}

std::vector<int64_t> ids(const at::Tensor& t) {
  at::Tensor c = t.to(at::kCPU, at::kLong).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

// The same prompts padded on the right instead: [3, P] tokens and mask.
std::pair<at::Tensor, at::Tensor> to_right_padding(const at::Tensor& tokens,
                                                   const at::Tensor& mask) {
  at::Tensor t = at::zeros_like(tokens), m = at::zeros_like(mask);
  for (int64_t b = 0; b < tokens.size(0); ++b) {
    const int64_t n = mask[b].sum().item<int64_t>(), P = tokens.size(1);
    t[b].narrow(0, 0, n).copy_(tokens[b].narrow(0, P - n, n));
    m[b].narrow(0, 0, n).fill_(1);
  }
  return {t, m};
}

class GreedyVsTransformers : public ::testing::TestWithParam<std::string> {};

TEST_P(GreedyVsTransformers, SameTokensAndLogits) {
  const GreedyRef ref = greedy_ref(GetParam());
  const Transformer model = load_model(hf_folder(GetParam()));
  const int64_t steps = ref.greedy.size(1) - ref.prompt.size(1);
  const auto opts =
      GenerateOptions().greedy(true).max_new_tokens(steps).attention_mask(ref.mask).return_logits(
          true);

  GenerateResult out = generate(model, ref.prompt, opts);
  EXPECT_TRUE(at::equal(out.tokens, ref.greedy)) << out.tokens << "\nexpected\n" << ref.greedy;
  EXPECT_TRUE(at::equal(out.attention_mask.narrow(1, 0, ref.prompt.size(1)), ref.mask));
  EXPECT_TRUE(close(out.logits.narrow(0, 0, ref.logits.size(0)), ref.logits, mechlab::testing::kF32Tol, "step logits"));
  for (int64_t b = 0; b < 3; ++b) {
    EXPECT_EQ(out.new_tokens[b], ids(ref.greedy[b].narrow(0, ref.prompt.size(1), steps)));
    EXPECT_FALSE(out.stopped[b]);
  }

  // Right padding continues the same way (generate moves it to the left).
  auto [right, right_mask] = to_right_padding(ref.prompt, ref.mask);
  GenerateResult from_right =
      generate(model, right, GenerateOptions(opts).attention_mask(right_mask));
  EXPECT_TRUE(at::equal(from_right.tokens, ref.greedy));

  // Without the KV cache (the whole sequence every step): the same tokens.
  GenerateResult no_cache = generate(model, ref.prompt, GenerateOptions(opts).use_kv_cache(false));
  EXPECT_TRUE(at::equal(no_cache.tokens, ref.greedy));
  EXPECT_TRUE(close(no_cache.logits, out.logits, 1e-4, "no-cache logits"));

  // One prompt alone, unpadded: its row of the batch.
  std::vector<int64_t> p2 = ids(ref.prompt[2].masked_select(ref.mask[2].ne(0)));
  GenerateResult alone = generate(model, std::vector<std::vector<int64_t>>{p2},
                                  GenerateOptions(opts).attention_mask(at::Tensor()));
  EXPECT_EQ(alone.new_tokens[0], out.new_tokens[2]);
}

TEST_P(GreedyVsTransformers, StopTokensStopEachRowAlone) {
  const GreedyRef ref = greedy_ref(GetParam());
  const Transformer model = load_model(hf_folder(GetParam()));
  const int64_t P = ref.prompt.size(1);
  GenerateResult out = generate(model, ref.prompt,
                                GenerateOptions()
                                    .greedy(true)
                                    .max_new_tokens(ref.greedy.size(1) - P)
                                    .attention_mask(ref.mask)
                                    .stop_tokens(ids(ref.stop_ids))
                                    .pad_token_id(0));
  // transformers pads a finished row with pad_token_id and ends when all have stopped.
  EXPECT_TRUE(at::equal(out.tokens, ref.stopped)) << out.tokens << "\nexpected\n" << ref.stopped;
  const std::vector<int64_t> stops = ids(ref.stop_ids);
  for (int64_t b = 0; b < 3; ++b) {
    const std::vector<int64_t>& row = out.new_tokens[b];
    const bool ends_on_stop =
        !row.empty() && std::find(stops.begin(), stops.end(), row.back()) != stops.end();
    EXPECT_EQ(out.stopped[b], ends_on_stop);
    // Generated columns are real exactly while the row runs.
    EXPECT_EQ(out.attention_mask[b].narrow(0, P, out.tokens.size(1) - P).sum().item<int64_t>(),
              static_cast<int64_t>(row.size()));
  }
}

INSTANTIATE_TEST_SUITE_P(Architectures, GreedyVsTransformers,
                         ::testing::Values("gpt2", "neox", "neox_seq", "llama", "llama_sharded",
                                           "mistral", "qwen2"));

TEST(Warpers, MatchTransformers) {
  H5File f = H5File::open_read(data("warpers.ref.h5"));
  const at::Tensor logits = f.read_tensor("logits");  // [4, 50]
  EXPECT_TRUE(close(apply_temperature(logits, 0.7), f.read_tensor("temperature_0.7"), 1e-6, "T"));
  EXPECT_TRUE(close(top_k_filter(logits, 5), f.read_tensor("top_k_5"), 1e-6, "top_k 5"));
  EXPECT_TRUE(close(top_p_filter(logits, 0.8), f.read_tensor("top_p_0.8"), 1e-6, "top_p 0.8"));
  EXPECT_TRUE(close(top_p_filter(logits, 0.3), f.read_tensor("top_p_0.3"), 1e-6, "top_p 0.3"));
  EXPECT_TRUE(close(top_p_filter(logits, 0.001), f.read_tensor("top_p_0.001"), 1e-6, "top_p 1e-3"));
  const at::Tensor chain = top_p_filter(top_k_filter(apply_temperature(logits, 0.7), 10), 0.9);
  EXPECT_TRUE(close(chain, f.read_tensor("chain"), 1e-6, "chain"));
  // The fixture exercises the filters: some rows keep several tokens, some one.
  EXPECT_EQ(top_p_filter(logits, 0.001).isfinite().sum().item<int64_t>(), 4);
  EXPECT_GT(top_p_filter(logits, 0.8).isfinite().sum().item<int64_t>(), 8);
}

TEST(Sampling, DrawsFollowTheDistribution) {
  // p = softmax(log([0.5, 0.3, 0.2, 0])): 20,000 seeded draws land within 5
  // standard deviations of the expected counts (sd <= sqrt(n p (1 - p)) ~ 71).
  const at::Tensor logits =
      at::log(at::tensor({0.5, 0.3, 0.2, 0.0}, at::kFloat)).unsqueeze(0).expand({20000, 4});
  Rng rng(3);
  const at::Tensor draws = sample_from_logits(logits, rng);
  const at::Tensor counts = at::bincount(draws, {}, 4);
  EXPECT_NEAR(counts[0].item<double>(), 10000, 5 * 71);
  EXPECT_NEAR(counts[1].item<double>(), 6000, 5 * 65);
  EXPECT_NEAR(counts[2].item<double>(), 4000, 5 * 57);
  EXPECT_EQ(counts[3].item<int64_t>(), 0);  // probability 0 is never drawn
}

TEST(Sampling, SeededAndFiltered) {
  const Transformer model = load_model(hf_folder("llama"));
  const std::vector<std::vector<int64_t>> prompts{{5, 17, 42}, {7, 3}};
  const auto opts = GenerateOptions().max_new_tokens(12).seed(11).return_logits(true);
  const GenerateResult a = generate(model, prompts, opts);
  const GenerateResult b = generate(model, prompts, opts);
  EXPECT_TRUE(at::equal(a.tokens, b.tokens));  // a seed names one continuation
  const GenerateResult c = generate(model, prompts, GenerateOptions(opts).seed(12));
  EXPECT_FALSE(at::equal(a.tokens, c.tokens));

  // top_k: every sampled token is among the k most likely of its step.
  const GenerateResult k3 = generate(model, prompts, GenerateOptions(opts).top_k(3));
  for (int64_t s = 0; s < k3.logits.size(0); ++s) {
    const at::Tensor top3 = std::get<1>(k3.logits[s].topk(3, -1));  // [batch, 3]
    for (int64_t r = 0; r < 2; ++r) {
      const int64_t tok = k3.tokens[r][k3.prompt_length + s].item<int64_t>();
      EXPECT_TRUE(top3[r].eq(tok).any().item<bool>()) << "step " << s << " row " << r;
    }
  }
  // top_k = 1, tiny top_p and temperature 0 are greedy.
  const GenerateResult greedy = generate(model, prompts, GenerateOptions(opts).greedy(true));
  EXPECT_TRUE(
      at::equal(generate(model, prompts, GenerateOptions(opts).top_k(1)).tokens, greedy.tokens));
  EXPECT_TRUE(
      at::equal(generate(model, prompts, GenerateOptions(opts).top_p(1e-6)).tokens, greedy.tokens));
  EXPECT_TRUE(at::equal(generate(model, prompts, GenerateOptions(opts).temperature(0)).tokens,
                        greedy.tokens));
}

TEST(GenerateErrors, BadOptionsAndPrompts) {
  const Transformer model = load_model(hf_folder("gpt2"));  // n_ctx 32, d_vocab 101
  const at::Tensor prompt = at::tensor({5, 17, 42}, at::kLong);
  auto fails = [&](const GenerateOptions& o) {
    return error_of([&] { generate(model, prompt, o); });
  };
  EXPECT_THAT(fails(GenerateOptions().top_p(0)), HasSubstr("top_p must be in (0, 1]"));
  EXPECT_THAT(fails(GenerateOptions().top_p(1.5)),
              HasSubstr("top_p must be in (0, 1] (1 = off), got 1.5"));
  EXPECT_THAT(fails(GenerateOptions().temperature(-0.5)), HasSubstr("temperature must be >= 0"));
  EXPECT_THAT(fails(GenerateOptions().top_k(-1)), HasSubstr("top_k must be >= 0"));
  EXPECT_THAT(fails(GenerateOptions().max_new_tokens(-1)),
              HasSubstr("max_new_tokens must be >= 0"));
  EXPECT_THAT(fails(GenerateOptions().max_new_tokens(30)),
              HasSubstr("the longest prompt (3 tokens) plus max_new_tokens = 30 is 33 positions, "
                        "more than the model's n_ctx = 32; lower max_new_tokens to at most 29"));
  EXPECT_THAT(fails(GenerateOptions().stop_tokens({101})),
              HasSubstr("stop token 101 is outside the model's vocabulary [0, 101)"));
  EXPECT_THAT(error_of([&] {
                generate(model, at::tensor({5, 101, 3}, at::kLong));
              }),
              HasSubstr("prompt 0 has token id 101 at position 1, outside the model's vocabulary"));
  EXPECT_THAT(error_of([&] {
                generate(model, std::vector<std::vector<int64_t>>{{1}, {}});
              }),
              HasSubstr("prompt 1 has no tokens"));
  const at::Tensor holed = at::tensor({1, 0, 1}, at::kLong).unsqueeze(0);
  EXPECT_THAT(fails(GenerateOptions().attention_mask(holed)),
              HasSubstr("row 0 of attention_mask has padding between real tokens"));
  EXPECT_THAT(fails(GenerateOptions().attention_mask(at::tensor({1, 3, 1}, at::kLong).unsqueeze(0))),
              HasSubstr("attention_mask must hold only 0 (padding) and 1 (real token); found 3 at [0, 1]"));
  EXPECT_THAT(error_of([&] {
                generate(model, at::tensor({1.0, 2.0}));
              }),
              HasSubstr("prompt tokens must be int64 or int32"));
  // The limit itself is fine: 3 + 29 = n_ctx.
  EXPECT_EQ(
      generate(model, prompt, GenerateOptions().greedy(true).max_new_tokens(29)).tokens.size(1),
      32);
  EXPECT_EQ(generate(model, prompt, GenerateOptions().max_new_tokens(0)).tokens.size(1), 3);
}

}  // namespace
}  // namespace mechlab::core
