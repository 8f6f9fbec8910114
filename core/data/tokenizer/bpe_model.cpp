#include "core/data/tokenizer/bpe_model.h"

#include "core/util/error.h"
#include "core/data/tokenizer/byte_level.h"

#include <queue>

namespace mechlab::core::tokenizer {

BpeModel::BpeModel(BpeModel&& o) noexcept { *this = std::move(o); }

BpeModel& BpeModel::operator=(BpeModel&& o) noexcept {
  if (this == &o) return *this;
  std::scoped_lock lock(cache_mutex_, o.cache_mutex_);
  options_ = std::move(o.options_);
  vocab_ = std::move(o.vocab_);
  id_to_token_ = std::move(o.id_to_token_);
  has_id_ = std::move(o.has_id_);
  bytes_to_id_ = std::move(o.bytes_to_id_);
  std::copy(std::begin(o.byte_id_), std::end(o.byte_id_), std::begin(byte_id_));
  unk_id_ = o.unk_id_;
  merges_ = std::move(o.merges_);
  cache_ = std::move(o.cache_);
  return *this;
}

BpeModel::BpeModel(std::unordered_map<std::string, int64_t> vocab,
                   const std::vector<std::pair<std::string, std::string>>& merges, Options options)
    : options_(std::move(options)), vocab_(std::move(vocab)) {
  std::fill(std::begin(byte_id_), std::end(byte_id_), -1);
  int64_t max_id = -1;
  for (const auto& [token, id] : vocab_) {
    MECHLAB_CHECK(id >= 0 && id < (int64_t{1} << 31), "tokenizer: vocabulary token '", token,
                  "' has id ", id, ", outside [0, 2^31)");
    max_id = std::max(max_id, id);
  }
  // Without tokens every text encodes to [] (unknown bytes are dropped).
  MECHLAB_CHECK(!vocab_.empty(), "tokenizer: the vocabulary is empty; a BPE model needs its "
                "tokens (is this the right tokenizer.json?)");
  // The id table is dense, so one stray id (99,999,999 in a 50k vocabulary)
  // would allocate gigabytes: refuse id spaces far sparser than real ones.
  const int64_t id_limit = kIdSlack * static_cast<int64_t>(vocab_.size()) + kIdSlackTokens;
  MECHLAB_CHECK(max_id < id_limit, "tokenizer: vocabulary id ", max_id, " is far beyond its ",
                vocab_.size(), " tokens; ids must be below ", id_limit,
                " (a typo in the vocabulary?)");
  id_to_token_.resize(static_cast<size_t>(max_id + 1));
  has_id_.assign(static_cast<size_t>(max_id + 1), false);
  for (const auto& [token, id] : vocab_) {
    const auto i = static_cast<size_t>(id);
    MECHLAB_CHECK(!has_id_[i], "tokenizer: vocabulary tokens '", id_to_token_[i], "' and '", token,
                  "' both have id ", id, "; every id must name one token");
    has_id_[i] = true;
    id_to_token_[i] = token;
    if (auto bytes = byte_level_to_bytes(token)) {
      if (bytes->size() == 1) byte_id_[static_cast<unsigned char>((*bytes)[0])] = static_cast<int32_t>(id);
      bytes_to_id_.emplace(std::move(*bytes), static_cast<int32_t>(id));
    }
  }
  if (options_.unk_token()) {
    const auto it = vocab_.find(*options_.unk_token());
    MECHLAB_CHECK(it != vocab_.end(), "tokenizer: the unknown token '", *options_.unk_token(),
                  "' is not in the vocabulary");
    unk_id_ = static_cast<int32_t>(it->second);
  }
  merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [left, right] = merges[rank];
    const auto l = vocab_.find(left), r = vocab_.find(right);
    const std::string what = str_cat("tokenizer: merge ", rank, " ('", left, "' '", right, "') ");
    MECHLAB_CHECK(l != vocab_.end(), what, "refers to '", left,
                  "', which is not in the vocabulary: the merges do not belong to this vocabulary");
    MECHLAB_CHECK(r != vocab_.end(), what, "refers to '", right,
                  "', which is not in the vocabulary: the merges do not belong to this vocabulary");
    const auto m = vocab_.find(left + right);
    MECHLAB_CHECK(m != vocab_.end(), what, "makes '", left + right,
                  "', which is not in the vocabulary: the merges do not belong to this vocabulary");
    // A repeated pair keeps its last rank: `tokenizers` collects the merges into a hash map,
    // where a later insertion replaces an earlier one.
    merges_[pair_key(static_cast<int32_t>(l->second), static_cast<int32_t>(r->second))] =
        Merge{static_cast<int32_t>(rank), static_cast<int32_t>(m->second)};
  }
}

std::optional<int64_t> BpeModel::token_to_id(std::string_view token) const {
  const auto it = vocab_.find(std::string(token));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::id_to_token(int64_t id) const {
  if (id < 0 || id >= id_end() || !has_id_[static_cast<size_t>(id)]) return nullptr;
  return &id_to_token_[static_cast<size_t>(id)];
}

void BpeModel::encode_word(std::string_view word, std::vector<int64_t>& out) const {
  if (options_.ignore_merges()) {
    const auto it = bytes_to_id_.find(std::string(word));
    if (it != bytes_to_id_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  if (word.size() == 1 && byte_id_[static_cast<unsigned char>(word[0])] >= 0) {
    out.push_back(byte_id_[static_cast<unsigned char>(word[0])]);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    const auto it = cache_.find(std::string(word));
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t start = out.size();
  merge_word(word, out);
  if (word.size() < 256) {  // `tokenizers` caches words shorter than 256 too
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cache_.size() < options_.cache_capacity()) {
      cache_.emplace(std::string(word), std::vector<int32_t>(out.begin() + static_cast<std::ptrdiff_t>(start), out.end()));
    }
  }
}

void BpeModel::merge_word(std::string_view word, std::vector<int64_t>& out) const {
  // Symbols as a doubly linked list over a vector; `len` = 0 marks a symbol merged away.
  struct Symbol {
    int32_t id;
    int32_t prev, next;
    int32_t len;
  };
  thread_local std::vector<Symbol> sym;
  sym.clear();
  std::optional<int32_t> pending_unk;
  auto push = [&](int32_t id) {
    const auto n = static_cast<int32_t>(sym.size());
    sym.push_back(Symbol{id, n - 1, n + 1, 1});
  };
  for (char c : word) {
    const int32_t id = byte_id_[static_cast<unsigned char>(c)];
    if (id >= 0) {
      if (pending_unk) push(*pending_unk), pending_unk.reset();
      push(id);
    } else if (unk_id_) {
      if (pending_unk && !options_.fuse_unk()) push(*pending_unk);
      pending_unk = *unk_id_;
    }
  }
  if (pending_unk) push(*pending_unk);
  if (sym.empty()) return;
  sym.back().next = -1;

  // Min-heap of candidate merges by (rank, position), as Word::merge_all.
  struct Candidate {
    int32_t rank, pos, id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  thread_local std::vector<Candidate> heap_storage;
  heap_storage.clear();
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap(
      std::greater<Candidate>(), std::move(heap_storage));
  auto consider = [&](int32_t pos) {
    const int32_t next = sym[static_cast<size_t>(pos)].next;
    if (next < 0) return;
    const auto it = merges_.find(pair_key(sym[static_cast<size_t>(pos)].id, sym[static_cast<size_t>(next)].id));
    if (it != merges_.end()) heap.push(Candidate{it->second.rank, pos, it->second.id});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(sym.size()); ++i) consider(i);
  while (!heap.empty()) {
    const Candidate top = heap.top();
    heap.pop();
    Symbol& left = sym[static_cast<size_t>(top.pos)];
    if (left.len == 0 || left.next < 0) continue;
    Symbol& right = sym[static_cast<size_t>(left.next)];
    // Still the pair this candidate was made for?
    const auto it = merges_.find(pair_key(left.id, right.id));
    if (it == merges_.end() || it->second.id != top.id) continue;
    left.id = top.id;
    left.len += right.len;
    right.len = 0;
    left.next = right.next;
    if (left.next >= 0) sym[static_cast<size_t>(left.next)].prev = top.pos;
    if (left.prev >= 0) consider(left.prev);
    consider(top.pos);
  }
  for (int32_t i = 0; i >= 0; i = sym[static_cast<size_t>(i)].next) out.push_back(sym[static_cast<size_t>(i)].id);
}

}  // namespace mechlab::core::tokenizer
