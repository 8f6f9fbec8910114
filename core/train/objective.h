// Training objectives: the loss a step minimises and the accuracy an
// evaluation reports, for the two ways a task dataset is read.
//   next_token: every position predicts the next token (mean cross-entropy
//               over real tokens, TransformerLens's loss); accuracy counts
//               the predictions Split::scored marks.
//   answer:     only the logits at answer_pos count; they predict the answer
//               token (IOI's indirect object, a + b mod p, ...).
#pragma once

#include "core/train/train_config.h"
#include "core/train/train_data.h"

#include <ATen/ATen.h>

namespace mechlab::core::train {

/// Scalar mean loss of a batch. logits: [batch, pos, d_vocab].
at::Tensor objective_loss(Objective objective, const at::Tensor& logits, const Split& batch);

struct Correct {
  int64_t correct = 0;  ///< top-1 predictions equal to the target
  int64_t scored = 0;   ///< predictions counted
};
/// Top-1 accuracy counts of a batch.
Correct count_correct(Objective objective, const at::Tensor& logits, const Split& batch);

}  // namespace mechlab::core::train
