// ShuffledBatches: an epoch of shuffled training batches streamed from an
// activation store larger than memory (for SAE training, probes).
//
// Two levels of shuffling, with memory bounded by the mixing buffer whatever
// the store's size: the store's chunks are visited in a random order (reads
// stay sequential within a chunk), and rows pass through a mixing buffer of
// `buffer_rows` that is permuted before its first half is served — the
// scheme SAELens uses for its activation store.
//
// A store set (core/store/store_set.h) is read the same way: its shards'
// chunks are shuffled together.
//
// Example:
//   auto store = mechlab::core::ActivationStore::open("acts.h5");   // or a set's "acts.json"
//   mechlab::core::ShuffledBatches batches(store, {"blocks.3.hook_resid_post"},
//       mechlab::core::ShuffleOptions().batch_size(4096).seed(1).exclude_first_position(true));
//   while (auto b = batches.next()) {
//     at::Tensor x = b->acts.at("blocks.3.hook_resid_post");   // [batch, d_model]
//   }
#pragma once

#include "core/store/activation_store.h"
#include "core/util/options.h"
#include "core/util/rng.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace mechlab::core {

struct ShuffleOptions {
  /// Rows per batch. Example: .batch_size(4096)
  MECHLAB_OPTION(ShuffleOptions, int64_t, batch_size, 4096)
  /// Seed of the chunk order and the mixing; epoch e uses seed + e.
  MECHLAB_OPTION(ShuffleOptions, uint64_t, seed, 0)
  /// Rows held for mixing (memory: buffer_rows x the hooks' row widths).
  MECHLAB_OPTION(ShuffleOptions, int64_t, buffer_rows, 1 << 16)
  /// Skip rows at position 0 (the BOS token in most datasets).
  MECHLAB_OPTION(ShuffleOptions, bool, exclude_first_position, false)
  /// Skip rows whose token id is one of these (e.g. padding, BOS ids).
  MECHLAB_OPTION(ShuffleOptions, std::vector<int64_t>, exclude_token_ids, {})
  /// Drop the last batch of an epoch when it is smaller than batch_size.
  MECHLAB_OPTION(ShuffleOptions, bool, drop_last, false)
  /// Check every chunk read for NaN/Inf and refuse naming the row.
  MECHLAB_OPTION(ShuffleOptions, bool, check_finite, true)
  /// Read only part `part` of `parts` (data-parallel training: one part per
  /// rank): the store's chunks, in store order, split into `parts`
  /// contiguous runs of as equal a number of chunks as whole chunks allow.
  /// The parts are disjoint and together cover the store.
  MECHLAB_OPTION(ShuffleOptions, int64_t, part, 0)
  MECHLAB_OPTION(ShuffleOptions, int64_t, parts, 1)
};

struct StoreBatch {
  std::map<std::string, at::Tensor> acts;  ///< hook -> [batch, d] (stored dtype)
  at::Tensor token_ids;                    ///< int32 [batch]
  at::Tensor rows;                         ///< int64 [batch]: the store rows served
};

class ShuffledBatches {
 public:
  /// `hooks` empty = every hook of the store.
  ShuffledBatches(const ActivationStore& store, std::vector<std::string> hooks,
                  ShuffleOptions options = {});

  /// The next batch of this epoch, or nullopt at its end; the next call then
  /// starts a new epoch with a new order.
  std::optional<StoreBatch> next();
  int64_t epoch() const { return epoch_; }

 private:
  void start_epoch();
  bool fill_buffer();  // reads chunks until the buffer is full; false if none left
  StoreBatch take(int64_t n);

  const ActivationStore& store_;
  std::vector<std::string> hooks_;
  ShuffleOptions opt_;
  int64_t epoch_ = 0;
  Rng rng_{0};
  std::vector<std::pair<int64_t, int64_t>> chunks_;  // (first row, rows) of each chunk
  std::vector<int64_t> chunk_order_;                 // indices into chunks_
  size_t next_chunk_ = 0;
  // Mixing buffer: the first `fill_` rows are live.
  std::map<std::string, at::Tensor> buf_;  // hook -> [buffer_rows + chunk_rows, d]
  at::Tensor buf_tokens_, buf_rows_;       // [capacity]
  int64_t fill_ = 0;
  int64_t served_in_buffer_ = 0;           // rows served since the last mix
  bool started_ = false;
};

}  // namespace mechlab::core
