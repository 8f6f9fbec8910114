// Trainer: trains a Transformer on a task dataset as a TrainConfig says —
// AdamW, warmup + cosine learning rate, gradient clipping, evaluation every
// N steps, checkpoints every N steps with exact resume, a progress bar, and a
// loss/accuracy log (CSV + SVG chart) beside the checkpoint.
//
// Files in the output folder:
//   checkpoint.h5    a mechlab model checkpoint (loads anywhere a model does)
//                    plus the group /train: step, optimizer moments, the
//                    config and the log; written atomically every
//                    checkpoint_every steps and at the end
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
//   TrainResult r = trainer.run();          // r.test_accuracy
//   Transformer& model = trainer.model();
#pragma once

#include "core/util/options.h"
#include "core/train/adamw.h"
#include "core/train/lr_schedule.h"
#include "core/train/train_config.h"
#include "core/train/train_data.h"
#include "core/train/training_log.h"
#include "core/model/transformer.h"

#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

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

struct EvalResult {
  double loss = 0;
  double accuracy = 0;
  int64_t scored = 0;  ///< predictions counted
};

struct TrainResult {
  int64_t steps = 0;  ///< steps taken in total (resumed ones included)
  bool stopped_early = false;
  /// The final evaluation: up to eval_examples test rows, and as many train rows.
  EvalResult test, train;
};

class Trainer {
 public:
  /// Builds the data and a freshly initialised model (seeded), or, with
  /// options.resume, restores both from out_dir/checkpoint.h5.
  explicit Trainer(TrainConfig config, TrainerOptions options = {});

  /// Trains until config.steps, stop_at_accuracy, or `max_steps` more steps
  /// (-1 = no such limit), evaluating and checkpointing on schedule; writes
  /// the checkpoint, model.h5 and the log at the end.
  TrainResult run(int64_t max_steps = -1);

  /// One optimisation step; returns its loss.
  double step();
  /// Loss and accuracy on the first `max_examples` rows (0 = all) of a split.
  EvalResult evaluate(const Split& split, int64_t max_examples = 0) const;

  /// Writes the model and the training state (atomically).
  void save_checkpoint(const std::string& path) const;
  /// Restores model and training state; refuses a checkpoint made from
  /// another config, naming the first key that differs.
  void load_checkpoint(const std::string& path);

  int64_t steps_done() const { return step_; }
  const TrainConfig& config() const { return config_; }
  const TrainData& data() const { return data_; }
  Transformer& model() { return *model_; }
  const TrainingLog& log() const { return log_; }

 private:
  at::Tensor batch_indices(int64_t step) const;  // int64 [batch] rows of the train split
  void evaluate_and_log();
  void write_outputs(bool final) const;

  TrainConfig config_;
  TrainerOptions options_;
  TrainData data_;   // on CPU
  Split train_dev_;  // the train split on the training device
  std::unique_ptr<Transformer> model_;
  std::vector<std::string> names_;    // parameter names, fixed order
  std::vector<at::Tensor> params_;    // leaf tensors with requires_grad
  std::unique_ptr<AdamW> optimizer_;
  LrSchedule schedule_;
  TrainingLog log_;

  int64_t step_ = 0;
  double loss_sum_ = 0;     // losses since the last log row
  int64_t loss_count_ = 0;
  double last_grad_norm_ = 0;
  EvalResult last_test_, last_train_;  // the latest evaluation (what run() reports)
  double seconds_before_ = 0;  // wall time of earlier sessions of this run
  double session_start_ = 0;   // steady clock seconds at construction
};

}  // namespace mechlab::core::train
