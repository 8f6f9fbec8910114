// Unicode for the tokenizers: UTF-8 decoding, the character classes the pre-tokenizer
// patterns use, lossy UTF-8 repair (as Rust's String::from_utf8_lossy) and NFC.
//
// Classes come from the Hugging Face `tokenizers` library's own regex engine (Oniguruma,
// Unicode 16 in tokenizers 0.22) through generated tables (unicode_data.h), not from the C++
// locale or ICU, whose Unicode versions differ: a letter that one side calls \p{L} and the
// other does not changes the split, and so the ids.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace mechlab::core::tokenizer {

/// Class bits of a code point (any combination).
enum CharClass : uint8_t {
  kLetter = 1,      ///< `\p{L}`
  kNumber = 2,      ///< `\p{N}`
  kSpace = 4,       ///< `\s` (Unicode White_Space)
  kWord = 8,        ///< `\w` of Rust's regex (Alphabetic, marks, Nd, Pc, Join_Control)
  kNfcCheck = 16,   ///< NFC may change text containing it (not NFC_QC=Yes, or ccc > 0)
};

/// The class bits of code point `cp` (0 for anything outside 0..0x10FFFF).
uint8_t char_class(uint32_t cp);

/// Decodes the code point starting at s[i] of valid UTF-8 and advances i past it. The text
/// must have been checked by validate_utf8.
inline uint32_t next_code_point(std::string_view s, size_t& i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) {
    ++i;
    return b0;
  }
  if (b0 < 0xE0) {
    const uint32_t cp = ((b0 & 0x1Fu) << 6) | (static_cast<unsigned char>(s[i + 1]) & 0x3Fu);
    i += 2;
    return cp;
  }
  if (b0 < 0xF0) {
    const uint32_t cp = ((b0 & 0x0Fu) << 12) | ((static_cast<unsigned char>(s[i + 1]) & 0x3Fu) << 6) |
                        (static_cast<unsigned char>(s[i + 2]) & 0x3Fu);
    i += 3;
    return cp;
  }
  const uint32_t cp = ((b0 & 0x07u) << 18) | ((static_cast<unsigned char>(s[i + 1]) & 0x3Fu) << 12) |
                      ((static_cast<unsigned char>(s[i + 2]) & 0x3Fu) << 6) |
                      (static_cast<unsigned char>(s[i + 3]) & 0x3Fu);
  i += 4;
  return cp;
}

/// Appends the UTF-8 form of `cp` to `out`.
void append_utf8(uint32_t cp, std::string& out);

/// Byte offset of the first ill-formed UTF-8 sequence in `s` (Unicode Table 3-7: no
/// overlongs, no surrogates, nothing above U+10FFFF), or std::string_view::npos.
size_t find_invalid_utf8(std::string_view s);

/// `bytes` as UTF-8 with every maximal ill-formed subsequence replaced by U+FFFD, exactly as
/// Rust's String::from_utf8_lossy (and so the ByteLevel decoder of `tokenizers`) does.
///
/// Example: utf8_lossy("a\xE2\x82") == "a\uFFFD"
std::string utf8_lossy(std::string_view bytes);

/// True when nfc(s) == s is certain without normalising (every code point NFC_QC=Yes with
/// ccc 0); false means "normalise to find out".
bool nfc_quick_check(std::string_view s);

/// Unicode Normalization Form C of valid UTF-8 `s`, with the decompositions, compositions
/// and combining classes that `tokenizers`' NFC normalizer uses.
///
/// Example: nfc("e\u0301") == "\u00E9"
std::string nfc(std::string_view s);

}  // namespace mechlab::core::tokenizer
