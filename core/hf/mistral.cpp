// Mistral (MistralForCausalLM): Llama's layout (core/hf/llama.cpp) without
// biases, with an explicit head_dim in newer configs, and sliding-window
// attention: `sliding_window` (null in Mistral v0.2+) caps n_ctx, since a
// window no shorter than the sequence is full causal attention.
#include "core/hf/architecture.h"
#include "core/hf/llama_family.h"

namespace mechlab::core::hf {
namespace {

ModelConfig read_config(const HfConfig& c) {
  return read_llama_family_config(c, LlamaVariant::mistral);
}

TransformerWeights map_tensors(const ModelConfig& m, const HfConfig& c, HfTensors& t) {
  return map_llama_family_tensors(m, llama_biases(c, LlamaVariant::mistral), t);
}

}  // namespace

Architecture mistral_architecture() {
  return {"MistralForCausalLM", "mistral", read_config, map_tensors};
}

}  // namespace mechlab::core::hf
