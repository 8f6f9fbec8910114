#include "core/data/tokenizer/word_tokenizer_adapter.h"

#include "core/util/error.h"
#include "core/data/tokenizer/word_tokenizer.h"

#include <cctype>
#include <sstream>
#include <vector>

namespace mechlab::core::tokenizer {

WordTokenizerAdapter::WordTokenizerAdapter(const WordTokenizer& words)
    : words_(std::make_unique<WordTokenizer>(words)) {}

WordTokenizerAdapter::~WordTokenizerAdapter() = default;

std::optional<int64_t> WordTokenizerAdapter::token_to_id(std::string_view token) const {
  const std::string t(token);
  if (!words_->contains(t)) return std::nullopt;
  return words_->id(t);
}

std::string WordTokenizerAdapter::id_to_token(int64_t id) const { return words_->word(id); }

int64_t WordTokenizerAdapter::vocab_size() const { return words_->size(); }

std::vector<int64_t> WordTokenizerAdapter::encode_ids(std::string_view text, const EncodeOptions& options) const {
  MECHLAB_CHECK(options.prepend_bos() != true,
                "word tokenizer: prepend_bos asks for a BOS token, but a word vocabulary has none (put a BOS "
                "word at the start of the text instead)");
  // Text as people write it ("the store, John") meets vocabularies whose
  // punctuation is its own word ("store" ","): a word outside the
  // vocabulary sheds trailing punctuation that is in it. Anything still
  // unknown is refused by WordTokenizer::encode, by name.
  std::string spaced;
  std::istringstream in{std::string(text)};
  for (std::string word; in >> word;) {
    std::vector<std::string> tail;
    while (!words_->contains(word) && word.size() > 1 &&
           std::ispunct(static_cast<unsigned char>(word.back())) &&
           words_->contains(word.substr(word.size() - 1))) {
      tail.push_back(word.substr(word.size() - 1));
      word.pop_back();
    }
    spaced += (spaced.empty() ? "" : " ") + word;
    for (auto it = tail.rbegin(); it != tail.rend(); ++it) spaced += " " + *it;
  }
  return words_->encode(spaced);
}

std::string WordTokenizerAdapter::decode_ids(const std::vector<int64_t>& ids, bool /*skip_special_tokens*/) const {
  return words_->decode(ids);
}

}  // namespace mechlab::core::tokenizer
