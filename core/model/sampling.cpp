#include "core/model/sampling.h"

#include "core/util/error.h"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>

namespace mechlab::core {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

void check_logits(const at::Tensor& logits) {
  MECHLAB_CHECK(logits.defined() && logits.dim() == 2 && at::isFloatingType(logits.scalar_type()),
                "logits must be a floating tensor [batch, d_vocab], got ",
                logits.defined() ? c10::str(logits.sizes()) : std::string("an undefined tensor"));
}

}  // namespace

at::Tensor apply_temperature(const at::Tensor& logits, double temperature) {
  check_logits(logits);
  MECHLAB_CHECK(std::isfinite(temperature) && temperature > 0, "temperature must be positive, got ",
                temperature, " (temperature 0 means greedy decoding)");
  return logits / temperature;
}

at::Tensor top_k_filter(const at::Tensor& logits, int64_t k) {
  check_logits(logits);
  MECHLAB_CHECK(k >= 1, "top_k must be at least 1, got ", k, " (0 turns top-k filtering off)");
  if (k >= logits.size(1)) return logits;
  at::Tensor kth = std::get<0>(logits.topk(k, -1)).narrow(-1, k - 1, 1);  // [batch, 1]
  return logits.masked_fill(logits < kth, kNegInf);
}

at::Tensor top_p_filter(const at::Tensor& logits, double p) {
  check_logits(logits);
  MECHLAB_CHECK(p > 0 && p <= 1, "top_p must be in (0, 1], got ", p);
  if (p == 1) return logits;
  // transformers' TopPLogitsWarper: sort ascending, remove the tokens whose
  // cumulative probability stays within 1 - p, but never the last (largest).
  auto [sorted, order] = logits.sort(/*dim=*/-1, /*descending=*/false);  // [batch, d_vocab]
  at::Tensor cumulative = at::softmax(sorted, -1).cumsum(-1);
  at::Tensor remove = cumulative <= (1 - p);
  remove.narrow(-1, remove.size(-1) - 1, 1).fill_(false);
  at::Tensor remove_by_id = remove.scatter(-1, order, remove);
  return logits.masked_fill(remove_by_id, kNegInf);
}

at::Tensor sample_from_logits(const at::Tensor& logits, Rng& rng) {
  check_logits(logits);
  at::Tensor probs = at::softmax(logits.to(at::kFloat), -1).to(at::kCPU, at::kDouble).contiguous();
  const int64_t batch = probs.size(0), vocab = probs.size(1);
  at::Tensor out = at::empty({batch}, at::kLong);
  auto chosen_ids = out.accessor<int64_t, 1>();
  const double* p = probs.data_ptr<double>();
  for (int64_t b = 0; b < batch; ++b) {
    const double* row = p + b * vocab;
    double total = 0;
    for (int64_t i = 0; i < vocab; ++i) total += row[i];
    MECHLAB_CHECK(std::isfinite(total) && total > 0, "row ", b,
                  " of the logits has no finite value to sample from (all -inf or NaN)");
    const double target = rng.uniform() * total;
    // The first token whose cumulative mass passes the target; a token of
    // probability 0 can never be it. Rounding can leave target just above the
    // final sum: then the last token with mass is taken.
    int64_t chosen = -1;
    double cumulative = 0;
    for (int64_t i = 0; i < vocab; ++i) {
      if (row[i] <= 0) continue;
      chosen = i;
      cumulative += row[i];
      if (cumulative > target) break;
    }
    chosen_ids[b] = chosen;
  }
  return out;
}

}  // namespace mechlab::core
