// Causal multi-head (and grouped-query) attention with TransformerLens's hooks.
//
// Two execution paths compute the same function:
//  - fused: at::scaled_dot_product_attention (flash / memory-efficient on GPU),
//    taken when nobody hooks hook_attn_scores or hook_pattern in this layer;
//    the [batch, head, q_pos, k_pos] pattern is never materialised.
//  - materialised: scores = q k^T / attn_scale, masked with -inf, softmax,
//    hookable at attn_scores and pattern (TransformerLens's path).
// Fully masked query rows (left padding) give a zero pattern and z, as in
// TransformerLens.
#pragma once

#include "core/model/hook_dispatch.h"
#include "core/model/layers/rotary.h"
#include "core/model/weights.h"

namespace mechlab::core {

class KVCache;
struct KVPrefix;

struct AttentionContext {
  const RotaryTables* rotary = nullptr;  // rotary models only
  at::Tensor positions;                  // [pos] or [batch, pos] int64 (rotary)
  at::Tensor key_mask;                   // [batch, k_pos] bool, true = real token;
                                         // undefined = no padding
  KVCache* kv_cache = nullptr;           // generation: the past keys/values (then key_mask is set
                                         // and covers past and new positions, k_pos = past + pos)
  const KVPrefix* prefix = nullptr;      // prefix reuse: keys/values of the positions before the
                                         // queries (read only; key_mask, if set, covers both)
  at::Tensor packed_qkv_w;               // [d_model, (head + 2 kv_head) * d_head]
  at::Tensor packed_qkv_b;               // [(head + 2 kv_head) * d_head]
  bool materialise_pattern = false;      // force the materialised path
};

/// Packs W_Q, W_K, W_V into one GEMM operand and their biases into one vector.
std::pair<at::Tensor, at::Tensor> pack_qkv(const LayerWeights& w);

/// Non-split input: x [batch, pos, d_model], already normalised by ln1.
/// Split input (hook_q/k/v_input listened): q_in [batch, pos, head, d_model],
/// k_in/v_in [batch, pos, kv_head, d_model], each normalised per head.
/// Split input without a KV cache may hold queries at the last q_pos <
/// k_pos positions only (q_in [batch, q_pos, head, d_model], k_in/v_in
/// [batch, k_pos, ...]; ctx.positions covers the k_pos positions): those
/// queries' outputs, as the full attention gives them (circuit discovery
/// reads the last layer at the answer positions only).
/// Returns attn_out [batch, q_pos, d_model] (before hook_attn_out).
at::Tensor attention_forward(const ModelConfig& cfg, const LayerWeights& w, int layer,
                             const at::Tensor& q_in, const at::Tensor& k_in,
                             const at::Tensor& v_in, bool split, const AttentionContext& ctx,
                             const Hooks& hooks);

/// The projections of split inputs: x [batch, pos, n, d_model], W [n,
/// d_model, d_head], b [n, d_head] -> [batch, pos, n, d_head].
at::Tensor per_head_linear(const at::Tensor& x, const at::Tensor& W, const at::Tensor& b);

/// attention_forward after the projections: q [batch, q_pos, head, d_head],
/// k and v [batch, k_pos, kv_head, d_head] (before rotary; q_pos < k_pos
/// as for split input). Fires hook_q, hook_k and hook_v onward.
at::Tensor attention_from_qkv(const ModelConfig& cfg, const LayerWeights& w, int layer, at::Tensor q,
                              at::Tensor k, at::Tensor v, const AttentionContext& ctx, const Hooks& hooks);

}  // namespace mechlab::core
