// The record of a training run: one row per evaluation, kept in the training
// checkpoint (so a resumed run continues the same record) and written next to
// it as CSV and as an SVG chart of loss and accuracy.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

namespace mechlab::core {
class H5File;
}

namespace mechlab::core::train {

struct LogRow {
  int64_t step = 0;           ///< steps taken when the row was written
  double lr = 0;              ///< learning rate of the last step
  double train_loss = 0;      ///< mean loss over the steps since the previous row
  double grad_norm = 0;       ///< gradient norm (before clipping) of the last step
  double train_accuracy = 0;  ///< on up to eval_examples train rows
  double test_loss = 0;
  double test_accuracy = 0;
  double seconds = 0;         ///< wall time since the run (first) started
};

/// What the log's loss and accuracy columns measure, in the CSV header and
/// the chart. The defaults are a classifier's (a language model's top-1
/// accuracy); another Trainable (an SAE: explained variance, MMCS) names its own.
struct LogLabels {
  /// CSV column names.
  std::string train_loss = "train_loss", train_accuracy = "train_accuracy";
  std::string test_loss = "test_loss", test_accuracy = "test_accuracy";
  /// Chart series and panel titles.
  std::string train_loss_series = "train loss", test_loss_series = "test loss", loss_panel = "loss";
  std::string train_accuracy_series = "train accuracy", test_accuracy_series = "test accuracy";
  std::string accuracy_panel = "top-1 accuracy";
  /// Train and test loss on separate panels (test_loss_panel), for losses
  /// that measure different things (an SAE's training loss includes its
  /// sparsity penalty, its test loss is the reconstruction MSE alone).
  bool split_losses = false;
  std::string test_loss_panel = "test loss";
};

class TrainingLog {
 public:
  void add(const LogRow& row) { rows_.push_back(row); }
  const std::vector<LogRow>& rows() const { return rows_; }
  bool empty() const { return rows_.empty(); }
  /// Drops rows written after `step` (a resumed run repeats those steps).
  void truncate_after(int64_t step);

  std::string csv(const LogLabels& labels = {}) const;
  /// Loss (log scale) and accuracy panels against the step.
  std::string svg(const std::string& title, const LogLabels& labels = {}) const;

  /// Stored as `group/log`, float64 [rows, 8], columns named in an attribute.
  void save(H5File& file, const std::string& group) const;
  static TrainingLog load(const H5File& file, const std::string& group);

 private:
  std::vector<LogRow> rows_;
};

}  // namespace mechlab::core::train
