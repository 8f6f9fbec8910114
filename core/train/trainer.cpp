#include "core/train/trainer.h"

#include "core/model/checkpoint.h"
#include "core/util/error.h"
#include "core/formats/hdf5_file.h"
#include "core/log/log.h"
#include "core/util/progress.h"
#include "core/util/rng.h"
#include "core/formats/text_file.h"
#include "core/train/objective.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <numeric>
#include <optional>

namespace mechlab::core::train {
namespace {

constexpr const char* kTrainGroup = "train";
constexpr int64_t kEvalChunkRows = 4096;  // rows per forward when evaluating

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string join_path(const std::string& dir, const std::string& file) {
  return (std::filesystem::path(dir) / file).string();
}

// The first key whose value differs between two JSON objects ("" if none).
std::string first_difference(const nlohmann::json& a, const nlohmann::json& b) {
  for (const auto& item : a.items()) {
    if (!b.contains(item.key()) || b[item.key()] != item.value()) return item.key();
  }
  for (const auto& item : b.items()) {
    if (!a.contains(item.key())) return item.key();
  }
  return "";
}

}  // namespace

Trainer::Trainer(TrainConfig config, TrainerOptions options)
    : config_(std::move(config)), options_(std::move(options)) {
  config_.validate();
  data_ = load_train_data(config_);
  train_dev_ = data_.train.to(options_.device_);
  ModelConfig cfg = resolve_model_config(config_, data_.dataset);
  TransformerWeights init = init_weights(cfg, static_cast<uint64_t>(config_.seed), config_.init_std);
  model_ = std::make_unique<Transformer>(cfg, std::move(init));
  model_->to(options_.device_);

  schedule_ = {config_.lr, config_.min_lr, config_.warmup_steps, config_.steps};
  session_start_ = now_seconds();

  std::string checkpoint;
  if (!options_.out_dir_.empty()) {
    checkpoint = join_path(options_.out_dir_, "checkpoint.h5");
    const bool exists = std::filesystem::exists(checkpoint);
    if (options_.resume_) {
      MECHLAB_CHECK(exists, "nothing to resume: '", checkpoint,
                    "' does not exist (start the run without --resume)");
    } else {
      MECHLAB_CHECK(!exists || options_.overwrite_, "'", options_.out_dir_,
                    "' already holds a training run (checkpoint.h5); pass --resume to continue "
                    "it or --overwrite to start again");
    }
    std::filesystem::create_directories(options_.out_dir_);
  } else {
    MECHLAB_CHECK(!options_.resume_, "resume needs an output folder (out_dir) to resume from");
  }

  if (options_.resume_) {
    load_checkpoint(checkpoint);
  } else {
    for (auto& [name, t] : model_->named_parameters()) {
      names_.push_back(name);
      params_.push_back(t.requires_grad_(true));
    }
    optimizer_ = std::make_unique<AdamW>(params_, AdamWOptions()
                                                      .beta1(config_.beta1)
                                                      .beta2(config_.beta2)
                                                      .eps(config_.eps)
                                                      .weight_decay(config_.weight_decay));
  }
  if (!options_.out_dir_.empty()) {
    write_text_file(join_path(options_.out_dir_, "config.json"), config_.to_json().dump(2) + "\n");
  }
}

at::Tensor Trainer::batch_indices(int64_t step) const {
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

double Trainer::step() {
  at::Tensor index = batch_indices(step_).to(options_.device_);
  const Split batch = train_dev_.rows(index);
  ForwardOptions fwd;
  fwd.attention_mask = batch.mask;
  at::Tensor logits = model_->forward(batch.tokens, fwd);  // [batch, pos, d_vocab]
  at::Tensor loss = objective_loss(config_.objective, logits, batch);
  loss.backward();
  last_grad_norm_ = clip_grad_norm(params_, config_.grad_clip);
  optimizer_->step(schedule_.at(step_));
  optimizer_->zero_grad();
  ++step_;
  const double value = loss.item<double>();
  loss_sum_ += value;
  ++loss_count_;
  return value;
}

EvalResult Trainer::evaluate(const Split& split, int64_t max_examples) const {
  at::NoGradGuard no_grad;
  const int64_t n = max_examples > 0 ? std::min(max_examples, split.size()) : split.size();
  double loss_sum = 0;
  Correct total;
  // Chunks are weighted by their rows: exact for the answer objective and for
  // unpadded data (every row has the same number of predictions).
  for (int64_t begin = 0; begin < n; begin += kEvalChunkRows) {
    const int64_t rows = std::min(kEvalChunkRows, n - begin);
    Split chunk = split.rows(at::arange(begin, begin + rows, at::kLong)).to(options_.device_);
    ForwardOptions fwd;
    fwd.attention_mask = chunk.mask;
    at::Tensor logits = model_->forward(chunk.tokens, fwd);
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

void Trainer::evaluate_and_log() {
  const EvalResult test = evaluate(data_.test, config_.eval_examples);
  const int64_t train_rows = config_.eval_examples > 0 ? config_.eval_examples : data_.test.size();
  const EvalResult train = evaluate(data_.train, train_rows);
  last_test_ = test;
  last_train_ = train;
  LogRow row;
  row.step = step_;
  row.lr = schedule_.at(std::max<int64_t>(0, step_ - 1));
  row.train_loss = loss_count_ > 0 ? loss_sum_ / loss_count_ : train.loss;
  row.grad_norm = last_grad_norm_;
  row.train_accuracy = train.accuracy;
  row.test_loss = test.loss;
  row.test_accuracy = test.accuracy;
  row.seconds = seconds_before_ + (now_seconds() - session_start_);
  log_.add(row);
  loss_sum_ = 0;
  loss_count_ = 0;
  log::info(str_cat("step ", step_, ": train loss ", row.train_loss, ", test loss ", test.loss,
                    ", test accuracy ", test.accuracy, ", train accuracy ", train.accuracy));
  write_outputs(false);
}

void Trainer::write_outputs(bool final) const {
  if (options_.out_dir_.empty()) return;
  write_text_file(join_path(options_.out_dir_, "train_log.csv"), log_.csv());
  write_text_file(join_path(options_.out_dir_, "train_log.svg"), log_.svg(config_.name));
  if (final) model_->save(join_path(options_.out_dir_, "model.h5"));
}

TrainResult Trainer::run(int64_t max_steps) {
  TrainResult result;
  std::optional<ProgressBar> bar;
  if (options_.progress_) bar.emplace("train " + config_.name, config_.steps, "steps", step_);
  int64_t taken = 0;
  while (step_ < config_.steps && (max_steps < 0 || taken < max_steps)) {
    step();
    ++taken;
    if (bar) bar->advance(1);
    if (step_ % config_.eval_every == 0 || step_ == config_.steps) {
      evaluate_and_log();
      if (config_.stop_at_accuracy > 0 && log_.rows().back().test_accuracy >= config_.stop_at_accuracy) {
        result.stopped_early = step_ < config_.steps;
        break;
      }
    }
    if (!options_.out_dir_.empty() && step_ % config_.checkpoint_every == 0) {
      save_checkpoint(join_path(options_.out_dir_, "checkpoint.h5"));
    }
  }
  if (bar) bar->finish();
  if (log_.empty() || log_.rows().back().step != step_) evaluate_and_log();
  if (!options_.out_dir_.empty()) {
    save_checkpoint(join_path(options_.out_dir_, "checkpoint.h5"));
    write_outputs(true);
  }
  // The last evaluation was at this step (the loop or the line above made it).
  result.steps = step_;
  result.test = last_test_;
  result.train = last_train_;
  return result;
}

void Trainer::save_checkpoint(const std::string& path) const {
  core::save_checkpoint(path, model_->config(), model_->named_parameters(), [&](H5File& f) {
    f.ensure_group(kTrainGroup);
    f.write_attr(kTrainGroup, "step", step_);
    f.write_attr(kTrainGroup, "config", config_.to_json().dump());
    f.write_attr(kTrainGroup, "loss_sum", loss_sum_);
    f.write_attr(kTrainGroup, "loss_count", loss_count_);
    f.write_attr(kTrainGroup, "grad_norm", last_grad_norm_);
    f.write_attr(kTrainGroup, "seconds", seconds_before_ + (now_seconds() - session_start_));
    const std::string g = kTrainGroup;
    for (size_t i = 0; i < names_.size(); ++i) {
      f.write_tensor(g + "/exp_avg/" + names_[i], optimizer_->exp_avg()[i]);
      f.write_tensor(g + "/exp_avg_sq/" + names_[i], optimizer_->exp_avg_sq()[i]);
    }
    log_.save(f, kTrainGroup);
  });
}

void Trainer::load_checkpoint(const std::string& path) {
  Checkpoint ckpt = core::load_checkpoint(path);
  H5File f = H5File::open_read(path);
  MECHLAB_CHECK(f.is_group(kTrainGroup), "'", path,
                "' is a model checkpoint without training state (/train); it cannot be resumed");
  nlohmann::json saved;
  try {
    saved = nlohmann::json::parse(f.read_attr_string(kTrainGroup, "config"));
  } catch (const nlohmann::json::parse_error& e) {
    throw Error(str_cat("'", path, "': the stored train config is not valid JSON: ", e.what()));
  }
  const std::string diff = first_difference(config_.to_json(), saved);
  MECHLAB_CHECK(diff.empty(), "cannot resume '", path, "': it was trained with another config (\"",
                diff, "\" is ", saved.value(diff, nlohmann::json()).dump(), " there, ",
                config_.to_json().value(diff, nlohmann::json()).dump(),
                " here); resume with the same config or start a new run");
  MECHLAB_CHECK(ckpt.config.to_json() == model_->config().to_json(), "cannot resume '", path,
                "': its model config differs from the one this train config gives");
  model_->load_parameters(ckpt.params);
  names_.clear();
  params_.clear();
  for (auto& [name, t] : model_->named_parameters()) {
    names_.push_back(name);
    params_.push_back(t.requires_grad_(true));
  }
  std::vector<at::Tensor> m, v;
  const std::string g = kTrainGroup;
  for (const std::string& name : names_) {
    for (const char* kind : {"exp_avg", "exp_avg_sq"}) {
      const std::string ds = g + "/" + kind + "/" + name;
      MECHLAB_CHECK(f.exists(ds), "'", path, "': training state lacks /", ds,
                    " (the file is damaged; start again with --overwrite)");
    }
    m.push_back(f.read_tensor(g + "/exp_avg/" + name));
    v.push_back(f.read_tensor(g + "/exp_avg_sq/" + name));
  }
  step_ = f.read_attr_int(kTrainGroup, "step");
  optimizer_ = std::make_unique<AdamW>(params_, AdamWOptions()
                                                    .beta1(config_.beta1)
                                                    .beta2(config_.beta2)
                                                    .eps(config_.eps)
                                                    .weight_decay(config_.weight_decay));
  optimizer_->load_state(step_, m, v);
  loss_sum_ = f.read_attr_double(kTrainGroup, "loss_sum");
  loss_count_ = f.read_attr_int(kTrainGroup, "loss_count");
  last_grad_norm_ = f.read_attr_double(kTrainGroup, "grad_norm");
  seconds_before_ = f.read_attr_double(kTrainGroup, "seconds");
  session_start_ = now_seconds();
  log_ = TrainingLog::load(f, kTrainGroup);
  log_.truncate_after(step_);
  log::info(str_cat("resumed '", path, "' at step ", step_, " of ", config_.steps));
}

}  // namespace mechlab::core::train
