#include "probes/metrics.h"

#include "core/stats/roc.h"
#include "core/util/error.h"

#include <ATen/Parallel.h>

#include <cmath>
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

at::Tensor auroc_ovr(const at::Tensor& scores, const at::Tensor& labels) {
  MECHLAB_CHECK(scores.defined() && (scores.dim() == 2 || scores.dim() == 3),
                "auroc_ovr: the scores must be [rows, classes] or [probes, rows, classes]");
  MECHLAB_CHECK(at::isFloatingType(scores.scalar_type()), "auroc_ovr: the scores must be floating point (class "
                "probabilities or log-probabilities), got ", scores.scalar_type());
  const at::Tensor s3 = scores.dim() == 2 ? scores.unsqueeze(0) : scores;  // [P, N, K]
  const int64_t K = s3.size(2);
  MECHLAB_CHECK(K >= 2, "auroc_ovr: ", K, " score column; one-vs-rest needs one column per class (>= 2)");
  auto [s0, y] = batched(s3.select(2, 0), labels, "auroc_ovr");
  (void)s0;
  y = y.to(at::kLong);
  MECHLAB_CHECK(!at::isFloatingType(labels.scalar_type()) && y.ge(0).all().item<bool>() && y.lt(K).all().item<bool>(),
                "auroc_ovr: labels must be class indices in [0, ", K, ") for ", K, " score columns");
  const at::Tensor s = s3.to(at::kDouble).cpu().contiguous();
  const int64_t P = s.size(0), N = s.size(1);
  at::Tensor out = at::zeros({P}, at::kDouble);
  for (int64_t i = 0; i < P; ++i) {
    const at::Tensor yi = y[i];
    double sum = 0;
    for (int64_t k = 0; k < K; ++k) {
      const at::Tensor pos = yi.eq(k).to(at::kInt).contiguous();  // [N] one class against the rest
      const int64_t n_pos = pos.sum().item<int64_t>();
      MECHLAB_CHECK(n_pos > 0, "auroc_ovr: class ", k, " has no rows among the ", N,
                    " labels; one-vs-rest AUROC needs every class present (scikit-learn raises too)");
      const at::Tensor col = s[i].select(1, k).contiguous();  // [N]
      const double* cp = col.data_ptr<double>();
      const int* pp = pos.data_ptr<int>();
      sum += core::stats::roc_curve(std::vector<double>(cp, cp + N), std::vector<int>(pp, pp + N)).auc;
    }
    out[i] = sum / static_cast<double>(K);
  }
  return out;
}

at::Tensor auroc_scores(const at::Tensor& logits) {
  MECHLAB_CHECK(logits.defined() && logits.dim() == 3, "auroc_scores: the logits must be [probes, rows, outputs] "
                "(a probe's decision_function)");
  if (logits.size(2) == 1) return logits.squeeze(2);
  // Log-probabilities: the ranking of each class's probability without the
  // ties that float32 probabilities saturating at 0 or 1 would make.
  return at::log_softmax(logits.to(at::kDouble), 2);
}

at::Tensor probe_auroc(const LinearProbes& probes, const at::Tensor& x, const at::Tensor& labels) {
  MECHLAB_CHECK(probes.loss == ProbeLoss::logistic, "probe_auroc: regression probes have no AUROC; use r2");
  const at::Tensor s = auroc_scores(probes.decision_function(x));
  return s.dim() == 2 ? auroc(s, labels) : auroc_ovr(s, labels);
}

ResampledAuroc::ResampledAuroc(const at::Tensor& scores, const at::Tensor& labels) {
  MECHLAB_CHECK(scores.defined() && (scores.dim() == 2 || scores.dim() == 3),
                "ResampledAuroc: the scores must be [probes, rows] (binary) or [probes, rows, classes]");
  MECHLAB_CHECK(at::isFloatingType(scores.scalar_type()), "ResampledAuroc: the scores must be floating point, got ",
                scores.scalar_type());
  const at::Tensor s3 = (scores.dim() == 2 ? scores.unsqueeze(2) : scores).to(at::kDouble).cpu();  // [P, N, C]
  probes_ = s3.size(0);
  rows_ = s3.size(1);
  classes_ = s3.size(2);
  MECHLAB_CHECK(scores.dim() == 2 || classes_ >= 2, "ResampledAuroc: one-vs-rest needs >= 2 score columns");
  MECHLAB_CHECK(!at::isnan(s3).any().item<bool>(), "ResampledAuroc: the scores hold NaN; NaN scores cannot be ranked");
  auto [s0, y] = batched(s3.select(2, 0), labels, "ResampledAuroc");
  (void)s0;
  MECHLAB_CHECK(!at::isFloatingType(labels.scalar_type()), "ResampledAuroc: the labels must be integers");
  y = y.to(at::kLong);  // [P, N]
  const bool binary = scores.dim() == 2;
  const int64_t hi = binary ? 2 : classes_;
  MECHLAB_CHECK(y.ge(0).all().item<bool>() && y.lt(hi).all().item<bool>(), "ResampledAuroc: labels must be ",
                binary ? "0 or 1 for binary scores" : "class indices in [0, classes) for per-class scores");
  // One column per (probe, class): its scores and which rows are its class.
  const at::Tensor cols = s3.permute({0, 2, 1}).reshape({probes_ * classes_, rows_});  // [C, N]
  const at::Tensor cls = binary ? at::ones({1}, at::kLong) : at::arange(classes_, at::kLong);
  const at::Tensor pos = y.unsqueeze(1).eq(cls.view({1, -1, 1})).reshape({probes_ * classes_, rows_});  // [C, N]
  auto [sorted, order] = at::sort(cols, /*dim=*/1);  // ascending
  // Tie groups: a group ends where the sorted score changes next.
  const int64_t C = cols.size(0);
  const at::Tensor change = sorted.narrow(1, 1, rows_ - 1).ne(sorted.narrow(1, 0, rows_ - 1));  // [C, N - 1]
  const at::Tensor last = at::cat({change, at::ones({C, 1}, at::kBool)}, 1);                     // [C, N]
  // One int32 per sorted position: the row, whether it is of the column's
  // class and whether it ends its tie group; a resample streams 4 bytes per
  // position (three int64/float64 arrays were 24, and the pass was
  // memory-bound).
  MECHLAB_CHECK(rows_ <= kRowMask, "ResampledAuroc: ", rows_, " rows are more than 2^29 - 1; score fewer rows");
  sorted_ = (order.to(at::kInt) | pos.gather(1, order).to(at::kInt).mul(kPositiveBit) |
             last.to(at::kInt).mul(kLastBit))
                .contiguous();  // [C, N]
}

at::Tensor ResampledAuroc::operator()(const at::Tensor& rows) const {
  MECHLAB_CHECK(rows.defined() && rows.dim() == 1 && !at::isFloatingType(rows.scalar_type()),
                "ResampledAuroc: the rows must be indices [n]");
  const at::Tensor r = rows.cpu().to(at::kLong);
  MECHLAB_CHECK(r.numel() == 0 || (r.min().item<int64_t>() >= 0 && r.max().item<int64_t>() < rows_),
                "ResampledAuroc: row indices must be in [0, ", rows_, ")");
  const at::Tensor count = at::bincount(r, {}, rows_).to(at::kDouble).contiguous();  // [N] times each row is drawn
  const int64_t C = sorted_.size(0), N = rows_;
  at::Tensor u = at::empty({C}, at::kDouble), n_pos = at::empty({C}, at::kDouble), n_neg = at::empty({C}, at::kDouble);
  const double* cnt = count.data_ptr<double>();
  const int32_t* sorted = sorted_.data_ptr<int32_t>();
  double* up = u.data_ptr<double>();
  double* pp = n_pos.data_ptr<double>();
  double* np = n_neg.data_ptr<double>();
  // One pass per column in score order, a tie group at a time. A positive
  // beats every negative of a lower score and half of those it ties with
  // (the trapezoids of roc_curve; Mann-Whitney U / (n_pos n_neg)): a group
  // with pos positives and neg negatives drawn, below negatives drawn before
  // it, adds pos (below + neg / 2). The counts are integers, so every sum is
  // exact in float64 (below 2^53) whatever its order.
  at::parallel_for(0, C, 1, [&](int64_t begin, int64_t stop) {
    for (int64_t c = begin; c < stop; ++c) {
      const int32_t* col = sorted + c * N;
      double below = 0, twice_u = 0, pos_all = 0, pos = 0, neg = 0;
      for (int64_t j = 0; j < N; ++j) {
        const int32_t e = col[j];
        const double w = cnt[e & kRowMask];
        if (e & kPositiveBit) {
          pos += w;
        } else {
          neg += w;
        }
        if (e & kLastBit) {
          twice_u += pos * (2 * below + neg);
          below += neg;
          pos_all += pos;
          pos = neg = 0;
        }
      }
      up[c] = 0.5 * twice_u;
      pp[c] = pos_all;
      np[c] = below;
    }
  });
  const at::Tensor defined = n_pos.gt(0).logical_and(n_neg.gt(0));
  const at::Tensor auc = at::where(defined, u / (n_pos * n_neg), at::full_like(u, std::nan("")));
  return auc.view({probes_, classes_}).mean(1);  // a class absent from the rows: NaN
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
