// KVCache: every layer's attention keys and values for the positions already
// run, so that generation feeds the model only the new tokens (TransformerLens's
// HookedTransformerKeyValueCache, Hugging Face's past_key_values).
//
// Layout: per layer, keys and values [batch, capacity, kv_head, d_head] allocated
// once; positions [0, length()) are filled. Keys are stored after rotary (with
// the position each token had), values as hook_v left them. A forward with a
// cache (ForwardOptions::kv_cache) takes the tokens that follow the cached ones,
// writes their keys and values at [length, length + new) in every layer, and
// on success commits them: length() grows by the number of new positions. A
// forward that throws (a hook, a bad input) commits nothing, so the cache
// stays as it was.
//
// Padding: the cache keeps the attention mask of everything it holds
// (key_mask()), so left-padded prompts and finished sequences stay masked in
// later steps, and each row's next position is its count of real tokens.
//
// Example:
//   core::KVCache cache(model.config(), /*batch=*/1, /*capacity=*/64,
//   model.weights().W_E.options()); ForwardOptions f; f.kv_cache = &cache; at::Tensor logits =
//   model.forward(prompt, f);          // [1, P, d_vocab] at::Tensor next = logits.select(1,
//   -1).argmax(-1);     // [1] logits = model.forward(next.view({1, 1}), f);          // [1, 1,
//   d_vocab], position P
#pragma once

#include "core/model/model_config.h"

#include <ATen/core/Tensor.h>

#include <utility>
#include <vector>

namespace mechlab::core {

class KVCache {
 public:
  /// An empty cache for `batch` sequences of at most `capacity` positions
  /// (capacity <= cfg.n_ctx); `options` are the model's dtype and device.
  KVCache(const ModelConfig& cfg, int64_t batch, int64_t capacity,
          const at::TensorOptions& options);

  int64_t batch() const { return batch_; }
  int64_t capacity() const { return capacity_; }
  /// Positions cached so far (padding included).
  int64_t length() const { return length_; }
  int n_layers() const { return static_cast<int>(keys_.size()); }
  at::Device device() const { return mask_.device(); }
  at::ScalarType dtype() const { return keys_.empty() ? at::kFloat : keys_[0].scalar_type(); }

  /// [batch, length] bool, true = real token.
  at::Tensor key_mask() const;
  /// Keys (after rotary) and values of one layer: [batch, length, kv_head, d_head] each.
  std::pair<at::Tensor, at::Tensor> layer(int layer) const;

  /// Forgets every position (length 0); the memory is kept.
  void clear() { length_ = 0; }

  // ---- used by Transformer::forward --------------------------------------
  /// Writes the new positions' keys and values of `layer` (k, v: [batch, new,
  /// kv_head, d_head]) after the committed ones and returns the layer's keys and
  /// values up to and including them: [batch, length + new, kv_head, d_head].
  std::pair<at::Tensor, at::Tensor> append(int layer, const at::Tensor& k, const at::Tensor& v);
  /// Makes `new_mask.size(1)` appended positions part of the cache; new_mask
  /// [batch, new] bool, true = real token.
  void commit(const at::Tensor& new_mask);
  /// Refuses a forward of `new_positions` tokens for `batch` rows on a model of
  /// `cfg`, `dtype` and `device` that this cache cannot serve, saying why.
  void check_compatible(const ModelConfig& cfg, int64_t batch, int64_t new_positions,
                        at::ScalarType dtype, const at::Device& device) const;

 private:
  int64_t batch_ = 0, capacity_ = 0, length_ = 0;
  int kv_heads_ = 0, d_head_ = 0;
  std::vector<at::Tensor> keys_, values_;  // per layer [batch, capacity, kv_head, d_head]
  at::Tensor mask_;                        // [batch, capacity] bool, valid up to length_
};

/// The keys and values of a sequence's first `length()` positions at every
/// layer, for a forward that runs only the positions after them
/// (ForwardOptions::prefix): activation patching at (layer L, position p)
/// leaves positions < p as the unpatched run had them at every layer >= L
/// (causal attention), so the restarted forward needs only positions >= p as
/// queries, attending to the unpatched run's keys and values before p.
/// Unlike KVCache it is only read, and one prefix serves a forward of several
/// stacked copies of its batch (rows = copies * batch, copy-major).
struct KVPrefix {
  /// Per layer [batch, length, kv_head, d_head]; keys after rotary (as
  /// hook_rot_k has them; hook_k in models without rotary), values as hook_v.
  /// Layers before the forward's start_at_layer may be undefined.
  std::vector<at::Tensor> keys, values;
  /// [batch, length] bool, true = real token; undefined = no padding.
  at::Tensor key_mask;

  int64_t length() const;
  int64_t batch() const;
  /// The first n positions of this prefix (views, no copy); n <= length().
  KVPrefix first(int64_t n) const;
  /// Refuses a prefix that cannot serve a forward of `rows` rows from layer
  /// `start_layer` on a model of `cfg`, `dtype` and `device`, saying why.
  void check_compatible(const ModelConfig& cfg, int start_layer, int64_t rows,
                        at::ScalarType dtype, const at::Device& device) const;
};

/// k, v of the new positions [copies * batch, new, kv_head, d_head] after the
/// prefix's `prefix` [batch, length, kv_head, d_head], repeated per copy:
/// [copies * batch, length + new, kv_head, d_head] (one copy of each).
at::Tensor concat_prefix(const at::Tensor& prefix, const at::Tensor& fresh);

}  // namespace mechlab::core
