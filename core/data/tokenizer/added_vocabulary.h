// Added tokens: whole strings ("<|endoftext|>", "<|begin_of_text|>", user tokens) found in
// the text before pre-tokenization and encoded as their own ids, as the AddedVocabulary of
// `tokenizers` does:
//   - matching is leftmost-longest, non-overlapping (Aho-Corasick LeftmostLongest);
//   - tokens with normalized = false are matched on the raw text first, then the pieces
//     between them are normalized and tokens with normalized = true are matched there
//     (their content normalized too);
//   - single_word: only where no \w character touches the match on either side;
//   - lstrip / rstrip: the match takes the whitespace on its left / right with it;
//   - special tokens are skipped by decode(..., skip_special_tokens = true).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace mechlab::core::tokenizer {

struct AddedToken {
  int64_t id = 0;
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
  bool special = false;
};

/// A piece of text after added-token matching: either an added token's id (id >= 0), or
/// text still to be pre-tokenized (id = -1).
struct Piece {
  std::string_view text;
  int64_t id = -1;
};

class AddedVocabulary {
 public:
  AddedVocabulary() = default;
  /// `normalize` turns a normalized token's content into what it is matched as (identity
  /// when the tokenizer has no normalizer). Refuses empty contents and one content with two
  /// ids, naming them.
  AddedVocabulary(std::vector<AddedToken> tokens, const std::function<std::string(std::string_view)>& normalize);

  /// Splits `text` at the tokens of one pass (normalized or not), appending to `out`.
  void split(std::string_view text, bool normalized_pass, std::vector<Piece>& out) const;

  bool empty() const { return tokens_.empty(); }
  const std::vector<AddedToken>& tokens() const { return tokens_; }
  /// The added token with this id, or nullptr.
  const AddedToken* by_id(int64_t id) const;
  /// The added token with this content, or nullptr.
  const AddedToken* by_content(std::string_view content) const;
  bool is_special(int64_t id) const { return special_ids_.count(id) > 0; }

 private:
  struct Trie {
    struct Node {
      std::unordered_map<unsigned char, int32_t> next;
      int32_t token = -1;  // index into tokens_ of the token ending here
    };
    std::vector<Node> nodes;
    bool first_byte[256] = {};
    void add(std::string_view s, int32_t token);
  };

  std::vector<AddedToken> tokens_;
  std::unordered_map<int64_t, size_t> by_id_;
  std::unordered_map<std::string, size_t> by_content_;
  std::unordered_set<int64_t> special_ids_;
  Trie raw_, normalized_;
};

}  // namespace mechlab::core::tokenizer
