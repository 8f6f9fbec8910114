// Normalisation layers with TransformerLens's hook semantics:
//   LayerNorm: hook_scale = sqrt(mean((x - mean x)^2) + eps)       [..., 1]
//              hook_normalized = (x - mean x) / scale * w + b      [..., d_model]
//   RMSNorm:   hook_scale = sqrt(mean(x^2) + eps)
//              hook_normalized = x / scale   (the gain w is applied after the hook)
//   LNPre (layernorm_pre), RMSPre (rmsnorm_pre): the same without w and b,
//              hook_normalized = (x - mean x) / scale, resp. x / scale; what
//              fold_ln leaves (core/model/weight_processing.h).
// Half-precision inputs are normalised in float32, as TransformerLens does.
#pragma once

#include "core/model/hook_dispatch.h"
#include "core/model/model_config.h"

#include <ATen/core/Tensor.h>

namespace mechlab::core {

/// x: [..., d_model]. `scale_site`/`normalized_site` are ln1/ln2/ln_final's.
/// w, b: [d_model], undefined where the norm kind has none.
/// Returns x unchanged for NormKind::none.
at::Tensor apply_norm(const ModelConfig& cfg, const at::Tensor& x, const at::Tensor& w,
                      const at::Tensor& b, HookSite scale_site, HookSite normalized_site,
                      const Hooks& hooks);

}  // namespace mechlab::core
