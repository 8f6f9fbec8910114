#include "core/model/kv_cache.h"

#include "core/util/error.h"

#include <ATen/ATen.h>

namespace mechlab::core {

KVCache::KVCache(const ModelConfig& cfg, int64_t batch, int64_t capacity,
                 const at::TensorOptions& options)
    : batch_(batch), capacity_(capacity), kv_heads_(cfg.kv_heads()), d_head_(cfg.d_head) {
  MECHLAB_CHECK(batch > 0, "a KV cache needs a positive batch size, got ", batch);
  MECHLAB_CHECK(capacity > 0 && capacity <= cfg.n_ctx, "a KV cache holds 1 to ", cfg.describe_n_ctx(),
                " positions, asked for ", capacity);
  // Preallocated: appending by concatenation would copy the whole cache every step.
  for (int l = 0; l < cfg.n_layers; ++l) {
    keys_.push_back(at::empty({batch, capacity, kv_heads_, d_head_}, options));
    values_.push_back(at::empty({batch, capacity, kv_heads_, d_head_}, options));
  }
  mask_ = at::zeros({batch, capacity}, options.dtype(at::kBool));
}

at::Tensor KVCache::key_mask() const { return mask_.narrow(1, 0, length_); }

std::pair<at::Tensor, at::Tensor> KVCache::layer(int layer) const {
  MECHLAB_CHECK(layer >= 0 && layer < n_layers(), "layer ", layer, " is outside [0, ", n_layers(),
                ")");
  return {keys_[layer].narrow(1, 0, length_), values_[layer].narrow(1, 0, length_)};
}

std::pair<at::Tensor, at::Tensor> KVCache::append(int layer, const at::Tensor& k,
                                                  const at::Tensor& v) {
  MECHLAB_ASSERT(layer >= 0 && layer < n_layers());
  const int64_t n = k.size(1);
  MECHLAB_ASSERT(length_ + n <= capacity_ && k.size(0) == batch_ && v.sizes() == k.sizes());
  keys_[layer].narrow(1, length_, n).copy_(k);
  values_[layer].narrow(1, length_, n).copy_(v);
  return {keys_[layer].narrow(1, 0, length_ + n), values_[layer].narrow(1, 0, length_ + n)};
}

void KVCache::commit(const at::Tensor& new_mask) {
  const int64_t n = new_mask.size(1);
  MECHLAB_ASSERT(length_ + n <= capacity_ && new_mask.size(0) == batch_);
  mask_.narrow(1, length_, n).copy_(new_mask);
  length_ += n;
}

void KVCache::check_compatible(const ModelConfig& cfg, int64_t batch, int64_t new_positions,
                               at::ScalarType dtype, const at::Device& device) const {
  MECHLAB_CHECK(cfg.n_layers == n_layers() && cfg.kv_heads() == kv_heads_ && cfg.d_head == d_head_,
                "this KV cache was made for another model (", n_layers(), " layers, ", kv_heads_,
                " kv heads of ", d_head_, "); make one with this model's config");
  MECHLAB_CHECK(batch == batch_, "the KV cache holds ", batch_, " sequences but the tokens have ",
                batch, " rows");
  MECHLAB_CHECK(dtype == this->dtype() && device == this->device(), "the KV cache is ",
                this->dtype(), " on ", this->device(), " but the model is ", dtype, " on ", device,
                "; make the cache after moving the model");
  MECHLAB_CHECK(length_ + new_positions <= capacity_, "the KV cache holds ", length_,
                " of at most ", capacity_, " positions: ", new_positions,
                " more do not fit (make it larger, up to n_ctx = ", cfg.n_ctx, ")");
}

int64_t KVPrefix::length() const {
  for (const at::Tensor& k : keys) {
    if (k.defined()) return k.size(1);
  }
  return 0;
}

int64_t KVPrefix::batch() const {
  for (const at::Tensor& k : keys) {
    if (k.defined()) return k.size(0);
  }
  return 0;
}

KVPrefix KVPrefix::first(int64_t n) const {
  MECHLAB_ASSERT(n >= 0 && n <= length());
  KVPrefix out;
  for (size_t l = 0; l < keys.size(); ++l) {
    out.keys.push_back(keys[l].defined() ? keys[l].narrow(1, 0, n) : at::Tensor());
    out.values.push_back(values[l].defined() ? values[l].narrow(1, 0, n) : at::Tensor());
  }
  if (key_mask.defined()) out.key_mask = key_mask.narrow(1, 0, n);
  return out;
}

void KVPrefix::check_compatible(const ModelConfig& cfg, int start_layer, int64_t rows,
                                at::ScalarType dtype, const at::Device& device) const {
  MECHLAB_CHECK(static_cast<int>(keys.size()) == cfg.n_layers &&
                    static_cast<int>(values.size()) == cfg.n_layers,
                "the key/value prefix has ", keys.size(), " layers of keys and ", values.size(),
                " of values but the model has ", cfg.n_layers,
                "; give one entry per layer (undefined before start_at_layer)");
  const int64_t b = batch(), n = length();
  MECHLAB_CHECK(b > 0 && rows % b == 0, "the key/value prefix holds ", b,
                " sequences, which do not divide the input's ", rows,
                " rows; stack whole copies of the prefix's batch");
  for (int l = start_layer; l < cfg.n_layers; ++l) {
    for (const at::Tensor* t : {&keys[l], &values[l]}) {
      MECHLAB_CHECK(t->defined() && t->dim() == 4 && t->size(0) == b && t->size(1) == n &&
                        t->size(2) == cfg.kv_heads() && t->size(3) == cfg.d_head,
                    "the key/value prefix of layer ", l, " must be [batch = ", b, ", length = ", n,
                    ", kv_head = ", cfg.kv_heads(), ", d_head = ", cfg.d_head, "], got ",
                    t->defined() ? t->sizes() : at::IntArrayRef{});
      MECHLAB_CHECK(t->scalar_type() == dtype && t->device() == device,
                    "the key/value prefix of layer ", l, " is ", t->scalar_type(), " on ",
                    t->device(), " but the model is ", dtype, " on ", device,
                    "; take the prefix from a run of this model");
    }
  }
  MECHLAB_CHECK(!key_mask.defined() || (key_mask.dim() == 2 && key_mask.size(0) == b &&
                                        key_mask.size(1) == n && key_mask.scalar_type() == at::kBool),
                "the key/value prefix's key_mask must be bool [batch = ", b, ", length = ", n,
                "], got ", key_mask.sizes());
}

at::Tensor concat_prefix(const at::Tensor& prefix, const at::Tensor& fresh) {
  const int64_t b = prefix.size(0), n = prefix.size(1), rows = fresh.size(0), m = fresh.size(1);
  MECHLAB_ASSERT(rows % b == 0);
  // One allocation, two copies: the prefix broadcast over the copies, then the new positions.
  auto sizes = fresh.sizes().vec();
  sizes[1] = n + m;
  at::Tensor out = at::empty(sizes, fresh.options());  // [copies * batch, n + m, kv_head, d_head]
  auto copy_major = out.sizes().vec();
  copy_major[0] = b;
  copy_major.insert(copy_major.begin(), rows / b);
  out.view(copy_major).narrow(2, 0, n).copy_(prefix.unsqueeze(0));
  out.narrow(1, n, m).copy_(fresh);
  return out;
}

}  // namespace mechlab::core
