// TrainLoop: trains any Trainable (core/train/trainable.h) with AdamW,
// linear warmup + cosine learning rate, global-norm gradient clipping,
// evaluation every N steps into a TrainingLog (CSV + SVG), checkpoints every
// N steps, and exact resume.
//
// Checkpoint: the Trainable writes its state to out_dir/<checkpoint_file>
// and the loop adds the group /train to the same file, atomically:
//   attributes  step, config (the Trainable's JSON), loop (LoopOptions
//               hyperparameters as JSON), loss_sum, loss_count, grad_norm,
//               seconds, and the latest evaluation (eval_step, test_loss,
//               test_accuracy, test_scored, train_loss, train_accuracy,
//               train_scored)
//   exp_avg/<name>, exp_avg_sq/<name>   AdamW moments per parameter
//   rng         uint8, the state of the generator passed to loss()
//   log         the TrainingLog (training_log.h)
// Checkpoints written before the loop was generic lack `loop`, `rng` and
// the evaluation; they still resume (the transformer never drew from the
// generator, and the evaluation is recomputed).
//
// Exact resume: the loop stores everything a step reads (parameters through
// the Trainable, AdamW moments and step, generator state, the running loss
// mean), so a resumed run computes bit for bit what an uninterrupted run
// would have (same device, threads and LibTorch).
//
// Data parallel (LoopOptions::process_group, core/dist/process_group.h):
// every rank runs the same loop on its own part of the batch. After each
// backward pass the gradients, the loss and two flags (which gradients are
// defined, a pending interrupt) travel in one buffer through one all-reduce
// (sum) and are divided by the world size, so every rank applies the same
// update to the same parameters (rank 0's, broadcast at the start). Only
// rank 0 writes the checkpoint and the log; the checkpoint records the world
// size (/train attribute world_size, absent = 1) and a resume with another
// is refused. A peer that dies or stops answering within the group's
// timeout stops every rank with one error naming the kept checkpoint.
//
// Divergence: a non-finite loss or gradient norm stops the run with an error
// before the optimiser touches the parameters, and a checkpoint is never
// written from non-finite parameters, so the file on disk is the last finite
// state.
//
// Example:
//   MyProbe probe(...);                                   // a Trainable
//   TrainLoop loop(probe, LoopOptions().steps(2000).lr(1e-3).out_dir("runs/probe"));
//   LoopResult r = loop.run();                            // r.eval.test.accuracy
#pragma once

#include "core/dist/process_group.h"
#include "core/train/adamw.h"
#include "core/train/lr_schedule.h"
#include "core/train/trainable.h"
#include "core/train/training_log.h"
#include "core/util/options.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace mechlab::core::train {

struct LoopOptions {
  // The run's hyperparameters: a resume refuses different ones.
  MECHLAB_OPTION(LoopOptions, int64_t, steps, 1000)
  MECHLAB_OPTION(LoopOptions, double, lr, 1e-3)
  MECHLAB_OPTION(LoopOptions, double, min_lr, 0.0)
  MECHLAB_OPTION(LoopOptions, int64_t, warmup_steps, 0)
  MECHLAB_OPTION(LoopOptions, AdamWOptions, adamw, AdamWOptions())
  /// Max global gradient norm; 0 = no clipping.
  MECHLAB_OPTION(LoopOptions, double, grad_clip, 1.0)
  MECHLAB_OPTION(LoopOptions, int64_t, eval_every, 100)
  MECHLAB_OPTION(LoopOptions, int64_t, checkpoint_every, 500)
  /// Stop once the test accuracy reaches this; 0 = train all steps.
  MECHLAB_OPTION(LoopOptions, double, stop_at_accuracy, 0.0)
  /// Seeds the generator passed to Trainable::loss.
  MECHLAB_OPTION(LoopOptions, uint64_t, seed, 0)

  // Where and how; these may change between sessions of a run.
  /// Progress label and chart title.
  MECHLAB_OPTION(LoopOptions, std::string, name, "run")
  /// What train_log.{csv,svg} call the loss and accuracy columns.
  MECHLAB_OPTION(LoopOptions, LogLabels, log_labels, LogLabels())
  /// Where the checkpoint and train_log.{csv,svg} go; "" writes nothing.
  MECHLAB_OPTION(LoopOptions, std::string, out_dir, "")
  MECHLAB_OPTION(LoopOptions, std::string, checkpoint_file, "checkpoint.h5")
  /// Continue from the checkpoint in out_dir (same config and hyperparameters).
  MECHLAB_OPTION(LoopOptions, bool, resume, false)
  /// Replace a run already in out_dir instead of refusing.
  MECHLAB_OPTION(LoopOptions, bool, overwrite, false)
  /// Draw a progress bar on stderr.
  MECHLAB_OPTION(LoopOptions, bool, progress, true)
  /// Data-parallel training over this group (world size > 1); null = one
  /// process. The Trainable's loss must be its rank's part of the batch, a
  /// mean over rows of the same size on every rank.
  MECHLAB_OPTION(LoopOptions, std::shared_ptr<dist::ProcessGroup>, process_group, nullptr)

  /// The hyperparameters above (not the where-and-how ones).
  nlohmann::json hyperparameters() const;
};

struct LoopResult {
  int64_t steps = 0;  ///< steps taken in total (resumed ones included)
  int64_t steps_this_session = 0;
  bool stopped_early = false;    ///< reached stop_at_accuracy before `steps`
  /// Resumed a finished run (at `steps`, or stopped by stop_at_accuracy):
  /// no step taken, `eval` is the evaluation the checkpoint kept.
  bool already_complete = false;
  Evaluation eval;               ///< the evaluation at step `steps`
};

class TrainLoop {
 public:
  /// Checks the options and out_dir; with options.resume restores the
  /// Trainable and the loop's state from the checkpoint, refusing one made
  /// with another config or other hyperparameters. `model` must outlive the loop.
  TrainLoop(Trainable& model, LoopOptions options);

  /// Trains until `steps`, stop_at_accuracy, or `max_steps` more steps (-1 =
  /// no such limit), evaluating and checkpointing on schedule, then
  /// evaluates (unless it just did) and writes the checkpoint and log. A
  /// session cut short by max_steps evaluates for its result but adds no log
  /// row, so the log of an interrupted and resumed run equals the
  /// uninterrupted run's.
  /// Throws mechlab::Error when the loss or gradient norm stops being finite.
  LoopResult run(int64_t max_steps = -1);

  /// One optimisation step; returns its loss. Throws (leaving parameters and
  /// optimiser state untouched) when the loss or gradient norm is not finite.
  double step();

  /// Writes the Trainable's state and the loop's (atomically). Refuses
  /// non-finite parameters.
  void save_checkpoint(const std::string& path) const;
  /// Restores both; refuses another config, naming the first key that differs.
  void load_checkpoint(const std::string& path);

  int64_t steps_done() const { return step_; }
  const LoopOptions& options() const { return options_; }
  const TrainingLog& log() const { return log_; }
  const AdamW& optimizer() const { return *optimizer_; }
  /// The latest evaluation, if one was made (or restored) at this step.
  const std::optional<Evaluation>& last_evaluation() const { return last_eval_; }
  std::string checkpoint_path() const;
  /// This process's rank and the world size (0 and 1 without a group).
  int64_t rank() const { return options_.process_group() ? options_.process_group()->rank() : 0; }
  int64_t world_size() const { return options_.process_group() ? options_.process_group()->world_size() : 1; }

 private:
  double step_data_parallel();
  // Writes files (checkpoint, log): rank 0 only.
  bool writes() const { return !options_.out_dir().empty() && rank() == 0; }
  void make_optimizer();
  void evaluate_and_log();
  void write_log() const;
  std::string kept_note() const;  // what a stop on divergence leaves on disk

  Trainable& model_;
  LoopOptions options_;
  std::vector<std::string> names_;  // parameter names, fixed order
  std::vector<at::Tensor> params_;  // leaf tensors with requires_grad
  std::unique_ptr<AdamW> optimizer_;
  LrSchedule schedule_;
  TrainingLog log_;
  at::Generator rng_;

  int64_t step_ = 0;
  double loss_sum_ = 0;  // losses since the last log row
  int64_t loss_count_ = 0;
  double last_grad_norm_ = 0;
  std::optional<Evaluation> last_eval_;  // made at step eval_step_
  int64_t eval_step_ = -1;
  bool stop_requested_ = false;  // data parallel: some rank was interrupted during the last step
  mutable int64_t saved_step_ = -1;  // step of the checkpoint at checkpoint_path(), -1 = none
  double seconds_before_ = 0;  // wall time of earlier sessions of this run
  double session_start_ = 0;   // steady clock seconds at construction
};

}  // namespace mechlab::core::train
