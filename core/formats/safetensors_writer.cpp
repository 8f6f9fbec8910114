#include "core/formats/safetensors_writer.h"

#include "core/formats/output_file.h"
#include "core/util/error.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cerrno>
#include <cstdio>
#include <set>

namespace mechlab::core {

namespace {

const char* st_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "F32";
    case at::kDouble: return "F64";
    case at::kHalf: return "F16";
    case at::kBFloat16: return "BF16";
    case at::kChar: return "I8";
    case at::kShort: return "I16";
    case at::kInt: return "I32";
    case at::kLong: return "I64";
    case at::kByte: return "U8";
    case at::kBool: return "BOOL";
    default: return nullptr;
  }
}

}  // namespace

void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<at::Tensor> data;
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::set<std::string> seen;
  int64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    MECHLAB_CHECK(!name.empty() && name != "__metadata__" && seen.insert(name).second,
                  "cannot write '", path, "': tensor name \"", name,
                  "\" is empty, reserved or repeated; give each tensor its own name");
    MECHLAB_CHECK(t.defined(), "cannot write '", path, "': tensor ", name, " is undefined");
    const char* dt = st_dtype(t.scalar_type());
    MECHLAB_CHECK(dt != nullptr, "cannot write '", path, "': tensor ", name, " has dtype ",
                  t.scalar_type(), ", which safetensors files here do not hold; convert it to float32");
    at::Tensor c = t.detach().to(at::kCPU).contiguous();
    const int64_t bytes = c.numel() * static_cast<int64_t>(c.element_size());
    header[name] = {{"dtype", dt}, {"shape", c.sizes().vec()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    data.push_back(std::move(c));
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t n = text.size();
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>((n >> (8 * i)) & 0xff);

  const std::string tmp = path + ".tmp";
  auto fail = [&](const char* doing) {
    const int err = errno;
    std::remove(tmp.c_str());
    throw Error(str_cat("cannot write '", path, "': ", doing, " '", tmp,
                        "' failed: ", system_error_words(err)));
  };
  errno = 0;
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) fail("creating");
  auto put = [&](const void* p, size_t size) {
    if (size > 0 && std::fwrite(p, 1, size, f) != size) {
      const int err = errno;
      std::fclose(f);
      errno = err;
      fail("writing");
    }
  };
  put(len, 8);
  put(text.data(), text.size());
  for (const at::Tensor& c : data) put(c.data_ptr(), c.numel() * c.element_size());
  if (std::fflush(f) != 0) {
    const int err = errno;
    std::fclose(f);
    errno = err;
    fail("flushing");
  }
  if (std::fclose(f) != 0) fail("closing");
  if (std::rename(tmp.c_str(), path.c_str()) != 0) fail("renaming");
}

}  // namespace mechlab::core
