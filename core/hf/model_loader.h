// One entry point for every model source mechlab reads:
//   - a mechlab HDF5 checkpoint (core/model/checkpoint.h),
//   - a Hugging Face model folder (core/hf/hf_model.h).
//
// Example:
//   auto model = mechlab::core::load_model("gpt2/");         // HF folder
//   auto toy = mechlab::core::load_model("toy.h5", {at::kBFloat16});
//   // TransformerLens's from_pretrained (processed weights):
//   auto tl = mechlab::core::load_model("gpt2/", {std::nullopt, mechlab::core::ProcessOptions::all()});
#pragma once

#include "core/model/transformer.h"
#include "core/model/weight_processing.h"
#include "core/util/options.h"

#include <ATen/ATen.h>

#include <optional>
#include <string>

namespace mechlab::core {

struct LoadOptions {
  /// float32, bfloat16 or float16; unset = as stored.
  MECHLAB_OPTION(LoadOptions, std::optional<at::ScalarType>, dtype, std::nullopt)
  /// Weight processing (fold_ln, centring, ...; core/model/weight_processing.h).
  /// Default: none, the weights as stored. It runs in the wider of the stored
  /// and the asked-for dtype (and in float32 at least), before narrowing.
  MECHLAB_OPTION(LoadOptions, ProcessOptions, process, {})
};

/// Loads a checkpoint file or a Hugging Face folder (a directory with
/// config.json) onto the CPU. A single .safetensors file is refused with a
/// hint to pass its folder (its config.json says what the tensors are).
Transformer load_model(const std::string& path, const LoadOptions& options = {});

/// "mechlab checkpoint" or "Hugging Face folder (GPT2LMHeadModel)": what
/// load_model would read, for messages; throws like load_model for a path
/// that is neither.
std::string describe_model_source(const std::string& path);

}  // namespace mechlab::core
