// safetensors files: a memory-mapped reader that hands out ATen tensors, and a
// writer. The byte layout and everything the reader refuses are documented in
// core/formats/safetensors_header.h (the LibTorch-free part that parses the header).
// Nothing is ever unpickled: safetensors is raw bytes plus a JSON header.
//
// Lifetime of the tensors a SafetensorsFile hands out:
//   - tensor(name) with the stored dtype is zero-copy: a CPU tensor over the
//     mapped bytes. It shares ownership of the mapping, so it stays valid
//     after the SafetensorsFile is destroyed; the mapping is released when
//     the file object and the last such tensor are gone.
//   - The mapping is private (MAP_PRIVATE): writing into such a tensor makes
//     a private copy of the touched pages and never reaches the file.
//   - A tensor whose bytes are not aligned for its dtype (possible in files
//     from careless writers), bool tensors (each byte is checked to be 0/1)
//     and any dtype conversion are copies that own their memory.
//   - As with every mmap reader (Hugging Face's included), truncating the file
//     from another process while tensors still view it makes later reads of
//     those pages fail with SIGBUS; copy (`.clone()`) what must outlive edits.
//
// Example:
//   auto f = mechlab::core::SafetensorsFile::open("model.safetensors");
//   at::Tensor wte = f.tensor("transformer.wte.weight");            // [d_vocab, d_model], mmap
//   at::Tensor w32 = f.tensor("transformer.wte.weight", at::kFloat); // converted copy if needed
#pragma once

#include "core/formats/safetensors_header.h"

#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace mechlab::core {

/// The ATen dtype of a safetensors dtype, and back (throws for dtypes
/// safetensors cannot store, naming `what`).
at::ScalarType to_scalar_type(StDtype d);
StDtype to_st_dtype(at::ScalarType s, const std::string& what);

class SafetensorsFile {
 public:
  /// Maps and validates the file; throws mechlab::Error naming the file (and
  /// tensor) for anything core/formats/safetensors_header.h refuses, or when the path
  /// is missing, unreadable or not a regular file.
  static SafetensorsFile open(const std::string& path);

  const std::string& path() const { return path_; }
  const StHeader& header() const { return header_; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  /// Tensor names in file order.
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const { return index_.count(name) > 0; }
  /// Throws naming the file and tensor when absent.
  const StTensorInfo& info(const std::string& name) const;

  /// The tensor in its stored dtype (zero-copy where possible, see above).
  at::Tensor tensor(const std::string& name) const;
  /// The tensor converted to `dtype` (a copy unless the dtype is the stored one).
  at::Tensor tensor(const std::string& name, at::ScalarType dtype) const;

 private:
  struct Mapping;
  SafetensorsFile(std::string path, std::shared_ptr<Mapping> map, StHeader header);

  std::string path_;
  std::shared_ptr<Mapping> map_;
  StHeader header_;
  std::unordered_map<std::string, size_t> index_;  // name -> position in header_.tensors
};

/// Writes tensors (any device, contiguous or not) to a safetensors file,
/// replacing `path`: written to `path + ".tmp"` and renamed, so an interrupted
/// write never leaves a partial file. Tensors are laid out by element size
/// (largest first) then name, so every tensor is aligned for its dtype, as
/// Hugging Face's writer does. Refuses empty or duplicate names.
void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace mechlab::core
