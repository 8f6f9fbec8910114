// libFuzzer target for the safetensors header parser (core/formats/safetensors_header.h).
//
// Built standalone, without LibTorch, by scripts/fuzz.sh:
//   clang++ -fsanitize=fuzzer,address,undefined tests/fuzz/safetensors_fuzz.cpp
//           core/formats/safetensors_header.cpp
//
// Findings are: any crash or sanitizer report (out-of-bounds read, overflow,
// leak), any exception other than mechlab::Error (the parser must turn every
// bad input into one clear error), and a broken invariant of an accepted file:
// the tensors must cover the data buffer exactly, in order, each holding
// numel x element-size bytes, and the header must survive a write/read round
// trip through serialize_safetensors_header unchanged.
#include "core/util/error.h"
#include "core/formats/safetensors_header.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

void require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "invariant broken: %s\n", what);
    std::abort();
  }
}

void check_accepted(const mechlab::core::StHeader& h, size_t size) {
  using namespace mechlab::core;
  require(h.data_start == 8 + h.header_bytes, "data_start");
  require(h.data_start + h.data_bytes == size, "data buffer extent");
  uint64_t covered = 0;
  for (const StTensorInfo& t : h.tensors) {
    require(t.begin == covered, "tensors contiguous and sorted");
    require(t.end >= t.begin && t.end <= h.data_bytes, "tensor inside the buffer");
    require(t.end - t.begin == t.numel() * st_dtype_size(t.dtype), "byte count");
    require(h.find(t.name) >= 0, "find");
    covered = t.end;
  }
  require(covered == h.data_bytes, "buffer fully covered");

  // Round trip: the same tensors written again parse to the same header.
  std::vector<StTensorInfo> copy = h.tensors;
  std::string bytes = serialize_safetensors_header(copy, h.metadata);
  bytes.append(h.data_bytes, '\0');
  StHeader again = parse_safetensors_header(reinterpret_cast<const uint8_t*>(bytes.data()),
                                            bytes.size(), "round trip");
  require(again.tensors.size() == h.tensors.size(), "round trip: count");
  require(again.metadata == h.metadata, "round trip: metadata");
  for (size_t i = 0; i < h.tensors.size(); ++i) {
    const StTensorInfo &a = h.tensors[i], &b = again.tensors[i];
    require(a.name == b.name && a.dtype == b.dtype && a.shape == b.shape && a.begin == b.begin &&
                a.end == b.end,
            "round trip: tensor");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    mechlab::core::StHeader h = mechlab::core::parse_safetensors_header(data, size, "fuzz-input");
    check_accepted(h, size);
  } catch (const mechlab::Error&) {
    // A refusal with a message: the expected outcome for a bad file.
  }
  return 0;
}
