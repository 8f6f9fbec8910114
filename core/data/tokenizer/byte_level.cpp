#include "core/data/tokenizer/byte_level.h"

#include "core/data/tokenizer/unicode.h"

#include <array>

namespace mechlab::core::tokenizer {
namespace {

struct ByteLevelTables {
  std::array<uint32_t, 256> to_char{};
  std::array<int16_t, 0x144> to_byte{};  // code point -> byte, -1 if none; chars are < U+0144
};

const ByteLevelTables& tables() {
  static const ByteLevelTables t = [] {
    ByteLevelTables x;
    x.to_byte.fill(-1);
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      x.to_char[b] = printable ? b : next++;
      x.to_byte[x.to_char[b]] = static_cast<int16_t>(b);
    }
    return x;
  }();
  return t;
}

}  // namespace

uint32_t byte_to_char(unsigned char b) { return tables().to_char[b]; }

std::string bytes_to_byte_level(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) append_utf8(tables().to_char[static_cast<unsigned char>(c)], out);
  return out;
}

std::optional<std::string> byte_level_to_bytes(std::string_view token) {
  std::string out;
  out.reserve(token.size());
  const auto& t = tables();
  for (size_t i = 0; i < token.size();) {
    const uint32_t cp = next_code_point(token, i);
    if (cp >= t.to_byte.size() || t.to_byte[cp] < 0) return std::nullopt;
    out.push_back(static_cast<char>(t.to_byte[cp]));
  }
  return out;
}

}  // namespace mechlab::core::tokenizer
