#include "patching/metrics.h"

#include "core/util/error.h"
#include "hooks/hooked_transformer.h"
#include "patching/patching_data.h"
#include "patching/sweeps.h"

#include <cmath>

#include <ATen/ATen.h>

#include <utility>
#include <vector>

namespace mechlab::patching {

Metric::Metric(std::string name, Reads reads, at::Tensor answer_pos, BatchedFn fn, bool higher_is_better)
    : name_(std::move(name)),
      reads_(reads),
      answer_pos_(std::move(answer_pos)),
      fn_(std::move(fn)),
      higher_is_better_(higher_is_better) {
  MECHLAB_CHECK(reads_ == Reads::all_logits || answer_pos_.defined(), "metric \"", name_,
                "\" reads answer positions, so it needs answer_pos [batch]");
}

Metric Metric::negated() const {
  const std::string name = name_.rfind('-', 0) == 0 ? name_.substr(1) : "-" + name_;
  return Metric(name, reads_, answer_pos_, [fn = fn_](const at::Tensor& logits) { return fn(logits).neg(); },
                !higher_is_better_);
}

Metric Metric::custom(std::string name, std::function<at::Tensor(const at::Tensor&)> fn, bool higher_is_better) {
  MECHLAB_CHECK(fn != nullptr, "custom metric \"", name, "\" has no function");
  const std::string label = name;
  return Metric(std::move(name), Reads::all_logits, {},
                [fn = std::move(fn), label](const at::Tensor& logits) {  // [copies, batch, pos, d_vocab]
                  std::vector<at::Tensor> out;
                  out.reserve(logits.size(0));
                  for (int64_t c = 0; c < logits.size(0); ++c) {
                    at::Tensor v = fn(logits[c]);
                    MECHLAB_CHECK(v.defined() && v.numel() == 1, "custom metric \"", label,
                                  "\" must return one number per run, got a tensor of shape ",
                                  v.defined() ? c10::str(v.sizes()) : std::string("(undefined)"));
                    // float64 stays float64 (finite-difference checks of attribution need it).
                    out.push_back(v.reshape({}).to(v.scalar_type() == at::kDouble ? at::kDouble
                                                                                  : at::kFloat));
                  }
                  return at::stack(out);
                },
                higher_is_better);
}

at::Tensor Metric::operator()(const at::Tensor& logits) const {
  MECHLAB_CHECK(logits.dim() == 3, "metric \"", name_, "\" expects logits [batch, pos, d_vocab], got ",
                logits.sizes());
  at::Tensor x = reads_ == Reads::answer_logits ? logits_at(logits, answer_pos_) : logits;
  return batched(x.unsqueeze(0)).reshape({});
}

at::Tensor Metric::batched(const at::Tensor& logits) const {
  at::Tensor v = fn_(logits);
  MECHLAB_ASSERT(v.dim() == 1 && v.size(0) == logits.size(0));
  return v.scalar_type() == at::kDouble ? v : v.to(at::kFloat);
}

at::Tensor logits_at(const at::Tensor& logits, const at::Tensor& answer_pos) {
  MECHLAB_CHECK(logits.dim() == 3, "logits must be [batch, pos, d_vocab], got ", logits.sizes());
  MECHLAB_CHECK(answer_pos.dim() == 1 && answer_pos.size(0) == logits.size(0),
                "answer_pos must be [batch = ", logits.size(0), "], got ", answer_pos.sizes());
  at::Tensor p = answer_pos.to(logits.device(), at::kLong);
  MECHLAB_CHECK(p.min().item<int64_t>() >= 0 && p.max().item<int64_t>() < logits.size(1),
                "answer_pos must be in [0, ", logits.size(1), ")");
  at::Tensor rows = at::arange(logits.size(0), p.options());
  return logits.index({rows, p});  // [batch, d_vocab]
}

namespace {

// [..., batch, d_vocab] gathered at ids [batch, K] -> [..., batch, K]
at::Tensor gather_ids(const at::Tensor& logits, const at::Tensor& ids) {
  at::Tensor idx = ids.to(logits.device(), at::kLong);
  std::vector<int64_t> shape(logits.sizes().begin(), logits.sizes().end() - 1);
  shape.push_back(idx.size(1));
  return logits.gather(-1, idx.expand(shape));
}

void check_answers(const AnswerSpec& a, bool need_wrong, const char* metric) {
  MECHLAB_CHECK(a.answer_tokens.defined() && a.answer_tokens.dim() == 2, "metric ", metric,
                " needs answer_tokens [batch, K]");
  MECHLAB_CHECK(a.answer_pos.defined() && a.answer_pos.dim() == 1 &&
                    a.answer_pos.size(0) == a.answer_tokens.size(0),
                "metric ", metric, " needs answer_pos [batch = ", a.answer_tokens.size(0), "]");
  if (need_wrong) {
    MECHLAB_CHECK(a.wrong_tokens.defined() && a.wrong_tokens.sizes() == a.answer_tokens.sizes(),
                  "metric ", metric, " needs wrong_tokens of the answer_tokens' shape ",
                  a.answer_tokens.sizes());
  }
}

}  // namespace

at::Tensor logit_diff_per_prompt(const at::Tensor& answer_logits, const AnswerSpec& a) {
  check_answers(a, true, "logit_diff");
  at::Tensor x = answer_logits.to(at::kFloat);
  return (gather_ids(x, a.answer_tokens) - gather_ids(x, a.wrong_tokens)).mean(-1);
}

Metric logit_diff(const AnswerSpec& answers) {
  check_answers(answers, true, "logit_diff");
  return Metric("logit_diff", Metric::Reads::answer_logits, answers.answer_pos,
                [answers](const at::Tensor& logits) {  // [copies, batch, d_vocab]
                  return logit_diff_per_prompt(logits, answers).mean(-1);
                },
                /*higher_is_better=*/true);
}

Metric normalised_logit_diff(const AnswerSpec& answers, double clean, double corrupted) {
  check_answers(answers, true, "normalised_logit_diff");
  MECHLAB_CHECK(clean != corrupted, "normalised_logit_diff: the clean and corrupted logit "
                "differences are equal (", clean, "), so there is nothing to normalise; check that "
                "the corrupted prompts really change the answer");
  return Metric("normalised_logit_diff", Metric::Reads::answer_logits, answers.answer_pos,
                [answers, clean, corrupted](const at::Tensor& logits) {
                  at::Tensor ld = logit_diff_per_prompt(logits, answers).mean(-1);
                  return (ld - corrupted) / (clean - corrupted);
                },
                /*higher_is_better=*/true);
}

Metric answer_prob(const AnswerSpec& answers) {
  check_answers(answers, false, "answer_prob");
  return Metric("answer_prob", Metric::Reads::answer_logits, answers.answer_pos,
                [answers](const at::Tensor& logits) {  // [copies, batch, d_vocab]
                  at::Tensor p = at::softmax(logits.to(at::kFloat), -1);
                  return gather_ids(p, answers.answer_tokens).mean(at::IntArrayRef{-2, -1});
                },
                /*higher_is_better=*/true);
}

Metric kl_to_clean(const AnswerSpec& answers, const at::Tensor& clean_logits) {
  check_answers(answers, false, "kl_to_clean");
  at::Tensor clean_logp =
      at::log_softmax(logits_at(clean_logits, answers.answer_pos).to(at::kFloat), -1);  // [batch, d_vocab]
  return Metric("kl_to_clean", Metric::Reads::answer_logits, answers.answer_pos,
                [clean_logp](const at::Tensor& logits) {  // [copies, batch, d_vocab]
                  at::Tensor ref = clean_logp.to(logits.device());
                  MECHLAB_CHECK(logits.size(-1) == ref.size(-1) && logits.size(-2) == ref.size(0),
                                "kl_to_clean: logits ", logits.sizes(),
                                " do not match the clean logits [batch, d_vocab] = ", ref.sizes());
                  at::Tensor logp = at::log_softmax(logits.to(at::kFloat), -1);
                  return (ref.exp() * (ref - logp)).sum(-1).mean(-1);
                });
}

Metric kl_to_clean_all_positions(const at::Tensor& clean_logits, const at::Tensor& attention_mask) {
  MECHLAB_CHECK(clean_logits.defined() && clean_logits.dim() == 3,
                "kl_to_clean_all_positions needs the clean logits [batch, pos, d_vocab], got ",
                clean_logits.defined() ? clean_logits.sizes() : at::IntArrayRef{});
  at::Tensor clean_logp = at::log_softmax(clean_logits.to(at::kFloat), -1);  // [batch, pos, d_vocab]
  at::Tensor w = attention_mask.defined() ? attention_mask.ne(0).to(at::kFloat)
                                          : at::ones({clean_logits.size(0), clean_logits.size(1)}, at::kFloat);
  MECHLAB_CHECK(w.sizes() == clean_logits.sizes().slice(0, 2), "kl_to_clean_all_positions: attention mask ",
                w.sizes(), " does not match the clean logits ", clean_logits.sizes());
  MECHLAB_CHECK(w.sum().item<double>() > 0, "kl_to_clean_all_positions: the attention mask has no real token");
  return Metric("kl_to_clean_all_positions", Metric::Reads::all_logits, {},
                [clean_logp, w](const at::Tensor& logits) {  // [copies, batch, pos, d_vocab]
                  at::Tensor ref = clean_logp.to(logits.device());
                  MECHLAB_CHECK(logits.sizes().slice(1) == ref.sizes(), "kl_to_clean_all_positions: logits ",
                                logits.sizes(), " do not match the clean logits ", ref.sizes());
                  at::Tensor logp = at::log_softmax(logits.to(at::kFloat), -1);
                  at::Tensor kl = (ref.exp() * (ref - logp)).sum(-1);  // [copies, batch, pos]
                  at::Tensor ww = w.to(kl.device());
                  return (kl * ww).sum(at::IntArrayRef{1, 2}) / ww.sum();
                });
}

Metric cross_entropy(const at::Tensor& tokens, const at::Tensor& attention_mask) {
  MECHLAB_CHECK(tokens.dim() == 2 && tokens.size(1) >= 2,
                "cross_entropy needs the run's tokens [batch, pos >= 2], got ", tokens.sizes());
  at::Tensor next = tokens.slice(1, 1).to(at::kLong);  // [batch, pos - 1]
  at::Tensor w = attention_mask.defined()
                     ? (attention_mask.slice(1, 0, -1).ne(0) & attention_mask.slice(1, 1).ne(0))
                           .to(at::kFloat)
                     : at::ones(next.sizes(), at::kFloat);  // [batch, pos - 1]
  MECHLAB_CHECK(w.sum().item<double>() > 0, "cross_entropy: no position is followed by a real token");
  return Metric("cross_entropy", Metric::Reads::all_logits, {},
                [next, w](const at::Tensor& logits) {  // [copies, batch, pos, d_vocab]
                  at::Tensor lp = at::log_softmax(logits.slice(2, 0, -1).to(at::kFloat), -1);
                  at::Tensor ids = next.to(lp.device()).unsqueeze(-1).expand(
                      {lp.size(0), -1, -1, 1});  // [copies, batch, pos - 1, 1]
                  at::Tensor nll = -lp.gather(-1, ids).squeeze(-1);  // [copies, batch, pos - 1]
                  at::Tensor ww = w.to(lp.device());
                  return (nll * ww).sum(at::IntArrayRef{1, 2}) / ww.sum();
                });
}

const std::vector<MetricInfo>& metric_catalog() {
  static const std::vector<MetricInfo> catalog{
      {"logit_diff", "mean over prompts of logit(answer) - logit(wrong) at the answer position"},
      {"normalised_logit_diff", "logit_diff rescaled so 0 = corrupted baseline, 1 = clean baseline"},
      {"answer_prob", "mean softmax probability of the answer tokens"},
      {"kl_to_clean", "KL(clean || patched) at the answer position, mean over prompts"},
      {"cross_entropy", "next-token loss of the patched run's own prompts"},
  };
  return catalog;
}

const char* metric_names() {
  static const std::string names = [] {
    std::string s;
    for (const auto& m : metric_catalog()) s += (s.empty() ? "" : ", ") + std::string(m.name);
    return s;
  }();
  return names.c_str();
}

Metric make_metric(const MetricOptions& options, hooks::HookedTransformer& model,
                   const PatchingData& data, Direction direction) {
  const std::string& name = options.name();
  bool known = false;
  for (const auto& m : metric_catalog()) known = known || name == m.name;
  MECHLAB_CHECK(known, "unknown metric \"", name, "\"; metrics: ", metric_names());
  MECHLAB_CHECK(name == "normalised_logit_diff" ||
                    (std::isnan(options.clean_baseline()) && std::isnan(options.corrupted_baseline())),
                "metric ", name, " has no baselines; the options clean_baseline and "
                "corrupted_baseline belong to normalised_logit_diff");
  const AnswerSpec a = data.answers();
  if (name == "logit_diff") return logit_diff(a);
  if (name == "answer_prob") return answer_prob(a);
  if (name == "cross_entropy") {
    // The loss of the patched run's own input.
    return cross_entropy(direction == Direction::denoising ? data.corrupted_tokens : data.clean_tokens,
                         data.attention_mask);
  }
  at::NoGradGuard no_grad;
  hooks::RunOptions ro;
  ro.attention_mask(data.attention_mask);
  auto run = [&](const at::Tensor& tokens) { return model.forward(tokens, ro); };  // [batch, pos, d_vocab]
  if (name == "kl_to_clean") return kl_to_clean(a, run(data.clean_tokens));
  // normalised_logit_diff: measure each baseline that was not given.
  const Metric ld = logit_diff(a);
  const double clean = std::isnan(options.clean_baseline()) ? ld(run(data.clean_tokens)).item<double>()
                                                           : options.clean_baseline();
  const double corrupted = std::isnan(options.corrupted_baseline())
                               ? ld(run(data.corrupted_tokens)).item<double>()
                               : options.corrupted_baseline();
  return normalised_logit_diff(a, clean, corrupted);
}

}  // namespace mechlab::patching
