#include "core/model/layers/attention.h"

#include "core/util/error.h"
#include "core/model/kv_cache.h"

#include <ATen/ATen.h>

namespace mechlab::core {

std::pair<at::Tensor, at::Tensor> pack_qkv(const LayerWeights& w) {
  // W_Q [head, d_model, d_head] -> [d_model, head * d_head], likewise K and V.
  auto flat = [](const at::Tensor& W) { return W.permute({1, 0, 2}).reshape({W.size(1), -1}); };
  at::Tensor W = at::cat({flat(w.W_Q), flat(w.W_K), flat(w.W_V)}, 1);
  at::Tensor b = at::cat({w.b_Q.reshape(-1), w.b_K.reshape(-1), w.b_V.reshape(-1)});
  return {W, b};
}

at::Tensor per_head_linear(const at::Tensor& x, const at::Tensor& W, const at::Tensor& b) {
  return at::einsum("bpnd,nde->bpne", {x, W}) + b;
}

namespace {

// [batch, q_pos, k_pos] bool: causal and (with padding) key is a real token.
// With a KV cache the queries are the last q_pos of k_pos positions, so query i
// sees keys up to k_pos - q_pos + i.
at::Tensor allowed_keys(int64_t q_pos, int64_t k_pos, const at::Tensor& key_mask,
                        const at::Device& device) {
  at::Tensor causal =
      at::ones({q_pos, k_pos}, at::TensorOptions(at::kBool).device(device)).tril(k_pos - q_pos);
  if (!key_mask.defined()) return causal.unsqueeze(0);
  return causal.unsqueeze(0) & key_mask.unsqueeze(1);
}

}  // namespace

at::Tensor attention_forward(const ModelConfig& cfg, const LayerWeights& w, int layer,
                             const at::Tensor& q_in, const at::Tensor& k_in,
                             const at::Tensor& v_in, bool split, const AttentionContext& ctx,
                             const Hooks& hooks) {
  const int64_t H = cfg.n_heads, K = cfg.kv_heads(), Dh = cfg.d_head;
  const int64_t batch = q_in.size(0), pos = q_in.size(1);
  // Queries at the last `pos` of in_pos input positions (split input only).
  const int64_t in_pos = k_in.size(1);
  MECHLAB_ASSERT(pos == in_pos ||
                 (split && ctx.kv_cache == nullptr && ctx.prefix == nullptr && pos < in_pos));

  at::Tensor q, k, v;  // [batch, pos, head|kv_head, d_head]
  if (split) {
    q = per_head_linear(q_in, w.W_Q, w.b_Q);
    k = per_head_linear(k_in, w.W_K, w.b_K);
    v = per_head_linear(v_in, w.W_V, w.b_V);
  } else {
    at::Tensor qkv = at::addmm(ctx.packed_qkv_b, q_in.reshape({batch * pos, -1}), ctx.packed_qkv_w)
                         .view({batch, pos, H + 2 * K, Dh});
    q = qkv.narrow(2, 0, H);
    k = qkv.narrow(2, H, K);
    v = qkv.narrow(2, H + K, K);
  }
  return attention_from_qkv(cfg, w, layer, q, k, v, ctx, hooks);
}

at::Tensor attention_from_qkv(const ModelConfig& cfg, const LayerWeights& w, int layer, at::Tensor q,
                              at::Tensor k, at::Tensor v, const AttentionContext& ctx, const Hooks& hooks) {
  const int64_t H = cfg.n_heads, K = cfg.kv_heads(), Dh = cfg.d_head;
  const int64_t batch = q.size(0), pos = q.size(1), in_pos = k.size(1);
  hooks({HookKind::q, layer}, q);
  hooks({HookKind::k, layer}, k);
  hooks({HookKind::v, layer}, v);

  const bool rotary = cfg.positional == Positional::rotary;
  if (rotary) {
    q = apply_rotary(q, *ctx.rotary, pos == in_pos ? ctx.positions : ctx.positions.narrow(-1, in_pos - pos, pos));
    hooks({HookKind::rot_q, layer}, q);
    k = apply_rotary(k, *ctx.rotary, ctx.positions);
  }
  if (ctx.prefix != nullptr) {
    // The queries follow the prefix: keys and values become every position's,
    // [batch, prefix + pos, kv_head, d_head], a fresh tensor (hook_rot_k may edit it).
    k = concat_prefix(ctx.prefix->keys[layer], k);
    v = concat_prefix(ctx.prefix->values[layer], v);
  }
  if (ctx.kv_cache != nullptr) {
    MECHLAB_ASSERT(ctx.key_mask.defined());
    // k, v become every position's: [batch, k_pos, kv_head, d_head]. TransformerLens
    // caches keys before rotary and rotates all of them again each step; these are
    // cached after it (same position, same table: the same numbers). hook_rot_k
    // still sees every key, as in TransformerLens, and an edit there changes this
    // step only (TransformerLens's cache holds the keys from before it), so a hook
    // gets a copy, never the cache itself.
    std::tie(k, v) = ctx.kv_cache->append(layer, k, v);
    if (rotary && hooks.listens({HookKind::rot_k, layer})) k = k.clone();
  }
  if (rotary) hooks({HookKind::rot_k, layer}, k);
  const int64_t k_pos = k.size(1);

  // [batch, head, pos, d_head] views for the attention kernels.
  at::Tensor qh = q.transpose(1, 2), kh = k.transpose(1, 2), vh = v.transpose(1, 2);
  const bool materialise = ctx.materialise_pattern ||
                           hooks.listens({HookKind::attn_scores, layer}) ||
                           hooks.listens({HookKind::pattern, layer});
  at::Tensor zh;  // [batch, head, pos, d_head]
  if (materialise) {
    if (K != H) {
      kh = kh.repeat_interleave(H / K, 1);
      vh = vh.repeat_interleave(H / K, 1);
    }
    // Scores in float32 even for half models, as TransformerLens does.
    at::Tensor scores = at::matmul(qh.to(at::kFloat), kh.to(at::kFloat).transpose(-1, -2)) /
                        cfg.scale();  // [batch, head, q_pos, k_pos]
    at::Tensor allowed = allowed_keys(pos, k_pos, ctx.key_mask, q.device()).unsqueeze(1);
    scores = scores.masked_fill(allowed.logical_not(), -std::numeric_limits<double>::infinity());
    hooks({HookKind::attn_scores, layer}, scores);
    at::Tensor pattern = at::softmax(scores, -1);
    if (ctx.key_mask.defined()) pattern = at::nan_to_num(pattern, 0.0);  // fully masked rows
    hooks({HookKind::pattern, layer}, pattern);
    zh = at::matmul(pattern.to(vh.scalar_type()), vh);
  } else if (!ctx.key_mask.defined() && pos == k_pos) {
    zh = at::scaled_dot_product_attention(qh, kh, vh, /*attn_mask=*/{}, /*dropout_p=*/0.0,
                                          /*is_causal=*/true, 1.0 / cfg.scale(),
                                          /*enable_gqa=*/K != H);
  } else {
    at::Tensor allowed = allowed_keys(pos, k_pos, ctx.key_mask, q.device()).unsqueeze(1);
    zh = at::scaled_dot_product_attention(qh, kh, vh, allowed, 0.0, false, 1.0 / cfg.scale(),
                                          K != H);
    // A query with no real key to its left (left padding) attends to nothing.
    at::Tensor has_key = allowed.any(-1, /*keepdim=*/true);  // [batch, 1, q_pos, 1]
    zh = zh.masked_fill(has_key.logical_not(), 0.0);
  }
  at::Tensor z = zh.transpose(1, 2);  // [batch, pos, head, d_head]
  hooks({HookKind::z, layer}, z);

  if (hooks.listens({HookKind::result, layer})) {
    at::Tensor result = at::einsum("bphd,hdm->bphm", {z, w.W_O});  // [batch, pos, head, d_model]
    hooks({HookKind::result, layer}, result);
    return result.sum(2) + w.b_O;
  }
  return at::addmm(w.b_O, z.reshape({batch * pos, H * Dh}), w.W_O.reshape({H * Dh, -1}))
      .view({batch, pos, -1});
}

}  // namespace mechlab::core
