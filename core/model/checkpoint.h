// mechlab checkpoints: a model's config and parameters in one HDF5 file.
//
// Layout (version 1):
//
//   /                          root group, attributes:
//     mechlab_format  string   "checkpoint" (activation stores etc. use other
//                              names; a file without it is not a mechlab file)
//     mechlab_version int64    1; readers refuse versions newer than theirs
//     config          string   ModelConfig as JSON (ModelConfig::to_json_string)
//     tokenizer       string   optional: JSON of the tokenizer the ids belong to, as a
//                              dataset records it (core/data/dataset.h; a toy task's word
//                              vocabulary: {"kind": "word", "vocab": [...]}). Loaders
//                              attach it (core::tokenizer::find_model_tokenizer).
//   /params                    group, one dataset per parameter:
//     <name>                   the parameter's full dotted name, e.g.
//                              "blocks.0.attn.W_Q", "embed.W_E" (a name is one
//                              HDF5 link: dots are not group separators)
//                              dtype float32, bfloat16 or float16, stored as
//                              H5File stores them (core/formats/hdf5_file.h); bfloat16
//                              datasets carry mechlab_dtype = "bfloat16".
//                              Shape as in the model, contiguous layout.
//
// Strings are variable-length UTF-8 and numbers are int64/float64 scalars, so
// h5py writes compatible files with plain `f.attrs["x"] = ...` and
// `f["params/<name>"] = array`.
//
// save_checkpoint writes `path + ".tmp"` and renames it onto `path` only when
// complete, so an interrupted save never leaves a partial file under `path`.
// load_checkpoint checks the format, version and config; matching parameter
// names and shapes against a model is the caller's job.
#pragma once

#include "core/model/model_config.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace mechlab::core {

class H5File;

/// The format name and newest version this mechlab reads and writes.
inline constexpr const char* kCheckpointFormat = "checkpoint";
inline constexpr int64_t kCheckpointVersion = 1;
/// The optional root attribute holding the tokenizer's JSON.
inline constexpr const char* kCheckpointTokenizerAttr = "tokenizer";

struct Checkpoint {
  ModelConfig config;
  /// Sorted by name (the file's order); CPU tensors in their stored dtype.
  std::vector<std::pair<std::string, at::Tensor>> params;
  /// The stored tokenizer JSON; "" when the checkpoint has none.
  std::string tokenizer;
};

/// Writes a checkpoint (replacing any file at `path`). Refuses an invalid
/// config, empty/duplicate names, names with '/', and dtypes other than
/// float32, bfloat16 and float16. Tensors may live on any device. `extra`, when
/// given, writes more groups into the same file before it is renamed into
/// place (training state: core/train/train_loop.h); readers of the model
/// ignore them.
void save_checkpoint(const std::string& path, const ModelConfig& config,
                     const std::vector<std::pair<std::string, at::Tensor>>& params,
                     const std::function<void(H5File&)>& extra = {});

/// Reads a checkpoint, refusing with a message that names `path` when the file
/// is not a mechlab checkpoint, is from a newer mechlab, or has a bad config.
Checkpoint load_checkpoint(const std::string& path);

}  // namespace mechlab::core
