// The data a training run reads: the dataset named by a TrainConfig, split
// into train and test rows and turned into the tensors the objectives need,
// plus the model config resolved against it (d_vocab and n_ctx from the data).
#pragma once

#include "core/data/dataset.h"
#include "core/model/model_config.h"
#include "core/train/train_config.h"

#include <ATen/ATen.h>

namespace mechlab::core::train {

/// Rows of a dataset, ready for one objective. Every tensor has N rows.
struct Split {
  at::Tensor tokens;      ///< int64 [N, T] (the dataset's prompts)
  at::Tensor mask;        ///< uint8 [N, T], 1 = real token; undefined when unpadded
  at::Tensor answer;      ///< int64 [N]: answer objective, the token to predict
  at::Tensor answer_pos;  ///< int64 [N]: answer objective, the position that predicts it
  at::Tensor scored;      ///< bool [N, T - 1]: next_token objective, the predictions
                          ///< (position t -> token t + 1) that count for accuracy

  int64_t size() const { return tokens.defined() ? tokens.size(0) : 0; }
  /// The rows `index` (int64 [k]) of every tensor.
  Split rows(const at::Tensor& index) const;
  /// The first `n` rows.
  Split head(int64_t n) const;
  Split to(const at::Device& device) const;
};

struct TrainData {
  Dataset dataset;  ///< the whole dataset as generated or read
  Split train;      ///< rows [0, n_train)
  Split test;       ///< rows [n_train, N)
};

/// Generates (data.task) or reads (data.path) the dataset and splits it.
/// Refuses data the objective cannot use (no answer_tokens for "answer"),
/// and a split that leaves train or test empty.
TrainData load_train_data(const TrainConfig& config);

/// The model to train: config.model's "preset" (if any) overlaid with its
/// other keys; d_vocab and n_ctx default to the dataset's vocabulary and
/// sequence length; d_head defaults to d_model / n_heads, which must divide.
ModelConfig resolve_model_config(const TrainConfig& config, const Dataset& data);

}  // namespace mechlab::core::train
