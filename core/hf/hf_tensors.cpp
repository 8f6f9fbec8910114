#include "core/hf/hf_tensors.h"

#include "core/util/error.h"
#include "core/hf/hf_config.h"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

namespace mechlab::core::hf {
namespace {

namespace fs = std::filesystem;

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

bool plain_file_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find('\\') == std::string::npos && name.find('\0') == std::string::npos;
}

std::string shape_text(at::IntArrayRef s) { return c10::str(s); }

}  // namespace

HfTensors HfTensors::open(const std::string& folder) {
  HfTensors t;
  t.folder_ = folder;
  const std::string single = folder + "/" + kSingleFile;
  const std::string index_path = folder + "/" + kIndexFile;

  if (fs::exists(single)) {
    t.files_.push_back(SafetensorsFile::open(single));
    for (const std::string& name : t.files_[0].names()) t.where_.emplace(name, 0);
    return t;
  }
  if (!fs::exists(index_path)) {
    const bool pickle = fs::exists(folder + "/pytorch_model.bin") ||
                        fs::exists(folder + "/pytorch_model.bin.index.json");
    throw Error(str_cat("'", folder, "' has no ", kSingleFile, " and no ", kIndexFile,
                        pickle ? " (only pickle weights, pytorch_model.bin: mechlab never unpickles;"
                                 " re-save the model with save_pretrained(safe_serialization=True))"
                               : " (a Hugging Face model folder holds its weights in safetensors)"));
  }

  std::ifstream in(index_path, std::ios::binary);
  MECHLAB_CHECK(in.good(), "cannot read '", index_path, "'");
  std::ostringstream text;
  text << in.rdbuf();
  nlohmann::json index;
  try {
    index = nlohmann::json::parse(text.str());
  } catch (const nlohmann::json::exception& e) {
    throw Error(str_cat("'", index_path, "' is not valid JSON: ", e.what()));
  }
  MECHLAB_CHECK(index.is_object() && index.contains("weight_map") && index["weight_map"].is_object(),
                "'", index_path, "' has no \"weight_map\" object (tensor name -> shard file)");
  const nlohmann::json& map = index["weight_map"];
  MECHLAB_CHECK(!map.empty(), "'", index_path, "': \"weight_map\" is empty");

  std::map<std::string, size_t> shard_ids;  // shard file -> index in files_
  std::map<std::string, std::string> listed;  // tensor -> shard file
  for (auto it = map.begin(); it != map.end(); ++it) {
    MECHLAB_CHECK(it.value().is_string(), "'", index_path, "': weight_map entry '", it.key(),
                  "' is ", describe_json(it.value()), ", not a shard file name");
    const std::string shard = it.value().get<std::string>();
    MECHLAB_CHECK(plain_file_name(shard), "'", index_path, "': weight_map entry '", it.key(),
                  "' names '", shard, "', which is not a file name inside the folder");
    listed[it.key()] = shard;
    if (!shard_ids.count(shard)) {
      const std::string path = folder + "/" + shard;
      MECHLAB_CHECK(fs::exists(path), "'", index_path, "' lists shard '", shard,
                    "' (for tensor '", it.key(), "') but the folder has no such file");
      shard_ids[shard] = t.files_.size();
      t.files_.push_back(SafetensorsFile::open(path));
    }
  }
  for (const auto& [shard, id] : shard_ids) {
    for (const std::string& name : t.files_[id].names()) {
      auto [pos, fresh] = t.where_.emplace(name, id);
      MECHLAB_CHECK(fresh, "tensor '", name, "' is in two shards: '", t.files_[pos->second].path(),
                    "' and '", t.files_[id].path(), "'");
      auto l = listed.find(name);
      MECHLAB_CHECK(l != listed.end(), "tensor '", name, "' in '", t.files_[id].path(),
                    "' is not listed in '", index_path, "'");
      MECHLAB_CHECK(l->second == shard, "'", index_path, "' places tensor '", name, "' in '",
                    l->second, "' but it is in '", shard, "'");
    }
  }
  for (const auto& [name, shard] : listed) {
    MECHLAB_CHECK(t.where_.count(name), "'", index_path, "' lists tensor '", name, "' in '", shard,
                  "' but that shard does not contain it");
  }
  return t;
}

const SafetensorsFile& HfTensors::file_of(const std::string& name) const {
  auto it = where_.find(name);
  MECHLAB_CHECK(it != where_.end(), "'", folder_, "': the model has no tensor '", name,
                "' (a checkpoint of another architecture or variant, or an incomplete download?)");
  return files_[it->second];
}

at::ScalarType HfTensors::stored_dtype(const std::string& name) const {
  return to_scalar_type(file_of(name).info(name).dtype);
}

at::Tensor HfTensors::take(const std::string& name, at::IntArrayRef shape) {
  const SafetensorsFile& file = file_of(name);
  const StTensorInfo& info = file.info(name);
  std::vector<int64_t> stored(info.shape.begin(), info.shape.end());
  MECHLAB_CHECK(at::IntArrayRef(stored) == shape, "tensor '", name, "' in '", file.path(),
                "' has shape ", shape_text(stored), " but config.json implies ", shape_text(shape),
                " (config.json and weights disagree)");
  const at::ScalarType st = to_scalar_type(info.dtype);
  MECHLAB_CHECK(st == at::kFloat || st == at::kBFloat16 || st == at::kHalf || st == at::kDouble,
                "tensor '", name, "' in '", file.path(), "' has dtype ", st_dtype_name(info.dtype),
                "; model weights must be F32, BF16, F16 or F64 (quantised checkpoints are not "
                "supported)");
  used_.insert(name);
  at::Tensor t = file.tensor(name, dtype_);
  // A NaN or Inf weight propagates silently (and the fused attention kernel
  // can even hide it behind finite outputs), so refuse it here, by name.
  // Checked after the conversion, which can overflow F64 values to Inf.
  const int64_t bad = t.numel() - at::isfinite(t).sum().item<int64_t>();
  MECHLAB_CHECK(bad == 0, "tensor '", name, "' in '", file.path(), "' holds ", bad,
                " NaN or infinite value", bad == 1 ? "" : "s",
                " (after conversion to the load dtype); the weights are damaged: re-download or re-export them");
  return t;
}

void HfTensors::skip(const std::string& name) {
  if (has(name)) used_.insert(name);
}

void HfTensors::check_all_used(const std::string& architecture) const {
  for (const auto& [name, id] : where_) {
    MECHLAB_CHECK(used_.count(name), "tensor '", name, "' in '", files_[id].path(),
                  "' is not part of ", architecture,
                  " as mechlab models it (a variant mechlab does not support?); refusing to "
                  "load a model that would silently differ");
  }
}

}  // namespace mechlab::core::hf
