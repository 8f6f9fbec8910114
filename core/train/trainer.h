// Trainer: trains a Transformer on a task dataset as a TrainConfig says —
// AdamW, warmup + cosine learning rate, gradient clipping, evaluation every
// N steps, checkpoints every N steps with exact resume, a progress bar, and a
// loss/accuracy log (CSV + SVG chart) beside the checkpoint. The loop itself
// is TrainLoop (train_loop.h), which trains any Trainable; the model and
// its data are TransformerTrainable (transformer_trainable.h).
//
// Files in the output folder:
//   checkpoint.h5    a mechlab model checkpoint (loads anywhere a model does)
//                    plus the group /train: step, optimizer moments, the
//                    config, the latest evaluation and the log; written
//                    atomically every checkpoint_every steps and at the end
//   model.h5         the final model alone (small; what recipes ship)
//   train_log.csv, train_log.svg   one row per evaluation
//   config.json      the TrainConfig
//
// Exact resume: the batch of step s depends only on (seed, s), the optimizer
// state is stored in full, and the running loss mean is stored too, so a run
// resumed from a checkpoint computes bit for bit what an uninterrupted run
// would have (same device, thread count and LibTorch).
//
// Example:
//   auto cfg = TrainConfig::load("apps/models/induction.json");
//   Trainer trainer(cfg, TrainerOptions().out_dir("runs/induction"));
//   TrainResult r = trainer.run();          // r.test.accuracy
//   Transformer& model = trainer.model();
#pragma once

#include "core/util/options.h"
#include "core/train/train_config.h"
#include "core/train/train_data.h"
#include "core/train/train_loop.h"
#include "core/train/training_log.h"
#include "core/train/transformer_trainable.h"
#include "core/model/transformer.h"

#include <ATen/ATen.h>

#include <memory>
#include <string>

namespace mechlab::core::train {

struct TrainerOptions {
  /// Where checkpoint.h5, model.h5 and the log go; "" writes nothing.
  MECHLAB_OPTION(TrainerOptions, std::string, out_dir, "")
  MECHLAB_OPTION(TrainerOptions, at::Device, device, at::Device(at::kCPU))
  /// Continue from out_dir/checkpoint.h5 (its config must equal this one).
  MECHLAB_OPTION(TrainerOptions, bool, resume, false)
  /// Replace an existing run in out_dir instead of refusing.
  MECHLAB_OPTION(TrainerOptions, bool, overwrite, false)
  /// Draw a progress bar on stderr.
  MECHLAB_OPTION(TrainerOptions, bool, progress, true)
};

struct TrainResult {
  int64_t steps = 0;  ///< steps taken in total (resumed ones included)
  bool stopped_early = false;
  /// A resumed run that had already finished: no step was taken, and
  /// test/train are its last evaluation (stored in the checkpoint).
  bool already_complete = false;
  /// The final evaluation: up to eval_examples test rows, and as many train rows.
  EvalResult test, train;
};

/// The TrainLoop options a TrainConfig gives (hyperparameters, name, seed).
LoopOptions loop_options(const TrainConfig& config, const TrainerOptions& options);

class Trainer {
 public:
  /// Builds the data and a freshly initialised model (seeded), or, with
  /// options.resume, restores both from out_dir/checkpoint.h5.
  explicit Trainer(TrainConfig config, TrainerOptions options = {});

  /// Trains until config.steps, stop_at_accuracy, or `max_steps` more steps
  /// (-1 = no such limit), evaluating and checkpointing on schedule; writes
  /// the checkpoint, model.h5 and the log at the end. Throws mechlab::Error
  /// when the loss stops being finite (the last checkpoint stays on disk).
  TrainResult run(int64_t max_steps = -1);

  /// One optimisation step; returns its loss.
  double step() { return loop_->step(); }
  /// Loss and accuracy on the first `max_examples` rows (0 = all) of a split.
  EvalResult evaluate(const Split& split, int64_t max_examples = 0) const {
    return trainable_.evaluate(split, max_examples);
  }

  /// Writes the model and the training state (atomically).
  void save_checkpoint(const std::string& path) const { loop_->save_checkpoint(path); }
  /// Restores model and training state; refuses a checkpoint made from
  /// another config, naming the first key that differs.
  void load_checkpoint(const std::string& path) { loop_->load_checkpoint(path); }

  int64_t steps_done() const { return loop_->steps_done(); }
  const TrainConfig& config() const { return trainable_.train_config(); }
  const TrainData& data() const { return trainable_.data(); }
  Transformer& model() { return trainable_.model(); }
  const TrainingLog& log() const { return loop_->log(); }
  const TrainLoop& loop() const { return *loop_; }

 private:
  TrainerOptions options_;
  TransformerTrainable trainable_;
  std::unique_ptr<TrainLoop> loop_;
};

}  // namespace mechlab::core::train
