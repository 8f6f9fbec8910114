#include "core/data/tasks/seq_to_seq.h"

#include "core/util/error.h"
#include "core/util/rng.h"
#include "core/data/tasks/task_options.h"

namespace mechlab::core::tasks {

Dataset make_seq_to_seq(
    const std::string& task, const SeqToSeqOptions& o,
    const std::function<std::vector<int32_t>(std::vector<int32_t>)>& transform) {
  require_option(o.n() > 0, task, "n", "must be positive");
  require_option(o.len() > 0 && o.len() <= 100000, task, "len", "must be in [1, 100000]");
  require_option(o.V() >= 1 && o.V() <= 1000000, task, "V", "must be in [1, 1000000]");
  require_option(o.seed() >= 0, task, "seed", "must be >= 0");

  const int64_t N = o.n(), L = o.len(), T = 2 * L + 2;
  const int32_t bos = static_cast<int32_t>(o.V()), sep = static_cast<int32_t>(o.V() + 1);
  std::vector<int32_t> tokens(static_cast<size_t>(N * T));  // [N, T]
  std::vector<int64_t> labels(tokens.size(), -1);           // [N, T]
  Rng rng(static_cast<uint64_t>(o.seed()));
  std::vector<int32_t> x(static_cast<size_t>(L));
  for (int64_t i = 0; i < N; ++i) {
    for (auto& v : x) v = static_cast<int32_t>(rng.below(static_cast<uint64_t>(o.V())));
    const std::vector<int32_t> y = transform(x);
    MECHLAB_ASSERT(static_cast<int64_t>(y.size()) == L);
    int32_t* row = tokens.data() + i * T;
    int64_t* lab = labels.data() + i * T;
    row[0] = bos;
    for (int64_t j = 0; j < L; ++j) row[1 + j] = x[j];
    row[L + 1] = sep;
    for (int64_t j = 0; j < L; ++j) row[L + 2 + j] = y[j];
    for (int64_t t = L + 1; t <= 2 * L; ++t) lab[t] = row[t + 1];
  }

  Dataset ds = generated_dataset(task, o, o.V() + 2);
  ds.tokens = at::tensor(tokens).view({N, T});
  ds.labels = at::tensor(labels).view({N, T});
  return ds;
}

}  // namespace mechlab::core::tasks
