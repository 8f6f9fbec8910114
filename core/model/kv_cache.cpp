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

}  // namespace mechlab::core
