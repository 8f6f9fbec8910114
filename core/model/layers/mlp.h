// The MLP of a block, with TransformerLens's hooks:
//   standard: pre = x W_in + b_in;  post = act(pre);              out = post W_out + b_out
//   gated:    pre = x W_gate; pre_linear = x W_in;
//             post = act(pre) * pre_linear + b_in;                out = post W_out + b_out
// hook_pre/hook_pre_linear/hook_post: [batch, pos, d_mlp]. (hook_mlp_out is the block's.)
#pragma once

#include "core/model/hook_dispatch.h"
#include "core/model/weights.h"

namespace mechlab::core {

at::Tensor activation(Activation act, const at::Tensor& x);

/// x: [batch, pos, d_model] (already normalised by ln2) -> [batch, pos, d_model]
at::Tensor mlp_forward(const ModelConfig& cfg, const LayerWeights& w, int layer,
                       const at::Tensor& x, const Hooks& hooks);

}  // namespace mechlab::core
