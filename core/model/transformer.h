// Transformer: a decoder-only transformer runtime on LibTorch (CPU or CUDA;
// float32, bfloat16 or float16) that calls a hook site at every activation
// TransformerLens names. See core/model/hook_site.h for the sites and their shapes.
//
// Example:
//   auto model = mechlab::core::Transformer::load("model.h5").to(at::kCUDA);
//   at::Tensor logits = model.forward(tokens);            // [batch, pos, d_vocab]
//   at::Tensor loss = mechlab::core::mean_loss(logits, tokens);
// Hooks, caches and the TransformerLens-style API live in hooks/HookedTransformer.
#pragma once

#include "core/model/hook_dispatch.h"
#include "core/model/layers/rotary.h"
#include "core/model/model_config.h"
#include "core/model/weights.h"
#include "core/util/options.h"

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace mechlab::core {

class KVCache;
struct KVPrefix;

/// Refuses an attention mask that is not `expected` in shape or not an
/// integer or bool tensor of 0 (padding) and 1 (real token), as the dataset
/// loader does: a 2 or a -1 would otherwise read as "real" silently.
void check_attention_mask(const at::Tensor& mask, at::IntArrayRef expected);

struct ForwardOptions {
  /// [batch, pos], 1 = real token, 0 = padding (left or right). Padded keys
  /// are never attended to; positions count real tokens only (TransformerLens).
  MECHLAB_OPTION(ForwardOptions, at::Tensor, attention_mask, {})
  /// First layer to run. With start_at_layer > 0 the input is the residual
  /// stream entering that layer, [batch, pos, d_model].
  MECHLAB_OPTION(ForwardOptions, int, start_at_layer, 0)
  /// Stop before this layer and return the residual stream entering it
  /// (exclusive, as TransformerLens). Unset = run to the logits.
  MECHLAB_OPTION(ForwardOptions, std::optional<int>, stop_at_layer, std::nullopt)
  /// Hook dispatch; null bypasses every hook site.
  MECHLAB_OPTION(ForwardOptions, HookDispatch*, hooks, nullptr)
  /// Always materialise attention patterns (else only where hooked).
  MECHLAB_OPTION(ForwardOptions, bool, materialise_attention, false)
  /// Generation (core/model/kv_cache.h): the input tokens follow the positions this
  /// cache holds; attention_mask (if any) covers the new tokens only; the cache
  /// grows by them. Hooks see the new positions, and keys the whole cache:
  /// hook_attn_scores/hook_pattern are [batch, head, pos, past + pos] and
  /// hook_rot_k [batch, past + pos, kv_head, d_head], as in TransformerLens.
  MECHLAB_OPTION(ForwardOptions, KVCache*, kv_cache, nullptr)
  /// Prefix reuse (core/model/kv_cache.h, KVPrefix; activation patching): the
  /// input (tokens, or the residual entering start_at_layer) holds the
  /// positions that follow the prefix's, and every layer from start_at_layer
  /// on attends to the prefix's keys and values for the positions before.
  /// The input may stack copies of the prefix's batch (rows = copies * batch,
  /// copy-major). attention_mask (if any) covers the new positions only; the
  /// prefix's key_mask covers its own. Hooks see the new positions (keys: all
  /// of them), as with kv_cache; the output covers the new positions. Not
  /// with kv_cache.
  MECHLAB_OPTION(ForwardOptions, const KVPrefix*, prefix, nullptr)
};

class Transformer {
 public:
  /// A model with GPT-2-style random initialisation (deterministic by seed).
  explicit Transformer(ModelConfig cfg, uint64_t seed = 0);
  Transformer(ModelConfig cfg, TransformerWeights weights);

  /// mechlab HDF5 checkpoint (see core/model/checkpoint.h); every parameter is
  /// checked for presence and shape before the model is built.
  static Transformer load(const std::string& path);
  void save(const std::string& path) const;

  const ModelConfig& config() const { return cfg_; }
  const TransformerWeights& weights() const { return w_; }
  /// Mutable access; derived caches (packed QKV) are rebuilt on next use.
  TransformerWeights& mutable_weights();
  /// (name, tensor) for every parameter, TransformerLens names.
  std::vector<std::pair<std::string, at::Tensor>> named_parameters() const;
  /// Replaces parameters by name; refuses unknown names, missing names and
  /// wrong shapes, naming the parameter.
  void load_parameters(const std::vector<std::pair<std::string, at::Tensor>>& params);

  /// Moves weights to a device and/or floating dtype (float32/bfloat16/float16).
  Transformer& to(const at::Device& device);
  Transformer& to(at::ScalarType dtype);
  at::Device device() const { return w_.W_E.device(); }
  at::ScalarType dtype() const { return w_.W_E.scalar_type(); }

  /// input: tokens [batch, pos] or [pos] (int32/int64), or, with
  /// start_at_layer > 0, a residual [batch, pos, d_model].
  /// Returns logits [batch, pos, d_vocab], or the residual if stop_at_layer is set.
  at::Tensor forward(const at::Tensor& input, const ForwardOptions& opts = {}) const;

  /// Checks tokens (dtype, rank, range, length) and returns them as int64
  /// [batch, pos] on the model's device. Throws mechlab::Error otherwise.
  at::Tensor check_tokens(const at::Tensor& tokens) const;

 private:
  at::Tensor embed(const at::Tensor& tokens, const at::Tensor& positions,
                   const at::Tensor& key_mask, const Hooks& hooks) const;
  at::Tensor block(int layer, const at::Tensor& resid_pre, const struct AttentionContext& ctx,
                   const Hooks& hooks) const;
  at::Tensor unembed(const at::Tensor& resid, const Hooks& hooks) const;
  const std::pair<at::Tensor, at::Tensor>& packed_qkv(int layer) const;

  ModelConfig cfg_;
  TransformerWeights w_;
  // Derived, rebuilt lazily; mutable because forward() is logically const.
  // Not thread-safe: one Transformer per thread when forwards run concurrently.
  mutable std::vector<std::pair<at::Tensor, at::Tensor>> packed_;   // per layer (W_qkv, b_qkv)
  mutable std::vector<std::vector<int64_t>> packed_stamp_;           // sources' versions
  mutable RotaryTables rotary_;
};

/// Next-token cross-entropy per position: [batch, pos - 1]. With an
/// attention mask, positions whose token or next token is padding count 0.
at::Tensor loss_per_token(const at::Tensor& logits, const at::Tensor& tokens,
                          const at::Tensor& attention_mask = {});
/// Mean over the counted positions (TransformerLens's loss).
at::Tensor mean_loss(const at::Tensor& logits, const at::Tensor& tokens,
                     const at::Tensor& attention_mask = {});

}  // namespace mechlab::core
