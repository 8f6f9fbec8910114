// BpeTokenizer: a byte-level BPE tokenizer with the pipeline of Hugging Face `tokenizers`:
//
//   text ─► added tokens (normalized = false) ─► normalizer (NFC or none) on the pieces
//        ─► added tokens (normalized = true) ─► pre-tokenizer (prefix space, split pattern,
//           byte-level) ─► BPE per word (core/data/tokenizer/bpe_model.h) ─► post-processor
//
// and decoding by the ByteLevel decoder (bytes back to UTF-8, ill-formed sequences as
// U+FFFD) or, without a decoder, tokens joined by spaces. Built by the loaders of
// core/data/tokenizer/tokenizer_json.h. Encoding is exact: ids agree with `tokenizers` 0.22 on
// the fixtures of tests/data/tokenizers/.
//
// Thread safety: const calls may run concurrently (the word cache takes a mutex).
#pragma once

#include "core/data/tokenizer/added_vocabulary.h"
#include "core/data/tokenizer/bpe_model.h"
#include "core/data/tokenizer/post_processor.h"
#include "core/data/tokenizer/pretokenizer.h"
#include "core/data/tokenizer/tokenizer.h"

#include <optional>
#include <string>
#include <vector>

namespace mechlab::core::tokenizer {

enum class Normalization { none, nfc };
enum class Decoding { byte_level, join_with_spaces };

/// Everything that defines a BpeTokenizer besides its model.
struct BpeTokenizerSpec {
  Normalization normalization = Normalization::none;
  SplitPattern pattern = SplitPattern::gpt2;
  /// ByteLevel's add_prefix_space: a space before each piece that does not start with one.
  bool add_prefix_space = false;
  std::vector<AddedToken> added_tokens;
  PostProcessor post_processor;
  Decoding decoding = Decoding::byte_level;
  std::optional<int64_t> bos_id, eos_id;
  /// Where it came from, for messages ("models/gpt2/tokenizer.json").
  std::string source;
};

class BpeTokenizer final : public Tokenizer {
 public:
  BpeTokenizer(BpeModel model, BpeTokenizerSpec spec);

  std::optional<int64_t> token_to_id(std::string_view token) const override;
  std::string id_to_token(int64_t id) const override;
  int64_t vocab_size() const override { return vocab_size_; }
  std::optional<int64_t> bos_id() const override { return spec_.bos_id; }
  std::optional<int64_t> eos_id() const override { return spec_.eos_id; }
  std::string kind() const override { return "bpe"; }

  const BpeModel& model() const { return model_; }
  const BpeTokenizerSpec& spec() const { return spec_; }
  const AddedVocabulary& added_vocabulary() const { return added_; }
  /// One line: source, vocabulary, merges, pattern, normalizer, added tokens, BOS/EOS.
  std::string describe() const;

 protected:
  std::vector<int64_t> encode_ids(std::string_view text, const EncodeOptions& options) const override;
  std::string decode_ids(const std::vector<int64_t>& ids, bool skip_special_tokens) const override;

 private:
  void encode_plain(std::string_view text, std::vector<int64_t>& out) const;
  void encode_segment(std::string_view segment, std::vector<int64_t>& out) const;
  void check_id(int64_t id) const;

  BpeModel model_;
  BpeTokenizerSpec spec_;
  AddedVocabulary added_;
  int64_t vocab_size_ = 0;
  std::vector<std::string> decoded_;  // id -> bytes the ByteLevel decoder makes of it
  std::vector<bool> known_;           // id -> has a token
};

}  // namespace mechlab::core::tokenizer
