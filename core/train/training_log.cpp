#include "core/train/training_log.h"

#include "core/util/error.h"
#include "core/formats/hdf5_file.h"
#include "core/plot/line_chart.h"

#include <iomanip>
#include <sstream>

namespace mechlab::core::train {
namespace {

constexpr const char* kColumns =
    "step,lr,train_loss,grad_norm,train_accuracy,test_loss,test_accuracy,seconds";
constexpr int kNumColumns = 8;

}  // namespace

void TrainingLog::truncate_after(int64_t step) {
  while (!rows_.empty() && rows_.back().step > step) rows_.pop_back();
}

std::string TrainingLog::csv(const LogLabels& labels) const {
  std::ostringstream os;
  os << "step,lr," << labels.train_loss << ",grad_norm," << labels.train_accuracy << "," << labels.test_loss << ","
     << labels.test_accuracy << ",seconds\n"
     << std::setprecision(8);
  for (const LogRow& r : rows_) {
    os << r.step << "," << r.lr << "," << r.train_loss << "," << r.grad_norm << ","
       << r.train_accuracy << "," << r.test_loss << "," << r.test_accuracy << "," << std::fixed
       << std::setprecision(2) << r.seconds << std::defaultfloat << std::setprecision(8) << "\n";
  }
  return os.str();
}

std::string TrainingLog::svg(const std::string& title, const LogLabels& labels) const {
  plot::Series train_loss{labels.train_loss_series, {}, {}}, test_loss{labels.test_loss_series, {}, {}};
  plot::Series train_acc{labels.train_accuracy_series, {}, {}}, test_acc{labels.test_accuracy_series, {}, {}};
  for (const LogRow& r : rows_) {
    const double x = static_cast<double>(r.step);
    for (plot::Series* s : {&train_loss, &test_loss, &train_acc, &test_acc}) s->x.push_back(x);
    train_loss.y.push_back(r.train_loss);
    test_loss.y.push_back(r.test_loss);
    train_acc.y.push_back(r.train_accuracy);
    test_acc.y.push_back(r.test_accuracy);
  }
  plot::Panel acc{labels.accuracy_panel, false, {train_acc, test_acc}, std::make_pair(0.0, 1.0)};
  if (labels.split_losses) {
    plot::Panel train{labels.loss_panel, true, {train_loss}, std::nullopt};
    plot::Panel test{labels.test_loss_panel, true, {test_loss}, std::nullopt};
    return plot::line_chart_svg(title, "step", {train, test, acc});
  }
  plot::Panel loss{labels.loss_panel, true, {train_loss, test_loss}, std::nullopt};
  return plot::line_chart_svg(title, "step", {loss, acc});
}

void TrainingLog::save(H5File& file, const std::string& group) const {
  at::Tensor t = at::empty({static_cast<int64_t>(rows_.size()), kNumColumns}, at::kDouble);
  auto a = t.accessor<double, 2>();
  for (size_t i = 0; i < rows_.size(); ++i) {
    const LogRow& r = rows_[i];
    const double v[kNumColumns] = {static_cast<double>(r.step), r.lr, r.train_loss,
                                   r.grad_norm, r.train_accuracy, r.test_loss,
                                   r.test_accuracy, r.seconds};
    for (int c = 0; c < kNumColumns; ++c) a[i][c] = v[c];
  }
  const std::string path = group + "/log";
  file.write_tensor(path, t);
  file.write_attr(path, "columns", std::string(kColumns));
}

TrainingLog TrainingLog::load(const H5File& file, const std::string& group) {
  const std::string path = group + "/log";
  MECHLAB_CHECK(file.exists(path), "'", file.filename(), "' has no training log /", path);
  at::Tensor t = file.read_tensor(path);
  MECHLAB_CHECK(t.dim() == 2 && t.size(1) == kNumColumns && t.scalar_type() == at::kDouble, "'",
                file.filename(), "': /", path, " must be float64 [rows, ", kNumColumns,
                "], got ", t.sizes());
  TrainingLog log;
  auto a = t.accessor<double, 2>();
  for (int64_t i = 0; i < t.size(0); ++i) {
    log.add({static_cast<int64_t>(a[i][0]), a[i][1], a[i][2], a[i][3], a[i][4], a[i][5], a[i][6],
             a[i][7]});
  }
  return log;
}

}  // namespace mechlab::core::train
