#include "core/hf/model_loader.h"

#include "core/util/error.h"
#include "core/hf/architecture.h"
#include "core/hf/hf_model.h"

#include <filesystem>

namespace mechlab::core {
namespace {

enum class Source { checkpoint, hf_folder };

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

Source classify(const std::string& path) {
  std::error_code ec;
  MECHLAB_CHECK(std::filesystem::exists(path, ec), "no model at '", path,
                "': expected a mechlab checkpoint (.h5) or a Hugging Face model folder");
  if (std::filesystem::is_directory(path, ec)) {
    MECHLAB_CHECK(hf::is_hf_folder(path), "'", path, "' is a folder without config.json; a "
                  "Hugging Face model folder holds config.json and model*.safetensors");
    return Source::hf_folder;
  }
  MECHLAB_CHECK(!ends_with(path, ".safetensors") && !ends_with(path, ".safetensors.index.json"),
                "'", path, "' is a safetensors file; pass the folder that holds it and its "
                "config.json (the config says which architecture the tensors belong to)");
  MECHLAB_CHECK(!ends_with(path, ".bin") && !ends_with(path, ".pt") && !ends_with(path, ".pth"),
                "'", path, "' looks like a pickle file; mechlab never unpickles. Save the model "
                "with save_pretrained(safe_serialization=True) and pass its folder");
  return Source::checkpoint;
}

}  // namespace

Transformer load_model(const std::string& path, const LoadOptions& options) {
  const bool hf_folder = classify(path) == Source::hf_folder;
  if (!options.process().any()) {
    if (hf_folder) return hf::load_hf_model(path, hf::HfLoadOptions().dtype(options.dtype()));
    Transformer model = Transformer::load(path);
    if (options.dtype()) model.to(*options.dtype());
    return model;
  }
  // Processing wants the more precise of the stored and the asked-for
  // dtype: widen before processing, narrow after (one rounding).
  Transformer model = hf_folder ? hf::load_hf_model(path, {}) : Transformer::load(path);
  const bool widen = options.dtype() && at::elementSize(*options.dtype()) > at::elementSize(model.dtype());
  if (widen) model.to(*options.dtype());
  try {
    model = process_weights(model, options.process());
  } catch (const Error& e) {
    throw Error(str_cat(path, ": ", e.what()));
  }
  if (options.dtype() && !widen) model.to(*options.dtype());
  return model;
}

std::string describe_model_source(const std::string& path) {
  if (classify(path) == Source::checkpoint) return "mechlab checkpoint";
  return "Hugging Face folder (" + hf::find_architecture(hf::HfConfig::load(path)).name + ")";
}

}  // namespace mechlab::core
