// attention_forward with queries at the last positions only (split input,
// core/model/layers/attention.h): each query's output must equal the full
// attention's at that position, for learned and rotary positions, MHA and
// GQA, with and without padding, fused and materialised.
#include "core/model/layers/attention.h"
#include "core/model/layers/rotary.h"
#include "core/model/transformer.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

namespace {

using mechlab::core::AttentionContext;
using mechlab::core::Hooks;
using mechlab::core::ModelConfig;

ModelConfig small_config(bool rotary, int kv_heads) {
  ModelConfig c;
  c.name = "attn-subset";
  c.n_layers = 1;
  c.d_model = 32;
  c.n_heads = 4;
  c.n_kv_heads = kv_heads;
  c.d_head = 8;
  c.d_mlp = 64;
  c.d_vocab = 16;
  c.n_ctx = 16;
  if (rotary) c.positional = mechlab::core::Positional::rotary;
  return c;
}

}  // namespace

TEST(Attention, QueriesAtTheLastPositionsEqualTheFullAttentionThere) {
  for (bool rotary : {false, true}) {
    for (int kv : {4, 2}) {
      for (bool padded : {false, true}) {
        for (bool materialise : {false, true}) {
          const std::string what = std::string(rotary ? "rotary" : "learned") + " kv " + std::to_string(kv) +
                                   (padded ? " padded" : "") + (materialise ? " materialised" : " fused");
          const ModelConfig cfg = small_config(rotary, kv);
          mechlab::core::Transformer model(cfg, 3);
          model.to(at::kDouble);
          const auto& w = model.weights().blocks[0];
          const int64_t b = 3, P = 7, H = cfg.n_heads, K = cfg.kv_heads(), d = cfg.d_model;
          at::manual_seed(5);
          const auto opt = at::TensorOptions(at::kDouble);
          const at::Tensor q_in = at::randn({b, P, H, d}, opt);  // [batch, pos, head, d_model]
          const at::Tensor k_in = at::randn({b, P, K, d}, opt);  // [batch, pos, kv_head, d_model]
          const at::Tensor v_in = at::randn({b, P, K, d}, opt);
          AttentionContext ctx;
          ctx.materialise_pattern = materialise;
          mechlab::core::RotaryTables tables;
          at::Tensor positions = at::arange(P, at::kLong);  // [pos]
          if (padded) {
            // Prompt 1 left-padded by 2: the last position is real, its keys start at 2.
            at::Tensor mask = at::ones({b, P}, at::kBool);
            mask[1].narrow(0, 0, 2).fill_(false);
            ctx.key_mask = mask;
            positions = (mask.to(at::kLong).cumsum(1) - 1).clamp_min(0);  // [batch, pos]
          }
          if (rotary) {
            tables = mechlab::core::make_rotary_tables(cfg, opt);
            ctx.rotary = &tables;
            ctx.positions = positions;
          }
          const at::Tensor full = mechlab::core::attention_forward(cfg, w, 0, q_in, k_in, v_in, true, ctx, Hooks{});
          for (int64_t m : {1, 3}) {
            const at::Tensor sub =
                mechlab::core::attention_forward(cfg, w, 0, q_in.narrow(1, P - m, m), k_in, v_in, true, ctx, Hooks{});
            ASSERT_EQ(sub.sizes(), (at::IntArrayRef{b, m, d})) << what;
            EXPECT_TRUE(at::allclose(sub, full.narrow(1, P - m, m), 1e-10, 1e-10))
                << what << " m " << m << ": max diff "
                << (sub - full.narrow(1, P - m, m)).abs().max().item<double>();
          }
        }
      }
    }
  }
}
