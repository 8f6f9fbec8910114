#include "core/model/checkpoint.h"

#include "core/util/error.h"
#include "core/formats/hdf5_file.h"

#include <set>

namespace mechlab::core {
namespace {

constexpr const char* kParamsGroup = "params";

bool is_param_dtype(at::ScalarType s) {
  return s == at::kFloat || s == at::kBFloat16 || s == at::kHalf;
}

void check_param_names(const std::string& path,
                       const std::vector<std::pair<std::string, at::Tensor>>& params) {
  std::set<std::string> seen;
  for (const auto& [name, tensor] : params) {
    MECHLAB_CHECK(!name.empty(), "cannot save checkpoint '", path,
                  "': a parameter has an empty name");
    MECHLAB_CHECK(name.find('/') == std::string::npos && name != "." && name != "..",
                  "cannot save checkpoint '", path, "': parameter name '", name,
                  "' may not contain '/' or be '.' or '..'");
    MECHLAB_CHECK(seen.insert(name).second, "cannot save checkpoint '", path, "': parameter '",
                  name, "' appears twice");
    MECHLAB_CHECK(tensor.defined(), "cannot save checkpoint '", path, "': parameter '", name,
                  "' is an undefined tensor");
    MECHLAB_CHECK(is_param_dtype(tensor.scalar_type()), "cannot save checkpoint '", path,
                  "': parameter '", name, "' has dtype ", dtype_name(tensor.scalar_type()),
                  "; checkpoints store float32, bfloat16 or float16");
  }
}

}  // namespace

void save_checkpoint(const std::string& path, const ModelConfig& config,
                     const std::vector<std::pair<std::string, at::Tensor>>& params,
                     const std::function<void(H5File&)>& extra) {
  try {
    config.validate();
  } catch (const Error& e) {
    throw Error(str_cat("cannot save checkpoint '", path, "': ", e.what()));
  }
  check_param_names(path, params);

  H5File::write_atomically(path, [&](H5File& file) {
    file.write_attr("", "mechlab_format", std::string(kCheckpointFormat));
    file.write_attr("", "mechlab_version", kCheckpointVersion);
    file.write_attr("", "config", config.to_json_string());
    file.ensure_group(kParamsGroup);
    // Fletcher-32 per chunk: a flipped byte in the data region is an error
    // on load instead of silently different weights.
    WriteOptions options;
    options.checksum(true);
    for (const auto& [name, tensor] : params) {
      file.write_tensor(std::string(kParamsGroup) + "/" + name, tensor, options);
    }
    if (extra) extra(file);
  });
}

Checkpoint load_checkpoint(const std::string& path) {
  H5File file = H5File::open_read(path);

  MECHLAB_CHECK(file.has_attr("", "mechlab_format"), "'", path,
                "' is not a mechlab file (it has no 'mechlab_format' attribute)");
  const std::string format = file.read_attr_string("", "mechlab_format");
  MECHLAB_CHECK(format == kCheckpointFormat, "'", path, "': this file is a '", format,
                "', not a checkpoint");

  MECHLAB_CHECK(file.has_attr("", "mechlab_version"), "'", path,
                "' is not a valid checkpoint: it has no 'mechlab_version' attribute");
  const int64_t version = file.read_attr_int("", "mechlab_version");
  MECHLAB_CHECK(version <= kCheckpointVersion, "'", path, "': this file is version ", version,
                " but this mechlab reads up to version ", kCheckpointVersion, "; upgrade mechlab");
  MECHLAB_CHECK(version >= 1, "'", path, "' is not a valid checkpoint: mechlab_version is ",
                version, " (versions start at 1)");

  MECHLAB_CHECK(file.has_attr("", "config"), "'", path,
                "' is not a valid checkpoint: it has no 'config' attribute");
  Checkpoint ckpt;
  try {
    ckpt.config = ModelConfig::from_json_string(file.read_attr_string("", "config"));
  } catch (const Error& e) {
    throw Error(str_cat("'", path, "' has an invalid config: ", e.what()));
  }

  if (file.has_attr("", kCheckpointTokenizerAttr)) {
    ckpt.tokenizer = file.read_attr_string("", kCheckpointTokenizerAttr);
  }

  MECHLAB_CHECK(file.is_group(kParamsGroup), "'", path, "' is not a valid checkpoint: it has no '/",
                kParamsGroup, "' group");
  for (const std::string& name : file.list(kParamsGroup)) {
    const std::string dataset = std::string(kParamsGroup) + "/" + name;
    MECHLAB_CHECK(!file.is_group(dataset), "'", path, "': '/", dataset,
                  "' is a group; checkpoint parameters are datasets named by their full dotted "
                  "name (e.g. 'blocks.0.attn.W_Q')");
    at::Tensor t = file.read_tensor(dataset);
    MECHLAB_CHECK(is_param_dtype(t.scalar_type()), "'", path, "': parameter '", name,
                  "' has dtype ", dtype_name(t.scalar_type()),
                  "; checkpoints store float32, bfloat16 or float16");
    // A NaN or Inf weight propagates silently (and the fused attention
    // kernel can even hide it behind finite outputs): refuse it by name.
    const int64_t bad = t.numel() - at::isfinite(t).sum().item<int64_t>();
    MECHLAB_CHECK(bad == 0, "'", path, "': parameter '", name, "' holds ", bad,
                  " NaN or infinite value", bad == 1 ? "" : "s",
                  "; the checkpoint is damaged (training diverged, or the file was edited): "
                  "restore or re-create it");
    ckpt.params.emplace_back(name, std::move(t));
  }
  return ckpt;
}

}  // namespace mechlab::core
