// TrainConfig: everything that defines a training run, read from JSON (the
// `mechlab train CONFIG.json` file, also stored in every training checkpoint
// so that a run can be resumed and reproduced).
//
// {
//   "name": "induction",
//   "model": {"preset": "attn-only-2l", "n_ctx": 41},   preset + ModelConfig keys;
//                            d_vocab and n_ctx default to the data's; d_head
//                            defaults to d_model / n_heads (which must divide)
//   "data": {"task": "induction", "options": {"n": 20000, "half_len": 20}},
//                            or {"path": "dataset.h5"}
//   "train_fraction": 0.95,  first rows train, the rest is the test split
//   "objective": "next_token",   "next_token": every position predicts the next
//                            token; "answer": the answer_pos logits predict
//                            answer_tokens[:, 0]
//   "steps": 3000, "batch_size": 64 (0 = the whole train split),
//   "lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 100,
//   "weight_decay": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
//   "grad_clip": 1.0 (0 = off),
//   "eval_every": 100, "eval_examples": 0 (0 = the whole test split),
//   "checkpoint_every": 500, "stop_at_accuracy": 0 (stop once the test
//                            accuracy reaches it; 0 = never),
//   "init_std": 0.02,        weights ~ N(0, init_std) at the start (GPT-2's 0.02;
//                            TransformerLens's default is 0.8 / sqrt(d_model))
//   "seed": 0                model initialisation and batch order
// }
// Unknown keys, wrong types and out-of-range values are refused with a message
// naming the key.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

namespace mechlab::core::train {

enum class Objective { next_token, answer };

struct TrainConfig {
  std::string name = "run";
  nlohmann::json model = nlohmann::json::object();  ///< {"preset": ..., ModelConfig keys}
  nlohmann::json data = nlohmann::json::object();   ///< {"task", "options"} or {"path"}
  double train_fraction = 0.9;
  Objective objective = Objective::next_token;

  int64_t steps = 1000;
  int64_t batch_size = 64;  ///< 0 = full batch
  double lr = 1e-3;
  double min_lr = 0.0;
  int64_t warmup_steps = 0;
  double weight_decay = 0.01;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double grad_clip = 1.0;  ///< max global gradient norm; 0 = no clipping

  int64_t eval_every = 100;
  int64_t eval_examples = 0;  ///< 0 = whole test split
  int64_t checkpoint_every = 500;
  double stop_at_accuracy = 0.0;  ///< 0 = train all steps
  double init_std = 0.02;  ///< weights ~ N(0, init_std); biases 0, norm gains 1
  int64_t seed = 0;

  /// Parses and validates; throws mechlab::Error naming the key.
  static TrainConfig from_json(const nlohmann::json& j);
  /// Reads a JSON file (errors name the file).
  static TrainConfig load(const std::string& path);
  nlohmann::json to_json() const;
  /// Checks ranges (lr > 0, 0 < train_fraction < 1, ...).
  void validate() const;
};

const char* to_string(Objective o);

}  // namespace mechlab::core::train
