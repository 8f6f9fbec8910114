// Loading a Hugging Face model folder (config.json + model.safetensors, or
// shards with model.safetensors.index.json) into a mechlab Transformer in
// TransformerLens layout. Supported: see hf::supported_architectures().
//
// Example:
//   auto model = mechlab::core::hf::load_hf_model("models/pythia-70m", {at::kBFloat16});
#pragma once

#include "core/model/transformer.h"
#include "core/util/options.h"

#include <ATen/ATen.h>

#include <optional>
#include <string>

namespace mechlab::core::hf {

struct HfLoadOptions {
  /// float32, bfloat16 or float16. Unset = the dtype the weights are stored
  /// in (float32 for float64 files).
  MECHLAB_OPTION(HfLoadOptions, std::optional<at::ScalarType>, dtype, std::nullopt)
};

/// True when `path` is a folder with a config.json.
bool is_hf_folder(const std::string& path);

/// Reads config.json and the weights, converts them to TransformerLens layout
/// and returns a CPU model. Tensors whose layout and dtype need no change
/// stay memory-mapped (core/formats/safetensors.h explains the lifetime); the rest
/// are converted copies. Every failure is a mechlab::Error naming the file,
/// key or tensor.
Transformer load_hf_model(const std::string& folder, const HfLoadOptions& options = {});

/// Only the ModelConfig a folder describes (reads config.json, no weights).
ModelConfig read_hf_config(const std::string& folder);

}  // namespace mechlab::core::hf
