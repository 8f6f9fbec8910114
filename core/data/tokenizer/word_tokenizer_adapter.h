// The toy WordTokenizer (core/data/tokenizer/word_tokenizer.h) behind the common Tokenizer interface, so
// that code taking a Tokenizer runs on toy-task vocabularies and on Hugging Face BPE alike.
//
// Example:
//   WordTokenizerAdapter tok(core::WordTokenizer({"<pad>", "When", "Mary"}));
//   tok.encode("When Mary");   // {1, 2}
#pragma once

#include "core/data/tokenizer/tokenizer.h"

#include <memory>

namespace mechlab::core {
class WordTokenizer;
}

namespace mechlab::core::tokenizer {

class WordTokenizerAdapter final : public Tokenizer {
 public:
  explicit WordTokenizerAdapter(const WordTokenizer& words);
  ~WordTokenizerAdapter() override;

  std::optional<int64_t> token_to_id(std::string_view token) const override;
  std::string id_to_token(int64_t id) const override;
  int64_t vocab_size() const override;
  /// A word vocabulary has no BOS/EOS: prepend_bos = true is refused.
  std::optional<int64_t> bos_id() const override { return std::nullopt; }
  std::optional<int64_t> eos_id() const override { return std::nullopt; }
  std::string kind() const override { return "word"; }

 protected:
  /// Words split on whitespace; a word outside the vocabulary sheds trailing
  /// punctuation that is a word of its own ("store," -> "store" ","); words
  /// still unknown are refused by name (WordTokenizer::encode).
  std::vector<int64_t> encode_ids(std::string_view text, const EncodeOptions& options) const override;
  /// Words joined by single spaces; a word vocabulary has no special tokens to skip.
  std::string decode_ids(const std::vector<int64_t>& ids, bool skip_special_tokens) const override;

 private:
  std::unique_ptr<WordTokenizer> words_;
};

}  // namespace mechlab::core::tokenizer
