#include "core/data/tasks/induction.h"

#include "core/util/rng.h"
#include "core/data/tasks/task_options.h"
#include "core/data/tokenizer/word_tokenizer.h"

#include <string>

#include <vector>

namespace mechlab::core::tasks {

Dataset make_induction(const InductionOptions& o) {
  const std::string task = "induction";
  require_option(o.n() > 0, task, "n", "must be positive");
  require_option(o.half_len() > 0, task, "half_len", "must be positive");
  require_option(o.d_vocab() >= 2 && o.d_vocab() <= (int64_t(1) << 31), task, "d_vocab",
                 "must be in [2, 2^31] (id 0 is BOS, random ids are drawn from [1, d_vocab))");
  require_option(o.seed() >= 0, task, "seed", "must be >= 0");
  require_option(o.min_half_len() >= 0 && o.min_half_len() <= o.half_len(), task, "min_half_len",
                 "must be in [0, half_len] (0 = every sequence repeats half_len ids)");
  require_option(!o.random_start() || (o.min_half_len() > 0 && o.min_half_len() < o.half_len()), task,
                 "random_start", "needs 0 < min_half_len < half_len (room to move the copies)");

  const int64_t L = o.half_len(), T = 1 + 2 * L;
  Rng rng(static_cast<uint64_t>(o.seed()));
  std::vector<int32_t> tokens(static_cast<size_t>(o.n() * T));  // [N, T]
  std::vector<int64_t> labels(tokens.size(), 0);              // [N, T]
  for (int64_t i = 0; i < o.n(); ++i) {
    int32_t* row = tokens.data() + i * T;
    int64_t* lab = labels.data() + i * T;
    row[0] = 0;
    const int64_t len = o.min_half_len() > 0 ? rng.uniform_int(o.min_half_len(), L) : L;
    const int64_t start = o.random_start() ? 1 + rng.uniform_int(0, 2 * (L - len)) : 1;
    for (int64_t j = 1; j < T; ++j) {
      if (j >= start + len && j < start + 2 * len) {
        row[j] = row[j - len];
        lab[j] = 1;
      } else {
        row[j] = static_cast<int32_t>(rng.uniform_int(1, o.d_vocab() - 1));
      }
    }
  }

  // A word vocabulary that spells each id as its number ("<bos>" for 0), so
  // a model trained here reads and prints text ("<bos> 7 3 9 7 3"); left out
  // for vocabularies too large to list.
  std::string tokenizer;
  if (o.d_vocab() <= kInductionMaxWordVocab) {
    std::vector<std::string> words{"<bos>"};
    for (int64_t id = 1; id < o.d_vocab(); ++id) words.push_back(std::to_string(id));
    tokenizer = WordTokenizer(std::move(words)).to_json_string();
  }
  Dataset ds = generated_dataset(task, o, o.d_vocab(), std::move(tokenizer));
  ds.tokens = at::tensor(tokens).view({o.n(), T});
  ds.labels = at::tensor(labels).view({o.n(), T});
  return ds;
}

}  // namespace mechlab::core::tasks
