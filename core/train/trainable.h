// Trainable: what the training loop (core/train/train_loop.h) needs from a
// model. The loop owns the optimiser, schedule, clipping, evaluation cadence,
// log, checkpoints and resume; a Trainable supplies parameters, a loss per
// step, an evaluation, its identity (config) and its own state on disk. It
// knows nothing of transformers or tokens: the transformer trainer
// (trainer.h) is one client, probes and sparse autoencoders are the next.
//
// Contract for exact resume: loss(step, rng) must depend only on the
// parameters, `step` and draws from `rng` (the loop's generator, whose state
// the checkpoint keeps), not on hidden state that save_state does not write.
//
// Example (a least-squares model; tests/core/train_loop_test.cpp has it whole):
//   class Linear : public Trainable {
//     std::vector<at::Tensor> parameters() override { return {w_}; }
//     std::vector<std::string> parameter_names() const override { return {"w"}; }
//     at::Tensor loss(int64_t, at::Generator&) override { return (x_.matmul(w_) - y_).pow(2).mean(); }
//     ...
//   };
#pragma once

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace mechlab::core {
class H5File;
}

namespace mechlab::core::train {

struct EvalResult {
  double loss = 0;
  double accuracy = 0;
  int64_t scored = 0;  ///< predictions counted (0: the model has no accuracy)
};

/// One evaluation: held-out (test) and training data. The log keeps test
/// loss, test accuracy and train accuracy per row.
struct Evaluation {
  EvalResult test, train;
};

class Trainable {
 public:
  virtual ~Trainable() = default;

  /// Leaf tensors with requires_grad, in a fixed order; all on one device and
  /// of one dtype (ATen's fused AdamW wants that). Called again after
  /// load_state, which may replace them.
  virtual std::vector<at::Tensor> parameters() = 0;
  /// One name per parameter, same order: the checkpoint stores the optimiser
  /// moments under them. No '/' in a name.
  virtual std::vector<std::string> parameter_names() const = 0;
  /// Scalar loss of the batch of step `step` (0-based), with autograd. Any
  /// randomness must come from `rng` (a CPU generator the loop seeds and
  /// checkpoints).
  virtual at::Tensor loss(int64_t step, at::Generator& rng) = 0;
  /// Loss and accuracy on held-out and training data, without gradients.
  virtual Evaluation evaluate() = 0;
  /// What defines the run; a resume refuses a checkpoint whose config
  /// differs, naming the first key that does.
  virtual nlohmann::json config() const = 0;
  /// Writes the model's state to `path` through a temporary file renamed into
  /// place only when complete (H5File::write_atomically), calling
  /// `write_loop_state` on the open file before the rename so that model and
  /// training state land in one file together.
  virtual void save_state(const std::string& path,
                          const std::function<void(H5File&)>& write_loop_state) const = 0;
  /// Restores what save_state wrote (the loop reads its own state itself).
  virtual void load_state(const std::string& path) = 0;
};

}  // namespace mechlab::core::train
