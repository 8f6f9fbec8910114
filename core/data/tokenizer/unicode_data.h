// The Unicode tables of core/data/tokenizer/unicode.h, generated into unicode_data.cpp by
// scripts/fixtures/make_unicode_tables.py from the Hugging Face `tokenizers` library itself
// (so that mechlab classifies characters as the library it must agree with does).
//
//   kClassRuns          [n][2]  (first code point, class bits) runs covering 0..0x10FFFF
//   kCombiningClass     [n][2]  (code point, canonical combining class > 0), ascending
//   kDecompositions     flat    code point, length, that many code points (full canonical
//                               decomposition, already in canonical order), ascending;
//                               Hangul syllables are algorithmic and not listed
//   kCompositions       [n][3]  (first, second, primary composite), ascending by (first, second)
#pragma once

#include <cstddef>
#include <cstdint>

namespace mechlab::core::tokenizer::unicode_data {

extern const uint32_t kClassRuns[][2];
extern const size_t kClassRunCount;
extern const uint32_t kCombiningClass[][2];
extern const size_t kCombiningClassCount;
extern const uint32_t kDecompositions[];
extern const size_t kDecompositionsSize;
extern const uint32_t kCompositions[][3];
extern const size_t kCompositionCount;

}  // namespace mechlab::core::tokenizer::unicode_data
