// Helpers shared by the architecture files: Hugging Face Linear weights to
// TransformerLens per-head layouts, activation names, zero biases.
#pragma once

#include "core/hf/hf_config.h"
#include "core/hf/hf_tensors.h"
#include "core/model/model_config.h"

#include <ATen/ATen.h>

#include <optional>
#include <string>

namespace mechlab::core::hf {

/// `view` as a contiguous tensor (itself when already contiguous). Tensors
/// below kSerialCopyElements are copied on the calling thread: the layout
/// copies are memory-bound and small, and ATen's OpenMP fork/join per copy
/// costs more than the copy itself when cores are shared (GPT-2 124M loaded
/// in ~600 ms with parallel copies, 85-160 ms serial, on 2 busy cores). Larger
/// tensors go through ATen's parallel copy, which then pays off.
at::Tensor materialise(const at::Tensor& view);
inline constexpr int64_t kSerialCopyElements = int64_t{1} << 22;

/// Linear weight [n * d_head, d_model] (out, in) -> [n, d_model, d_head].
at::Tensor linear_to_heads(const at::Tensor& w, int64_t n, int64_t d_head);
/// Output projection [d_model, n * d_head] (out, in) -> [n, d_head, d_model].
at::Tensor out_proj_to_heads(const at::Tensor& w, int64_t n, int64_t d_head);
/// Bias [n * d_head] -> [n, d_head].
at::Tensor bias_to_heads(const at::Tensor& b, int64_t n, int64_t d_head);
/// Linear weight [out, in] -> [in, out], contiguous (TransformerLens's W_in/W_out/W_U).
at::Tensor transposed(const at::Tensor& w);
/// Zeros in the loading dtype (memset: no parallel region).
at::Tensor zeros(at::IntArrayRef shape, at::ScalarType dtype);

/// The activation named by config.json's `key` (fallback when absent):
/// gelu_new / gelu_pytorch_tanh / gelu_fast (tanh approximation), gelu, relu,
/// silu / swish. Anything else is refused naming the key and the choices.
Activation activation_from(const HfConfig& config, const std::string& key,
                           const std::string& fallback);

/// config.json's `rope_scaling`: none when absent, null or of type "default";
/// "linear" (factor) and "llama3" (factor, low_freq_factor, high_freq_factor,
/// original_max_position_embeddings) as transformers' modeling_rope_utils.py
/// reads them, the type under `rope_type` or the older `type`. Other types
/// (dynamic, yarn, longrope, ...) and unusable values are refused.
std::optional<RopeScaling> read_rope_scaling(const HfConfig& config);

/// "model.": the prefix under which a base-model checkpoint (without it) or a
/// *ForCausalLM checkpoint (with it) stores `probe`.
std::string detect_prefix(const HfTensors& tensors, const std::string& prefix,
                          const std::string& probe);

/// The model's name: the folder's last path component.
std::string folder_name(const std::string& folder);

}  // namespace mechlab::core::hf
