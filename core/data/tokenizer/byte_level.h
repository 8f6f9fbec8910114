// GPT-2's byte-level alphabet: every byte 0..255 stands for one printable code point, so that
// a byte-level BPE vocabulary is a set of strings over 256 visible characters ("Ġ" = space,
// "Ċ" = newline). Printable Latin-1 bytes map to themselves; the others to U+0100 onwards.
//
// mechlab's BPE works on raw bytes internally and converts with these tables only at the
// edges: reading a vocabulary (token text -> bytes) and id_to_token (bytes -> token text).
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace mechlab::core::tokenizer {

/// The code point that stands for byte `b` (GPT-2's bytes_to_unicode).
///
/// Example: byte_to_char(' ') == 0x120 ("Ġ")
uint32_t byte_to_char(unsigned char b);

/// The byte-level text of raw bytes: each byte replaced by its character, as UTF-8.
///
/// Example: bytes_to_byte_level(" hi") == "Ġhi"
std::string bytes_to_byte_level(std::string_view bytes);

/// The raw bytes of byte-level text `token` (valid UTF-8), or nullopt when it holds a
/// character outside the 256-character alphabet.
///
/// Example: byte_level_to_bytes("Ġhi") == " hi"
std::optional<std::string> byte_level_to_bytes(std::string_view token);

}  // namespace mechlab::core::tokenizer
