// Named model shapes for `mechlab new`, the demo and the benchmarks.
#pragma once

#include "core/model/model_config.h"

#include <string>
#include <vector>

namespace mechlab::core {

/// "gpt2-small" (12 layers, d_model 768: the benchmark shape), "tiny"
/// (2 layers, d_model 64), "attn-only-2l", "llama-tiny" (rotary, RMSNorm,
/// gated SiLU MLP, GQA), "neox-tiny" (parallel attention + MLP, partial rotary).
ModelConfig preset(const std::string& name);
std::vector<std::string> preset_names();

}  // namespace mechlab::core
