#include "probes/metrics.h"

#include "core/stats/roc.h"
#include "core/util/error.h"

#include <vector>

namespace mechlab::probes {
namespace {

// [P, N] predictions and labels expanded to match, on the CPU.
std::pair<at::Tensor, at::Tensor> batched(const at::Tensor& pred, const at::Tensor& labels, const char* who) {
  MECHLAB_CHECK(pred.defined() && labels.defined() && (pred.dim() == 1 || pred.dim() == 2) &&
                    (labels.dim() == 1 || labels.dim() == 2),
                who, ": predictions and labels must be [rows] or [probes, rows]");
  at::Tensor p = pred.dim() == 1 ? pred.unsqueeze(0) : pred;
  at::Tensor y = labels.dim() == 1 ? labels.unsqueeze(0).expand({p.size(0), labels.size(0)}) : labels;
  MECHLAB_CHECK(y.size(0) == p.size(0) && y.size(1) == p.size(1), who, ": ", pred.sizes(), " predictions for ",
                labels.sizes(), " labels; give one label per row");
  MECHLAB_CHECK(p.size(1) >= 1, who, ": no rows");
  return {p.cpu(), y.cpu()};
}

}  // namespace

at::Tensor accuracy(const at::Tensor& predictions, const at::Tensor& labels) {
  auto [p, y] = batched(predictions, labels, "accuracy");
  return (p.to(at::kLong) == y.to(at::kLong)).to(at::kDouble).mean(1);
}

at::Tensor f1(const at::Tensor& predictions, const at::Tensor& labels, F1Average average) {
  auto [p, y] = batched(predictions, labels, "f1");
  p = p.to(at::kLong);
  y = y.to(at::kLong);
  const int64_t P = p.size(0);
  at::Tensor out = at::zeros({P}, at::kDouble);
  for (int64_t i = 0; i < P; ++i) {
    at::Tensor pi = p[i], yi = y[i];
    auto f1_of = [&](int64_t c) {
      const double tp = ((pi == c) & (yi == c)).sum().item<double>();
      const double fp = ((pi == c) & (yi != c)).sum().item<double>();
      const double fn = ((pi != c) & (yi == c)).sum().item<double>();
      return 2 * tp + fp + fn > 0 ? 2 * tp / (2 * tp + fp + fn) : 0.0;  // zero_division = 0
    };
    if (average == F1Average::binary) {
      MECHLAB_CHECK(((yi == 0) | (yi == 1)).all().item<bool>() && ((pi == 0) | (pi == 1)).all().item<bool>(),
                    "f1: binary F1 needs labels and predictions in {0, 1}; use F1Average::macro for more classes");
      out[i] = f1_of(1);
    } else {
      at::Tensor classes = std::get<0>(at::_unique(at::cat({pi, yi}), /*sorted=*/true));
      double sum = 0;
      for (int64_t k = 0; k < classes.size(0); ++k) sum += f1_of(classes[k].item<int64_t>());
      out[i] = sum / static_cast<double>(classes.size(0));
    }
  }
  return out;
}

at::Tensor auroc(const at::Tensor& scores, const at::Tensor& labels) {
  auto [s, y] = batched(scores, labels, "auroc");
  MECHLAB_CHECK(at::isFloatingType(s.scalar_type()), "auroc: the scores must be floating point (a binary probe's "
                "decision_function or score), got ", s.scalar_type());
  s = s.to(at::kDouble).contiguous();
  y = y.to(at::kInt).contiguous();
  const int64_t P = s.size(0), N = s.size(1);
  at::Tensor out = at::zeros({P}, at::kDouble);
  for (int64_t i = 0; i < P; ++i) {
    const double* sp = s[i].data_ptr<double>();
    const int* yp = y[i].data_ptr<int>();
    out[i] = core::stats::roc_curve(std::vector<double>(sp, sp + N), std::vector<int>(yp, yp + N)).auc;
  }
  return out;
}

at::Tensor r2(const at::Tensor& predictions, const at::Tensor& targets) {
  auto [p, y] = batched(predictions, targets, "r2");
  p = p.to(at::kDouble);
  y = y.to(at::kDouble);
  at::Tensor ss_res = (y - p).pow(2).sum(1);
  at::Tensor ss_tot = (y - y.mean(1, true)).pow(2).sum(1);
  at::Tensor r = 1 - ss_res / ss_tot;
  // A constant target: 1 for an exact prediction, 0 otherwise (force_finite).
  r = at::where(ss_tot == 0, at::where(ss_res == 0, at::ones_like(r), at::zeros_like(r)), r);
  return r;
}

}  // namespace mechlab::probes
