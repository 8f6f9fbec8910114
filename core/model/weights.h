// The parameters of a Transformer, in TransformerLens's layout and names, so
// that W_Q[h] is head h's query matrix and weights move between tools as is.
#pragma once

#include "core/model/model_config.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace mechlab::core {

struct LayerWeights {
  at::Tensor ln1_w, ln1_b;  // [d_model] (ln1_w: layernorm/rmsnorm, ln1_b: layernorm only)
  at::Tensor W_Q;           // [head, d_model, d_head]
  at::Tensor b_Q;           // [head, d_head]
  at::Tensor W_K, W_V;      // [kv_head, d_model, d_head]
  at::Tensor b_K, b_V;      // [kv_head, d_head]
  at::Tensor W_O;           // [head, d_head, d_model]
  at::Tensor b_O;           // [d_model]
  at::Tensor ln2_w, ln2_b;  // [d_model]
  at::Tensor W_in;          // [d_model, d_mlp]
  at::Tensor W_gate;        // [d_model, d_mlp] (gated MLP only)
  at::Tensor b_in;          // [d_mlp]
  at::Tensor W_out;         // [d_mlp, d_model]
  at::Tensor b_out;         // [d_model]
};

struct TransformerWeights {
  at::Tensor W_E;                   // [d_vocab, d_model]
  at::Tensor W_pos;                 // [n_ctx, d_model] (learned positions only)
  std::vector<LayerWeights> blocks;  // [n_layers]
  at::Tensor ln_final_w, ln_final_b;  // [d_model]
  at::Tensor W_U;                   // [d_model, d_vocab] (untied only)
  at::Tensor b_U;                   // [d_vocab]
};

/// A parameter's TransformerLens name, the tensor slot that holds it, and the
/// shape the config requires. One list drives checkpoints, `info` and `to()`.
struct ParamSlot {
  std::string name;  // e.g. "blocks.0.attn.W_Q"
  at::Tensor* tensor;
  std::vector<int64_t> shape;
};

/// Every parameter the config has, in a fixed order.
std::vector<ParamSlot> param_slots(const ModelConfig& cfg, TransformerWeights& w);

/// Weights made of `params` (name -> tensor, TransformerLens names), each
/// converted to `target`'s dtype and device. Refuses a missing, unexpected,
/// mis-shaped or non-floating parameter, naming it. The tensors are used as they
/// are when they already match `target` (no copy), so that a model loaded from
/// a checkpoint holds its weights once, not twice.
TransformerWeights weights_from_params(const ModelConfig& cfg,
                                       const std::vector<std::pair<std::string, at::Tensor>>& params,
                                       const at::TensorOptions& target);

/// GPT-2-style initialisation: weights ~ N(0, init_std), biases 0, norm gains 1.
TransformerWeights init_weights(const ModelConfig& cfg, uint64_t seed, double init_std = 0.02);

}  // namespace mechlab::core
