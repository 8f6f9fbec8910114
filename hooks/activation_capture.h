// cache_activations: runs a model over a dataset in batches and writes the
// activations of chosen hook points to an activation store (`mechlab cache`).
//
// The GPU never waits for the disk: each batch's activations are cast to the
// store dtype on the device, copied to pinned host memory on a side stream
// while the next batch computes, and written by a writer thread (a bounded
// queue of two batches keeps memory flat). On the CPU the writer thread still
// overlaps the disk with the next forward. Layers after the last hooked one
// are not run.
//
// Example:
//   auto model = mechlab::hooks::HookedTransformer::load("induction.h5");
//   auto ds = mechlab::core::load_dataset("induction_data.h5");
//   mechlab::hooks::CacheOptions opt;
//   opt.hooks({"blocks.*.hook_resid_post"}).dtype(at::kBFloat16).resume(true);
//   auto result = mechlab::hooks::cache_activations(model, ds, "acts.h5", opt);
#pragma once

#include "core/data/dataset.h"
#include "core/util/options.h"
#include "hooks/hooked_transformer.h"

#include <ATen/ATen.h>

#include <string>
#include <utility>
#include <vector>

namespace mechlab::hooks {

struct CacheOptions {
  /// Hook names or globs ('*', '?'), e.g. {"blocks.*.hook_resid_post"}.
  MECHLAB_OPTION(CacheOptions, std::vector<std::string>, hooks, {})
  /// Stored dtype: float32, bfloat16 or float16.
  MECHLAB_OPTION(CacheOptions, at::ScalarType, dtype, at::kBFloat16)
  /// Dataset examples per forward.
  MECHLAB_OPTION(CacheOptions, int64_t, batch_size, 8)
  /// Rows per chunk (the unit of commit and of shuffled reading).
  MECHLAB_OPTION(CacheOptions, int64_t, chunk_rows, 1024)
  /// gzip level for the finished store, 0 = none.
  MECHLAB_OPTION(CacheOptions, int, gzip_level, 0)
  /// Continue an existing store at `out` (else refuse to touch it).
  MECHLAB_OPTION(CacheOptions, bool, resume, false)
  /// Replace an existing store at `out`.
  MECHLAB_OPTION(CacheOptions, bool, overwrite, false)
  /// The model's id recorded in the store (e.g. its checkpoint path).
  MECHLAB_OPTION(CacheOptions, std::string, model_id, "")
  /// The dataset's path, recorded in the store's job.
  MECHLAB_OPTION(CacheOptions, std::string, dataset_path, "")
  /// Show a progress bar (tokens/s, ETA).
  MECHLAB_OPTION(CacheOptions, bool, progress, true)
  /// Write only shard `shard_index` of `shard_count` (core/store/store_set.h):
  /// the dataset's batches of batch_size examples are split into shard_count
  /// contiguous runs, as even as whole batches allow, and this store holds
  /// the rows of run shard_index. Whole batches, so each row is computed in
  /// the very batch an unsharded run computes it in: the shards' rows, one
  /// after the other, are the unsharded store's, bit for bit. row_source keeps
  /// the dataset's example numbers.
  MECHLAB_OPTION(CacheOptions, int64_t, shard_index, 0)
  MECHLAB_OPTION(CacheOptions, int64_t, shard_count, 1)
};

struct CacheResult {
  int64_t rows_total = 0;
  int64_t rows_written = 0;     ///< by this run (0 if the store was complete)
  int64_t bytes_written = 0;    ///< activation and row bytes committed by this run
  double seconds = 0;
  std::vector<std::string> hooks;
};

/// Hooks a store can hold: every per-token hook ([batch, pos, ...]), attached
/// modules' points included;
/// attention scores and patterns ([batch, head, q_pos, k_pos]) are refused.
std::vector<std::string> resolve_store_hooks(const core::ModelConfig& cfg,
                                             const std::vector<std::string>& patterns);
/// The same over the model's hook points and those of its attached modules.
std::vector<std::string> resolve_store_hooks(const HookedTransformer& model,
                                             const std::vector<std::string>& patterns);

/// The examples [first, last) that shard `index` of `count` covers, for a
/// dataset of `examples` examples cached `batch_size` at a time.
std::pair<int64_t, int64_t> shard_examples(int64_t examples, int64_t batch_size, int64_t index,
                                           int64_t count);

CacheResult cache_activations(HookedTransformer& model, const core::Dataset& dataset,
                              const std::string& out, const CacheOptions& options);

/// The `dataset_fingerprint` a store's job records: FNV-1a of the dataset's
/// prompts (int32 [N, T], all examples, sharded or not) and of its
/// attention mask when it has one. Readers of a store compare it with the
/// dataset they are given (the probing run does).
std::string dataset_fingerprint(const core::Dataset& dataset);

}  // namespace mechlab::hooks
