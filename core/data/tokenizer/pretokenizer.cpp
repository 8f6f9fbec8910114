#include "core/data/tokenizer/pretokenizer.h"

#include "core/util/error.h"
#include "core/data/tokenizer/unicode.h"

namespace mechlab::core::tokenizer {
namespace {

// The scanner works on a decoded copy of the text: code points with their classes and byte
// offsets, so that backtracking (\s+(?!\S)) is index arithmetic.
struct Decoded {
  std::vector<uint32_t> cp;
  std::vector<uint8_t> cls;
  std::vector<uint32_t> offset;  // byte offset of each code point; offset[n] = text size
};

void decode(std::string_view text, Decoded& d) {
  d.cp.clear();
  d.cls.clear();
  d.offset.clear();
  for (size_t i = 0; i < text.size();) {
    d.offset.push_back(static_cast<uint32_t>(i));
    const uint32_t c = next_code_point(text, i);
    d.cp.push_back(c);
    d.cls.push_back(char_class(c));
  }
  d.offset.push_back(static_cast<uint32_t>(text.size()));
}

bool is_l(const Decoded& d, size_t i) { return d.cls[i] & kLetter; }
bool is_n(const Decoded& d, size_t i) { return d.cls[i] & kNumber; }
bool is_s(const Decoded& d, size_t i) { return d.cls[i] & kSpace; }
// [^\s\p{L}\p{N}]
bool is_other(const Decoded& d, size_t i) { return !(d.cls[i] & (kLetter | kNumber | kSpace)); }
bool is_crlf(const Decoded& d, size_t i) { return d.cp[i] == '\r' || d.cp[i] == '\n'; }

uint32_t fold(uint32_t c) {
  if (c >= 'A' && c <= 'Z') return c + 32;
  if (c == 0x17F) return 's';  // LATIN SMALL LETTER LONG S folds to s under (?i)
  if (c == 0x212A) return 'k'; // KELVIN SIGN
  return c;
}

// Length (in code points) of a contraction 's 't 're 've 'm 'll 'd at i, or 0.
size_t contraction(const Decoded& d, size_t i, size_t n, bool ignore_case) {
  if (d.cp[i] != '\'' || i + 1 >= n) return 0;
  auto at = [&](size_t k) { return ignore_case ? fold(d.cp[k]) : d.cp[k]; };
  const uint32_t a = at(i + 1);
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if (i + 2 < n) {
    const uint32_t b = at(i + 2);
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  }
  return 0;
}

size_t run(const Decoded& d, size_t i, size_t n, bool (*pred)(const Decoded&, size_t)) {
  size_t j = i;
  while (j < n && pred(d, j)) ++j;
  return j;
}

// \s+(?!\S)|\s+ at i (which is whitespace): the whole run if it reaches the end or a run of
// one; otherwise all but the last, which then leads the next piece.
size_t whitespace(const Decoded& d, size_t i, size_t n) {
  const size_t end = run(d, i, n, is_s);
  if (end == n || end - i == 1) return end;
  return end - 1;
}

// GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
size_t next_gpt2(const Decoded& d, size_t i, size_t n) {
  if (const size_t c = contraction(d, i, n, false)) return i + c;
  const size_t j = (d.cp[i] == ' ' && i + 1 < n) ? i + 1 : i;
  if (is_l(d, j)) return run(d, j, n, is_l);
  if (is_n(d, j)) return run(d, j, n, is_n);
  if (is_other(d, j)) return run(d, j, n, is_other);
  return whitespace(d, i, n);  // d.cp[i] is whitespace here
}

// Llama 3 / Qwen2 (max_digits 3 / 1).
size_t next_llama3(const Decoded& d, size_t i, size_t n, size_t max_digits) {
  if (const size_t c = contraction(d, i, n, true)) return i + c;
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (is_l(d, i)) return run(d, i, n, is_l);
  if (!is_crlf(d, i) && !is_n(d, i) && i + 1 < n && is_l(d, i + 1)) return run(d, i + 1, n, is_l);
  // \p{N}{1,3}
  if (is_n(d, i)) {
    size_t j = i;
    while (j < n && j - i < max_digits && is_n(d, j)) ++j;
    return j;
  }
  // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
  const size_t j = (d.cp[i] == ' ' && i + 1 < n) ? i + 1 : i;
  if (is_other(d, j)) return run(d, run(d, j, n, is_other), n, is_crlf);
  // \s*[\r\n]+ : up to the last \r or \n of the whitespace run.
  const size_t end = run(d, i, n, is_s);
  for (size_t k = end; k > i; --k) {
    if (is_crlf(d, k - 1)) return k;
  }
  return whitespace(d, i, n);
}

}  // namespace

const char* split_pattern_name(SplitPattern p) {
  switch (p) {
    case SplitPattern::none: return "none";
    case SplitPattern::gpt2: return "gpt2";
    case SplitPattern::llama3: return "llama3";
    case SplitPattern::qwen2: return "qwen2";
  }
  return "?";
}

const std::string& split_pattern_regex(SplitPattern p) {
  static const std::string none;
  static const std::string gpt2 = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
  static const std::string llama3 =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  static const std::string qwen2 =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  switch (p) {
    case SplitPattern::gpt2: return gpt2;
    case SplitPattern::llama3: return llama3;
    case SplitPattern::qwen2: return qwen2;
    case SplitPattern::none: break;
  }
  return none;
}

SplitPattern split_pattern_from_regex(const std::string& regex) {
  for (SplitPattern p : {SplitPattern::gpt2, SplitPattern::llama3, SplitPattern::qwen2}) {
    if (regex == split_pattern_regex(p)) return p;
  }
  throw Error(str_cat("tokenizer: pre-tokenizer regex '", regex,
                      "' is not one mechlab implements; supported: the GPT-2/GPT-NeoX pattern '",
                      split_pattern_regex(SplitPattern::gpt2), "', the Llama-3 pattern '",
                      split_pattern_regex(SplitPattern::llama3), "' and the Qwen2 pattern '",
                      split_pattern_regex(SplitPattern::qwen2), "'"));
}

void split(SplitPattern pattern, std::string_view text, std::vector<std::string_view>& out) {
  if (text.empty()) return;
  if (pattern == SplitPattern::none) {
    out.push_back(text);
    return;
  }
  thread_local Decoded d;
  decode(text, d);
  const size_t n = d.cp.size();
  for (size_t i = 0; i < n;) {
    size_t j;
    switch (pattern) {
      case SplitPattern::gpt2: j = next_gpt2(d, i, n); break;
      case SplitPattern::llama3: j = next_llama3(d, i, n, 3); break;
      default: j = next_llama3(d, i, n, 1); break;
    }
    MECHLAB_ASSERT(j > i);
    out.push_back(text.substr(d.offset[i], d.offset[j] - d.offset[i]));
    i = j;
  }
}

}  // namespace mechlab::core::tokenizer
