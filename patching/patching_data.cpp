#include "patching/patching_data.h"

#include "core/data/tasks/ioi.h"
#include "core/data/tokenizer/word_tokenizer.h"
#include "core/util/error.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <map>
#include <optional>
#include <sstream>

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
                "(e.g. the ioi generator's, `make_task(\"ioi\")`)");
  MECHLAB_CHECK(ds.answer_tokens.defined() && ds.wrong_tokens.defined(),
                "the dataset has no /answer_tokens and /wrong_tokens; patching metrics compare the "
                "answer with a wrong answer (e.g. the ioi generator's, `make_task(\"ioi\")`)");
  PatchingData d;
  d.clean_tokens = head_rows(ds.clean_tokens, max_examples);
  d.corrupted_tokens = head_rows(ds.corrupted_tokens, max_examples);
  d.attention_mask = head_rows(ds.attention_mask, max_examples);
  d.answer_tokens = head_rows(ds.answer_tokens, max_examples);
  d.wrong_tokens = head_rows(ds.wrong_tokens, max_examples);
  d.answer_pos = head_rows(ds.answer_pos, max_examples);
  return d;
}

void PatchingData::check_same_padding(const std::string& what) const {
  if (!attention_mask.defined() || batch() < 2) return;  // one length, no padding
  const at::Tensor m = attention_mask.to(at::kCPU).ne(0);                  // [batch, pos]
  const at::Tensor differs = m.ne(m.narrow(0, 0, 1)).any(1).nonzero();    // [n, 1]
  if (differs.size(0) == 0) return;
  const int64_t i = differs[0][0].item<int64_t>();
  throw Error(str_cat(what, " needs prompts of one length with the same padding (token position p must mean "
                      "the same in every prompt), but prompt ", i, "'s attention mask differs from prompt 0's (",
                      m[i].sum().item<int64_t>(), " real tokens against ", m[0].sum().item<int64_t>(),
                      "); use prompts of equal length, or do not split by position"));
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

namespace {

std::vector<std::string> split_spaces(const std::string& text) {
  std::istringstream in(text);
  std::vector<std::string> out;
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

// The IOI template slot of every (example, position), "" for padding, or
// nullopt when the dataset does not record its templates.
std::optional<std::vector<std::vector<std::string>>> ioi_slots(const core::Dataset& ds, int64_t n,
                                                               int64_t seq) {
  if (ds.task != "ioi" || !ds.labels.defined() || ds.labels.dim() != 1) return std::nullopt;
  const auto& templates = core::tasks::ioi_templates();
  at::Tensor labels = ds.labels.to(at::kLong);         // [N]
  at::Tensor clean = ds.clean_tokens.to(at::kLong);    // [N, T]
  at::Tensor answer = ds.answer_tokens.to(at::kLong);  // [N, K]
  std::vector<std::vector<std::string>> slots(n, std::vector<std::string>(seq));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = labels[i].item<int64_t>();
    if (t < 0 || t >= static_cast<int64_t>(templates.size())) return std::nullopt;
    const std::vector<std::string> words = split_spaces(templates[t]);
    if (static_cast<int64_t>(words.size()) > seq) return std::nullopt;
    const int64_t io = answer[i][0].item<int64_t>();
    for (size_t p = 0; p < words.size(); ++p) {
      const std::string& w = words[p];
      std::string slot = w;
      // {N1}/{N2} are IO and S1 in either order: IO is the clean answer.
      if (w == "{N1}" || w == "{N2}") slot = clean[i][p].item<int64_t>() == io ? "IO" : "S1";
      if (w == "{S}") slot = "S2";
      if (w == "{PLACE}") slot = "PLACE";
      if (w == "{OBJECT}") slot = "OBJ";
      if (p + 1 == words.size()) slot = "END";  // the answer position (Wang et al.'s END)
      slots[i][p] = slot;
    }
  }
  return slots;
}

}  // namespace

std::vector<std::string> position_labels(const core::Dataset& ds, int64_t max_examples) {
  MECHLAB_CHECK(ds.clean_tokens.defined() && ds.corrupted_tokens.defined(),
                "position_labels: the dataset has no /clean_tokens and /corrupted_tokens");
  at::Tensor clean = head_rows(ds.clean_tokens, max_examples).to(at::kLong);          // [n, T]
  at::Tensor corrupted = head_rows(ds.corrupted_tokens, max_examples).to(at::kLong);  // [n, T]
  at::Tensor mask = ds.attention_mask.defined()
                        ? head_rows(ds.attention_mask, max_examples).to(at::kBool)
                        : at::ones_like(clean, clean.options().dtype(at::kBool));  // [n, T]
  const int64_t n = clean.size(0), seq = clean.size(1);
  std::optional<core::WordTokenizer> tok;
  if (!ds.tokenizer.empty()) {
    try {
      tok = core::WordTokenizer::from_json_string(ds.tokenizer);
    } catch (const std::exception&) {
      tok.reset();  // another tokenizer kind: fall back to ids
    }
  }
  auto word = [&](int64_t id) {
    return tok && id >= 0 && id < tok->size() ? tok->word(id) : std::to_string(id);
  };
  const auto slots = tok ? ioi_slots(ds, n, seq) : std::nullopt;
  std::vector<std::string> out;
  for (int64_t p = 0; p < seq; ++p) {
    const std::string prefix = std::to_string(p) + ": ";
    at::Tensor real = mask.select(1, p);  // [n]
    if (!real.any().item<bool>()) {
      out.push_back(prefix + "<pad>");
      continue;
    }
    if (slots) {
      std::map<std::string, int64_t> count;
      for (int64_t i = 0; i < n; ++i) {
        if (real[i].item<bool>() && !(*slots)[i][p].empty()) ++count[(*slots)[i][p]];
      }
      std::vector<std::pair<int64_t, std::string>> order;
      for (const auto& [slot, c] : count) order.emplace_back(-c, slot);
      std::sort(order.begin(), order.end());
      std::string label;
      for (size_t k = 0; k < order.size() && k < 3; ++k) label += (k ? "|" : "") + order[k].second;
      if (order.size() > 3) label += "|…";
      out.push_back(prefix + label);
      continue;
    }
    at::Tensor c = clean.select(1, p).masked_select(real);      // [real examples]
    at::Tensor x = corrupted.select(1, p).masked_select(real);  // [real examples]
    const bool same_clean = (c == c[0]).all().item<bool>();
    const bool same_corrupted = (x == x[0]).all().item<bool>();
    const bool differs = (c != x).any().item<bool>();
    if (same_clean && (!differs || same_corrupted)) {
      const int64_t c0 = c[0].item<int64_t>(), x0 = x[0].item<int64_t>();
      out.push_back(prefix + word(c0) + (differs ? "/" + word(x0) : ""));
    } else {
      out.push_back(prefix + (differs ? "(differs)" : "(varies)"));
    }
  }
  return out;
}

}  // namespace mechlab::patching
