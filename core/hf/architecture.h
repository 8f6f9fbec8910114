// The Hugging Face architectures mechlab loads, one file each (llama.cpp
// style: read hyper-parameters, map tensors), and the registry that picks one
// from config.json's `architectures` (or `model_type`).
//
// A mapping produces TransformerLens's layout (core/model/weights.h): W_Q [head,
// d_model, d_head], W_O [head, d_head, d_model], W_in [d_model, d_mlp], W_U
// [d_model, d_vocab], ... from Hugging Face's Linear [out, in] (or GPT-2's
// Conv1D [in, out]) weights.
#pragma once

#include "core/hf/hf_config.h"
#include "core/hf/hf_tensors.h"
#include "core/model/model_config.h"
#include "core/model/weights.h"

#include <string>
#include <vector>

namespace mechlab::core::hf {

struct Architecture {
  std::string name;        ///< config.json "architectures" entry, e.g. "GPT2LMHeadModel"
  std::string model_type;  ///< config.json "model_type", e.g. "gpt2"
  /// Hyper-parameters; refuses missing keys, wrong types and unsupported
  /// variants, naming the key.
  ModelConfig (*read_config)(const HfConfig& config);
  /// Tensors in TransformerLens layout, in tensors.dtype().
  TransformerWeights (*map_tensors)(const ModelConfig& cfg, const HfConfig& config,
                                    HfTensors& tensors);
};

Architecture gpt2_architecture();      // core/hf/gpt2.cpp
Architecture gpt_neox_architecture();  // core/hf/gpt_neox.cpp
Architecture llama_architecture();     // core/hf/llama.cpp
Architecture mistral_architecture();   // core/hf/mistral.cpp
Architecture qwen2_architecture();     // core/hf/qwen2.cpp

/// Every supported architecture.
const std::vector<Architecture>& architectures();
/// "GPT2LMHeadModel, GPTNeoXForCausalLM, ..." for messages and --help.
std::string supported_architectures();
/// The architecture config.json names; refuses an unknown one, listing the
/// supported ones.
const Architecture& find_architecture(const HfConfig& config);

}  // namespace mechlab::core::hf
