// sorting: [BOS, x_1..x_L, SEP, sorted(x)] with sorted ascending and repeats
// kept (x is drawn with replacement) (format: core/data/tasks/seq_to_seq.h).
//
// Example:
//   Dataset ds = make_sorting(SortingOptions{}.n(500));
#pragma once

#include "core/data/tasks/seq_to_seq.h"

namespace mechlab::core::tasks {

/// Options: n, len, V, seed (see SeqToSeqOptions).
using SortingOptions = SeqToSeqOptions;

/// Lists and their ascending sorts.
Dataset make_sorting(const SortingOptions& options);

}  // namespace mechlab::core::tasks
