#include "core/model/transformer.h"

#include "core/model/checkpoint.h"
#include "core/util/error.h"
#include "core/model/kv_cache.h"
#include "core/model/layers/attention.h"
#include "core/model/layers/mlp.h"
#include "core/model/layers/norm.h"

#include <ATen/ATen.h>

namespace mechlab::core {

void check_attention_mask(const at::Tensor& mask, at::IntArrayRef expected) {
  MECHLAB_CHECK(mask.sizes() == expected, "attention_mask must have shape [batch, pos] = ",
                expected, ", got ", mask.sizes());
  MECHLAB_CHECK(!at::isFloatingType(mask.scalar_type()) && !at::isComplexType(mask.scalar_type()),
                "attention_mask must be an integer or bool tensor of 0/1, got ", mask.scalar_type());
  if (mask.scalar_type() == at::kBool || mask.numel() == 0) return;
  const at::Tensor bad = mask.ne(0).logical_and(mask.ne(1));  // [batch, pos]
  if (!bad.any().item<bool>()) return;
  const at::Tensor at_ = bad.nonzero()[0].cpu();  // [2]: the first offending [row, position]
  const int64_t row = at_[0].item<int64_t>(), col = at_[1].item<int64_t>();
  MECHLAB_CHECK(false, "attention_mask must hold only 0 (padding) and 1 (real token); found ",
                mask[row][col].item<int64_t>(), " at [", row, ", ", col, "]");
}

Transformer::Transformer(ModelConfig cfg, uint64_t seed)
    : Transformer(cfg, init_weights(cfg, seed)) {}

Transformer::Transformer(ModelConfig cfg, TransformerWeights weights)
    : cfg_(std::move(cfg)), w_(std::move(weights)) {
  cfg_.validate();
  for (const ParamSlot& slot : param_slots(cfg_, w_)) {
    MECHLAB_CHECK(slot.tensor->defined(), "parameter ", slot.name, " is missing");
    MECHLAB_CHECK(slot.tensor->sizes().vec() == slot.shape, "parameter ", slot.name, " has shape ",
                  slot.tensor->sizes(), " but the config needs ", at::IntArrayRef(slot.shape));
  }
}

Transformer Transformer::load(const std::string& path) {
  Checkpoint ckpt = load_checkpoint(path);
  // The model takes W_E's dtype; the checkpoint's tensors become its weights
  // without a copy (no random initialisation first: peak memory is one model).
  at::ScalarType dtype = at::kFloat;
  for (const auto& [name, tensor] : ckpt.params) {
    if (name == "embed.W_E" && at::isFloatingType(tensor.scalar_type())) dtype = tensor.scalar_type();
  }
  TransformerWeights weights;
  try {
    weights = weights_from_params(ckpt.config, ckpt.params, at::TensorOptions(dtype));
  } catch (const Error& e) {
    throw Error(str_cat("checkpoint ", path, ": ", e.what()));
  }
  return Transformer(std::move(ckpt.config), std::move(weights));
}

void Transformer::save(const std::string& path) const { save_checkpoint(path, cfg_, named_parameters()); }

TransformerWeights& Transformer::mutable_weights() {
  packed_.clear();
  packed_stamp_.clear();
  return w_;
}

std::vector<std::pair<std::string, at::Tensor>> Transformer::named_parameters() const {
  auto& w = const_cast<TransformerWeights&>(w_);  // param_slots needs slots; we only read
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const ParamSlot& slot : param_slots(cfg_, w)) out.emplace_back(slot.name, *slot.tensor);
  return out;
}

void Transformer::load_parameters(const std::vector<std::pair<std::string, at::Tensor>>& params) {
  w_ = weights_from_params(cfg_, params, w_.W_E.options());
  mutable_weights();
}

Transformer& Transformer::to(const at::Device& device) {
  for (const ParamSlot& slot : param_slots(cfg_, mutable_weights())) {
    *slot.tensor = slot.tensor->to(device);
  }
  rotary_ = {};
  return *this;
}

Transformer& Transformer::to(at::ScalarType dtype) {
  MECHLAB_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf ||
                    dtype == at::kDouble,
                "a model's dtype must be float32, bfloat16, float16 or float64, got ", dtype);
  for (const ParamSlot& slot : param_slots(cfg_, mutable_weights())) {
    *slot.tensor = slot.tensor->to(dtype);
  }
  rotary_ = {};
  return *this;
}

at::Tensor Transformer::check_tokens(const at::Tensor& tokens) const {
  MECHLAB_CHECK(tokens.defined(), "tokens are empty (undefined tensor)");
  MECHLAB_CHECK(tokens.scalar_type() == at::kLong || tokens.scalar_type() == at::kInt,
                "tokens must be int64 or int32, got ", tokens.scalar_type(),
                " (floating tensors are residual streams: pass start_at_layer for those)");
  MECHLAB_CHECK(tokens.dim() == 1 || tokens.dim() == 2,
                "tokens must have shape [batch, pos] or [pos], got ", tokens.sizes());
  at::Tensor t = tokens.dim() == 1 ? tokens.unsqueeze(0) : tokens;
  MECHLAB_CHECK(t.size(1) > 0, "tokens have no positions (shape ", t.sizes(), ")");
  MECHLAB_CHECK(t.size(1) <= cfg_.n_ctx, "sequence of ", t.size(1),
                " tokens is longer than the model's ", cfg_.describe_n_ctx(),
                "; truncate or split the prompts");
  t = t.to(device(), at::kLong);
  if (t.numel() > 0) {
    auto [lo, hi] = at::aminmax(t);
    const int64_t min_id = lo.item<int64_t>(), max_id = hi.item<int64_t>();
    MECHLAB_CHECK(min_id >= 0, "token id ", min_id, " is negative");
    MECHLAB_CHECK(max_id < cfg_.d_vocab, "token id ", max_id, " is out of range: d_vocab is ",
                  cfg_.d_vocab, " (ids must be < d_vocab; tokenizer and model mismatch?)");
  }
  return t;
}

const std::pair<at::Tensor, at::Tensor>& Transformer::packed_qkv(int layer) const {
  const LayerWeights& b = w_.blocks[layer];
  std::vector<int64_t> stamp;
  for (const at::Tensor* t : {&b.W_Q, &b.W_K, &b.W_V, &b.b_Q, &b.b_K, &b.b_V}) {
    stamp.push_back(reinterpret_cast<int64_t>(t->data_ptr()));
    // Inference tensors (made under at::InferenceMode) keep no version counter.
    stamp.push_back(t->is_inference() ? -1 : static_cast<int64_t>(t->_version()));
  }
  packed_.resize(cfg_.n_layers);
  packed_stamp_.resize(cfg_.n_layers);
  // Under autograd with trainable weights the packing must stay in the graph,
  // so it is rebuilt each forward; otherwise it is reused until a weight moves.
  const bool in_graph = at::GradMode::is_enabled() && b.W_Q.requires_grad();
  // A packing made under at::InferenceMode is an inference tensor, which
  // autograd refuses to save: a later forward that records a graph (gradients
  // with respect to activations, as attribution patching takes) packs anew.
  const bool stale_inference = packed_[layer].first.defined() &&
                               packed_[layer].first.is_inference() &&
                               !c10::InferenceMode::is_enabled() && at::GradMode::is_enabled();
  if (in_graph || stale_inference || packed_stamp_[layer] != stamp ||
      !packed_[layer].first.defined()) {
    packed_[layer] = pack_qkv(b);
    packed_stamp_[layer] = in_graph ? std::vector<int64_t>{} : stamp;
  }
  return packed_[layer];
}

at::Tensor Transformer::embed(const at::Tensor& tokens, const at::Tensor& positions,
                              const at::Tensor& key_mask, const Hooks& hooks) const {
  const int64_t batch = tokens.size(0), pos = tokens.size(1);
  at::Tensor embed = w_.W_E.index_select(0, tokens.reshape(-1)).view({batch, pos, -1});
  hooks({HookKind::embed, -1}, embed);
  if (cfg_.positional != Positional::learned) return embed;
  at::Tensor pos_embed;  // [batch, pos, d_model]
  if (positions.dim() == 1) {
    pos_embed = w_.W_pos.index_select(0, positions).unsqueeze(0).expand({batch, pos, -1});
  } else {
    pos_embed = w_.W_pos.index_select(0, positions.reshape(-1)).view({batch, pos, -1});
    pos_embed = pos_embed.masked_fill(key_mask.logical_not().unsqueeze(-1), 0.0);
  }
  hooks({HookKind::pos_embed, -1}, pos_embed);
  return embed + pos_embed;
}

at::Tensor Transformer::block(int layer, const at::Tensor& resid_pre_in,
                              const AttentionContext& ctx, const Hooks& hooks) const {
  const LayerWeights& w = w_.blocks[layer];
  at::Tensor resid_pre = resid_pre_in;
  hooks({HookKind::resid_pre, layer}, resid_pre);

  const HookSite ln1_scale{HookKind::ln1_scale, layer}, ln1_norm{HookKind::ln1_normalized, layer};
  const bool split = hooks.listens({HookKind::q_input, layer}) ||
                     hooks.listens({HookKind::k_input, layer}) ||
                     hooks.listens({HookKind::v_input, layer});
  at::Tensor attn_out;
  if (split) {
    // TransformerLens's use_split_qkv_input: a copy of resid_pre per head,
    // each normalised separately, so q, k and v inputs can be patched apart.
    auto per_head = [&](int64_t n, HookKind kind) {
      at::Tensor x = resid_pre.unsqueeze(2).expand({-1, -1, n, -1}).contiguous();
      hooks({kind, layer}, x);
      return x;
    };
    at::Tensor q_in = per_head(cfg_.n_heads, HookKind::q_input);
    at::Tensor k_in = per_head(cfg_.kv_heads(), HookKind::k_input);
    at::Tensor v_in = per_head(cfg_.kv_heads(), HookKind::v_input);
    q_in = apply_norm(cfg_, q_in, w.ln1_w, w.ln1_b, ln1_scale, ln1_norm, hooks);
    k_in = apply_norm(cfg_, k_in, w.ln1_w, w.ln1_b, ln1_scale, ln1_norm, hooks);
    v_in = apply_norm(cfg_, v_in, w.ln1_w, w.ln1_b, ln1_scale, ln1_norm, hooks);
    attn_out = attention_forward(cfg_, w, layer, q_in, k_in, v_in, true, ctx, hooks);
  } else {
    at::Tensor x = apply_norm(cfg_, resid_pre, w.ln1_w, w.ln1_b, ln1_scale, ln1_norm, hooks);
    AttentionContext c = ctx;
    std::tie(c.packed_qkv_w, c.packed_qkv_b) = packed_qkv(layer);
    attn_out = attention_forward(cfg_, w, layer, x, x, x, false, c, hooks);
  }
  hooks({HookKind::attn_out, layer}, attn_out);

  if (!cfg_.has_mlp()) {
    at::Tensor resid_post = resid_pre + attn_out;
    hooks({HookKind::resid_post, layer}, resid_post);
    return resid_post;
  }
  at::Tensor resid_mid;  // the stream the MLP reads (resid_pre in parallel models)
  if (cfg_.parallel_attn_mlp) {
    resid_mid = resid_pre;
  } else {
    resid_mid = resid_pre + attn_out;
    hooks({HookKind::resid_mid, layer}, resid_mid);
  }
  at::Tensor mlp_in = resid_mid;
  if (hooks.listens({HookKind::mlp_in, layer})) {
    mlp_in = resid_mid.clone();  // an in-place edit of mlp_in must not reach resid_mid
    hooks({HookKind::mlp_in, layer}, mlp_in);
  }
  at::Tensor x = apply_norm(cfg_, mlp_in, w.ln2_w, w.ln2_b, {HookKind::ln2_scale, layer},
                            {HookKind::ln2_normalized, layer}, hooks);
  at::Tensor mlp_out = mlp_forward(cfg_, w, layer, x, hooks);
  hooks({HookKind::mlp_out, layer}, mlp_out);
  at::Tensor resid_post =
      cfg_.parallel_attn_mlp ? resid_pre + attn_out + mlp_out : resid_mid + mlp_out;
  hooks({HookKind::resid_post, layer}, resid_post);
  return resid_post;
}

at::Tensor Transformer::unembed(const at::Tensor& resid, const Hooks& hooks) const {
  at::Tensor x = resid;
  if (cfg_.final_norm) {
    x = apply_norm(cfg_, x, w_.ln_final_w, w_.ln_final_b, {HookKind::ln_final_scale, -1},
                   {HookKind::ln_final_normalized, -1}, hooks);
  }
  const at::Tensor W_U = cfg_.tied_embeddings ? w_.W_E.t() : w_.W_U;  // [d_model, d_vocab]
  auto sizes = x.sizes().vec();
  at::Tensor logits = at::addmm(w_.b_U, x.reshape({-1, sizes.back()}), W_U);
  sizes.back() = cfg_.d_vocab;
  return logits.view(sizes);
}

at::Tensor Transformer::forward(const at::Tensor& input, const ForwardOptions& opts) const {
  const Hooks hooks{opts.hooks()};
  const int stop = opts.stop_at_layer() ? *opts.stop_at_layer() : cfg_.n_layers;
  MECHLAB_CHECK(opts.start_at_layer() >= 0 && opts.start_at_layer() <= cfg_.n_layers,
                "start_at_layer = ", opts.start_at_layer(), " is outside [0, ", cfg_.n_layers, "]");
  MECHLAB_CHECK(stop >= opts.start_at_layer() && stop <= cfg_.n_layers, "stop_at_layer = ", stop,
                " must be in [start_at_layer = ", opts.start_at_layer(), ", ", cfg_.n_layers, "]");

  const bool from_tokens = opts.start_at_layer() == 0 && !at::isFloatingType(input.scalar_type());
  at::Tensor tokens, resid;
  if (from_tokens) {
    tokens = check_tokens(input);
  } else {
    MECHLAB_CHECK(input.dim() == 3 || opts.start_at_layer() > 0, "tokens must be int64 or int32, got ",
                  input.scalar_type(), " of shape ", input.sizes(),
                  " (a floating input is a residual stream [batch, pos, d_model])");
    MECHLAB_CHECK(input.dim() == 3 && input.size(2) == cfg_.d_model,
                  "a residual-stream input must have shape [batch, pos, d_model = ", cfg_.d_model,
                  "], got ", input.sizes());
    MECHLAB_CHECK(input.size(1) <= cfg_.n_ctx, "sequence of ", input.size(1),
                  " positions is longer than the model's ", cfg_.describe_n_ctx());
    resid = input.to(device(), dtype());
  }
  const int64_t batch = from_tokens ? tokens.size(0) : resid.size(0);
  const int64_t pos = from_tokens ? tokens.size(1) : resid.size(1);

  AttentionContext ctx;
  ctx.materialise_pattern = opts.materialise_attention();
  at::Tensor new_mask;   // [batch, pos] bool, true = real token; undefined = no padding
  if (opts.attention_mask().defined()) {
    const at::Tensor& m = opts.attention_mask();
    check_attention_mask(m, {batch, pos});
    new_mask = m.to(device()).ne(0);
  }
  at::Tensor positions;  // [pos] without padding or cache, [batch, pos] with
  MECHLAB_CHECK(opts.kv_cache() == nullptr || opts.prefix() == nullptr,
                "a forward takes a KV cache or a key/value prefix, not both");
  if (opts.kv_cache() != nullptr) {
    MECHLAB_CHECK(from_tokens && !opts.stop_at_layer(),
                  "a KV cache needs token input and a run to the logits (no start_at_layer or "
                  "stop_at_layer): every layer must cache the new positions");
    KVCache& cache = *opts.kv_cache();
    cache.check_compatible(cfg_, batch, pos, dtype(), device());
    if (!new_mask.defined()) {
      new_mask = at::ones({batch, pos}, at::TensorOptions(at::kBool).device(device()));
    }
    ctx.key_mask = at::cat({cache.key_mask(), new_mask}, 1);  // [batch, past + pos]
    ctx.kv_cache = &cache;
    // Each row's real tokens count positions from 0 across the cache (padding
    // repeats its neighbour's position and is never attended to), as
    // TransformerLens's get_offset_position_ids and Hugging Face's generate do.
    positions = (ctx.key_mask.to(at::kLong).cumsum(1) - 1).clamp_min(0);
    positions = positions.narrow(1, cache.length(), pos);  // [batch, pos]
  } else if (opts.prefix() != nullptr) {
    const KVPrefix& prefix = *opts.prefix();
    prefix.check_compatible(cfg_, opts.start_at_layer(), batch, dtype(), device());
    const int64_t past = prefix.length(), copies = batch / prefix.batch();
    MECHLAB_CHECK(past + pos <= cfg_.n_ctx, "a key/value prefix of ", past, " positions and ", pos,
                  " new ones are longer than the model's ", cfg_.describe_n_ctx());
    const auto bool_opts = at::TensorOptions(at::kBool).device(device());
    if (prefix.key_mask.defined() || new_mask.defined()) {
      at::Tensor past_mask = prefix.key_mask.defined()
                                 ? prefix.key_mask.to(device()).repeat({copies, 1})
                                 : at::ones({batch, past}, bool_opts);  // [batch, past]
      if (!new_mask.defined()) new_mask = at::ones({batch, pos}, bool_opts);
      ctx.key_mask = at::cat({past_mask, new_mask}, 1);  // [batch, past + pos]
      // Positions count each row's real tokens across prefix and new positions.
      positions = (ctx.key_mask.to(at::kLong).cumsum(1) - 1).clamp_min(0).narrow(1, past, pos);
    } else {
      positions = at::arange(past, past + pos, at::TensorOptions(at::kLong).device(device()));
    }
    ctx.prefix = &prefix;
  } else if (new_mask.defined()) {
    ctx.key_mask = new_mask;
    // Real tokens count positions from 0; padding sits at position 0.
    positions = (ctx.key_mask.to(at::kLong).cumsum(1) - 1).clamp_min(0);
  } else {
    positions = at::arange(pos, at::TensorOptions(at::kLong).device(device()));
  }
  if (cfg_.positional == Positional::rotary) {
    if (!rotary_.cos.defined()) rotary_ = make_rotary_tables(cfg_, w_.W_E.options());
    ctx.rotary = &rotary_;
    ctx.positions = positions;
  }

  if (from_tokens) resid = embed(tokens, positions, new_mask, hooks);
  for (int layer = opts.start_at_layer(); layer < stop; ++layer) {
    resid = block(layer, resid, ctx, hooks);
  }
  if (opts.stop_at_layer()) return resid;
  at::Tensor logits = unembed(resid, hooks);
  // Last, so a forward that throws (a hook, say) leaves the cache as it was.
  if (opts.kv_cache() != nullptr) opts.kv_cache()->commit(new_mask);
  return logits;
}

at::Tensor loss_per_token(const at::Tensor& logits, const at::Tensor& tokens,
                          const at::Tensor& attention_mask) {
  MECHLAB_CHECK(logits.dim() == 3, "logits must be [batch, pos, d_vocab], got ", logits.sizes());
  at::Tensor t = tokens.dim() == 1 ? tokens.unsqueeze(0) : tokens;
  MECHLAB_CHECK(t.size(0) == logits.size(0) && t.size(1) == logits.size(1),
                "tokens ", t.sizes(), " do not match logits ", logits.sizes());
  const int64_t pos = logits.size(1);
  at::Tensor log_probs = at::log_softmax(logits.narrow(1, 0, pos - 1).to(at::kFloat), -1);
  at::Tensor next = t.narrow(1, 1, pos - 1).to(logits.device(), at::kLong).unsqueeze(-1);
  at::Tensor loss = -log_probs.gather(-1, next).squeeze(-1);  // [batch, pos - 1]
  if (attention_mask.defined()) {
    at::Tensor m = attention_mask.to(logits.device()).ne(0);
    loss = loss * (m.narrow(1, 0, pos - 1) & m.narrow(1, 1, pos - 1));
  }
  return loss;
}

at::Tensor mean_loss(const at::Tensor& logits, const at::Tensor& tokens,
                     const at::Tensor& attention_mask) {
  at::Tensor per_token = loss_per_token(logits, tokens, attention_mask);
  if (!attention_mask.defined()) return per_token.mean();
  at::Tensor m = attention_mask.to(logits.device()).ne(0);
  const int64_t pos = m.size(1);
  at::Tensor counted = (m.narrow(1, 0, pos - 1) & m.narrow(1, 1, pos - 1)).sum();
  return per_token.sum() / counted;
}

}  // namespace mechlab::core
