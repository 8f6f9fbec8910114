#include "patching/patching_data.h"

#include "core/util/error.h"

#include <ATen/ATen.h>

namespace mechlab::patching {

namespace {

at::Tensor head_rows(const at::Tensor& t, int64_t n) {
  return t.defined() && n > 0 && n < t.size(0) ? t.slice(0, 0, n) : t;
}

bool is_int(const at::Tensor& t) {
  return t.scalar_type() == at::kInt || t.scalar_type() == at::kLong;
}

// Throws unless every id in t is in [0, d_vocab), naming the first bad one.
void check_ids(const at::Tensor& t, const char* what, int64_t d_vocab) {
  at::Tensor bad = (t < 0) | (t >= d_vocab);
  if (!bad.any().item<bool>()) return;
  at::Tensor where = bad.nonzero()[0];  // [rank]
  const int64_t example = where[0].item<int64_t>();
  const int64_t col = where.size(0) > 1 ? where[1].item<int64_t>() : 0;
  const int64_t id = t.dim() > 1 ? t[example][col].item<int64_t>() : t[example].item<int64_t>();
  throw Error(str_cat(what, " holds token id ", id, " (example ", example, ", column ", col,
                      ") outside the model's vocabulary [0, ", d_vocab,
                      "); use a dataset made with this model's tokenizer"));
}

}  // namespace

PatchingData PatchingData::from_dataset(const core::Dataset& ds, int64_t max_examples) {
  MECHLAB_CHECK(ds.clean_tokens.defined() && ds.corrupted_tokens.defined(),
                "the dataset has no /clean_tokens and /corrupted_tokens; patching needs a pair set "
                "(e.g. `mechlab dataset make ioi --out ioi.h5`)");
  MECHLAB_CHECK(ds.answer_tokens.defined() && ds.wrong_tokens.defined(),
                "the dataset has no /answer_tokens and /wrong_tokens; patching metrics compare the "
                "answer with a wrong answer (e.g. `mechlab dataset make ioi --out ioi.h5`)");
  PatchingData d;
  d.clean_tokens = head_rows(ds.clean_tokens, max_examples);
  d.corrupted_tokens = head_rows(ds.corrupted_tokens, max_examples);
  d.attention_mask = head_rows(ds.attention_mask, max_examples);
  d.answer_tokens = head_rows(ds.answer_tokens, max_examples);
  d.wrong_tokens = head_rows(ds.wrong_tokens, max_examples);
  d.answer_pos = head_rows(ds.answer_pos, max_examples);
  return d;
}

void PatchingData::validate(const core::ModelConfig& cfg) const {
  MECHLAB_CHECK(clean_tokens.defined() && corrupted_tokens.defined(),
                "patching needs both clean_tokens and corrupted_tokens");
  MECHLAB_CHECK(clean_tokens.dim() == 2 && is_int(clean_tokens),
                "clean_tokens must be an integer tensor [batch, pos], got ",
                clean_tokens.scalar_type(), " ", clean_tokens.sizes());
  MECHLAB_CHECK(clean_tokens.sizes() == corrupted_tokens.sizes(),
                "clean_tokens ", clean_tokens.sizes(), " and corrupted_tokens ",
                corrupted_tokens.sizes(),
                " have different shapes; patching replaces activations position by position, so "
                "each corrupted prompt must align with its clean prompt (pad both to one length)");
  MECHLAB_CHECK(is_int(corrupted_tokens), "corrupted_tokens must be an integer tensor, got ",
                corrupted_tokens.scalar_type());
  const int64_t n = batch(), t = seq_len();
  MECHLAB_CHECK(n > 0 && t > 0, "patching needs at least one prompt of at least one token, got ",
                clean_tokens.sizes());
  MECHLAB_CHECK(t <= cfg.n_ctx, "prompts of ", t, " tokens are longer than the model's n_ctx = ",
                cfg.n_ctx);
  check_ids(clean_tokens, "clean_tokens", cfg.d_vocab);
  check_ids(corrupted_tokens, "corrupted_tokens", cfg.d_vocab);
  if (attention_mask.defined()) {
    MECHLAB_CHECK(attention_mask.sizes() == clean_tokens.sizes(), "attention_mask ",
                  attention_mask.sizes(), " must have the prompts' shape ", clean_tokens.sizes());
    MECHLAB_CHECK(attention_mask.ne(0).any(1).all().item<bool>(),
                  "attention_mask: some prompt has no real token");
  }
  MECHLAB_CHECK(answer_tokens.defined() && wrong_tokens.defined(),
                "patching metrics need answer_tokens and wrong_tokens [batch, K]");
  MECHLAB_CHECK(answer_tokens.dim() == 2 && answer_tokens.size(0) == n && is_int(answer_tokens),
                "answer_tokens must be an integer tensor [batch = ", n, ", K], got ",
                answer_tokens.scalar_type(), " ", answer_tokens.sizes());
  MECHLAB_CHECK(wrong_tokens.sizes() == answer_tokens.sizes() && is_int(wrong_tokens),
                "wrong_tokens ", wrong_tokens.sizes(), " must match answer_tokens ",
                answer_tokens.sizes());
  check_ids(answer_tokens, "answer_tokens", cfg.d_vocab);
  check_ids(wrong_tokens, "wrong_tokens", cfg.d_vocab);
  if (answer_pos.defined()) {
    MECHLAB_CHECK(answer_pos.dim() == 1 && answer_pos.size(0) == n && is_int(answer_pos),
                  "answer_pos must be an integer tensor [batch = ", n, "], got ",
                  answer_pos.scalar_type(), " ", answer_pos.sizes());
    at::Tensor bad = (answer_pos < 0) | (answer_pos >= t);
    if (bad.any().item<bool>()) {
      const int64_t i = bad.nonzero()[0][0].item<int64_t>();
      throw Error(str_cat("answer_pos of example ", i, " is ", answer_pos[i].item<int64_t>(),
                          ", beyond the sequence (positions 0..", t - 1,
                          "); it must name a position of the prompt"));
    }
  }
}

at::Tensor PatchingData::resolved_answer_pos() const {
  if (answer_pos.defined()) return answer_pos.to(at::kLong);
  if (!attention_mask.defined()) return at::full({batch()}, seq_len() - 1, at::kLong);
  // Last real position: the largest index whose mask is set (left or right padding).
  at::Tensor idx = at::arange(seq_len(), at::kLong).expand({batch(), -1});
  return at::where(attention_mask.ne(0), idx, at::full_like(idx, -1)).amax(1);
}

AnswerSpec PatchingData::answers() const {
  return {answer_tokens.to(at::kLong), wrong_tokens.to(at::kLong), resolved_answer_pos()};
}

}  // namespace mechlab::patching
