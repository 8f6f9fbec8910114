#include "core/data/tokenizer/bpe_tokenizer.h"

#include "core/util/error.h"
#include "core/data/tokenizer/byte_level.h"
#include "core/data/tokenizer/unicode.h"

namespace mechlab::core::tokenizer {

BpeTokenizer::BpeTokenizer(BpeModel model, BpeTokenizerSpec spec)
    : model_(std::move(model)), spec_(std::move(spec)) {
  const bool nfc_on = spec_.normalization == Normalization::nfc;
  added_ = AddedVocabulary(spec_.added_tokens, [nfc_on](std::string_view s) {
    return nfc_on ? nfc(s) : std::string(s);
  });
  vocab_size_ = model_.id_end();
  // The id tables below are dense: bound the added ids as BpeModel bounds
  // the vocabulary's, so one stray id cannot allocate gigabytes.
  const int64_t tokens = model_.vocab_size() + static_cast<int64_t>(spec_.added_tokens.size());
  const int64_t id_limit = kIdSlack * tokens + kIdSlackTokens;
  for (const AddedToken& t : spec_.added_tokens) {
    MECHLAB_CHECK(t.id >= 0, "tokenizer ", spec_.source, ": added token '", t.content, "' has id ", t.id);
    MECHLAB_CHECK(t.id < id_limit, "tokenizer ", spec_.source, ": added token '", t.content,
                  "' has id ", t.id, ", far beyond its ", tokens, " tokens; ids must be below ",
                  id_limit, " (a typo in added_tokens?)");
    vocab_size_ = std::max(vocab_size_, t.id + 1);
  }
  // What the ByteLevel decoder makes of each token: its bytes when every character is in the
  // byte-level alphabet, else its UTF-8 text unchanged (as `tokenizers` does).
  decoded_.resize(static_cast<size_t>(vocab_size_));
  known_.assign(static_cast<size_t>(vocab_size_), false);
  for (int64_t id = 0; id < model_.id_end(); ++id) {
    if (const std::string* tok = model_.id_to_token(id)) {
      auto bytes = byte_level_to_bytes(*tok);
      decoded_[static_cast<size_t>(id)] = bytes ? std::move(*bytes) : *tok;
      known_[static_cast<size_t>(id)] = true;
    }
  }
  for (const AddedToken& t : spec_.added_tokens) {
    auto bytes = byte_level_to_bytes(t.content);
    decoded_[static_cast<size_t>(t.id)] = bytes ? std::move(*bytes) : t.content;
    known_[static_cast<size_t>(t.id)] = true;
  }
  for (const auto* which : {&spec_.bos_id, &spec_.eos_id}) {
    if (*which) check_id(**which);
  }
  for (const auto* ids : {&spec_.post_processor.prefix, &spec_.post_processor.suffix}) {
    for (int64_t id : *ids) check_id(id);
  }
}

void BpeTokenizer::check_id(int64_t id) const {
  MECHLAB_CHECK(id >= 0 && id < vocab_size_ && known_[static_cast<size_t>(id)], "tokenizer ",
                spec_.source, ": token id ", id, " is not in the vocabulary (ids are in [0, ",
                vocab_size_, "))");
}

std::optional<int64_t> BpeTokenizer::token_to_id(std::string_view token) const {
  if (const AddedToken* t = added_.by_content(token)) return t->id;
  return model_.token_to_id(token);
}

std::string BpeTokenizer::id_to_token(int64_t id) const {
  check_id(id);
  if (const AddedToken* t = added_.by_id(id)) return t->content;
  return *model_.id_to_token(id);
}

void BpeTokenizer::encode_segment(std::string_view segment, std::vector<int64_t>& out) const {
  thread_local std::vector<std::string_view> words;
  thread_local std::string prefixed;
  if (segment.empty()) return;
  if (spec_.add_prefix_space && segment[0] != ' ') {
    prefixed.assign(1, ' ');
    prefixed.append(segment);
    segment = prefixed;
  }
  words.clear();
  split(spec_.pattern, segment, words);
  for (std::string_view w : words) model_.encode_word(w, out);
}

void BpeTokenizer::encode_plain(std::string_view text, std::vector<int64_t>& out) const {
  const size_t bad = find_invalid_utf8(text);
  MECHLAB_CHECK(bad == std::string_view::npos, "tokenizer: the text is not valid UTF-8 (byte ", bad,
                " of ", text.size(), "); decode it to UTF-8 first");
  std::vector<Piece> raw, normalized;
  added_.split(text, false, raw);
  for (const Piece& p : raw) {
    if (p.id >= 0) {
      out.push_back(p.id);
      continue;
    }
    std::string buffer;
    std::string_view view = p.text;
    if (spec_.normalization == Normalization::nfc && !nfc_quick_check(view)) {
      buffer = nfc(view);
      view = buffer;
    }
    normalized.clear();
    added_.split(view, true, normalized);
    for (const Piece& q : normalized) {
      if (q.id >= 0) {
        out.push_back(q.id);
      } else {
        encode_segment(q.text, out);
      }
    }
  }
}

std::vector<int64_t> BpeTokenizer::encode_ids(std::string_view text, const EncodeOptions& options) const {
  std::vector<int64_t> body;
  body.reserve(text.size() / 3 + 4);
  encode_plain(text, body);
  std::vector<int64_t> ids;
  if (options.add_special_tokens()) {
    const auto& pre = spec_.post_processor.prefix;
    auto first = pre.begin();
    if (options.prepend_bos() == false && first != pre.end() && spec_.bos_id && *first == *spec_.bos_id) ++first;
    ids.assign(first, pre.end());
    ids.insert(ids.end(), body.begin(), body.end());
    ids.insert(ids.end(), spec_.post_processor.suffix.begin(), spec_.post_processor.suffix.end());
  } else {
    ids = std::move(body);
  }
  if (options.prepend_bos() == true) {
    MECHLAB_CHECK(spec_.bos_id.has_value(), "tokenizer ", spec_.source,
                  ": prepend_bos asks for a BOS token but this tokenizer has none (give bos_token in "
                  "tokenizer_config.json)");
    if (ids.empty() || ids.front() != *spec_.bos_id) ids.insert(ids.begin(), *spec_.bos_id);
  }
  return ids;
}

std::string BpeTokenizer::decode_ids(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  std::string bytes;
  bool first = true;
  for (int64_t id : ids) {
    check_id(id);
    if (skip_special_tokens && added_.is_special(id)) continue;
    if (spec_.decoding == Decoding::byte_level) {
      bytes += decoded_[static_cast<size_t>(id)];
    } else {
      if (!first) bytes += ' ';
      bytes += id_to_token(id);
    }
    first = false;
  }
  return spec_.decoding == Decoding::byte_level ? utf8_lossy(bytes) : bytes;
}

std::string BpeTokenizer::describe() const {
  std::string bos = spec_.bos_id ? str_cat(id_to_token(*spec_.bos_id), " (", *spec_.bos_id, ")") : "none";
  std::string eos = spec_.eos_id ? str_cat(id_to_token(*spec_.eos_id), " (", *spec_.eos_id, ")") : "none";
  return str_cat("byte-level BPE from ", spec_.source, ": ", model_.size(), " tokens, ",
                 model_.merge_count(), " merges, ", spec_.added_tokens.size(), " added tokens, vocab_size ",
                 vocab_size_, ", pattern ", split_pattern_name(spec_.pattern), ", normalizer ",
                 spec_.normalization == Normalization::nfc ? "NFC" : "none",
                 model_.options().ignore_merges() ? ", ignore_merges" : "", ", BOS ", bos, ", EOS ", eos);
}

}  // namespace mechlab::core::tokenizer
