#include "core/formats/safetensors_header.h"

#include "core/util/error.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <set>

namespace mechlab::core {
namespace {

using nlohmann::json;

struct DtypeRow {
  StDtype dtype;
  const char* name;
  size_t size;
};
constexpr DtypeRow kDtypes[] = {
    {StDtype::BOOL, "BOOL", 1}, {StDtype::U8, "U8", 1},   {StDtype::I8, "I8", 1},
    {StDtype::F8_E5M2, "F8_E5M2", 1}, {StDtype::F8_E4M3, "F8_E4M3", 1},
    {StDtype::I16, "I16", 2},   {StDtype::U16, "U16", 2}, {StDtype::F16, "F16", 2},
    {StDtype::BF16, "BF16", 2}, {StDtype::I32, "I32", 4}, {StDtype::U32, "U32", 4},
    {StDtype::F32, "F32", 4},   {StDtype::I64, "I64", 8}, {StDtype::U64, "U64", 8},
    {StDtype::F64, "F64", 8},
};

// Deeper than any valid header (root object, entry object, shape array = 3).
constexpr int kMaxDepth = 8;
// Names printed in messages are cut and escaped: a hostile name must not
// flood the terminal or break the one-line error.
constexpr size_t kMaxPrintedName = 120;

std::string printable(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size() && i < kMaxPrintedName; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) {
      static const char* hex = "0123456789abcdef";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  if (s.size() > kMaxPrintedName) out += "...";
  return out;
}

class HeaderError {
 public:
  explicit HeaderError(std::string label) : label_(std::move(label)) {}
  template <typename... Args>
  [[noreturn]] void fail(const Args&... args) const {
    throw Error(str_cat("safetensors file '", label_, "': ", args...,
                        " (the file is corrupt or not a safetensors file; re-export it)"));
  }
  template <typename... Args>
  [[noreturn]] void fail_tensor(const std::string& tensor, const Args&... args) const {
    fail("tensor '", printable(tensor), "': ", args...);
  }

 private:
  std::string label_;
};

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Non-negative integers only: JSON floats, negatives and values beyond 2^64
// (which nlohmann parses as floats) are refused.
bool read_uint_array(const json& j, std::vector<uint64_t>* out) {
  if (!j.is_array()) return false;
  out->clear();
  for (const json& v : j) {
    if (!v.is_number_unsigned()) return false;
    out->push_back(v.get<uint64_t>());
  }
  return true;
}

json parse_json_checked(const char* begin, const char* end, const HeaderError& err) {
  // One set of keys per open object, to refuse duplicates (nlohmann keeps the
  // last silently; other readers keep the first).
  std::vector<std::set<std::string>> keys;
  int depth = 0;
  auto callback = [&](int, json::parse_event_t event, json& parsed) -> bool {
    switch (event) {
      case json::parse_event_t::object_start:
        keys.emplace_back();
        [[fallthrough]];
      case json::parse_event_t::array_start:
        if (++depth > kMaxDepth) err.fail("header JSON nests deeper than ", kMaxDepth, " levels");
        break;
      case json::parse_event_t::object_end:
        if (!keys.empty()) keys.pop_back();
        --depth;
        break;
      case json::parse_event_t::array_end:
        --depth;
        break;
      case json::parse_event_t::key:
        if (!keys.empty() && !keys.back().insert(parsed.get<std::string>()).second) {
          err.fail("header JSON has the key '", printable(parsed.get<std::string>()),
                   "' twice in one object");
        }
        break;
      case json::parse_event_t::value:
        break;
    }
    return true;
  };
  try {
    return json::parse(begin, end, callback, /*allow_exceptions=*/true, /*ignore_comments=*/false);
  } catch (const json::exception& e) {
    err.fail("header is not valid JSON: ", e.what());
  }
}

}  // namespace

const char* st_dtype_name(StDtype d) {
  for (const DtypeRow& r : kDtypes) {
    if (r.dtype == d) return r.name;
  }
  return "?";
}

size_t st_dtype_size(StDtype d) {
  for (const DtypeRow& r : kDtypes) {
    if (r.dtype == d) return r.size;
  }
  return 0;
}

bool st_dtype_from_name(const std::string& name, StDtype* out) {
  for (const DtypeRow& r : kDtypes) {
    if (name == r.name) {
      *out = r.dtype;
      return true;
    }
  }
  return false;
}

uint64_t StTensorInfo::numel() const {
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;
  return n;
}

int64_t StHeader::find(const std::string& name) const {
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (tensors[i].name == name) return static_cast<int64_t>(i);
  }
  return -1;
}

StHeader parse_safetensors_header(const uint8_t* bytes, size_t size, const std::string& label) {
  const HeaderError err(label);
  if (size < 8) err.fail("the file has ", size, " bytes, fewer than the 8-byte header length");
  StHeader h;
  h.header_bytes = read_u64_le(bytes);
  if (h.header_bytes == 0) err.fail("header length is 0");
  if (h.header_bytes > kMaxSafetensorsHeaderBytes) {
    err.fail("header length ", h.header_bytes, " bytes is above the ", kMaxSafetensorsHeaderBytes,
             "-byte limit");
  }
  if (h.header_bytes > size - 8) {
    err.fail("header length ", h.header_bytes, " bytes runs past the end of the ", size,
             "-byte file (truncated file?)");
  }
  h.data_start = 8 + h.header_bytes;
  h.data_bytes = size - h.data_start;

  const char* text = reinterpret_cast<const char*>(bytes + 8);
  if (text[0] != '{') err.fail("header does not start with '{'");
  json j = parse_json_checked(text, text + h.header_bytes, err);
  if (!j.is_object()) err.fail("header is not a JSON object");

  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) err.fail("\"__metadata__\" is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) {
          err.fail("\"__metadata__\" entry '", printable(m.key()), "' is not a string");
        }
        h.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (name.empty()) err.fail("a tensor has an empty name");
    if (!v.is_object()) err.fail_tensor(name, "entry is not an object");
    for (auto k = v.begin(); k != v.end(); ++k) {
      if (k.key() != "dtype" && k.key() != "shape" && k.key() != "data_offsets") {
        err.fail_tensor(name, "unexpected key '", printable(k.key()),
                        "' (entries have dtype, shape and data_offsets)");
      }
    }
    StTensorInfo t;
    t.name = name;
    auto d = v.find("dtype");
    if (d == v.end() || !d->is_string()) err.fail_tensor(name, "no \"dtype\" string");
    const std::string dtype = d->get<std::string>();
    if (!st_dtype_from_name(dtype, &t.dtype)) {
      err.fail_tensor(name, "unknown or unsupported dtype '", printable(dtype),
                      "' (supported: BOOL, U8, I8, F8_E5M2, F8_E4M3, I16, U16, F16, BF16, I32, "
                      "U32, F32, I64, U64, F64)");
    }
    auto s = v.find("shape");
    if (s == v.end() || !read_uint_array(*s, &t.shape)) {
      err.fail_tensor(name, "\"shape\" is missing or not an array of non-negative integers");
    }
    std::vector<uint64_t> offsets;
    auto o = v.find("data_offsets");
    if (o == v.end() || !read_uint_array(*o, &offsets) || offsets.size() != 2) {
      err.fail_tensor(name, "\"data_offsets\" is missing or not [begin, end] (non-negative integers)");
    }
    t.begin = offsets[0];
    t.end = offsets[1];
    if (t.begin > t.end) err.fail_tensor(name, "data_offsets [", t.begin, ", ", t.end, "] run backwards");

    uint64_t bytes_needed = st_dtype_size(t.dtype);
    for (uint64_t dim : t.shape) {
      // Tensor sizes are int64: a zero elsewhere in the shape would let a
      // huge dimension pass the byte-count check below.
      if (dim > static_cast<uint64_t>(INT64_MAX)) {
        err.fail_tensor(name, "shape has a dimension of ", dim, ", above 2^63 - 1");
      }
      if (__builtin_mul_overflow(bytes_needed, dim, &bytes_needed)) {
        err.fail_tensor(name, "shape is too large (its byte count overflows 64 bits)");
      }
    }
    if (t.end - t.begin != bytes_needed) {
      std::string shape;
      for (size_t i = 0; i < t.shape.size(); ++i) shape += (i ? ", " : "") + std::to_string(t.shape[i]);
      err.fail_tensor(name, "data_offsets [", t.begin, ", ", t.end, "] hold ", t.end - t.begin,
                      " bytes but dtype ", dtype, " with shape [", shape, "] needs ", bytes_needed);
    }
    if (t.end > h.data_bytes) {
      err.fail_tensor(name, "data_offsets [", t.begin, ", ", t.end, "] run past the end of the ",
                      h.data_bytes, "-byte data buffer (truncated file?)");
    }
    h.tensors.push_back(std::move(t));
  }

  std::sort(h.tensors.begin(), h.tensors.end(), [](const StTensorInfo& a, const StTensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t covered = 0;
  const StTensorInfo* previous = nullptr;
  for (const StTensorInfo& t : h.tensors) {
    if (t.begin < covered) {
      err.fail_tensor(t.name, "bytes [", t.begin, ", ", t.end, ") overlap tensor '",
                      printable(previous->name), "' [", previous->begin, ", ", previous->end, ")");
    }
    if (t.begin > covered) {
      err.fail_tensor(t.name, "starts at byte ", t.begin, " of the data buffer but the tensors "
                      "before it end at ", covered, " (a hole: safetensors buffers are contiguous)");
    }
    covered = t.end;
    previous = &t;
  }
  if (covered != h.data_bytes) {
    err.fail(h.data_bytes - covered, " bytes of trailing data after the last tensor (the data "
             "buffer has ", h.data_bytes, " bytes, tensors cover ", covered, ")");
  }
  return h;
}

std::string serialize_safetensors_header(std::vector<StTensorInfo>& tensors,
                                         const std::map<std::string, std::string>& metadata) {
  json j = json::object();
  if (!metadata.empty()) j["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (StTensorInfo& t : tensors) {
    MECHLAB_CHECK(!t.name.empty() && t.name != "__metadata__",
                  "cannot write a safetensors tensor named '", t.name, "'");
    MECHLAB_CHECK(!j.contains(t.name), "cannot write safetensors: tensor '", t.name,
                  "' appears twice");
    t.begin = offset;
    t.end = offset + t.numel() * st_dtype_size(t.dtype);
    offset = t.end;
    j[t.name] = {{"dtype", st_dtype_name(t.dtype)}, {"shape", t.shape},
                 {"data_offsets", {t.begin, t.end}}};
  }
  std::string text = j.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + text;
}

}  // namespace mechlab::core
