#include "core/data/tasks/modular_addition.h"

#include "core/util/rng.h"
#include "core/data/tasks/task_options.h"
#include "core/data/tokenizer/word_tokenizer.h"

#include <string>

#include <numeric>
#include <vector>

namespace mechlab::core::tasks {

Dataset make_modular_addition(const ModularAdditionOptions& o) {
  const std::string task = "modular_addition";
  // 10000^2 rows of 3 int32 ids is 1.2 GB: the largest size worth holding in memory.
  require_option(o.p() >= 2 && o.p() <= 10000, task, "p", "must be in [2, 10000]");
  require_option(o.seed() >= 0, task, "seed", "must be >= 0");

  const int64_t p = o.p(), N = p * p;
  std::vector<int64_t> order(static_cast<size_t>(N));  // row -> a * p + b
  std::iota(order.begin(), order.end(), int64_t(0));
  Rng rng(static_cast<uint64_t>(o.seed()));
  rng.shuffle(order);

  std::vector<int32_t> tokens(static_cast<size_t>(N * 3));     // [N, 3]
  std::vector<int32_t> answer(N), wrong(N), answer_pos(N, 2);  // [N]
  std::vector<int64_t> labels(N);                              // [N]
  for (int64_t i = 0; i < N; ++i) {
    const int64_t a = order[i] / p, b = order[i] % p, sum = (a + b) % p;
    tokens[i * 3 + 0] = static_cast<int32_t>(a);
    tokens[i * 3 + 1] = static_cast<int32_t>(b);
    tokens[i * 3 + 2] = static_cast<int32_t>(p);
    labels[i] = sum;
    answer[i] = static_cast<int32_t>(sum);
    // Uniform over the p - 1 residues other than `sum`.
    wrong[i] = static_cast<int32_t>((sum + 1 + static_cast<int64_t>(rng.below(p - 1))) % p);
  }

  // The word vocabulary: each residue spelt as its number, and "=" (id p).
  std::vector<std::string> words;
  for (int64_t k = 0; k < p; ++k) words.push_back(std::to_string(k));
  words.push_back("=");
  Dataset ds = generated_dataset(task, o, p + 1, WordTokenizer(std::move(words)).to_json_string());
  ds.tokens = at::tensor(tokens).view({N, 3});
  ds.labels = at::tensor(labels);
  ds.answer_tokens = at::tensor(answer).view({N, 1});
  ds.wrong_tokens = at::tensor(wrong).view({N, 1});
  ds.answer_pos = at::tensor(answer_pos);
  return ds;
}

}  // namespace mechlab::core::tasks
