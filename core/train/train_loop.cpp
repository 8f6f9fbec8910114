#include "core/train/train_loop.h"

#include "core/formats/hdf5_file.h"
#include "core/formats/text_file.h"
#include "core/log/log.h"
#include "core/util/error.h"
#include "core/util/interrupt.h"
#include "core/util/progress.h"

#include <ATen/CPUGeneratorImpl.h>

#include <chrono>
#include <cmath>
#include <filesystem>

namespace mechlab::core::train {
namespace {

constexpr const char* kTrainGroup = "train";

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string join_path(const std::string& dir, const std::string& file) {
  return (std::filesystem::path(dir) / file).string();
}

// The first key whose value differs between two JSON objects ("" if none),
// as a dotted path into nested objects ("sae.k"), with its value in each
// (null where absent): naming the key rather than printing two whole nested
// objects, which hides a one-key change in a thousand characters.
std::string first_difference(const nlohmann::json& a, const nlohmann::json& b, nlohmann::json& in_a,
                             nlohmann::json& in_b) {
  for (const auto& item : a.items()) {
    if (!b.contains(item.key())) {
      in_a = item.value();
      in_b = nullptr;
      return item.key();
    }
    const nlohmann::json& other = b[item.key()];
    if (other == item.value()) continue;
    if (item.value().is_object() && other.is_object()) {
      const std::string inner = first_difference(item.value(), other, in_a, in_b);
      if (!inner.empty()) return item.key() + "." + inner;
    }
    in_a = item.value();
    in_b = other;
    return item.key();
  }
  for (const auto& item : b.items()) {
    if (!a.contains(item.key())) {
      in_a = nullptr;
      in_b = item.value();
      return item.key();
    }
  }
  return "";
}

nlohmann::json read_json_attr(const H5File& f, const std::string& path, const char* name) {
  try {
    return nlohmann::json::parse(f.read_attr_string(kTrainGroup, name));
  } catch (const nlohmann::json::parse_error& e) {
    throw Error(str_cat("'", path, "': the stored /", kTrainGroup, " ", name,
                        " is not valid JSON: ", e.what()));
  }
}

// Refuses to resume from a run whose `what` (config or hyperparameters) differs.
void check_same(const std::string& path, const nlohmann::json& here, const nlohmann::json& there) {
  nlohmann::json in_here, in_there;
  const std::string diff = first_difference(here, there, in_here, in_there);
  MECHLAB_CHECK(diff.empty(), "cannot resume '", path, "': it was trained with another config (\"",
                diff, "\" is ", in_there.dump(), " there, ", in_here.dump(),
                " here); resume with the same config or start a new run");
}

// "NaN", "Inf" or "-Inf".
std::string non_finite_name(double x) {
  if (std::isnan(x)) return "NaN";
  return x > 0 ? "Inf" : "-Inf";
}

}  // namespace

nlohmann::json LoopOptions::hyperparameters() const {
  return {{"steps", steps_},
          {"lr", lr_},
          {"min_lr", min_lr_},
          {"warmup_steps", warmup_steps_},
          {"beta1", adamw_.beta1()},
          {"beta2", adamw_.beta2()},
          {"eps", adamw_.eps()},
          {"weight_decay", adamw_.weight_decay()},
          {"grad_clip", grad_clip_},
          {"eval_every", eval_every_},
          {"checkpoint_every", checkpoint_every_},
          {"stop_at_accuracy", stop_at_accuracy_},
          {"seed", seed_}};
}

TrainLoop::TrainLoop(Trainable& model, LoopOptions options)
    : model_(model), options_(std::move(options)),
      rng_(at::make_generator<at::CPUGeneratorImpl>(options_.seed())) {
  MECHLAB_CHECK(options_.steps() > 0, "training loop: steps must be positive, got ", options_.steps());
  MECHLAB_CHECK(options_.lr() > 0 && std::isfinite(options_.lr()),
                "training loop: lr must be positive, got ", options_.lr());
  MECHLAB_CHECK(options_.min_lr() >= 0 && options_.min_lr() <= options_.lr(),
                "training loop: min_lr must be in [0, lr], got ", options_.min_lr());
  MECHLAB_CHECK(options_.warmup_steps() >= 0, "training loop: warmup_steps must be >= 0, got ",
                options_.warmup_steps());
  MECHLAB_CHECK(options_.grad_clip() >= 0, "training loop: grad_clip must be >= 0 (0 = no clipping), got ",
                options_.grad_clip());
  MECHLAB_CHECK(options_.eval_every() > 0, "training loop: eval_every must be positive, got ",
                options_.eval_every());
  MECHLAB_CHECK(options_.checkpoint_every() > 0,
                "training loop: checkpoint_every must be positive, got ", options_.checkpoint_every());
  schedule_ = {options_.lr(), options_.min_lr(), options_.warmup_steps(), options_.steps()};
  session_start_ = now_seconds();

  if (!options_.out_dir().empty()) {
    const std::string checkpoint = checkpoint_path();
    const bool exists = std::filesystem::exists(checkpoint);
    if (options_.resume()) {
      MECHLAB_CHECK(exists, "nothing to resume: '", checkpoint,
                    "' does not exist (start the run without `resume`)");
    } else {
      MECHLAB_CHECK(!exists || options_.overwrite(), "'", options_.out_dir(), "' already holds a training run (",
                    options_.checkpoint_file(), "); pass `resume` to continue it or `overwrite` to start again");
    }
    if (rank() == 0) std::filesystem::create_directories(options_.out_dir());
  } else {
    MECHLAB_CHECK(!options_.resume(), "resume needs an output folder (out_dir) to resume from");
  }

  if (options_.resume()) {
    load_checkpoint(checkpoint_path());
  } else {
    params_ = model_.parameters();
    names_ = model_.parameter_names();
    make_optimizer();
  }
  if (const auto& group = options_.process_group()) {
    // Every rank starts from rank 0's parameters (they should be equal
    // already: same seed, or the same checkpoint).
    try {
      at::NoGradGuard no_grad;
      for (at::Tensor& p : params_) {
        at::Tensor buf = p.detach().contiguous();
        group->broadcast(buf, 0);
        p.detach().copy_(buf);
      }
    } catch (const dist::CommError& e) {
      throw Error(str_cat("data-parallel training: rank ", rank(), " of ", world_size(),
                          " lost contact with the others before the first step (", e.reason(), "); ", kept_note(),
                          ": restart every rank"));
    }
  }
}

std::string TrainLoop::checkpoint_path() const {
  return options_.out_dir().empty() ? "" : join_path(options_.out_dir(), options_.checkpoint_file());
}

void TrainLoop::make_optimizer() {
  MECHLAB_CHECK(names_.size() == params_.size(), "training loop: the model names ", names_.size(),
                " parameters but has ", params_.size());
  for (at::Tensor& p : params_) {
    MECHLAB_CHECK(p.requires_grad() && p.is_leaf(),
                  "training loop: every parameter must be a leaf tensor with requires_grad");
  }
  optimizer_ = std::make_unique<AdamW>(params_, options_.adamw());
}

double TrainLoop::step() {
  if (options_.process_group()) return step_data_parallel();
  at::Tensor loss = model_.loss(step_, rng_);  // scalar
  MECHLAB_CHECK(loss.defined() && loss.numel() == 1, "training loop: the model's loss must be a scalar, got ",
                loss.defined() ? loss.sizes() : at::IntArrayRef{});
  const double value = loss.item<double>();
  // Stop before the update: the parameters and moments stay those of the
  // last finite step (and a checkpoint already on disk stays as it is).
  MECHLAB_CHECK(std::isfinite(value), "loss became ", non_finite_name(value), " at step ", step_ + 1,
                " of ", options_.steps(), " (learning rate too high?); ", kept_note());
  loss.backward();
  const double norm = clip_grad_norm(params_, options_.grad_clip());
  if (!std::isfinite(norm)) {
    optimizer_->zero_grad();
    throw Error(str_cat("gradient norm became ", non_finite_name(norm), " at step ", step_ + 1,
                        " of ", options_.steps(), " (learning rate too high?); ", kept_note()));
  }
  last_grad_norm_ = norm;
  optimizer_->step(schedule_.at(step_));
  optimizer_->zero_grad();
  ++step_;
  loss_sum_ += value;
  ++loss_count_;
  return value;
}

double TrainLoop::step_data_parallel() {
  dist::ProcessGroup& group = *options_.process_group();
  try {
    at::Tensor loss = model_.loss(step_, rng_);  // scalar: the mean over this rank's rows
    MECHLAB_CHECK(loss.defined() && loss.numel() == 1, "training loop: the model's loss must be a scalar, got ",
                  loss.defined() ? loss.sizes() : at::IntArrayRef{});
    // A non-finite loss is checked after the all-reduce, on the global mean,
    // so that every rank stops at the same step.
    loss.backward();
    // One buffer, one all-reduce (sum): [every gradient flattened, the loss,
    // one "defined here" flag per parameter, "interrupt requested"].
    const size_t n = params_.size();
    const at::TensorOptions opts = params_.front().options().requires_grad(false);
    std::vector<at::Tensor> parts;
    parts.reserve(n + 1);
    at::Tensor tail = at::zeros({static_cast<int64_t>(n) + 2}, opts.dtype(at::kDouble));  // [n + 2]
    {
      at::NoGradGuard no_grad;
      for (size_t i = 0; i < n; ++i) {
        const at::Tensor& g = params_[i].grad();
        parts.push_back(g.defined() ? g.detach().reshape({-1}) : at::zeros({params_[i].numel()}, opts));
        if (g.defined()) tail[static_cast<int64_t>(i) + 1] = 1.0;
      }
      tail[0] = loss.detach().to(at::kDouble);
      tail[static_cast<int64_t>(n) + 1] = interrupt_requested() ? 1.0 : 0.0;
      parts.push_back(tail.to(opts.dtype()));
    }
    at::Tensor buf = at::cat(parts);  // [total + n + 2]
    group.allreduce_sum(buf);
    optimizer_->zero_grad();
    const int64_t total = buf.numel() - static_cast<int64_t>(n) - 2;
    const at::Tensor flags = buf.slice(0, total).to(at::kDouble);  // [n + 2] summed over ranks
    const auto w = static_cast<double>(world_size());
    buf.slice(0, 0, total).div_(w);
    stop_requested_ = flags[static_cast<int64_t>(n) + 1].item<double>() > 0;
    const double value = flags[0].item<double>() / w;  // the global batch's mean loss
    int64_t offset = 0;
    for (size_t i = 0; i < n; ++i) {
      const int64_t numel = params_[i].numel();
      // A gradient no rank produced stays undefined (the optimiser skips it,
      // as in one process).
      if (flags[static_cast<int64_t>(i) + 1].item<double>() > 0) {
        params_[i].mutable_grad() = buf.slice(0, offset, offset + numel).view(params_[i].sizes());
      }
      offset += numel;
    }
    if (!std::isfinite(value)) {
      optimizer_->zero_grad();
      throw Error(str_cat("loss became ", non_finite_name(value), " at step ", step_ + 1, " of ", options_.steps(),
                          " (learning rate too high?); ", kept_note()));
    }
    const double norm = clip_grad_norm(params_, options_.grad_clip());
    if (!std::isfinite(norm)) {
      optimizer_->zero_grad();
      throw Error(str_cat("gradient norm became ", non_finite_name(norm), " at step ", step_ + 1, " of ",
                          options_.steps(), " (learning rate too high?); ", kept_note()));
    }
    last_grad_norm_ = norm;
    optimizer_->step(schedule_.at(step_));
    optimizer_->zero_grad();
    ++step_;
    loss_sum_ += value;
    ++loss_count_;
    return value;
  } catch (const dist::CommError& e) {
    optimizer_->zero_grad();
    // What is on disk, read back: rank 0 may have died while writing.
    std::string kept = "no checkpoint was written";
    try {
      if (!checkpoint_path().empty() && std::filesystem::exists(checkpoint_path())) {
        const H5File f = H5File::open_read(checkpoint_path());
        kept = str_cat("the checkpoint of step ", f.read_attr_int(kTrainGroup, "step"), " ('", checkpoint_path(),
                       "') is kept");
      }
    } catch (const std::exception&) {
      kept = kept_note();
    }
    throw Error(str_cat("data-parallel training: rank ", rank(), " of ", world_size(),
                        " lost contact with the others during step ", step_ + 1, " (", e.reason(), "); ", kept,
                        ": restart every rank with `resume`"));
  }
}

void TrainLoop::evaluate_and_log() {
  const Evaluation e = model_.evaluate();
  last_eval_ = e;
  eval_step_ = step_;
  LogRow row;
  row.step = step_;
  row.lr = schedule_.at(std::max<int64_t>(0, step_ - 1));
  row.train_loss = loss_count_ > 0 ? loss_sum_ / loss_count_ : e.train.loss;
  row.grad_norm = last_grad_norm_;
  row.train_accuracy = e.train.accuracy;
  row.test_loss = e.test.loss;
  row.test_accuracy = e.test.accuracy;
  row.seconds = seconds_before_ + (now_seconds() - session_start_);
  log_.add(row);
  loss_sum_ = 0;
  loss_count_ = 0;
  if (rank() == 0) {
    const LogLabels& l = options_.log_labels();
    log::info(str_cat("step ", step_, ": ", l.train_loss_series, " ", row.train_loss, ", ", l.test_loss_series, " ",
                      e.test.loss, ", ", l.test_accuracy_series, " ", e.test.accuracy, ", ",
                      l.train_accuracy_series, " ", e.train.accuracy));
  }
  write_log();
}

void TrainLoop::write_log() const {
  if (!writes()) return;
  write_text_file(join_path(options_.out_dir(), "train_log.csv"), log_.csv(options_.log_labels()));
  write_text_file(join_path(options_.out_dir(), "train_log.svg"), log_.svg(options_.name(), options_.log_labels()));
}

LoopResult TrainLoop::run(int64_t max_steps) {
  LoopResult result;
  const int64_t start = step_;
  // A run is finished at `steps`, or when the evaluation of its last step
  // reached stop_at_accuracy (a resume must not train past that stop).
  const bool reached = options_.stop_at_accuracy() > 0 && last_eval_ && eval_step_ == step_ &&
                       last_eval_->test.accuracy >= options_.stop_at_accuracy();
  result.already_complete = step_ >= options_.steps() || reached;
  result.stopped_early = reached && step_ < options_.steps();
  std::optional<ProgressBar> bar;
  if (options_.progress() && !result.already_complete && rank() == 0) {
    bar.emplace("train " + options_.name(), options_.steps(), "steps", step_);
  }
  bool interrupted = false;
  while (!result.already_complete && step_ < options_.steps() &&
         (max_steps < 0 || step_ - start < max_steps)) {
    // Between steps the state is whole: the checkpoint below resumes to the
    // same result as an uninterrupted run (as a max_steps stop does).
    // Data parallel: the ranks agreed in the last step's all-reduce, so
    // they all stop after the same step.
    if (options_.process_group() ? stop_requested_ : interrupt_requested()) {
      interrupted = true;
      break;
    }
    step();
    if (bar) bar->advance(1);
    if (step_ % options_.eval_every() == 0 || step_ == options_.steps()) {
      evaluate_and_log();
      if (options_.stop_at_accuracy() > 0 && last_eval_->test.accuracy >= options_.stop_at_accuracy()) {
        result.stopped_early = step_ < options_.steps();
        break;
      }
    }
    if (!options_.out_dir().empty() && step_ % options_.checkpoint_every() == 0) {
      save_checkpoint(checkpoint_path());
    }
  }
  if (bar) bar->finish();
  if (interrupted) {
    std::string kept = "nothing was saved (no output folder)";
    if (!options_.out_dir().empty()) {
      save_checkpoint(checkpoint_path());
      write_log();
      kept = str_cat("the checkpoint of step ", step_, " ('", checkpoint_path(),
                     "') is saved and can be resumed");
    }
    throw Interrupted(str_cat("interrupted at step ", step_, " of ", options_.steps(), "; ", kept));
  }
  const bool finished = step_ >= options_.steps() || result.stopped_early;
  if (finished && (log_.empty() || log_.rows().back().step != step_)) {
    evaluate_and_log();
  } else if (!last_eval_ || eval_step_ != step_) {
    // A session cut short by max_steps evaluates for its report but adds no
    // log row (a row would restart the running loss mean, and the log would
    // differ from an uninterrupted run's). Also a finished run whose
    // checkpoint predates the stored evaluation: the same weights again.
    last_eval_ = model_.evaluate();
    eval_step_ = step_;
  }
  if (!options_.out_dir().empty()) {
    save_checkpoint(checkpoint_path());
    write_log();
  }
  result.steps = step_;
  result.steps_this_session = step_ - start;
  result.eval = *last_eval_;
  return result;
}

void TrainLoop::save_checkpoint(const std::string& path) const {
  if (rank() != 0) {  // rank 0 writes it; the others know it is there
    if (path == checkpoint_path()) saved_step_ = step_;
    return;
  }
  {
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < params_.size(); ++i) {
      MECHLAB_CHECK(at::isfinite(params_[i]).all().item<bool>(), "parameter '", names_[i],
                    "' became NaN or Inf by step ", step_, " of ", options_.steps(),
                    " (learning rate too high?); ", kept_note());
    }
  }
  model_.save_state(path, [&](H5File& f) {
    f.ensure_group(kTrainGroup);
    f.write_attr(kTrainGroup, "step", step_);
    f.write_attr(kTrainGroup, "config", model_.config().dump());
    f.write_attr(kTrainGroup, "loop", options_.hyperparameters().dump());
    f.write_attr(kTrainGroup, "loss_sum", loss_sum_);
    f.write_attr(kTrainGroup, "loss_count", loss_count_);
    f.write_attr(kTrainGroup, "grad_norm", last_grad_norm_);
    f.write_attr(kTrainGroup, "seconds", seconds_before_ + (now_seconds() - session_start_));
    if (last_eval_ && eval_step_ == step_) {
      f.write_attr(kTrainGroup, "eval_step", eval_step_);
      f.write_attr(kTrainGroup, "test_loss", last_eval_->test.loss);
      f.write_attr(kTrainGroup, "test_accuracy", last_eval_->test.accuracy);
      f.write_attr(kTrainGroup, "test_scored", last_eval_->test.scored);
      f.write_attr(kTrainGroup, "train_loss", last_eval_->train.loss);
      f.write_attr(kTrainGroup, "train_accuracy", last_eval_->train.accuracy);
      f.write_attr(kTrainGroup, "train_scored", last_eval_->train.scored);
    }
    const std::string g = kTrainGroup;
    for (size_t i = 0; i < names_.size(); ++i) {
      f.write_tensor(g + "/exp_avg/" + names_[i], optimizer_->exp_avg()[i]);
      f.write_tensor(g + "/exp_avg_sq/" + names_[i], optimizer_->exp_avg_sq()[i]);
    }
    f.write_tensor(g + "/rng", rng_.get_state());
    // Absent = 1, so one-process checkpoints keep their old layout.
    if (world_size() > 1) f.write_attr(kTrainGroup, "world_size", world_size());
    log_.save(f, kTrainGroup);
  });
  if (path == checkpoint_path()) saved_step_ = step_;
}

std::string TrainLoop::kept_note() const {
  if (saved_step_ < 0) return "no checkpoint was written";
  return str_cat("the checkpoint of step ", saved_step_, " ('", checkpoint_path(), "') is kept");
}

void TrainLoop::load_checkpoint(const std::string& path) {
  {
    H5File f = H5File::open_read(path);
    MECHLAB_CHECK(f.is_group(kTrainGroup), "'", path,
                  "' is a model checkpoint without training state (/train); it cannot be resumed");
    check_same(path, model_.config(), read_json_attr(f, path, "config"));
    // Each rank trained on its part of the batch with its own state (a
    // store's reader): another world size cannot continue the same run.
    const int64_t trained = f.has_attr(kTrainGroup, "world_size") ? f.read_attr_int(kTrainGroup, "world_size") : 1;
    MECHLAB_CHECK(trained == world_size(), "cannot resume '", path, "': it was trained by ", trained,
                  trained == 1 ? " process" : " processes", " (world size ", trained, "), this run has ", world_size(),
                  "; restart with ", trained, trained == 1 ? " process" : " processes", " (same global batch_size)");
    // Checkpoints written before the loop was generic lack "loop"; their
    // config then held the hyperparameters and was checked above.
    if (f.has_attr(kTrainGroup, "loop")) {
      check_same(path, options_.hyperparameters(), read_json_attr(f, path, "loop"));
    }
  }
  model_.load_state(path);
  H5File f = H5File::open_read(path);
  params_ = model_.parameters();
  names_ = model_.parameter_names();
  make_optimizer();
  std::vector<at::Tensor> m, v;
  const std::string g = kTrainGroup;
  for (const std::string& name : names_) {
    for (const char* kind : {"exp_avg", "exp_avg_sq"}) {
      const std::string ds = g + "/" + kind + "/" + name;
      MECHLAB_CHECK(f.exists(ds), "'", path, "': training state lacks /", ds,
                    " (the file is damaged; start again with `overwrite`)");
    }
    m.push_back(f.read_tensor(g + "/exp_avg/" + name));
    v.push_back(f.read_tensor(g + "/exp_avg_sq/" + name));
  }
  step_ = f.read_attr_int(kTrainGroup, "step");
  optimizer_->load_state(step_, m, v);
  if (f.exists(g + "/rng")) rng_.set_state(f.read_tensor(g + "/rng"));
  loss_sum_ = f.read_attr_double(kTrainGroup, "loss_sum");
  loss_count_ = f.read_attr_int(kTrainGroup, "loss_count");
  last_grad_norm_ = f.read_attr_double(kTrainGroup, "grad_norm");
  seconds_before_ = f.read_attr_double(kTrainGroup, "seconds");
  session_start_ = now_seconds();
  last_eval_.reset();
  eval_step_ = -1;
  if (f.has_attr(kTrainGroup, "eval_step") && f.read_attr_int(kTrainGroup, "eval_step") == step_) {
    Evaluation e;
    e.test = {f.read_attr_double(kTrainGroup, "test_loss"),
              f.read_attr_double(kTrainGroup, "test_accuracy"),
              f.read_attr_int(kTrainGroup, "test_scored")};
    e.train = {f.read_attr_double(kTrainGroup, "train_loss"),
               f.read_attr_double(kTrainGroup, "train_accuracy"),
               f.read_attr_int(kTrainGroup, "train_scored")};
    last_eval_ = e;
    eval_step_ = step_;
  }
  log_ = TrainingLog::load(f, kTrainGroup);
  log_.truncate_after(step_);
  if (path == checkpoint_path()) saved_step_ = step_;
  if (rank() == 0) log::info(str_cat("resumed '", path, "' at step ", step_, " of ", options_.steps()));
}

}  // namespace mechlab::core::train
