// What a circuit-graph sender adds to the residual stream on the source run
// minus what it adds on the base run: the quantity path patching adds to a
// receiver's input and edge attribution multiplies by the receiver's gradient.
//
//   input      resid_pre[0]_source - resid_pre[0]_base              [batch, pos, d_model]
//   a{L}.h{H}  (z_source - z_base)[:, :, H] @ W_O[H]                 [batch, pos, d_model]
//              (b_O is shared by the layer's heads and cancels in the difference)
//   m{L}       mlp_out_source - mlp_out_base                         [batch, pos, d_model]
//
// The residual stream is the sum of these contributions, so a receiver's input
// on the source run minus on the base run is exactly the sum of the
// differences of the senders that have an edge to it.
//
// Example:
//   at::Tensor d = sender_delta(model, graph.parse_sender("a0.h3"), base_cache, source_cache);
#pragma once

#include "hooks/hooked_transformer.h"
#include "patching/circuit_graph.h"

#include <ATen/core/Tensor.h>

#include <map>
#include <string>
#include <vector>

namespace mechlab::patching {

/// The hooks sender_delta reads: blocks.0.hook_resid_pre, every hook_z and
/// (with MLPs) every hook_mlp_out.
std::vector<std::string> sender_hooks(const core::ModelConfig& cfg);

/// Every head of one layer at once: z_* [batch, pos, head, d_head] ->
/// [head, batch, pos, d_model], in `dtype`.
at::Tensor head_output_delta(const hooks::HookedTransformer& model, int layer, const at::Tensor& z_base,
                             const at::Tensor& z_source, at::ScalarType dtype);

/// One sender's difference [batch, pos, d_model] in `dtype`; `base` and
/// `source` map sender_hooks() to their activations.
at::Tensor sender_delta(const hooks::HookedTransformer& model, const CircuitNode& sender,
                        const std::map<std::string, at::Tensor>& base,
                        const std::map<std::string, at::Tensor>& source, at::ScalarType dtype);

}  // namespace mechlab::patching
