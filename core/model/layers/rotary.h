// Rotary position embeddings, GPT-NeoX style ("rotate half"), on the first
// rotary_dim dimensions of each head, as TransformerLens does with
// rotary_adjacent_pairs = false (Llama, Mistral, Qwen2, Pythia):
//   angle(pos, i) = pos / base^(i / (rotary_dim/2)),  i < rotary_dim/2, repeated twice
//   x_rot * cos + rotate_half(x_rot) * sin,  rotate_half([a, b]) = [-b, a]
// with the inverse frequencies 1 / base^(i / (rotary_dim/2)) rescaled by
// cfg.rope_scaling when set (linear, llama3: see RopeScaling).
#pragma once

#include "core/model/model_config.h"

#include <ATen/core/Tensor.h>

namespace mechlab::core {

struct RotaryTables {
  at::Tensor cos, sin;  // [n_ctx, rotary_dim], model dtype, model device
};

/// The inverse frequencies, rope_scaling applied: [rotary_dim/2], float64.
at::Tensor rotary_inv_freq(const ModelConfig& cfg);

RotaryTables make_rotary_tables(const ModelConfig& cfg, const at::TensorOptions& options);

/// x: [batch, pos, head, d_head]; positions: [pos] or [batch, pos] (int64).
at::Tensor apply_rotary(const at::Tensor& x, const RotaryTables& tables,
                        const at::Tensor& positions);

}  // namespace mechlab::core
