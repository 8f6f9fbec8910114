#include "core/train/train_data.h"

#include "core/util/error.h"
#include "core/model/presets.h"
#include "core/data/tasks/tasks.h"

#include <cmath>

namespace mechlab::core::train {
namespace {

at::Tensor select_rows(const at::Tensor& t, const at::Tensor& index) {
  return t.defined() ? t.index_select(0, index) : t;
}

Split make_split(const Dataset& ds, Objective objective, int64_t begin, int64_t end) {
  Split s;
  s.tokens = ds.prompts().slice(0, begin, end).to(at::kLong);
  if (ds.attention_mask.defined()) s.mask = ds.attention_mask.slice(0, begin, end);
  const int64_t T = s.tokens.size(1);
  if (objective == Objective::answer) {
    s.answer = ds.answer_tokens.slice(0, begin, end).select(1, 0).to(at::kLong);
    if (ds.answer_pos.defined()) {
      s.answer_pos = ds.answer_pos.slice(0, begin, end).to(at::kLong);
    } else if (s.mask.defined()) {
      s.answer_pos = s.mask.to(at::kLong).sum(1) - 1;  // last real token (right padding)
    } else {
      s.answer_pos = at::full({end - begin}, T - 1, at::kLong);
    }
  } else {
    // Which next-token predictions count for accuracy: with per-token labels
    // (induction: 1 = repeated half), those whose source and target are both
    // labelled — the tokens a copying mechanism can predict; otherwise every
    // prediction between real tokens.
    at::Tensor ok;
    if (ds.labels.defined() && ds.labels.dim() == 2) {
      ok = ds.labels.slice(0, begin, end).eq(1);
    } else if (s.mask.defined()) {
      ok = s.mask.ne(0);
    } else {
      ok = at::ones({end - begin, T}, at::kBool);
    }
    s.scored = ok.narrow(1, 0, T - 1) & ok.narrow(1, 1, T - 1);
  }
  return s;
}

}  // namespace

Split Split::rows(const at::Tensor& index) const {
  return {select_rows(tokens, index), select_rows(mask, index), select_rows(answer, index),
          select_rows(answer_pos, index),
          select_rows(scored, index)};
}

Split Split::head(int64_t n) const {
  auto h = [n](const at::Tensor& t) { return t.defined() ? t.narrow(0, 0, n) : t; };
  return {h(tokens), h(mask), h(answer), h(answer_pos), h(scored)};
}

Split Split::to(const at::Device& device) const {
  auto mv = [&](const at::Tensor& t) { return t.defined() ? t.to(device) : t; };
  return {mv(tokens), mv(mask), mv(answer), mv(answer_pos), mv(scored)};
}

TrainData load_train_data(const TrainConfig& config) {
  TrainData d;
  if (config.data.contains("path")) {
    d.dataset = load_dataset(config.data["path"].get<std::string>());
  } else {
    d.dataset = tasks::make_task(config.data["task"].get<std::string>(),
                                 config.data.value("options", nlohmann::json::object()));
  }
  const Dataset& ds = d.dataset;
  const std::string where = config.data.contains("path") ? config.data["path"].get<std::string>()
                                                         : config.data["task"].get<std::string>();
  MECHLAB_CHECK(ds.seq_len() >= 2, "training data '", where, "' has sequences of length ",
                ds.seq_len(), "; next-token training needs at least 2 positions");
  if (config.objective == Objective::answer) {
    MECHLAB_CHECK(ds.answer_tokens.defined(), "training data '", where,
                  "' has no /answer_tokens, which the \"answer\" objective predicts; use "
                  "\"objective\": \"next_token\" or a task with answers (ioi, modular_addition, "
                  "greater_than)");
  }
  const int64_t n = ds.size();
  const auto n_train = static_cast<int64_t>(std::floor(config.train_fraction * n));
  MECHLAB_CHECK(n_train >= 1 && n_train < n, "train_fraction ", config.train_fraction, " of ", n,
                " examples leaves ", n_train, " for training and ", n - n_train,
                " for testing; both need at least one (more data or another fraction)");
  d.train = make_split(ds, config.objective, 0, n_train);
  d.test = make_split(ds, config.objective, n_train, n);
  return d;
}

ModelConfig resolve_model_config(const TrainConfig& config, const Dataset& data) {
  nlohmann::json j = nlohmann::json::object();
  nlohmann::json overrides = config.model;
  if (overrides.contains("preset")) {
    MECHLAB_CHECK(overrides["preset"].is_string(), "train config: \"model.preset\" must be a string");
    j = preset(overrides["preset"].get<std::string>()).to_json();
    j.erase("d_vocab");
    j.erase("n_ctx");
    j.erase("name");  // the model is named after the run unless "model" says otherwise
    // d_head follows d_model / n_heads when either is overridden.
    if (overrides.contains("d_model") || overrides.contains("n_heads")) j.erase("d_head");
    overrides.erase("preset");
  }
  for (const auto& item : overrides.items()) j[item.key()] = item.value();
  if (!j.contains("name")) j["name"] = config.name;
  if (!j.contains("d_vocab")) j["d_vocab"] = data.d_vocab;
  if (!j.contains("n_ctx")) j["n_ctx"] = data.seq_len();
  if (!j.contains("d_head") && j.contains("d_model") && j.contains("n_heads")) {
    MECHLAB_CHECK(j["d_model"].is_number_integer() && j["n_heads"].is_number_integer(),
                  "train config: model d_model and n_heads must be integers");
    const int64_t d_model = j["d_model"].get<int64_t>(), n_heads = j["n_heads"].get<int64_t>();
    MECHLAB_CHECK(n_heads > 0 && d_model % n_heads == 0, "train config: d_model (", d_model,
                  ") must be divisible by n_heads (", n_heads,
                  "), or give d_head explicitly");
    j["d_head"] = d_model / n_heads;
  }
  ModelConfig cfg;
  try {
    cfg = ModelConfig::from_json(j);
  } catch (const Error& e) {
    throw Error(str_cat("train config \"model\": ", e.what()));
  }
  MECHLAB_CHECK(cfg.d_vocab >= data.d_vocab, "train config: the model's d_vocab (", cfg.d_vocab,
                ") is smaller than the data's (", data.d_vocab, ")");
  MECHLAB_CHECK(cfg.n_ctx >= data.seq_len(), "train config: the model's n_ctx (", cfg.n_ctx,
                ") is shorter than the data's sequences (", data.seq_len(), ")");
  return cfg;
}

}  // namespace mechlab::core::train
