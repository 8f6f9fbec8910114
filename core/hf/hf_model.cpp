#include "core/hf/hf_model.h"

#include "core/util/error.h"
#include "core/hf/architecture.h"
#include "core/hf/mapping.h"

#include <filesystem>

namespace mechlab::core::hf {
namespace {

ModelConfig read_checked(const HfConfig& config, const Architecture& arch, const std::string& folder) {
  ModelConfig m = arch.read_config(config);
  m.name = folder_name(folder);
  try {
    m.validate();
  } catch (const Error& e) {
    throw Error(str_cat("config.json '", config.path(), "' (", arch.name, ") describes an "
                        "invalid model: ", e.what()));
  }
  return m;
}

}  // namespace

bool is_hf_folder(const std::string& path) {
  std::error_code ec;
  return std::filesystem::is_directory(path, ec) &&
         std::filesystem::exists(path + "/config.json", ec);
}

ModelConfig read_hf_config(const std::string& folder) {
  const HfConfig config = HfConfig::load(folder);
  return read_checked(config, find_architecture(config), folder);
}

Transformer load_hf_model(const std::string& folder, const HfLoadOptions& options) {
  const HfConfig config = HfConfig::load(folder);
  const Architecture& arch = find_architecture(config);
  const ModelConfig cfg = read_checked(config, arch, folder);

  HfTensors tensors = HfTensors::open(folder);
  at::ScalarType dtype = at::kFloat;
  if (options.dtype()) {
    dtype = *options.dtype();
    MECHLAB_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
                  "cannot load '", folder, "' as ", dtype, ": choose float32, bfloat16 or float16");
  } else {
    // The stored dtype of the first tensor (checkpoints use one dtype).
    const auto& first = tensors.files().front().header().tensors;
    if (!first.empty()) {
      const at::ScalarType stored = to_scalar_type(first.front().dtype);
      if (stored == at::kBFloat16 || stored == at::kHalf) dtype = stored;
    }
  }
  tensors.set_dtype(dtype);
  TransformerWeights weights = arch.map_tensors(cfg, config, tensors);
  tensors.check_all_used(arch.name);
  try {
    return Transformer(cfg, std::move(weights));
  } catch (const Error& e) {
    throw Error(str_cat("'", folder, "' (", arch.name, "): ", e.what()));
  }
}

}  // namespace mechlab::core::hf
