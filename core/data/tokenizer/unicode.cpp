#include "core/data/tokenizer/unicode.h"

#include "core/data/tokenizer/unicode_data.h"

#include <algorithm>
#include <array>
#include <memory>
#include <unordered_map>
#include <utility>
#include <vector>

namespace mechlab::core::tokenizer {
namespace {

namespace ud = unicode_data;

constexpr uint32_t kHangulSBase = 0xAC00, kHangulLBase = 0x1100, kHangulVBase = 0x1161,
                   kHangulTBase = 0x11A7;
constexpr uint32_t kHangulLCount = 19, kHangulVCount = 21, kHangulTCount = 28;
constexpr uint32_t kHangulNCount = kHangulVCount * kHangulTCount;  // 588
constexpr uint32_t kHangulSCount = kHangulLCount * kHangulNCount;  // 11172

uint8_t class_by_search(uint32_t cp) {
  // The last run starting at or before cp.
  size_t lo = 0, hi = ud::kClassRunCount;
  while (hi - lo > 1) {
    const size_t mid = (lo + hi) / 2;
    if (ud::kClassRuns[mid][0] <= cp) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return static_cast<uint8_t>(ud::kClassRuns[lo][1]);
}

// The Basic Multilingual Plane, where nearly all text lives, as a direct table.
const std::array<uint8_t, 0x10000>& bmp_classes() {
  static const std::unique_ptr<std::array<uint8_t, 0x10000>> table = [] {
    auto t = std::make_unique<std::array<uint8_t, 0x10000>>();
    for (size_t r = 0; r < ud::kClassRunCount; ++r) {
      const uint32_t begin = ud::kClassRuns[r][0];
      const uint32_t end = r + 1 < ud::kClassRunCount ? ud::kClassRuns[r + 1][0] : 0x110000;
      for (uint32_t cp = begin; cp < std::min<uint32_t>(end, 0x10000); ++cp) {
        (*t)[cp] = static_cast<uint8_t>(ud::kClassRuns[r][1]);
      }
    }
    return t;
  }();
  return *table;
}

uint8_t combining_class(uint32_t cp) {
  if (!(char_class(cp) & kNfcCheck)) return 0;
  const auto* begin = ud::kCombiningClass;
  const auto* end = ud::kCombiningClass + ud::kCombiningClassCount;
  const auto* it = std::lower_bound(begin, end, cp,
                                    [](const uint32_t(&e)[2], uint32_t v) { return e[0] < v; });
  return it != end && (*it)[0] == cp ? static_cast<uint8_t>((*it)[1]) : 0;
}

struct NfcTables {
  std::unordered_map<uint32_t, std::pair<uint32_t, uint32_t>> decomposition;  // cp -> (offset, len)
  std::unordered_map<uint64_t, uint32_t> composition;  // (first << 21 | second) -> composite
};

const NfcTables& nfc_tables() {
  static const NfcTables tables = [] {
    NfcTables t;
    for (size_t i = 0; i < ud::kDecompositionsSize;) {
      const uint32_t cp = ud::kDecompositions[i], len = ud::kDecompositions[i + 1];
      t.decomposition.emplace(cp, std::make_pair(static_cast<uint32_t>(i + 2), len));
      i += 2 + len;
    }
    for (size_t i = 0; i < ud::kCompositionCount; ++i) {
      const uint64_t key = (static_cast<uint64_t>(ud::kCompositions[i][0]) << 21) | ud::kCompositions[i][1];
      t.composition.emplace(key, ud::kCompositions[i][2]);
    }
    return t;
  }();
  return tables;
}

void decompose(uint32_t cp, std::vector<uint32_t>& out) {
  if (cp >= kHangulSBase && cp < kHangulSBase + kHangulSCount) {
    const uint32_t s = cp - kHangulSBase;
    out.push_back(kHangulLBase + s / kHangulNCount);
    out.push_back(kHangulVBase + (s % kHangulNCount) / kHangulTCount);
    if (s % kHangulTCount != 0) out.push_back(kHangulTBase + s % kHangulTCount);
    return;
  }
  if (cp >= 0xC0) {  // the first code point with a canonical decomposition is U+00C0
    const auto& d = nfc_tables().decomposition;
    const auto it = d.find(cp);
    if (it != d.end()) {
      out.insert(out.end(), ud::kDecompositions + it->second.first,
                 ud::kDecompositions + it->second.first + it->second.second);
      return;
    }
  }
  out.push_back(cp);
}

// The primary composite of (first, second), or 0.
uint32_t compose(uint32_t first, uint32_t second) {
  if (first >= kHangulLBase && first < kHangulLBase + kHangulLCount && second >= kHangulVBase &&
      second < kHangulVBase + kHangulVCount) {
    return kHangulSBase + ((first - kHangulLBase) * kHangulVCount + (second - kHangulVBase)) * kHangulTCount;
  }
  if (first >= kHangulSBase && first < kHangulSBase + kHangulSCount &&
      (first - kHangulSBase) % kHangulTCount == 0 && second > kHangulTBase &&
      second < kHangulTBase + kHangulTCount) {
    return first + (second - kHangulTBase);
  }
  const auto& c = nfc_tables().composition;
  const auto it = c.find((static_cast<uint64_t>(first) << 21) | second);
  return it == c.end() ? 0 : it->second;
}

}  // namespace

uint8_t char_class(uint32_t cp) {
  if (cp < 0x10000) return bmp_classes()[cp];
  if (cp > 0x10FFFF) return 0;
  return class_by_search(cp);
}

void append_utf8(uint32_t cp, std::string& out) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

namespace {

// Length of the well-formed sequence starting at s[i] (1..4), or, when ill-formed, minus the
// length of its maximal well-formed prefix (at least 1): Unicode Table 3-7.
int sequence_length(std::string_view s, size_t i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) return 1;
  int len;
  unsigned char lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    len = 2;
  } else if (b0 == 0xE0) {
    len = 3, lo = 0xA0;
  } else if ((b0 >= 0xE1 && b0 <= 0xEC) || b0 == 0xEE || b0 == 0xEF) {
    len = 3;
  } else if (b0 == 0xED) {
    len = 3, hi = 0x9F;
  } else if (b0 == 0xF0) {
    len = 4, lo = 0x90;
  } else if (b0 >= 0xF1 && b0 <= 0xF3) {
    len = 4;
  } else if (b0 == 0xF4) {
    len = 4, hi = 0x8F;
  } else {
    return -1;
  }
  for (int k = 1; k < len; ++k) {
    if (i + k >= s.size()) return -k;
    const auto b = static_cast<unsigned char>(s[i + k]);
    if (b < lo || b > hi) return -k;
    lo = 0x80, hi = 0xBF;
  }
  return len;
}

}  // namespace

size_t find_invalid_utf8(std::string_view s) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    // Eight ASCII bytes at a time.
    while (i + 8 <= n) {
      uint64_t w;
      std::copy(s.data() + i, s.data() + i + 8, reinterpret_cast<char*>(&w));
      if (w & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= n) break;
    const int len = sequence_length(s, i);
    if (len < 0) return i;
    i += static_cast<size_t>(len);
  }
  return std::string_view::npos;
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (size_t i = 0; i < bytes.size();) {
    const int len = sequence_length(bytes, i);
    if (len > 0) {
      out.append(bytes.data() + i, static_cast<size_t>(len));
      i += static_cast<size_t>(len);
    } else {
      out.append("\xEF\xBF\xBD");  // U+FFFD
      i += static_cast<size_t>(-len);
    }
  }
  return out;
}

bool nfc_quick_check(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    if (char_class(next_code_point(s, i)) & kNfcCheck) return false;
  }
  return true;
}

std::string nfc(std::string_view s) {
  if (nfc_quick_check(s)) return std::string(s);
  // Full canonical decomposition, then canonical ordering (a stable sort of each run of
  // non-starters by combining class), then canonical composition (UAX #15).
  std::vector<uint32_t> cps;
  cps.reserve(s.size());
  for (size_t i = 0; i < s.size();) decompose(next_code_point(s, i), cps);
  std::vector<uint8_t> ccc(cps.size());
  for (size_t k = 0; k < cps.size(); ++k) ccc[k] = combining_class(cps[k]);
  for (size_t k = 0; k < cps.size();) {
    if (ccc[k] == 0) {
      ++k;
      continue;
    }
    size_t end = k;
    while (end < cps.size() && ccc[end] != 0) ++end;
    for (size_t a = k + 1; a < end; ++a) {  // insertion sort: runs are short, stable
      for (size_t b = a; b > k && ccc[b - 1] > ccc[b]; --b) {
        std::swap(ccc[b - 1], ccc[b]);
        std::swap(cps[b - 1], cps[b]);
      }
    }
    k = end;
  }
  std::vector<uint32_t> out;
  out.reserve(cps.size());
  size_t starter = 0;
  bool have_starter = false;
  int last_class = -1;  // -1: nothing yet
  for (size_t k = 0; k < cps.size(); ++k) {
    const uint32_t cp = cps[k];
    const int klass = ccc[k];
    if (have_starter) {
      // Not blocked: the starter is adjacent (last class 0), or every mark between has a
      // lower class than this one.
      const bool adjacent = last_class == 0;
      if (adjacent || last_class < klass) {
        const uint32_t composite = compose(out[starter], cp);
        if (composite != 0) {
          out[starter] = composite;
          continue;
        }
      }
    }
    if (klass == 0) {
      starter = out.size();
      have_starter = true;
    }
    last_class = klass;
    out.push_back(cp);
  }
  std::string result;
  result.reserve(s.size());
  for (uint32_t cp : out) append_utf8(cp, result);
  return result;
}

}  // namespace mechlab::core::tokenizer
