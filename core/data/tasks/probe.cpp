#include "core/data/tasks/probe.h"

#include "core/util/rng.h"
#include "core/data/tasks/task_options.h"

#include <algorithm>

namespace mechlab::core::tasks {

const std::vector<std::string>& probe_label_kinds() {
  static const std::vector<std::string> kinds{"seen_before", "position_parity", "token_class"};
  return kinds;
}

Dataset make_probe(const ProbeOptions& o) {
  const std::string task = "probe";
  require_option(o.n() > 0, task, "n", "must be positive");
  require_option(o.seq_len() >= 2, task, "seq_len", "must be at least 2 (BOS and one token)");
  require_option(o.d_vocab() >= 2 && o.d_vocab() <= (int64_t(1) << 31), task, "d_vocab",
                 "must be in [2, 2^31]");
  require_option(o.pool() >= 1 && o.pool() < o.d_vocab(), task, "pool",
                 "must be in [1, d_vocab - 1] (it draws distinct ids from [1, d_vocab))");
  const auto& kinds = probe_label_kinds();
  require_option(std::find(kinds.begin(), kinds.end(), o.label()) != kinds.end(), task, "label",
                 "is \"" + o.label() + "\"; use seen_before, position_parity or token_class");
  require_option(o.n_classes() >= 2, task, "n_classes", "must be at least 2");
  require_option(o.seed() >= 0, task, "seed", "must be >= 0");

  const int64_t N = o.n(), T = o.seq_len();
  std::vector<int32_t> tokens(static_cast<size_t>(N * T));  // [N, T]
  std::vector<int64_t> labels(tokens.size(), -1);           // [N, T]
  Rng rng(static_cast<uint64_t>(o.seed()));
  std::vector<int64_t> pool;
  for (int64_t i = 0; i < N; ++i) {
    // Floyd's algorithm: `pool` distinct values of [1, d_vocab).
    pool.clear();
    const int64_t m = o.d_vocab() - 1;
    for (int64_t j = m - o.pool(); j < m; ++j) {
      const int64_t v = 1 + rng.uniform_int(0, j);
      pool.push_back(std::find(pool.begin(), pool.end(), v) == pool.end() ? v : 1 + j);
    }
    int32_t* row = tokens.data() + i * T;
    int64_t* lab = labels.data() + i * T;
    row[0] = 0;
    for (int64_t t = 1; t < T; ++t) row[t] = static_cast<int32_t>(pool[rng.below(pool.size())]);
    for (int64_t t = 1; t < T; ++t) {
      if (o.label() == "seen_before") {
        lab[t] = std::find(row + 1, row + t, row[t]) != row + t ? 1 : 0;
      } else if (o.label() == "position_parity") {
        lab[t] = t % 2;
      } else {
        lab[t] = row[t] % o.n_classes();
      }
    }
  }

  Dataset ds = generated_dataset(task, o, o.d_vocab());
  ds.tokens = at::tensor(tokens).view({N, T});
  ds.labels = at::tensor(labels).view({N, T});
  return ds;
}

}  // namespace mechlab::core::tasks
