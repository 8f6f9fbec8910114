// greater_than: year-span prompts (Hanna, Liu & Variengien 2023, "How does
// GPT-2 compute greater-than?").
//
//   "The war lasted from the year 17 32 to the year 17"  ->  a year > 32
//
// GPT-2 splits "1732" into "17" + "32"; the word tokenizer here does the same
// by writing the century and the two-digit year YY as separate words. YY is
// uniform in [02, 98], so both YY - 1 and YY + 1 are two-digit years.
//
// Format (word tokenizer: "The", the nouns, "lasted", "from", "the", "year",
// "to" and every two-digit word "00".."99", which include the century):
//   clean_tokens      int32 [N, 12]  the prompt above
//   corrupted_tokens  int32 [N, 12]  YY replaced by "01" (Hanna et al.'s
//                                    corruption: every year beats 01)
//   answer_tokens     int32 [N, 1]   YY + 1 (the smallest correct year)
//   wrong_tokens      int32 [N, 1]   YY - 1 (the largest wrong one)
//   answer_pos        int32 [N]      11, the last position
//   labels            int64 [N]      YY, the threshold of Hanna et al.'s metric
//                                    P(year > YY) - P(year <= YY) summed over
//                                    the two-digit year words
//
// Example:
//   Dataset ds = make_greater_than(GreaterThanOptions{}.n(200));
//   const WordTokenizer tok = WordTokenizer::from_json_string(ds.tokenizer);
#pragma once

#include "core/data/dataset.h"
#include "core/util/options.h"

#include <cstdint>
#include <string>
#include <vector>

namespace mechlab::core::tasks {

struct GreaterThanOptions {
  /// number of prompt pairs N
  MECHLAB_OPTION(GreaterThanOptions, int64_t, n, 1000)
  /// the century word, 10..99 ("17" as in Hanna et al.)
  MECHLAB_OPTION(GreaterThanOptions, int64_t, century, 17)
  /// generator seed (core/util/rng.h)
  MECHLAB_OPTION(GreaterThanOptions, int64_t, seed, 0)

  template <typename V>
  void visit(V&& v) {
    v("n", n_, "number of clean/corrupted prompt pairs");
    v("century", century_, "the century word before YY (10..99; Hanna et al. use 17)");
    v("seed", seed_, "generator seed");
  }
};

/// The event nouns ("war", "expedition", ...), one per prompt.
const std::vector<std::string>& greater_than_nouns();
/// The word for a two-digit year 0..99: "00".."99".
std::string two_digit(int64_t yy);

/// Greater-than prompt pairs (see the top of this file).
Dataset make_greater_than(const GreaterThanOptions& options);

}  // namespace mechlab::core::tasks
