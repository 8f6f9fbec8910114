#include "core/data/tokenizer/added_vocabulary.h"

#include "core/util/error.h"
#include "core/data/tokenizer/unicode.h"

namespace mechlab::core::tokenizer {
namespace {

// The code point that ends at byte `end` of valid UTF-8 `s` (end > 0).
uint32_t code_point_before(std::string_view s, size_t end) {
  size_t start = end - 1;
  while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
  return next_code_point(s, start);
}

bool is_word_char(uint32_t cp) { return char_class(cp) & kWord; }
bool is_space_char(uint32_t cp) { return char_class(cp) & kSpace; }

}  // namespace

void AddedVocabulary::Trie::add(std::string_view s, int32_t token) {
  if (nodes.empty()) nodes.emplace_back();
  int32_t node = 0;
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    const auto it = nodes[static_cast<size_t>(node)].next.find(c);
    if (it != nodes[static_cast<size_t>(node)].next.end()) {
      node = it->second;
    } else {
      const auto fresh = static_cast<int32_t>(nodes.size());
      nodes[static_cast<size_t>(node)].next.emplace(c, fresh);
      nodes.emplace_back();
      node = fresh;
    }
  }
  // Two tokens with one pattern: Aho-Corasick reports the first added.
  if (nodes[static_cast<size_t>(node)].token < 0) nodes[static_cast<size_t>(node)].token = token;
  first_byte[static_cast<unsigned char>(s[0])] = true;
}

AddedVocabulary::AddedVocabulary(std::vector<AddedToken> tokens,
                                 const std::function<std::string(std::string_view)>& normalize)
    : tokens_(std::move(tokens)) {
  // `tokenizers` builds its tries from the special tokens first, then the others.
  std::vector<size_t> order;
  for (size_t i = 0; i < tokens_.size(); ++i) {
    if (tokens_[i].special) order.push_back(i);
  }
  for (size_t i = 0; i < tokens_.size(); ++i) {
    if (!tokens_[i].special) order.push_back(i);
  }
  for (size_t i = 0; i < tokens_.size(); ++i) {
    const AddedToken& t = tokens_[i];
    MECHLAB_CHECK(!t.content.empty(), "tokenizer: added token ", t.id, " has empty content");
    MECHLAB_CHECK(find_invalid_utf8(t.content) == std::string_view::npos, "tokenizer: added token ",
                  t.id, " is not valid UTF-8");
    const auto [it, fresh] = by_content_.emplace(t.content, i);
    MECHLAB_CHECK(fresh, "tokenizer: added token '", t.content, "' appears twice (ids ",
                  tokens_[it->second].id, " and ", t.id, ")");
    const auto [jt, fresh_id] = by_id_.emplace(t.id, i);
    MECHLAB_CHECK(fresh_id, "tokenizer: added tokens '", tokens_[jt->second].content, "' and '",
                  t.content, "' both have id ", t.id);
    if (t.special) special_ids_.insert(t.id);
  }
  for (size_t i : order) {
    const AddedToken& t = tokens_[i];
    if (t.normalized) {
      const std::string n = normalize(t.content);
      if (!n.empty()) normalized_.add(n, static_cast<int32_t>(i));
    } else {
      raw_.add(t.content, static_cast<int32_t>(i));
    }
  }
}

const AddedToken* AddedVocabulary::by_id(int64_t id) const {
  const auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

const AddedToken* AddedVocabulary::by_content(std::string_view content) const {
  const auto it = by_content_.find(std::string(content));
  return it == by_content_.end() ? nullptr : &tokens_[it->second];
}

void AddedVocabulary::split(std::string_view text, bool normalized_pass, std::vector<Piece>& out) const {
  const Trie& trie = normalized_pass ? normalized_ : raw_;
  if (trie.nodes.empty()) {
    if (!text.empty()) out.push_back(Piece{text, -1});
    return;
  }
  size_t done = 0;  // text[0, done) is already in `out`
  for (size_t i = 0; i < text.size();) {
    if (!trie.first_byte[static_cast<unsigned char>(text[i])]) {
      ++i;
      continue;
    }
    // Longest token starting at i.
    int32_t node = 0, best = -1;
    size_t best_end = 0;
    for (size_t j = i; j < text.size(); ++j) {
      const auto& next = trie.nodes[static_cast<size_t>(node)].next;
      const auto it = next.find(static_cast<unsigned char>(text[j]));
      if (it == next.end()) break;
      node = it->second;
      if (trie.nodes[static_cast<size_t>(node)].token >= 0) {
        best = trie.nodes[static_cast<size_t>(node)].token;
        best_end = j + 1;
      }
    }
    if (best < 0) {
      ++i;
      continue;
    }
    const AddedToken& t = tokens_[static_cast<size_t>(best)];
    size_t start = i, stop = best_end;
    if (t.single_word) {
      const bool left_ok = start == 0 || !is_word_char(code_point_before(text, start));
      size_t k = stop;
      const bool right_ok = stop == text.size() || !is_word_char(next_code_point(text, k));
      if (!left_ok || !right_ok) {
        // Aho-Corasick's iterator resumes after the discarded match.
        i = stop;
        continue;
      }
    }
    if (t.lstrip) {
      size_t s = start;
      while (s > done && is_space_char(code_point_before(text, s))) {
        size_t p = s - 1;
        while (p > 0 && (static_cast<unsigned char>(text[p]) & 0xC0) == 0x80) --p;
        s = p;
      }
      start = s;
    }
    if (t.rstrip) {
      for (size_t k = stop; k < text.size();) {
        size_t next = k;
        if (!is_space_char(next_code_point(text, next))) break;
        stop = k = next;
      }
    }
    if (start > done) out.push_back(Piece{text.substr(done, start - done), -1});
    out.push_back(Piece{text.substr(start, stop - start), t.id});
    done = i = stop;
  }
  if (done < text.size()) out.push_back(Piece{text.substr(done), -1});
}

}  // namespace mechlab::core::tokenizer
