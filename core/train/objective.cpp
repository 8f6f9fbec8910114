#include "core/train/objective.h"

#include "core/model/transformer.h"

namespace mechlab::core::train {
namespace {

// The answer position's logits: [batch, d_vocab].
at::Tensor answer_logits(const at::Tensor& logits, const Split& batch) {
  at::Tensor rows = at::arange(logits.size(0), batch.answer_pos.options());
  return logits.index({rows, batch.answer_pos});
}

}  // namespace

at::Tensor objective_loss(Objective objective, const at::Tensor& logits, const Split& batch) {
  if (objective == Objective::answer) {
    at::Tensor log_probs = at::log_softmax(answer_logits(logits, batch).to(at::kFloat), -1);
    return -log_probs.gather(1, batch.answer.unsqueeze(1)).mean();
  }
  return mean_loss(logits, batch.tokens, batch.mask);
}

Correct count_correct(Objective objective, const at::Tensor& logits, const Split& batch) {
  if (objective == Objective::answer) {
    at::Tensor hit = answer_logits(logits, batch).argmax(-1).eq(batch.answer);
    return {hit.sum().item<int64_t>(), hit.numel()};
  }
  const int64_t T = logits.size(1);
  at::Tensor predicted = logits.narrow(1, 0, T - 1).argmax(-1);  // [batch, T - 1]
  at::Tensor hit = predicted.eq(batch.tokens.narrow(1, 1, T - 1)) & batch.scored;
  return {hit.sum().item<int64_t>(), batch.scored.sum().item<int64_t>()};
}

}  // namespace mechlab::core::train
