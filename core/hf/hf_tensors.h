// HfTensors: the tensors of a Hugging Face model folder, from
// `model.safetensors` or from the shards named in
// `model.safetensors.index.json` (`{"metadata": {...}, "weight_map":
// {tensor name: shard file name}}`), all memory-mapped (core/formats/safetensors.h).
//
// An architecture's mapping takes every tensor it needs by name and shape;
// at the end check_all_used() refuses tensors nobody took, so a checkpoint of
// a variant mechlab does not model (extra biases, q/k norms, ...) is an
// error rather than a silently different model.
//
// The index is checked against the shards: shard names must be plain file
// names in the folder, every tensor must be in the shard the index names, and
// no tensor may appear in two shards or be missing from the index.
// Pickle files (pytorch_model.bin) are never read.
#pragma once

#include "core/formats/safetensors.h"

#include <ATen/ATen.h>

#include <set>
#include <string>
#include <map>
#include <vector>

namespace mechlab::core::hf {

class HfTensors {
 public:
  static HfTensors open(const std::string& folder);

  const std::string& folder() const { return folder_; }
  /// The safetensors files, in index order.
  const std::vector<SafetensorsFile>& files() const { return files_; }

  bool has(const std::string& name) const { return where_.count(name) > 0; }
  /// The stored dtype of a tensor (throws when absent).
  at::ScalarType stored_dtype(const std::string& name) const;

  /// The dtype take() converts to (default float32).
  void set_dtype(at::ScalarType dtype) { dtype_ = dtype; }
  at::ScalarType dtype() const { return dtype_; }

  /// The tensor, checked to have `shape` (error naming the tensor, its file
  /// and both shapes) and a floating dtype, converted to dtype() (zero-copy
  /// when it already has it); marks it used.
  at::Tensor take(const std::string& name, at::IntArrayRef shape);
  /// Marks a tensor that is deliberately ignored (e.g. GPT-2's causal-mask
  /// buffer `attn.bias`) as used, if present.
  void skip(const std::string& name);
  /// Refuses the first tensor that nobody took, naming it and its file.
  void check_all_used(const std::string& architecture) const;

 private:
  const SafetensorsFile& file_of(const std::string& name) const;

  std::string folder_;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, size_t> where_;  // tensor name -> index in files_ (sorted: stable messages)
  std::set<std::string> used_;
  at::ScalarType dtype_ = at::kFloat;
};

}  // namespace mechlab::core::hf
