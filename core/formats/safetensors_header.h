// The safetensors header: parsing and validation without LibTorch.
//
// This is the part of the safetensors reader that sees untrusted bytes; it
// needs only the standard library and nlohmann-json, so the libFuzzer target
// (tests/fuzz/safetensors_fuzz.cpp) links it without LibTorch. The ATen side
// (memory mapping, tensors, the writer) is core/formats/safetensors.h.
//
// File layout (https://github.com/huggingface/safetensors, format as of 0.4):
//
//   bytes [0, 8)         N, unsigned 64-bit little-endian: header length
//   bytes [8, 8 + N)     header: a UTF-8 JSON object, possibly padded at the
//                        end with spaces (writers pad to a multiple of 8)
//                          "__metadata__": {string: string}      (optional)
//                          "<tensor name>": {"dtype": "F32",
//                                            "shape": [d0, d1, ...],
//                                            "data_offsets": [begin, end]}
//   bytes [8 + N, EOF)   the data buffer; a tensor's bytes are
//                        [8 + N + begin, 8 + N + end), row-major, little-endian
//
// What parse_safetensors_header refuses, each with a mechlab::Error naming the
// file (and the tensor where there is one):
//   - a file shorter than 8 bytes; N = 0; N beyond the end of the file or
//     above kMaxSafetensorsHeaderBytes (100 MB, as the Rust reference);
//   - a header that does not start with '{', is not valid JSON / UTF-8, is
//     not an object, or has a duplicate key (at any depth: JSON parsers
//     disagree on which duplicate wins, so a file could mean two things);
//   - "__metadata__" that is not an object of strings;
//   - an entry that is not an object, lacks dtype/shape/data_offsets or has
//     another key; an unknown dtype; a shape or offset that is not an array
//     of non-negative integers; a dimension above 2^63 - 1; begin > end;
//   - end - begin != (product of shape) x (bytes per element), with overflow
//     checked;
//   - tensors that overlap, leave a hole between them, or end beyond the
//     data buffer; bytes after the last tensor (trailing garbage). The Rust
//     reference refuses holes and trailing bytes too: the buffer must be
//     exactly covered, which keeps a file from hiding a second payload.
//   - an empty tensor name.
// Sub-byte dtypes (F4, F6_*) are refused as unsupported.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace mechlab::core {

inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

/// safetensors dtypes with a whole number of bytes per element.
enum class StDtype { BOOL, U8, I8, F8_E5M2, F8_E4M3, I16, U16, F16, BF16, I32, U32, F32, I64, U64, F64 };

/// "F32" etc.; element size in bytes.
const char* st_dtype_name(StDtype d);
size_t st_dtype_size(StDtype d);
/// Parses a dtype name; false when unknown.
bool st_dtype_from_name(const std::string& name, StDtype* out);

struct StTensorInfo {
  std::string name;
  StDtype dtype = StDtype::F32;
  std::vector<uint64_t> shape;
  uint64_t begin = 0, end = 0;  ///< byte offsets relative to the data buffer
  uint64_t numel() const;       ///< product of shape (validated not to overflow)
};

struct StHeader {
  uint64_t header_bytes = 0;  ///< N
  uint64_t data_start = 0;    ///< 8 + N: file offset of the data buffer
  uint64_t data_bytes = 0;    ///< length of the data buffer
  std::vector<StTensorInfo> tensors;  ///< sorted by begin offset (file order)
  std::map<std::string, std::string> metadata;

  /// Index into `tensors`, or -1.
  int64_t find(const std::string& name) const;
};

/// Parses and validates the header of a safetensors file whose complete
/// contents are `bytes[0, size)`. `label` (usually the path) names the file in
/// error messages. Throws mechlab::Error; never reads outside the buffer.
StHeader parse_safetensors_header(const uint8_t* bytes, size_t size, const std::string& label);

/// The bytes of a header (length prefix, JSON, space padding to a multiple of
/// 8) for tensors laid out back to back in the given order: begin/end of each
/// entry are assigned here. Names must be unique and non-empty.
std::string serialize_safetensors_header(std::vector<StTensorInfo>& tensors,
                                         const std::map<std::string, std::string>& metadata);

}  // namespace mechlab::core
