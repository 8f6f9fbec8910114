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

class TrainingLog {
 public:
  void add(const LogRow& row) { rows_.push_back(row); }
  const std::vector<LogRow>& rows() const { return rows_; }
  bool empty() const { return rows_.empty(); }
  /// Drops rows written after `step` (a resumed run repeats those steps).
  void truncate_after(int64_t step);

  std::string csv() const;
  /// Loss (log scale) and accuracy panels against the step.
  std::string svg(const std::string& title) const;

  /// Stored as `group/log`, float64 [rows, 8], columns named in an attribute.
  void save(H5File& file, const std::string& group) const;
  static TrainingLog load(const H5File& file, const std::string& group);

 private:
  std::vector<LogRow> rows_;
};

}  // namespace mechlab::core::train
