#include "core/store/store_set.h"

#include "core/formats/text_file.h"
#include "core/util/error.h"

#include <nlohmann/json.hpp>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <unistd.h>

namespace mechlab::core {

namespace fs = std::filesystem;

namespace {

// The manifest's JSON, or a discarded value when the file is not a JSON
// object. Only the first byte of anything else is read: a store is large.
nlohmann::json parse_file(const std::string& path, bool* readable) {
  const nlohmann::json none(nlohmann::json::value_t::discarded);
  std::ifstream in(path, std::ios::binary);
  *readable = static_cast<bool>(in);
  if (!in || in.peek() != '{') return none;
  std::stringstream text;
  text << in.rdbuf();
  return nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
}

bool is_manifest_json(const nlohmann::json& j) {
  return j.is_object() && j.contains("mechlab_format") && j["mechlab_format"] == kStoreSetFormat;
}

std::string dataset_fingerprint(const std::string& job) {
  const auto j = nlohmann::json::parse(job, nullptr, false);
  if (j.is_object() && j.contains("dataset_fingerprint") && j["dataset_fingerprint"].is_string()) {
    return j["dataset_fingerprint"].get<std::string>();
  }
  return "";
}

std::string manifest_relative(const std::string& manifest, const std::string& store) {
  const fs::path folder = fs::absolute(fs::path(manifest)).parent_path().lexically_normal();
  const fs::path rel = fs::absolute(fs::path(store)).lexically_normal().lexically_relative(folder);
  return rel.empty() ? store : rel.generic_string();
}

}  // namespace

bool is_store_set(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return false;
  bool readable = false;
  return is_manifest_json(parse_file(path, &readable));
}

std::vector<StoreSetShard> read_store_set(const std::string& manifest) {
  const std::string where = "store set '" + manifest + "'";
  bool readable = false;
  const nlohmann::json j = parse_file(manifest, &readable);
  MECHLAB_CHECK(readable, "cannot read ", where, ": ", std::strerror(errno));
  MECHLAB_CHECK(is_manifest_json(j), "'", manifest, "' is not an activation store set (a JSON "
                "manifest with mechlab_format \"", kStoreSetFormat, "\") nor an activation store");
  MECHLAB_CHECK(j.contains("mechlab_version") && j["mechlab_version"].is_number_integer(), where,
                " has no integer mechlab_version");
  const int64_t version = j["mechlab_version"].get<int64_t>();
  MECHLAB_CHECK(version >= 1 && version <= kStoreSetVersion, where, " is version ", version,
                " but this mechlab reads versions 1 to ", kStoreSetVersion, "; update mechlab");
  MECHLAB_CHECK(j.contains("shards") && j["shards"].is_array() && !j["shards"].empty(), where,
                " lists no shards; it is damaged: write it again from its shard stores");
  std::vector<StoreSetShard> out;
  for (const auto& s : j["shards"]) {
    MECHLAB_CHECK(s.is_object() && s.contains("path") && s["path"].is_string() && s.contains("rows") &&
                      s["rows"].is_number_integer() && s["rows"].get<int64_t>() >= 0,
                  where, ": shard entry ", out.size(), " is not {\"path\": string, \"rows\": count}; "
                  "the manifest is damaged: write it again from its shard stores");
    out.push_back({s["path"].get<std::string>(), s["rows"].get<int64_t>()});
  }
  return out;
}

std::string resolve_shard_path(const std::string& manifest, const std::string& shard) {
  const fs::path p(shard);
  if (p.is_absolute()) return shard;
  return (fs::path(manifest).parent_path() / p).string();
}

std::string shard_store_path(const std::string& manifest, int64_t index, int64_t count) {
  fs::path p(manifest);
  const std::string stem = p.extension() == ".json" ? p.stem().string() : p.filename().string();
  return (p.parent_path() / str_cat(stem, ".shard-", index, "-of-", count, ".h5")).string();
}

void require_same_kind(const StoreHeader& first, const std::string& first_path, const StoreHeader& h,
                       const std::string& path) {
  const std::string head = str_cat("shard '", path, "' cannot join a set with '", first_path, "': ");
  MECHLAB_CHECK(h.config_hash == first.config_hash, head, "it comes from another model (config hash ",
                h.config_hash, " vs ", first.config_hash, "); cache every shard with the same model");
  MECHLAB_CHECK(h.hooks == first.hooks, head,
                "it holds other hooks; cache every shard with the same hook list");
  for (const auto& name : h.hooks) {
    MECHLAB_CHECK(h.hook_shapes.at(name) == first.hook_shapes.at(name), head, "hook ", name,
                  " has per-token shape ", c10::IntArrayRef(h.hook_shapes.at(name)), " there and ",
                  c10::IntArrayRef(first.hook_shapes.at(name)), " in the first shard");
  }
  MECHLAB_CHECK(h.dtype == first.dtype, head, "it is ", dtype_name(h.dtype), ", the first shard ",
                dtype_name(first.dtype), "; cache every shard with the same dtype");
  const std::string a = dataset_fingerprint(first.job), b = dataset_fingerprint(h.job);
  MECHLAB_CHECK(a.empty() || b.empty() || a == b, head,
                "it was cached from another dataset (fingerprint ", b, " vs ", a, ")");
}

void write_store_set(const std::string& manifest, const std::vector<std::string>& stores) {
  MECHLAB_CHECK(!stores.empty(), "a store set needs at least one shard store");
  std::error_code ec;
  MECHLAB_CHECK(!fs::exists(manifest, ec) || is_store_set(manifest), "'", manifest,
                "' exists and is not a store-set manifest; choose another path for the set");
  nlohmann::json shards = nlohmann::json::array();
  StoreHeader first;
  for (size_t i = 0; i < stores.size(); ++i) {
    const ActivationStore s = ActivationStore::open(stores[i]);
    MECHLAB_CHECK(s.shard_count() == 1, "'", stores[i], "' is itself a store set; list its shards");
    MECHLAB_CHECK(s.header().complete, "shard '", stores[i], "' is unfinished (", s.num_rows(), " of ",
                  s.header().rows_total, " rows); resume the job that writes it, then make the set");
    if (i == 0) first = s.header();
    else require_same_kind(first, stores[0], s.header(), stores[i]);
    shards.push_back({{"path", manifest_relative(manifest, stores[i])}, {"rows", s.num_rows()}});
  }
  const nlohmann::json j = {{"mechlab_format", kStoreSetFormat},
                            {"mechlab_version", kStoreSetVersion},
                            {"shards", shards}};
  // Shards finishing together may each write the (identical) manifest: each
  // writes its own whole file and renames it into place.
  const std::string part = str_cat(manifest, ".part", ::getpid());
  write_text_file(part, j.dump(2) + "\n");
  fs::rename(part, manifest, ec);
  if (ec) {
    fs::remove(part, ec);
    throw Error(str_cat("cannot write the store set '", manifest, "': ", ec.message()));
  }
}

int64_t complete_store_set(const std::string& manifest, int64_t count) {
  MECHLAB_CHECK(count >= 1, "a store set has at least one shard, not ", count);
  std::vector<std::string> stores;
  int64_t complete = 0;
  for (int64_t i = 0; i < count; ++i) {
    const std::string path = shard_store_path(manifest, i, count);
    stores.push_back(path);
    std::error_code ec;
    if (!fs::exists(path, ec)) continue;
    try {
      if (ActivationStore::open(path).header().complete) ++complete;
    } catch (const Error&) {
      // Another process is writing it (HDF5 locks the file) or it was cut
      // short: either way not complete yet.
    }
  }
  if (complete < count) return complete;
  write_store_set(manifest, stores);
  return count;
}

}  // namespace mechlab::core
