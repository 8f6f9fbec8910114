// Store sets: one activation store written in shards. Each shard is an
// ordinary activation store (activation_store.h) holding a disjoint,
// contiguous part of the dataset's rows, written and resumed on its own
// (`mechlab cache ... --shard I/N`), with the same crash safety. A small JSON
// manifest lists the shards in row order; ActivationStore::open and
// ShuffledBatches read the set as one store whose rows are the shards' rows
// one after the other.
//
// Manifest (written atomically, only once every shard is complete):
//   {"mechlab_format": "activation_store_set", "mechlab_version": 1,
//    "shards": [{"path": "acts.shard-0-of-3.h5", "rows": 1234}, ...]}
// `path` is relative to the manifest's folder (absolute paths are kept as
// they are); `rows` is the shard's row count, which a reader checks.
//
// Example:
//   // three processes ran `mechlab cache M D --hooks H --out acts.json --shard I/3`
//   auto store = mechlab::core::ActivationStore::open("acts.json");   // the whole set
//   at::Tensor x = store.rows("blocks.0.hook_resid_post", 0, 4096);   // [4096, d_model]
#pragma once

#include "core/store/activation_store.h"

#include <cstdint>
#include <string>
#include <vector>

namespace mechlab::core {

inline constexpr const char* kStoreSetFormat = "activation_store_set";
inline constexpr int64_t kStoreSetVersion = 1;

struct StoreSetShard {
  std::string path;  ///< as written in the manifest: relative to its folder
  int64_t rows = 0;  ///< the shard's rows
};

/// Whether `path` is a store-set manifest (a JSON file, not HDF5). False for
/// a missing file.
bool is_store_set(const std::string& path);
/// The manifest's shards, in row order; a file that is not a manifest, a
/// newer version or a malformed entry is an error naming the file.
std::vector<StoreSetShard> read_store_set(const std::string& manifest);
/// A shard's path as the reader opens it: relative paths are taken from the
/// manifest's folder.
std::string resolve_shard_path(const std::string& manifest, const std::string& shard);
/// Where shard `index` of `count` is stored for a set manifest:
/// "out/acts.json" -> "out/acts.shard-1-of-3.h5".
std::string shard_store_path(const std::string& manifest, int64_t index, int64_t count);

/// Throws naming `path` when the store `h` cannot join a set with the store
/// `first` (at `first_path`): another model (config hash), other hooks or
/// per-token shapes, another dtype, or another dataset (the job's dataset
/// fingerprint, when both record one).
void require_same_kind(const StoreHeader& first, const std::string& first_path, const StoreHeader& h,
                       const std::string& path);

/// Checks that every store is complete and that they agree
/// (require_same_kind), then writes the manifest atomically. Shard paths are
/// written relative to the manifest's folder.
void write_store_set(const std::string& manifest, const std::vector<std::string>& stores);

/// For sharded caching: when all `count` shard stores of `manifest`
/// (shard_store_path) exist and are complete, writes the manifest and returns
/// count; otherwise writes nothing and returns how many are complete (a shard
/// another process is still writing counts as not complete). A file at
/// `manifest` that is not a store-set manifest is never replaced.
int64_t complete_store_set(const std::string& manifest, int64_t count);

}  // namespace mechlab::core
