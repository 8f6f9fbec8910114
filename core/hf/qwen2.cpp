// Qwen2 / Qwen2.5 (Qwen2ForCausalLM): Llama's layout (core/hf/llama.cpp) with
// q/k/v biases always present (no o_proj bias), usually tied embeddings in
// the small models, and sliding-window attention only when
// use_sliding_window is true and a layer from max_window_layers on exists
// (then `sliding_window` caps n_ctx; core/hf/llama.cpp).
#include "core/hf/architecture.h"
#include "core/hf/llama_family.h"

namespace mechlab::core::hf {
namespace {

ModelConfig read_config(const HfConfig& c) {
  return read_llama_family_config(c, LlamaVariant::qwen2);
}

TransformerWeights map_tensors(const ModelConfig& m, const HfConfig& c, HfTensors& t) {
  return map_llama_family_tensors(m, llama_biases(c, LlamaVariant::qwen2), t);
}

}  // namespace

Architecture qwen2_architecture() { return {"Qwen2ForCausalLM", "qwen2", read_config, map_tensors}; }

}  // namespace mechlab::core::hf
