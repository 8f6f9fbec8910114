#include "core/formats/safetensors.h"

#include "core/util/error.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

namespace mechlab::core {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors data is little-endian; mechlab maps it as is");

/// A whole file mapped privately (copy-on-write) into memory.
struct SafetensorsFile::Mapping {
  uint8_t* data = nullptr;
  size_t size = 0;
  ~Mapping() {
    if (data != nullptr) ::munmap(data, size);
  }
};

namespace {

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

std::string errno_text() { return std::strerror(errno); }

}  // namespace

at::ScalarType to_scalar_type(StDtype d) {
  switch (d) {
    case StDtype::BOOL: return at::kBool;
    case StDtype::U8: return at::kByte;
    case StDtype::I8: return at::kChar;
    case StDtype::F8_E5M2: return at::kFloat8_e5m2;
    case StDtype::F8_E4M3: return at::kFloat8_e4m3fn;
    case StDtype::I16: return at::kShort;
    case StDtype::U16: return at::kUInt16;
    case StDtype::F16: return at::kHalf;
    case StDtype::BF16: return at::kBFloat16;
    case StDtype::I32: return at::kInt;
    case StDtype::U32: return at::kUInt32;
    case StDtype::F32: return at::kFloat;
    case StDtype::I64: return at::kLong;
    case StDtype::U64: return at::kUInt64;
    case StDtype::F64: return at::kDouble;
  }
  throw Error("internal error (a mechlab bug): unhandled safetensors dtype");
}

StDtype to_st_dtype(at::ScalarType s, const std::string& what) {
  for (StDtype d : {StDtype::BOOL, StDtype::U8, StDtype::I8, StDtype::F8_E5M2, StDtype::F8_E4M3,
                    StDtype::I16, StDtype::U16, StDtype::F16, StDtype::BF16, StDtype::I32,
                    StDtype::U32, StDtype::F32, StDtype::I64, StDtype::U64, StDtype::F64}) {
    if (to_scalar_type(d) == s) return d;
  }
  throw Error(str_cat("cannot store ", what, " in safetensors: dtype ", s, " has no safetensors "
                      "equivalent"));
}

SafetensorsFile::SafetensorsFile(std::string path, std::shared_ptr<Mapping> map, StHeader header)
    : path_(std::move(path)), map_(std::move(map)), header_(std::move(header)) {
  for (size_t i = 0; i < header_.tensors.size(); ++i) index_.emplace(header_.tensors[i].name, i);
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  Fd f;
  f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  MECHLAB_CHECK(f.fd >= 0, "cannot open safetensors file '", path, "': ", errno_text());
  struct stat st {};
  MECHLAB_CHECK(::fstat(f.fd, &st) == 0, "cannot stat '", path, "': ", errno_text());
  MECHLAB_CHECK(S_ISREG(st.st_mode), "'", path, "' is not a regular file (a safetensors file "
                "was expected)");
  auto map = std::make_shared<Mapping>();
  map->size = static_cast<size_t>(st.st_size);
  if (map->size > 0) {
    // PROT_WRITE + MAP_PRIVATE: pages are copy-on-write, never written back.
    void* p = ::mmap(nullptr, map->size, PROT_READ | PROT_WRITE, MAP_PRIVATE, f.fd, 0);
    MECHLAB_CHECK(p != MAP_FAILED, "cannot memory-map '", path, "': ", errno_text());
    map->data = static_cast<uint8_t*>(p);
  }
  StHeader header = parse_safetensors_header(map->data, map->size, path);
  return SafetensorsFile(path, std::move(map), std::move(header));
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  for (const StTensorInfo& t : header_.tensors) out.push_back(t.name);
  return out;
}

const StTensorInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = index_.find(name);
  MECHLAB_CHECK(it != index_.end(), "safetensors file '", path_, "' has no tensor '", name, "'");
  return header_.tensors[it->second];
}

at::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const StTensorInfo& t = info(name);
  const at::ScalarType dtype = to_scalar_type(t.dtype);
  std::vector<int64_t> sizes(t.shape.begin(), t.shape.end());  // each <= 2^63 - 1 (validated)
  const auto options = at::TensorOptions(dtype);
  if (t.numel() == 0) return at::empty(sizes, options);
  uint8_t* bytes = map_->data + header_.data_start + t.begin;
  const size_t nbytes = t.end - t.begin;

  const bool aligned = reinterpret_cast<uintptr_t>(bytes) % st_dtype_size(t.dtype) == 0;
  if (!aligned || t.dtype == StDtype::BOOL) {
    at::Tensor out = at::empty(sizes, options);  // owns its memory
    std::memcpy(out.data_ptr(), bytes, nbytes);
    if (t.dtype == StDtype::BOOL) {
      const bool ok = std::all_of(bytes, bytes + nbytes, [](uint8_t b) { return b <= 1; });
      MECHLAB_CHECK(ok, "safetensors file '", path_, "': tensor '", name,
                    "' is BOOL but holds bytes other than 0 and 1");
    }
    return out;
  }
  std::shared_ptr<Mapping> keep = map_;
  return at::from_blob(bytes, sizes, [keep](void*) mutable { keep.reset(); }, options);
}

at::Tensor SafetensorsFile::tensor(const std::string& name, at::ScalarType dtype) const {
  at::Tensor t = tensor(name);
  return t.scalar_type() == dtype ? t : t.to(dtype);
}

void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  std::vector<std::pair<std::string, at::Tensor>> order;
  for (const auto& [name, t] : tensors) {
    MECHLAB_CHECK(t.defined(), "cannot save '", path, "': tensor '", name, "' is undefined");
    order.emplace_back(name, t);
  }
  std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    const size_t sa = a.second.element_size(), sb = b.second.element_size();
    return sa != sb ? sa > sb : a.first < b.first;
  });
  std::vector<StTensorInfo> infos;
  for (const auto& [name, t] : order) {
    StTensorInfo info;
    info.name = name;
    info.dtype = to_st_dtype(t.scalar_type(), "tensor '" + name + "'");
    for (int64_t d : t.sizes()) info.shape.push_back(static_cast<uint64_t>(d));
    infos.push_back(std::move(info));
  }
  std::string header;
  try {
    header = serialize_safetensors_header(infos, metadata);
  } catch (const Error& e) {
    throw Error(str_cat("cannot save '", path, "': ", e.what()));
  }

  const std::string tmp = path + ".tmp";
  FILE* out = std::fopen(tmp.c_str(), "wb");
  MECHLAB_CHECK(out != nullptr, "cannot write '", tmp, "': ", errno_text());
  bool ok = std::fwrite(header.data(), 1, header.size(), out) == header.size();
  for (size_t i = 0; ok && i < order.size(); ++i) {
    at::Tensor t = order[i].second.detach().to(at::kCPU).contiguous();
    const size_t n = t.numel() * t.element_size();
    ok = n == 0 || std::fwrite(t.data_ptr(), 1, n, out) == n;
  }
  ok = (std::fclose(out) == 0) && ok;
  if (!ok) {
    std::remove(tmp.c_str());
    throw Error(str_cat("cannot write '", tmp, "' (disk full?)"));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = errno_text();
    std::remove(tmp.c_str());
    throw Error(str_cat("cannot rename '", tmp, "' to '", path, "': ", why));
  }
}

}  // namespace mechlab::core
