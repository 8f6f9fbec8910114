// What Llama, Mistral and Qwen2 share: the same tensor names and layout
// (pre-norm RMSNorm, rotary, gated SiLU MLP, grouped-query attention), with
// per-architecture differences in biases and attention windows.
#pragma once

#include "core/hf/hf_config.h"
#include "core/hf/hf_tensors.h"
#include "core/model/model_config.h"
#include "core/model/weights.h"

namespace mechlab::core::hf {

enum class LlamaVariant { llama, mistral, qwen2 };

/// Biases a variant's checkpoint carries.
struct LlamaBiases {
  bool qkv = false;  ///< q_proj/k_proj/v_proj.bias (Qwen2 always; Llama with attention_bias)
  bool o = false;    ///< o_proj.bias (Llama with attention_bias)
};
LlamaBiases llama_biases(const HfConfig& config, LlamaVariant variant);

ModelConfig read_llama_family_config(const HfConfig& config, LlamaVariant variant);
TransformerWeights map_llama_family_tensors(const ModelConfig& cfg, const LlamaBiases& biases,
                                            HfTensors& tensors);

}  // namespace mechlab::core::hf
