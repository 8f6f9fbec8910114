// induction: repeated random tokens, the standard test for induction heads
// (Olsson et al. 2022, "In-context learning and induction heads";
// TransformerLens's `generate_repeated_tokens`).
//
// Format (tokenizer: a word vocabulary spelling id 0 as "<bos>" and every
// other id as its number, when d_vocab <= kInductionMaxWordVocab; else ""):
//   tokens  int32 [N, 1 + 2L]  BOS (id 0), L ids uniform in [1, d_vocab),
//                              then the same L ids again
//   labels  int64 [N, T]       1 at the positions of the repeated half
//                              (L + 1 .. 2L), 0 elsewhere
// With min_half_len = m (0 < m < L) each sequence draws its own length
// L_i uniform in [m, L]: BOS, L_i ids, the same L_i ids, then fresh random ids
// up to T = 1 + 2L; labels mark positions L_i + 1 .. 2 L_i. A fixed L lets a
// model copy from a fixed distance with a positional head; varying L_i
// leaves only the induction mechanism (previous-token head + induction
// head), which is what the induction training recipe needs. With
// random_start the pair of copies also starts at a random position (fresh
// random ids before and after it), so no head can find the first copy at a
// fixed fraction of the position either.
// A model with induction heads predicts position t + 1 from position t for
// every t in the repeated half, so its loss there falls towards zero.
//
// With pairs (clean/corrupted prompt pairs for patching and circuit
// discovery; min_half_len and random_start must stay off), j = query_len:
//   clean_tokens      int32 [N, 1 + L + j]  BOS a_1..a_L a_1..a_j
//   corrupted_tokens  int32 [N, 1 + L + j]  BOS b_1..b_L a_1..a_j (other random ids)
//   answer_tokens     int32 [N, 1]          a_{j+1}
//   wrong_tokens      int32 [N, 1]          b_{j+1} (drawn again while it equals a_{j+1})
//   answer_pos        int32 [N]             L + j, the last position
// Only the first copy differs, so the clean run predicts a_{j+1} there only
// by induction (the contrast of tests/discovery/induction_ground_truth.h).
//
// Example:
//   Dataset ds = make_induction(InductionOptions{}.n(64).half_len(10));
#pragma once

#include "core/data/dataset.h"
#include "core/util/options.h"

#include <cstdint>

namespace mechlab::core::tasks {

/// The largest d_vocab whose word vocabulary the dataset records.
inline constexpr int64_t kInductionMaxWordVocab = 1 << 16;

struct InductionOptions {
  /// number of sequences N
  MECHLAB_OPTION(InductionOptions, int64_t, n, 1000)
  /// L: length of the random half (T = 1 + 2L)
  MECHLAB_OPTION(InductionOptions, int64_t, half_len, 20)
  /// 0: every sequence repeats L ids; else L_i in [min, L]
  MECHLAB_OPTION(InductionOptions, int64_t, min_half_len, 0)
  /// the copies start at a random position (needs min_half_len)
  MECHLAB_OPTION(InductionOptions, bool, random_start, false)
  /// vocabulary size; random ids are drawn from [1, d_vocab)
  MECHLAB_OPTION(InductionOptions, int64_t, d_vocab, 64)
  /// generator seed (core/util/rng.h)
  MECHLAB_OPTION(InductionOptions, int64_t, seed, 0)
  /// clean/corrupted prompt pairs (see the top of this file)
  MECHLAB_OPTION(InductionOptions, bool, pairs, false)
  /// pairs: j, the repeated ids after the first copy; 0 = L / 2
  MECHLAB_OPTION(InductionOptions, int64_t, query_len, 0)

  template <typename V>
  void visit(V&& v) {
    v("n", n_, "number of sequences");
    v("half_len", half_len_, "length L of the random half; sequences are BOS + L + L tokens");
    v("min_half_len", min_half_len_,
      "0: every sequence repeats half_len ids; else each draws its length in "
      "[min_half_len, half_len] and the rest is fresh random ids");
    v("random_start", random_start_,
      "start the two copies at a random position, fresh random ids around them");
    v("d_vocab", d_vocab_, "vocabulary size; ids are drawn from [1, d_vocab), 0 is BOS");
    v("seed", seed_, "generator seed");
    v("pairs", pairs_,
      "clean/corrupted pairs for patching: BOS a_1..a_L a_1..a_j vs BOS b_1..b_L a_1..a_j, "
      "answer a_(j+1), wrong b_(j+1)");
    v("query_len", query_len_, "pairs: j, in [1, half_len - 1]; 0 = half_len / 2");
  }
};

/// Repeated random token sequences (see the top of this file).
Dataset make_induction(const InductionOptions& options);

}  // namespace mechlab::core::tasks
