#include "core/train/transformer_trainable.h"

#include "core/model/checkpoint.h"
#include "core/train/objective.h"
#include "core/util/error.h"
#include "core/util/rng.h"

#include <algorithm>
#include <numeric>

namespace mechlab::core::train {
namespace {

constexpr int64_t kEvalChunkRows = 4096;  // rows per forward when evaluating

}  // namespace

TransformerTrainable::TransformerTrainable(TrainConfig config, at::Device device)
    : config_(std::move(config)), device_(device) {
  config_.validate();
  data_ = load_train_data(config_);
  train_dev_ = data_.train.to(device_);
  ModelConfig cfg = resolve_model_config(config_, data_.dataset);
  TransformerWeights init = init_weights(cfg, static_cast<uint64_t>(config_.seed), config_.init_std);
  model_ = std::make_unique<Transformer>(cfg, std::move(init));
  model_->to(device_);
}

std::vector<at::Tensor> TransformerTrainable::parameters() {
  std::vector<at::Tensor> params;
  for (auto& [name, t] : model_->named_parameters()) params.push_back(t.requires_grad_(true));
  return params;
}

std::vector<std::string> TransformerTrainable::parameter_names() const {
  std::vector<std::string> names;
  for (const auto& [name, t] : model_->named_parameters()) names.push_back(name);
  return names;
}

at::Tensor TransformerTrainable::batch_indices(int64_t step) const {
  const int64_t n = data_.train.size();
  const int64_t batch = config_.batch_size == 0 ? n : std::min(config_.batch_size, n);
  if (batch == n) return at::arange(n, at::kLong);
  // Epoch e visits the train rows in a permutation drawn from (seed, e), a
  // batch at a time; the rows left over at an epoch's end are skipped. The
  // batch of a step is therefore a function of (seed, step) alone.
  const int64_t per_epoch = n / batch;
  const auto epoch = static_cast<uint64_t>(step / per_epoch);
  Rng rng(static_cast<uint64_t>(config_.seed) ^ (0x9E3779B97F4A7C15ULL * (epoch + 1)));
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  rng.shuffle(order);
  const int64_t first = (step % per_epoch) * batch;
  return at::tensor(std::vector<int64_t>(order.begin() + first, order.begin() + first + batch),
                    at::kLong);
}

at::Tensor TransformerTrainable::loss(int64_t step, at::Generator& /*rng: batches are seeded*/) {
  at::Tensor index = batch_indices(step).to(device_);
  const Split batch = train_dev_.rows(index);
  ForwardOptions fwd;
  fwd.attention_mask(batch.mask);
  at::Tensor logits = model_->forward(batch.tokens, fwd);  // [batch, pos, d_vocab]
  return objective_loss(config_.objective, logits, batch);
}

EvalResult TransformerTrainable::evaluate(const Split& split, int64_t max_examples) const {
  at::NoGradGuard no_grad;
  const int64_t n = max_examples > 0 ? std::min(max_examples, split.size()) : split.size();
  double loss_sum = 0;
  Correct total;
  // Chunks are weighted by their rows: exact for the answer objective and for
  // unpadded data (every row has the same number of predictions).
  for (int64_t begin = 0; begin < n; begin += kEvalChunkRows) {
    const int64_t rows = std::min(kEvalChunkRows, n - begin);
    Split chunk = split.rows(at::arange(begin, begin + rows, at::kLong)).to(device_);
    ForwardOptions fwd;
    fwd.attention_mask(chunk.mask);
    at::Tensor logits = model_->forward(chunk.tokens, fwd);  // [rows, pos, d_vocab]
    loss_sum += objective_loss(config_.objective, logits, chunk).item<double>() * rows;
    const Correct c = count_correct(config_.objective, logits, chunk);
    total.correct += c.correct;
    total.scored += c.scored;
  }
  EvalResult r;
  r.loss = n > 0 ? loss_sum / n : 0.0;
  r.scored = total.scored;
  r.accuracy = total.scored > 0 ? static_cast<double>(total.correct) / total.scored : 0.0;
  return r;
}

Evaluation TransformerTrainable::evaluate() {
  Evaluation e;
  e.test = evaluate(data_.test, config_.eval_examples);
  const int64_t train_rows = config_.eval_examples > 0 ? config_.eval_examples : data_.test.size();
  e.train = evaluate(data_.train, train_rows);
  return e;
}

nlohmann::json TransformerTrainable::config() const { return config_.to_json(); }

void TransformerTrainable::save_state(const std::string& path,
                                      const std::function<void(H5File&)>& write_loop_state) const {
  core::save_checkpoint(path, model_->config(), model_->named_parameters(), write_loop_state);
}

void TransformerTrainable::load_state(const std::string& path) {
  Checkpoint ckpt = core::load_checkpoint(path);
  MECHLAB_CHECK(ckpt.config.to_json() == model_->config().to_json(), "cannot resume '", path,
                "': its model config differs from the one this train config gives");
  model_->load_parameters(ckpt.params);
}

}  // namespace mechlab::core::train
