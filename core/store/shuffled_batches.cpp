#include "core/store/shuffled_batches.h"

#include "core/util/error.h"

#include <algorithm>
#include <numeric>

namespace mechlab::core {

ShuffledBatches::ShuffledBatches(const ActivationStore& store, std::vector<std::string> hooks,
                                 ShuffleOptions options)
    : store_(store), hooks_(std::move(hooks)), opt_(std::move(options)) {
  MECHLAB_CHECK(opt_.batch_size() > 0, "ShuffleOptions.batch_size must be positive, got ",
                opt_.batch_size());
  MECHLAB_CHECK(opt_.buffer_rows() >= 0, "ShuffleOptions.buffer_rows must be >= 0, got ",
                opt_.buffer_rows());
  MECHLAB_CHECK(opt_.parts() >= 1 && opt_.part() >= 0 && opt_.part() < opt_.parts(),
                "ShuffleOptions.part must be in [0, parts) and parts >= 1, got part ", opt_.part(), " of ",
                opt_.parts());
  if (hooks_.empty()) hooks_ = store_.hooks();
  chunks_ = store_.chunks();
  if (opt_.parts() > 1) {
    // Contiguous runs of chunks; the first (chunks % parts) runs one longer.
    const auto n = static_cast<int64_t>(chunks_.size());
    MECHLAB_CHECK(n >= opt_.parts(), "activation store '", store_.path(), "' has ", n, " chunks, fewer than the ",
                  opt_.parts(), " parts asked for (one per process); use fewer processes or a store of more chunks");
    const int64_t base = n / opt_.parts(), extra = n % opt_.parts();
    const int64_t begin = opt_.part() * base + std::min(opt_.part(), extra);
    const int64_t end = begin + base + (opt_.part() < extra ? 1 : 0);
    chunks_ = std::vector<std::pair<int64_t, int64_t>>(chunks_.begin() + begin, chunks_.begin() + end);
  }
  const int64_t capacity =
      std::max(opt_.buffer_rows(), opt_.batch_size()) + store_.header().chunk_rows;
  for (const auto& h : hooks_) {
    at::Tensor probe = store_.rows(h, 0, 0);  // checks the name
    buf_[h] = at::empty({capacity, store_.header().width(h)}, probe.options());
  }
  buf_tokens_ = at::empty({capacity}, at::kInt);
  buf_rows_ = at::empty({capacity}, at::kLong);
}

void ShuffledBatches::start_epoch() {
  rng_ = Rng(opt_.seed() + static_cast<uint64_t>(epoch_));
  const int64_t n_chunks = static_cast<int64_t>(chunks_.size());
  chunk_order_.resize(static_cast<size_t>(n_chunks));
  std::iota(chunk_order_.begin(), chunk_order_.end(), 0);
  rng_.shuffle(chunk_order_);
  next_chunk_ = 0;
  fill_ = 0;
  started_ = true;
}

bool ShuffledBatches::fill_buffer() {
  const int64_t cap = std::max(opt_.buffer_rows(), opt_.batch_size());
  bool read_any = false;
  while (fill_ < cap && next_chunk_ < chunk_order_.size()) {
    // A chunk of one store file (a set's never straddle two shards).
    const auto [start, n] = chunks_[static_cast<size_t>(chunk_order_[next_chunk_++])];
    at::Tensor tokens = store_.token_ids(start, n);  // [n]
    at::Tensor keep = at::ones({n}, at::kBool);
    if (opt_.exclude_first_position()) keep &= store_.row_source(start, n).select(1, 1) != 0;
    for (int64_t id : opt_.exclude_token_ids()) keep &= tokens != id;
    at::Tensor idx = keep.nonzero().squeeze(1);  // [kept]
    const int64_t k = idx.size(0);
    for (const auto& h : hooks_) {
      at::Tensor acts = store_.rows(h, start, n);
      if (opt_.check_finite()) store_.check_finite(h, start, acts);
      buf_[h].narrow(0, fill_, k).copy_(acts.index_select(0, idx));
    }
    buf_tokens_.narrow(0, fill_, k).copy_(tokens.index_select(0, idx));
    buf_rows_.narrow(0, fill_, k).copy_(idx + start);
    fill_ += k;
    read_any = true;
  }
  return read_any;
}

StoreBatch ShuffledBatches::take(int64_t n) {
  // Serve from the tail of the live rows; the buffer was permuted when last
  // filled, so the tail is a uniform sample of it.
  StoreBatch b;
  const int64_t from = fill_ - n;
  for (const auto& h : hooks_) b.acts[h] = buf_[h].narrow(0, from, n).clone();
  b.token_ids = buf_tokens_.narrow(0, from, n).clone();
  b.rows = buf_rows_.narrow(0, from, n).clone();
  fill_ = from;
  return b;
}

std::optional<StoreBatch> ShuffledBatches::next() {
  if (!started_) start_epoch();
  const int64_t low_water = std::max(opt_.buffer_rows() / 2, opt_.batch_size());
  if (fill_ < low_water && fill_buffer()) {
    std::vector<int64_t> perm(static_cast<size_t>(fill_));
    std::iota(perm.begin(), perm.end(), 0);
    rng_.shuffle(perm);
    at::Tensor p = at::tensor(perm, at::kLong);
    for (auto& [h, t] : buf_) t.narrow(0, 0, fill_).copy_(t.narrow(0, 0, fill_).index_select(0, p));
    buf_tokens_.narrow(0, 0, fill_).copy_(buf_tokens_.narrow(0, 0, fill_).index_select(0, p));
    buf_rows_.narrow(0, 0, fill_).copy_(buf_rows_.narrow(0, 0, fill_).index_select(0, p));
  }
  const bool last = next_chunk_ >= chunk_order_.size();
  if (fill_ == 0 || (fill_ < opt_.batch_size() && last && opt_.drop_last())) {
    started_ = false;
    ++epoch_;
    return std::nullopt;
  }
  return take(std::min(fill_, opt_.batch_size()));
}

}  // namespace mechlab::core
