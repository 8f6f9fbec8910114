// TransformerTrainable: a Transformer on a task dataset as a TrainConfig
// says, seen through the Trainable interface (trainable.h) so that TrainLoop
// trains it. Its checkpoint is a normal model checkpoint
// (core/model/checkpoint.h) to which the loop adds /train.
//
// Batches are a function of (seed, step): epoch e visits the train rows in
// a permutation seeded by (seed, e), a batch at a time (the rows left over
// at an epoch's end are skipped); batch_size 0 is full-batch. It draws
// nothing from the loop's generator.
#pragma once

#include "core/model/transformer.h"
#include "core/train/train_config.h"
#include "core/train/train_data.h"
#include "core/train/trainable.h"

#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

namespace mechlab::core::train {

class TransformerTrainable : public Trainable {
 public:
  /// Builds the data and a freshly initialised model (seeded by config.seed).
  TransformerTrainable(TrainConfig config, at::Device device);

  std::vector<at::Tensor> parameters() override;
  std::vector<std::string> parameter_names() const override;
  at::Tensor loss(int64_t step, at::Generator& rng) override;
  /// Up to eval_examples test rows, and as many train rows.
  Evaluation evaluate() override;
  /// The TrainConfig as JSON.
  nlohmann::json config() const override;
  void save_state(const std::string& path,
                  const std::function<void(H5File&)>& write_loop_state) const override;
  /// Refuses a checkpoint whose model config differs from this one's.
  void load_state(const std::string& path) override;

  /// Loss and accuracy on the first `max_examples` rows (0 = all) of a split.
  EvalResult evaluate(const Split& split, int64_t max_examples = 0) const;
  /// int64 [batch]: the train rows of step `step`.
  at::Tensor batch_indices(int64_t step) const;

  const TrainConfig& train_config() const { return config_; }
  const TrainData& data() const { return data_; }
  Transformer& model() { return *model_; }
  const Transformer& model() const { return *model_; }

 private:
  TrainConfig config_;
  at::Device device_;
  TrainData data_;   // on CPU
  Split train_dev_;  // the train split on the training device
  std::unique_ptr<Transformer> model_;
};

}  // namespace mechlab::core::train
