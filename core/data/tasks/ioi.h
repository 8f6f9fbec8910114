// ioi: indirect-object identification prompts (Wang et al. 2022,
// "Interpretability in the Wild: a Circuit for Indirect Object Identification
// in GPT-2 small").
//
//   "When Mary and John went to the store , John gave a drink to"  ->  "Mary"
//
// Two names are introduced; the subject S is mentioned again (S2) and the
// model must complete with the other one, the indirect object IO. Templates
// are Wang et al.'s, written as whole words with punctuation as its own word.
// Word order: ABBA puts IO first ("Mary and John ..., John ..."), BABA puts S
// first ("John and Mary ..., John ...").
//
// Format (word tokenizer, every word of the templates, names, places and
// objects plus the pad word "<pad>"):
//   clean_tokens      int32 [N, T]  the prompt, right-padded with "<pad>" to the
//                                   longest template (T is the same for every seed)
//   corrupted_tokens  int32 [N, T]  the same prompt with S2 replaced by a third
//                                   name C (C != IO, C != S): an "ABC" prompt,
//                                   which differs from the clean one at exactly
//                                   one position, so no name in it is repeated
//   attention_mask    uint8 [N, T]  1 = word, 0 = padding
//   answer_tokens     int32 [N, 1]  IO
//   wrong_tokens      int32 [N, 1]  S
//   answer_pos        int32 [N]     the last word of the prompt (the logits
//                                   there predict the answer)
//   labels            int64 [N]     the template's index in ioi_templates()
//
// Example:
//   Dataset ds = make_ioi(IoiOptions{}.n(100).order("BABA"));
#pragma once

#include "core/data/dataset.h"
#include "core/util/options.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace mechlab::core::tasks {

struct IoiOptions {
  /// number of prompt pairs N
  MECHLAB_OPTION(IoiOptions, int64_t, n, 1000)
  /// "ABBA", "BABA" or "mixed" (each prompt picks one, 50/50)
  MECHLAB_OPTION(IoiOptions, std::string, order, "mixed")
  /// null: build a word vocabulary; otherwise a word tokenizer
  /// (JSON object or JSON text) holding every word used
  MECHLAB_OPTION(IoiOptions, nlohmann::json, tokenizer, nullptr)
  /// generator seed (core/util/rng.h)
  MECHLAB_OPTION(IoiOptions, int64_t, seed, 0)

  template <typename V>
  void visit(V&& v) {
    v("n", n_, "number of clean/corrupted prompt pairs");
    v("order", order_, "name order: ABBA (IO first), BABA (S first) or mixed (50/50 per prompt)");
    v("tokenizer", tokenizer_,
      "a word tokenizer ({\"kind\":\"word\",\"vocab\":[...]}, or its JSON text) to use instead of "
      "the generated vocabulary; it must hold every word used and \"<pad>\"");
    v("seed", seed_, "generator seed");
  }
};

/// Templates with placeholders {N1} and {N2} (the two first mentions: IO, S in
/// ABBA order, S, IO in BABA order), {S} (the subject's second mention, S2),
/// {PLACE} and {OBJECT}; each ends just before the answer.
const std::vector<std::string>& ioi_templates();
/// Single-word first names (all distinct).
const std::vector<std::string>& ioi_names();
const std::vector<std::string>& ioi_places();
const std::vector<std::string>& ioi_objects();
/// The padding word of IOI prompts.
inline constexpr const char* kIoiPad = "<pad>";

/// IOI clean/corrupted prompt pairs (see the top of this file).
Dataset make_ioi(const IoiOptions& options);

}  // namespace mechlab::core::tasks
