// modular_addition: a + b mod p, the grokking task (Power et al. 2022; Nanda
// et al. 2023, "Progress measures for grokking via mechanistic
// interpretability", whose p = 113 and "a b =" format this follows).
//
// Format (tokenizer: the word vocabulary "0" .. "p-1", "="; ids 0..p-1 are
// the numbers, id p is "="):
//   tokens         int32 [p*p, 3]  [a, b, =]: every pair (a, b) in [0, p)^2
//                                  exactly once, in an order shuffled by seed
//   labels         int64 [p*p]     (a + b) mod p
//   answer_tokens  int32 [p*p, 1]  (a + b) mod p
//   wrong_tokens   int32 [p*p, 1]  another residue, uniform among the p - 1
//                                  wrong ones: the logit difference against it
//                                  is an unbiased one-sample estimate of the
//                                  correct logit minus the mean wrong logit
//   answer_pos     int32 [p*p]     2 (the "=" position predicts the sum)
// d_vocab = p + 1.
//
// Example:
//   Dataset ds = make_modular_addition(ModularAdditionOptions{}.p(7));  // 49 rows
#pragma once

#include "core/data/dataset.h"
#include "core/util/options.h"

#include <cstdint>

namespace mechlab::core::tasks {

struct ModularAdditionOptions {
  /// the modulus (Nanda et al.: the prime 113); 2..10000
  MECHLAB_OPTION(ModularAdditionOptions, int64_t, p, 113)
  /// seeds the row order and the wrong answers (core/util/rng.h)
  MECHLAB_OPTION(ModularAdditionOptions, int64_t, seed, 0)

  template <typename V>
  void visit(V&& v) {
    v("p", p_, "the modulus; the dataset holds all p*p pairs (2..10000)");
    v("seed", seed_, "generator seed (row order, wrong answers)");
  }
};

/// Every (a, b) pair of a + b mod p (see the top of this file).
Dataset make_modular_addition(const ModularAdditionOptions& options);

}  // namespace mechlab::core::tasks
