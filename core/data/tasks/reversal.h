// reversal: [BOS, x_1..x_L, SEP, x_L..x_1] (format: core/data/tasks/seq_to_seq.h).
//
// Example:
//   Dataset ds = make_reversal(ReversalOptions{}.len(6).V(12));
#pragma once

#include "core/data/tasks/seq_to_seq.h"

namespace mechlab::core::tasks {

/// Options: n, len, V, seed (see SeqToSeqOptions).
using ReversalOptions = SeqToSeqOptions;

/// Lists and their reversals.
Dataset make_reversal(const ReversalOptions& options);

}  // namespace mechlab::core::tasks
