// Activation stores: a model's activations at chosen hook points over a
// dataset, one row per real token, in one HDF5 file. Written by
// core/store/activation_writer.h (`mechlab cache`), read here, for SAEs and probes.
//
// Layout (mechlab_format = "activations", mechlab_version = 1):
//
//   /                         root group, attributes:
//     mechlab_format   string  "activations"
//     mechlab_version  int64   1; readers refuse newer versions
//     model            string  the model's id (its checkpoint path or name)
//     config_hash      string  16 hex digits: FNV-1a 64 of the model's config JSON
//     hooks            string  JSON list of the hook names, in forward order
//     hook_shapes      string  JSON object: hook name -> its per-token shape
//                              before flattening (e.g. [12, 64] for hook_z)
//     dtype            string  "float32", "bfloat16" or "float16"
//     rows_total       int64   rows the finished store holds
//     chunk_rows       int64   rows per chunk: the unit of commit and of shuffling
//     rows_committed   int64   rows [0, rows_committed) are complete; updated
//                              last, after their data is flushed
//     complete         int64   1 once every row is committed (and compressed,
//                              if asked)
//     job              string  JSON of what produced the rows (dataset path and
//                              fingerprint, batch size, ...): a resumed job must
//                              match it
//   /acts/<hook name>  dtype [rows_total, d]   d = product of the hook's
//                              per-token shape; chunked by chunk_rows, space
//                              allocated at creation (gzip-compressed only once
//                              complete, see below)
//   /token_ids         int32 [rows_total]      the token at each row
//   /row_source        int32 [rows_total, 2]   (example, position) in the dataset
//
// Rows follow the dataset's order: example 0's real (unpadded) positions,
// then example 1's, and so on.
//
// Crash safety: the file is created complete in its structure (written to
// `path.tmp`, renamed), with all space allocated and no compression, so
// writing rows never changes HDF5 metadata; a commit writes whole chunks,
// flushes, then rewrites rows_committed in place and flushes again. A process
// killed at any moment leaves a readable file whose first rows_committed rows
// are right. Compression (gzip) is applied once all rows are committed, by
// writing a compressed copy and renaming it over the store.
//
// Readers see only committed rows and refuse, naming the file and what is
// wrong: another format or a newer version, missing attributes or datasets,
// an /acts dataset whose dtype differs from `dtype` or whose row count differs
// from rows_total, rows_committed outside [0, rows_total].
#pragma once

#include "core/formats/hdf5_file.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace mechlab::core {

inline constexpr const char* kActivationsFormat = "activations";
inline constexpr int64_t kActivationsVersion = 1;

/// FNV-1a 64 of `text` as 16 hex digits (stable across platforms).
std::string fnv1a_hex(const std::string& text);
std::string fnv1a_hex(const void* data, size_t bytes, uint64_t seed = 0xcbf29ce484222325ULL);

/// Everything a store's root attributes say.
struct StoreHeader {
  std::string model;
  std::string config_hash;
  std::vector<std::string> hooks;
  std::map<std::string, std::vector<int64_t>> hook_shapes;  ///< per-token shape
  at::ScalarType dtype = at::kBFloat16;
  int64_t rows_total = 0;
  int64_t chunk_rows = 0;
  int64_t rows_committed = 0;
  bool complete = false;
  std::string job = "{}";

  /// Flattened row width of a hook: the product of its per-token shape.
  int64_t width(const std::string& hook) const;
};

/// Reads and checks the header and datasets of an activation store.
StoreHeader read_store_header(const H5File& file);

/// Read access to a store: random access by row, and the raw material of
/// ShuffledBatches. Only committed rows are visible.
///
/// `path` may also name a store set's manifest (core/store/store_set.h): the
/// shards are then read as one store, their rows one after the other. The
/// set's header is the shards' common one with rows_total and rows_committed
/// summed, chunk_rows the largest, complete, and the first shard's job
/// without its shard fields. Every shard must exist, be complete, hold the
/// rows the manifest lists and agree with the first (model, hooks, shapes,
/// dtype, dataset); otherwise opening fails naming the shard.
///
/// Example:
///   auto store = mechlab::core::ActivationStore::open("acts.h5");
///   at::Tensor x = store.rows("blocks.3.hook_resid_post", 0, 128);  // [128, d_model]
class ActivationStore {
 public:
  static ActivationStore open(const std::string& path);
  ActivationStore(ActivationStore&&) noexcept;
  ActivationStore& operator=(ActivationStore&&) noexcept;
  ~ActivationStore();

  const StoreHeader& header() const { return header_; }
  const std::string& path() const { return path_; }
  /// Committed rows.
  int64_t num_rows() const { return header_.rows_committed; }
  const std::vector<std::string>& hooks() const { return header_.hooks; }

  /// Rows [start, start + count) of one hook: [count, d] in the stored dtype.
  at::Tensor rows(const std::string& hook, int64_t start, int64_t count) const;
  /// One row: [d].
  at::Tensor row(const std::string& hook, int64_t i) const { return rows(hook, i, 1)[0]; }
  /// Token ids of rows [start, start + count): int32 [count].
  at::Tensor token_ids(int64_t start, int64_t count) const;
  /// (example, position) of rows [start, start + count): int32 [count, 2].
  at::Tensor row_source(int64_t start, int64_t count) const;

  /// Throws mechlab::Error naming the first non-finite value (hook, row,
  /// example and position) among rows [start, start + count) of `acts`,
  /// a block read from this store.
  void check_finite(const std::string& hook, int64_t start, const at::Tensor& acts) const;
  /// Scans every committed row of every hook (in chunks) with check_finite.
  void check_all_finite() const;

  /// The committed rows cut at the stores' chunk boundaries, as
  /// (first row, rows): the units ShuffledBatches reads. A set's chunks never
  /// straddle two shards.
  std::vector<std::pair<int64_t, int64_t>> chunks() const;
  /// Shard stores read (1 for a plain store) and their paths.
  int64_t shard_count() const { return static_cast<int64_t>(parts_.size()); }
  std::vector<std::string> shard_paths() const;

 private:
  // One store file; a set has several, in row order.
  struct Part {
    std::string path;
    // HDF5 handles are not shareable across threads; ActivationStore is
    // movable, and one thread reads it at a time.
    std::unique_ptr<H5File> file;
    StoreHeader header;
    int64_t first_row = 0;  // its first row in the whole store
  };
  ActivationStore() = default;
  static ActivationStore open_set(const std::string& manifest);
  void require_hook(const std::string& hook) const;
  void require_range(int64_t start, int64_t count) const;
  // Rows [start, start + count) of dataset `ds` across the parts, concatenated.
  at::Tensor read(const std::string& ds, int64_t start, int64_t count) const;

  std::string path_;
  std::vector<Part> parts_;
  StoreHeader header_;
};

}  // namespace mechlab::core
