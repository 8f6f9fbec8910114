// WordTokenizer: whole-word vocabularies for toy tasks (IOI, greater-than, ...).
//
// A vocabulary is a list of distinct words; a word's id is its index. Text is
// split on whitespace, so punctuation that should be its own token is written
// with spaces around it ("went to the store , John gave"). There is no
// unknown-word token: encoding a word outside the vocabulary is an error that
// names it, so a typo in a template never silently becomes another id.
//
// JSON form (the `tokenizer` attribute of a dataset, core/data/dataset.h):
//   {"kind": "word", "vocab": ["<pad>", "When", "Mary", ...]}
//
// Example:
//   WordTokenizer tok({"<pad>", "When", "Mary", "and", "John"});
//   std::vector<int64_t> ids = tok.encode("When Mary and John");   // {1, 2, 3, 4}
//   std::string text = tok.decode(ids);                            // "When Mary and John"
#pragma once

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace mechlab::core {

/// The "kind" of a word tokenizer's JSON.
inline constexpr const char* kWordTokenizerKind = "word";

class WordTokenizer {
 public:
  /// An empty vocabulary.
  WordTokenizer() = default;
  /// Refuses duplicate words, empty words and words containing whitespace
  /// (encode could never produce them).
  ///
  /// Example: WordTokenizer tok({"<pad>", "a", "b"});
  explicit WordTokenizer(std::vector<std::string> vocab);

  /// Splits `text` on whitespace and maps each word to its id; refuses words
  /// outside the vocabulary, naming every one of them.
  ///
  /// Example: tok.encode("a b a") == std::vector<int64_t>{1, 2, 1}
  std::vector<int64_t> encode(const std::string& text) const;
  /// The words of `ids` joined by single spaces; refuses ids outside [0, size()).
  ///
  /// Example: tok.decode({1, 2}) == "a b"
  std::string decode(const std::vector<int64_t>& ids) const;
  /// decode() of a 1-D integer tensor [pos].
  std::string decode(const at::Tensor& ids) const;
  /// One word per id (TransformerLens's `to_str_tokens`).
  ///
  /// Example: tok.to_str_tokens({2, 1}) == std::vector<std::string>{"b", "a"}
  std::vector<std::string> to_str_tokens(const std::vector<int64_t>& ids) const;

  /// The id of `word`; refuses words outside the vocabulary.
  ///
  /// Example: tok.id("b") == 2
  int64_t id(const std::string& word) const;
  /// True when `word` is in the vocabulary.
  bool contains(const std::string& word) const { return index_.count(word) > 0; }
  /// The word with id `id`; refuses ids outside [0, size()).
  const std::string& word(int64_t id) const;
  /// Vocabulary size: ids are in [0, size()).
  int64_t size() const { return static_cast<int64_t>(vocab_.size()); }
  const std::vector<std::string>& vocab() const { return vocab_; }

  /// {"kind": "word", "vocab": [...]}
  nlohmann::json to_json() const;
  /// Reads to_json()'s form, refusing another kind, unknown keys, non-string
  /// words and duplicates.
  ///
  /// Example: auto tok = WordTokenizer::from_json(nlohmann::json::parse(ds.tokenizer));
  static WordTokenizer from_json(const nlohmann::json& j);
  /// to_json().dump()
  std::string to_json_string() const;
  /// from_json() of JSON text; refuses text that is not JSON.
  static WordTokenizer from_json_string(const std::string& text);

 private:
  std::vector<std::string> vocab_;                  // id -> word
  std::unordered_map<std::string, int64_t> index_;  // word -> id
};

}  // namespace mechlab::core
