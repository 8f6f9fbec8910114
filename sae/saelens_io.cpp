#include "sae/saelens_io.h"

#include "core/formats/output_file.h"
#include "core/formats/safetensors.h"
#include "core/formats/safetensors_writer.h"
#include "core/formats/text_file.h"
#include "core/util/error.h"
#include "sae/registry.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace fs = std::filesystem;

namespace mechlab::sae {

namespace {

constexpr const char* kCfg = "cfg.json";
constexpr const char* kWeights = "sae_weights.safetensors";
// The SAELens release whose layout export writes (and whose loader the
// fixtures check it against).
constexpr const char* kSaeLensVersion = "6.54.12";

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  MECHLAB_CHECK(in.good(), "cannot read SAELens config '", path,
                "': no such file; an SAELens folder holds cfg.json and sae_weights.safetensors");
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return nlohmann::json::parse(ss.str());
  } catch (const nlohmann::json::exception& e) {
    throw Error(str_cat("SAELens config '", path, "' is not valid JSON: ", e.what()));
  }
}

template <typename T>
T get(const nlohmann::json& j, const std::string& path, const char* key, const T& fallback,
      bool required) {
  if (!j.contains(key) || j[key].is_null()) {
    MECHLAB_CHECK(!required, "SAELens config '", path, "' has no \"", key, "\"; add it");
    return fallback;
  }
  try {
    return j[key].get<T>();
  } catch (const nlohmann::json::exception&) {
    throw Error(str_cat("SAELens config '", path, "': \"", key, "\" has the wrong type (",
                        j[key].dump(), ")"));
  }
}

// Removes a folder and what it holds. std::filesystem::remove_all may bind
// to libtorch's broken copy (docs/ARCHITECTURE.md, Build): POSIX calls here.
// Returns false, errno set, on the first failure; a missing path is fine.
bool remove_tree(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return errno == ENOENT;
  if (!S_ISDIR(st.st_mode)) return ::unlink(path.c_str()) == 0;
  DIR* d = ::opendir(path.c_str());
  if (d == nullptr) return false;
  bool ok = true;
  while (const dirent* e = ::readdir(d)) {
    if (std::strcmp(e->d_name, ".") == 0 || std::strcmp(e->d_name, "..") == 0) continue;
    if (!remove_tree(path + "/" + e->d_name)) {
      ok = false;
      break;
    }
  }
  const int err = errno;
  ::closedir(d);
  if (!ok) {
    errno = err;
    return false;
  }
  return ::rmdir(path.c_str()) == 0;
}

void remove_tree_or_throw(const std::string& path, const char* why) {
  if (!remove_tree(path)) {
    throw Error(str_cat("cannot remove '", path, "' (", why, "): ", std::strerror(errno)));
  }
}

// A new empty folder named DIR<suffix>.XXXXXX (mkdtemp), beside DIR.
fs::path unique_dir_beside(const std::string& dir, const char* suffix) {
  std::string name = fs::path(dir).lexically_normal().string();
  while (name.size() > 1 && name.back() == '/') name.pop_back();
  name += std::string(suffix) + ".XXXXXX";
  std::vector<char> buf(name.begin(), name.end());
  buf.push_back('\0');
  MECHLAB_CHECK(::mkdtemp(buf.data()) != nullptr, "cannot write '", dir, "': creating a folder beside it failed: ",
                core::system_error_words(errno));
  return fs::path(buf.data());
}

// SAELens's handle_config_defaulting: a config without a sae_lens_version
// of 6 or more (top level or in metadata) is in the pre-6 layout.
bool is_pre_6(const nlohmann::json& j) {
  std::string v;
  if (j.contains("sae_lens_version") && j["sae_lens_version"].is_string()) v = j["sae_lens_version"];
  if (v.empty() && j.contains("metadata") && j["metadata"].is_object() &&
      j["metadata"].contains("sae_lens_version") && j["metadata"]["sae_lens_version"].is_string()) {
    v = j["metadata"]["sae_lens_version"];
  }
  if (v.empty() || !std::isdigit(static_cast<unsigned char>(v[0]))) return true;
  return std::stoi(v) < 6;
}

// SAELens's handle_pre_6_0_config, for the keys mechlab reads.
nlohmann::json from_pre_6(nlohmann::json j) {
  if (j.contains("hook_point") && !j.contains("hook_name")) j["hook_name"] = j["hook_point"];
  if (j.contains("activation_fn_str") && !j.contains("activation_fn")) j["activation_fn"] = j["activation_fn_str"];
  if (!j.contains("architecture")) j["architecture"] = "standard";
  if (j.value("activation_fn", nlohmann::json()) == "topk" && j.contains("activation_fn_kwargs") &&
      j["activation_fn_kwargs"].is_object() && j["activation_fn_kwargs"].contains("k") &&
      !j["activation_fn_kwargs"]["k"].is_null()) {
    j["architecture"] = "topk";
    j["k"] = j["activation_fn_kwargs"]["k"];
  }
  if (j.contains("normalize_activations") && j["normalize_activations"].is_boolean()) {
    j["normalize_activations"] = j["normalize_activations"].get<bool>() ? "expected_average_only_in" : "none";
  }
  if (!j.contains("reshape_activations")) {
    const std::string hook = j.value("hook_name", std::string());
    j["reshape_activations"] = hook.find("hook_z") != std::string::npos ? "hook_z" : "none";
  }
  return j;
}

// True when cfg.json's d_sae (or its absence, refused later) leaves room
// for SAELens's default k of 100.
bool d_sae_fits_default_k(const nlohmann::json& j) {
  return !j.contains("d_sae") || !j["d_sae"].is_number() || j["d_sae"].get<double>() >= 100;
}

}  // namespace

const std::vector<std::string>& saelens_required_keys() {
  static const std::vector<std::string> keys{"architecture", "d_in", "d_sae", "dtype",
                                             "metadata.sae_lens_version"};
  return keys;
}

std::shared_ptr<Sae> import_saelens(const std::string& dir) {
  const std::string cfg_path = (fs::path(dir) / kCfg).string();
  nlohmann::json j = read_json(cfg_path);
  MECHLAB_CHECK(j.is_object(), "SAELens config '", cfg_path, "' is not a JSON object");
  if (is_pre_6(j)) j = from_pre_6(j);
  SaeConfig cfg;
  std::string arch = get<std::string>(j, cfg_path, "architecture", "", true);
  MECHLAB_CHECK(arch == "standard" || arch == "topk" || arch == "jumprelu" || arch == "gated",
                "SAELens config '", cfg_path, "': architecture \"", arch,
                "\" is not supported; mechlab reads standard, topk, jumprelu and gated");
  cfg.architecture(arch == "standard" ? "relu" : arch);
  cfg.d_in(get<int64_t>(j, cfg_path, "d_in", 0, true));
  cfg.d_sae(get<int64_t>(j, cfg_path, "d_sae", 0, true));
  cfg.apply_b_dec_to_input(get<bool>(j, cfg_path, "apply_b_dec_to_input", true, false));
  cfg.normalize_activations(get<std::string>(j, cfg_path, "normalize_activations", "none", false));
  // "hook_z": the SAE reads attention outputs flattened over heads (validate()
  // below refuses it with a hook_name that is not "..._z", as SAELens does).
  cfg.reshape_activations(get<std::string>(j, cfg_path, "reshape_activations", "none", false));
  // The weights are converted to float32, which is faithful only from a
  // floating-point dtype; an integer one would be a quantised file whose
  // scales are not in cfg.json.
  {
    std::string dtype = get<std::string>(j, cfg_path, "dtype", "float32", false);
    if (dtype.rfind("torch.", 0) == 0) dtype = dtype.substr(6);
    MECHLAB_CHECK(dtype == "float32" || dtype == "float16" || dtype == "bfloat16" || dtype == "float64",
                  "SAELens config '", cfg_path, "': \"dtype\" is \"", dtype,
                  "\", not a floating-point type; mechlab reads float32, float16, bfloat16 and float64");
  }
  if (arch == "topk") {
    // Read as a number (not an integer, which would truncate 2.5 to 2) and
    // refused unless whole, as training refuses it. Absent, SAELens's
    // default of 100 applies; when that cannot fit, the missing key is named.
    if (!j.contains("k") || j["k"].is_null()) {
      MECHLAB_CHECK(d_sae_fits_default_k(j), "SAELens config '", cfg_path,
                    "' has no \"k\" (SAELens's default, 100, exceeds d_sae); add it");
    }
    const double k = get<double>(j, cfg_path, "k", 100.0, false);
    MECHLAB_CHECK(std::isfinite(k) && k == std::floor(k), "SAELens config '", cfg_path, "': \"k\" = ",
                  j["k"].dump(), " must be a whole number of latents");
    cfg.k(k);
    cfg.rescale_acts_by_decoder_norm(get<bool>(j, cfg_path, "rescale_acts_by_decoder_norm", false, false));
  }
  std::string hook = get<std::string>(j, cfg_path, "hook_name", "", false);
  if (j.contains("metadata") && j["metadata"].is_object()) {
    hook = get<std::string>(j["metadata"], cfg_path, "hook_name", hook, false);
  }
  cfg.hook_name(hook);
  try {
    validate(cfg);
  } catch (const Error& e) {
    throw Error(str_cat("SAELens config '", cfg_path, "': ", e.what()));
  }
  std::shared_ptr<Sae> sae = make_sae(cfg);

  const std::string w_path = (fs::path(dir) / kWeights).string();
  MECHLAB_CHECK(fs::exists(w_path), "SAELens weights '", w_path,
                "' are missing; an SAELens folder holds cfg.json and sae_weights.safetensors");
  const core::SafetensorsFile file = core::SafetensorsFile::open(w_path);
  std::vector<std::string> used;
  for (const auto& [name, t] : sae->named_parameters()) {
    at::Tensor loaded;
    if (name == "threshold" && !file.contains("threshold") && file.contains("log_threshold")) {
      loaded = file.tensor("log_threshold", at::kFloat).exp();  // older SAELens JumpReLU files
      used.push_back("log_threshold");
    } else {
      MECHLAB_CHECK(file.contains(name), "SAELens weights '", w_path, "' have no tensor ", name,
                    ", which a ", arch, " SAE needs");
      loaded = file.tensor(name, at::kFloat);
      used.push_back(name);
    }
    MECHLAB_CHECK(loaded.sizes() == t.sizes(), "SAELens weights '", w_path, "': tensor ", name,
                  " has shape ", loaded.sizes(), ", expected ", t.sizes(), " for d_in ",
                  cfg.d_in(), ", d_sae ", cfg.d_sae());
    MECHLAB_CHECK(at::isfinite(loaded).all().item<bool>(), "SAELens weights '", w_path,
                  "': tensor ", name, " has NaN or inf entries");
    sae->param(name).copy_(loaded);
  }
  if (file.contains("scaling_factor")) {
    // Older SAELens files carry a finetuning scaling factor; SAELens drops
    // it when it is all ones and otherwise needs a config mechlab does not read.
    const at::Tensor sf = file.tensor("scaling_factor", at::kFloat);
    MECHLAB_CHECK(at::allclose(sf, at::ones_like(sf)), "SAELens weights '", w_path,
                  "': tensor scaling_factor is not all ones (a finetuning scaling factor), which "
                  "mechlab does not read; fold it into W_dec first");
    used.push_back("scaling_factor");
  }
  for (const std::string& n : file.names()) {
    MECHLAB_CHECK(std::find(used.begin(), used.end(), n) != used.end(), "SAELens weights '",
                  w_path, "' hold a tensor ", n, " that a ", arch,
                  " SAE does not have; mechlab does not know what it means");
  }
  return sae;
}

bool is_exported_folder(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec) || !fs::is_regular_file(fs::path(dir) / kCfg, ec)) return false;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    if ((n != kCfg && n != kWeights) || !e.is_regular_file(ec)) return false;
  }
  return !ec;
}

void remove_exported_folder(const std::string& dir) {
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(dir, ec))) return;
  MECHLAB_CHECK(is_exported_folder(dir), "'", dir, "' holds files besides ", kCfg, " and ", kWeights,
                "; refusing to remove it: move it away or choose another folder");
  remove_tree_or_throw(dir, "an earlier SAE");
}

void export_saelens(const Sae& sae, const std::string& dir, const ExportOptions& opts) {
  sae.check_finite();
  const SaeConfig& c = sae.cfg();
  const fs::path target(dir);
  MECHLAB_CHECK(!target.empty() && target.filename() != "", "export_saelens: give a folder name");
  if (fs::exists(target)) {
    MECHLAB_CHECK(opts.overwrite(), "SAE folder '", dir,
                  "' exists; choose another folder or set the overwrite option");
    MECHLAB_CHECK(fs::is_directory(target) && fs::exists(target / kCfg), "'", dir,
                  "' exists and is not an SAELens folder (no cfg.json); refusing to replace it");
    // Replacing removes the folder: only one that holds nothing an export
    // did not write (no user files, no subfolder such as the SAE being read).
    MECHLAB_CHECK(is_exported_folder(dir), "'", dir, "' holds files besides ", kCfg, " and ", kWeights,
                  "; refusing to replace it (and delete them): choose another folder");
  }

  nlohmann::ordered_json j;
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  std::string arch = c.architecture() == "relu" ? "standard" : c.architecture();
  if (c.architecture() != "batchtopk") {
    for (const auto& [n, t] : sae.named_parameters()) tensors.emplace_back(n, t.detach());
  } else {
    // SAELens's BatchTopK inference form: a JumpReLU, decoder norms folded
    // into the encoder when it selected by them.
    arch = "jumprelu";
    at::Tensor W_enc = sae.param("W_enc").detach(), b_enc = sae.param("b_enc").detach();
    at::Tensor W_dec = sae.param("W_dec").detach();
    if (c.rescale_acts_by_decoder_norm()) {
      const at::Tensor norm = W_dec.norm(2, {-1}).clamp_min(1e-8);  // [d_sae]
      b_enc = b_enc * norm;
      W_dec = W_dec / norm.unsqueeze(1);
      W_enc = W_enc * norm.unsqueeze(0);
    }
    tensors = {{"W_enc", W_enc},
               {"b_enc", b_enc},
               {"W_dec", W_dec},
               {"b_dec", sae.param("b_dec").detach()},
               {"threshold", at::full({c.d_sae()}, c.topk_threshold(), W_enc.options())}};
  }
  j["architecture"] = arch;
  j["d_in"] = c.d_in();
  j["d_sae"] = c.d_sae();
  j["dtype"] = "float32";
  j["device"] = "cpu";
  j["apply_b_dec_to_input"] = c.apply_b_dec_to_input();
  j["normalize_activations"] = c.normalize_activations();
  j["reshape_activations"] = c.reshape_activations();
  if (arch == "topk") {
    j["k"] = static_cast<int64_t>(c.k());
    j["rescale_acts_by_decoder_norm"] = c.rescale_acts_by_decoder_norm();
  }
  nlohmann::ordered_json meta;
  meta["sae_lens_version"] = kSaeLensVersion;
  meta["sae_lens_training_version"] = kSaeLensVersion;
  if (!c.hook_name().empty()) meta["hook_name"] = c.hook_name();
  j["metadata"] = meta;

  // A fresh, uniquely named stage next to the target (same filesystem, so
  // the rename is atomic): a fixed name such as DIR.tmp could be a user's
  // folder, which removing a "leftover stage" would destroy.
  std::error_code ec;
  const fs::path stage = unique_dir_beside(dir, ".tmp");
  try {
    core::write_safetensors((stage / kWeights).string(), tensors);
    core::write_text_file((stage / kCfg).string(), j.dump(2) + "\n");
  } catch (...) {
    remove_tree(stage.string());  // best effort: the write's own error is the one to report
    throw;
  }
  if (fs::exists(target)) {
    // rename(2) moves a folder onto an empty one: the unique name is ours.
    fs::path old;
    try {
      old = unique_dir_beside(dir, ".old");
    } catch (...) {
      remove_tree(stage.string());  // the new SAE goes; the old one stays in place
      throw;
    }
    fs::rename(target, old, ec);
    MECHLAB_CHECK(!ec, "cannot replace '", dir, "': renaming it aside failed: ", ec.message());
    fs::rename(stage, target, ec);
    MECHLAB_CHECK(!ec, "cannot move the new SAE into '", dir, "': ", ec.message(),
                  " (the previous one is in '", old.string(), "')");
    remove_tree_or_throw(old.string(), "the replaced SAE");
  } else {
    fs::rename(stage, target, ec);
    MECHLAB_CHECK(!ec, "cannot move the new SAE into '", dir, "': ", ec.message());
  }
}

}  // namespace mechlab::sae
