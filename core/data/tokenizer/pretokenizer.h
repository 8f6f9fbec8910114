// Pre-tokenization: splitting text into the words that BPE encodes one by one.
//
// Each supported pattern is a hand-written scanner equivalent to its regex (run by
// Oniguruma in `tokenizers`, with the same Unicode classes: core/data/tokenizer/unicode.h):
//
//   gpt2    's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//           GPT-2's pattern; GPT-NeoX/Pythia use it too (their `ByteLevel` pre-tokenizer
//           with use_regex = true).
//   llama3  (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
//            ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//           Llama 3's (a `Split` pre-tokenizer, behaviour Isolated), digits in groups of 1-3.
//   qwen2   the llama3 pattern with \p{N} instead of \p{N}{1,3} (Qwen2: one digit per word).
//
// Every character of the text belongs to exactly one piece (Isolated behaviour), so the
// pieces concatenate back to the text.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace mechlab::core::tokenizer {

enum class SplitPattern { none, gpt2, llama3, qwen2 };

/// "none", "gpt2", "llama3", "qwen2".
const char* split_pattern_name(SplitPattern p);

/// The pattern whose regex source (as written in tokenizer.json) is `regex`; throws
/// mechlab::Error naming the regex and listing the supported ones otherwise.
SplitPattern split_pattern_from_regex(const std::string& regex);

/// The regex source of `p` as `tokenizers` writes it (empty for none).
const std::string& split_pattern_regex(SplitPattern p);

/// Appends the pieces of valid UTF-8 `text` under `pattern` to `out` (views into `text`);
/// `none` appends the whole text. Empty text appends nothing.
///
/// Example: split(SplitPattern::gpt2, "I'm  here", out)  // "I", "'m", " ", " here"
void split(SplitPattern pattern, std::string_view text, std::vector<std::string_view>& out);

}  // namespace mechlab::core::tokenizer
