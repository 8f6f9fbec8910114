// The shared format of the algorithmic sequence-to-sequence tasks (reversal,
// sorting): a list of L symbols, a separator, and the transformed list, as in
// Tracr's and RASP's toy programs (Lindner et al. 2023; Weiss et al. 2021).
//
// Format (raw ids, tokenizer ""; symbols are ids 0..V-1, BOS = V, SEP = V+1,
// d_vocab = V + 2):
//   tokens  int32 [N, 2L + 2]  [BOS, x_1..x_L, SEP, y_1..y_L], x_i uniform in [0, V)
//   labels  int64 [N, T]       at position t, the token at t + 1 when that is
//                              an output y (t = L+1 .. 2L), -1 elsewhere: the
//                              positions a model must predict, and what
#pragma once

#include "core/data/dataset.h"
#include "core/util/options.h"

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace mechlab::core::tasks {

struct SeqToSeqOptions {
  /// number of sequences N
  MECHLAB_OPTION(SeqToSeqOptions, int64_t, n, 1000)
  /// L: symbols per list (T = 2L + 2)
  MECHLAB_OPTION(SeqToSeqOptions, int64_t, len, 5)
  /// number of distinct symbols (ids 0..V-1)
  MECHLAB_OPTION(SeqToSeqOptions, int64_t, V, 10)
  /// generator seed (core/util/rng.h)
  MECHLAB_OPTION(SeqToSeqOptions, int64_t, seed, 0)

  template <typename Visitor>
  void visit(Visitor&& v) {
    v("n", n_, "number of sequences");
    v("len", len_, "list length L; sequences are BOS + L + SEP + L tokens");
    v("V", V_, "number of symbols (ids 0..V-1; BOS = V, SEP = V+1)");
    v("seed", seed_, "generator seed");
  }
};

/// Builds the dataset of `task` with outputs y = transform(x).
Dataset make_seq_to_seq(const std::string& task, const SeqToSeqOptions& options,
                        const std::function<std::vector<int32_t>(std::vector<int32_t>)>& transform);

}  // namespace mechlab::core::tasks
