// Tokenizer: the interface every mechlab tokenizer implements (byte-level BPE,
// core/data/tokenizer/bpe_tokenizer.h; the toy word tokenizer through
// core/data/tokenizer/word_tokenizer_adapter.h), with TransformerLens's vocabulary of calls.
//
// Example:
//   auto tok = core::tokenizer::load_tokenizer("models/gpt2");      // tokenizer_json.h
//   std::vector<int64_t> ids = tok->encode("Hello world");           // [15496, 995]
//   std::vector<int64_t> with_bos = tok->encode("Hello", EncodeOptions().prepend_bos(true));
//   std::string text = tok->decode(ids);                             // "Hello world"
//   std::vector<std::string> strs = tok->to_str_tokens(ids);         // {"Hello", " world"}
#pragma once

#include "core/util/options.h"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace mechlab::core::tokenizer {

/// How encode() treats special tokens.
struct EncodeOptions {
  /// Apply the tokenizer's post-processor (Llama 3's BOS, RoBERTa's <s> ... </s>), as
  /// Hugging Face's `encode(text)` does by default.
  ///
  /// Example: EncodeOptions().add_special_tokens(false)
  MECHLAB_OPTION(EncodeOptions, bool, add_special_tokens, true)
  /// TransformerLens's prepend_bos. true: the ids start with exactly one BOS (added when the
  /// post-processor does not add it; an error if the tokenizer has no BOS). false: a BOS that
  /// the post-processor would put first is left out. Unset: the post-processor decides.
  ///
  /// Example: EncodeOptions().prepend_bos(true)
  MECHLAB_OPTION(EncodeOptions, std::optional<bool>, prepend_bos, std::nullopt)
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  /// The ids of valid UTF-8 `text`; refuses invalid UTF-8, naming the byte offset.
  std::vector<int64_t> encode(std::string_view text, const EncodeOptions& options = EncodeOptions()) const {
    return encode_ids(text, options);
  }
  /// The text of `ids`; refuses ids outside the vocabulary, naming them.
  /// skip_special_tokens leaves special tokens out (Hugging Face's flag; transformers'
  /// default false).
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = false) const {
    return decode_ids(ids, skip_special_tokens);
  }
  /// One string per id, each decoded alone (TransformerLens's to_str_tokens): a token that
  /// holds part of a UTF-8 character shows as U+FFFD.
  std::vector<std::string> to_str_tokens(const std::vector<int64_t>& ids) const;
  /// TransformerLens's to_tokens for one text. prepend_bos: the ids start
  /// with exactly one BOS (TransformerLens's default; GPT-2 and GPT-NeoX get
  /// <|endoftext|>, Llama 3 keeps its <|begin_of_text|>), or none where the
  /// tokenizer has no BOS token, since there is nothing to prepend. false: no
  /// BOS, also where the post-processor would add one (prepend_bos=False).
  std::vector<int64_t> to_tokens(std::string_view text, bool prepend_bos = true) const;

  /// The id of a token's vocabulary text ("Ġworld", "<|endoftext|>"), if any.
  virtual std::optional<int64_t> token_to_id(std::string_view token) const = 0;
  /// The vocabulary text of `id` (Hugging Face's convert_ids_to_tokens); refuses unknown ids.
  virtual std::string id_to_token(int64_t id) const = 0;
  /// 1 + the largest id: a model's d_vocab must be at least this.
  virtual int64_t vocab_size() const = 0;
  virtual std::optional<int64_t> bos_id() const = 0;
  virtual std::optional<int64_t> eos_id() const = 0;
  /// "bpe" or "word".
  virtual std::string kind() const = 0;

 protected:
  virtual std::vector<int64_t> encode_ids(std::string_view text, const EncodeOptions& options) const = 0;
  virtual std::string decode_ids(const std::vector<int64_t>& ids, bool skip_special_tokens) const = 0;
};

}  // namespace mechlab::core::tokenizer
