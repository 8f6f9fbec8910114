// write_safetensors: the writing half of the safetensors format
// (core/formats/safetensors.h reads it): an 8-byte little-endian header
// length, a JSON header {name: {dtype, shape, data_offsets}, "__metadata__":
// {string: string}} padded with spaces to a multiple of 8 bytes, then the
// tensors' bytes, row-major, in the order given.
//
// Written as every mechlab output is: to `path + ".tmp"`, each write and the
// close checked, then renamed onto `path`; on failure the temporary goes and
// whatever was at `path` stays.
#pragma once

#include <ATen/core/Tensor.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace mechlab::core {

/// Tensors of dtype float32/64, float16, bfloat16, int8/16/32/64, uint8 or
/// bool, on any device (copied to the CPU). Names must be unique and non-empty.
void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace mechlab::core
