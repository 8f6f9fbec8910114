// The BPE model of a byte-level tokenizer: vocabulary, merges by rank, and the per-word
// encoding with its cache (Sennrich et al. 2016; the `BPE` model of Hugging Face
// `tokenizers`).
//
// Works on raw bytes: a word is the bytes of one pre-token; its initial symbols are the
// single-byte tokens; the merge of lowest rank among adjacent symbols is applied (leftmost
// first among equal ranks) until none applies, as `tokenizers`' Word::merge_all does.
// `ignore_merges` (Llama 3) first looks the whole word up in the vocabulary.
//
// Vocabulary strings are byte-level text (core/data/tokenizer/byte_level.h); a vocabulary entry
// outside the byte-level alphabet can never be produced by encoding and only decodes.
#pragma once

#include "core/util/options.h"

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace mechlab::core::tokenizer {

/// Token ids index dense tables, so a tokenizer's largest id must stay below
/// kIdSlack x (its number of tokens) + kIdSlackTokens. Real tokenizers are
/// dense or nearly so (reserved ranges, padded vocabularies); a far sparser id
/// space is a typo that would allocate gigabytes, and is refused.
inline constexpr int64_t kIdSlack = 2;
inline constexpr int64_t kIdSlackTokens = 65536;

class BpeModel {
 public:
  struct Options {
    /// Encode a word that is itself in the vocabulary as that one token (Llama 3).
    MECHLAB_OPTION(Options, bool, ignore_merges, false)
    /// Token for bytes whose single-byte token is missing; none (the default for
    /// byte-level vocabularies, which hold all 256) drops such bytes, as `tokenizers` does.
    MECHLAB_OPTION(Options, std::optional<std::string>, unk_token, std::nullopt)
    /// Consecutive unknown bytes become one unk token.
    MECHLAB_OPTION(Options, bool, fuse_unk, false)
    /// Words cached at most (the cache only saves time; results do not depend on it).
    MECHLAB_OPTION(Options, size_t, cache_capacity, 1 << 16)
  };

  BpeModel() = default;
  /// `vocab` maps byte-level token text to id; `merges` are (left, right) token pairs,
  /// rank = position. Refuses duplicate ids, merges naming tokens outside the vocabulary
  /// and merges whose result is not in the vocabulary, naming the merge.
  BpeModel(std::unordered_map<std::string, int64_t> vocab,
           const std::vector<std::pair<std::string, std::string>>& merges, Options options);

  BpeModel(const BpeModel&) = delete;
  BpeModel& operator=(const BpeModel&) = delete;
  BpeModel(BpeModel&&) noexcept;
  BpeModel& operator=(BpeModel&&) noexcept;

  /// Appends the ids of one word (raw bytes; not empty) to `out`.
  void encode_word(std::string_view word, std::vector<int64_t>& out) const;

  /// The id of byte-level token text, if in the vocabulary.
  std::optional<int64_t> token_to_id(std::string_view token) const;
  /// Byte-level text of `id`, or nullptr when no vocabulary entry has that id.
  const std::string* id_to_token(int64_t id) const;
  /// 1 + the largest id (ids may have gaps).
  /// Number of vocabulary entries (ids may leave holes: see id_end).
  int64_t vocab_size() const { return static_cast<int64_t>(vocab_.size()); }
  int64_t id_end() const { return static_cast<int64_t>(id_to_token_.size()); }
  size_t size() const { return vocab_.size(); }
  size_t merge_count() const { return merges_.size(); }
  const Options& options() const { return options_; }

 private:
  struct Merge {
    int32_t rank;
    int32_t id;
  };
  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  void merge_word(std::string_view word, std::vector<int64_t>& out) const;

  Options options_;
  std::unordered_map<std::string, int64_t> vocab_;          // byte-level text -> id
  std::vector<std::string> id_to_token_;                    // id -> byte-level text
  std::vector<bool> has_id_;                                // ids with an entry
  std::unordered_map<std::string, int32_t> bytes_to_id_;    // raw bytes -> id
  int32_t byte_id_[256];                                    // single-byte tokens, -1 if none
  std::optional<int32_t> unk_id_;
  std::unordered_map<uint64_t, Merge> merges_;              // (left id, right id) -> merge

  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;  // raw word -> ids
};

}  // namespace mechlab::core::tokenizer
