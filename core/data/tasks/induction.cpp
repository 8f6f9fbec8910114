#include "core/data/tasks/induction.h"

#include "core/util/rng.h"
#include "core/data/tasks/task_options.h"
#include "core/data/tokenizer/word_tokenizer.h"

#include <algorithm>
#include <string>
#include <vector>

namespace mechlab::core::tasks {

namespace {

// A word vocabulary that spells each id as its number ("<bos>" for 0), so
// a model trained here reads and prints text ("<bos> 7 3 9 7 3"); left out
// for vocabularies too large to list.
std::string word_vocabulary(int64_t d_vocab) {
  if (d_vocab > kInductionMaxWordVocab) return "";
  std::vector<std::string> words{"<bos>"};
  for (int64_t id = 1; id < d_vocab; ++id) words.push_back(std::to_string(id));
  return WordTokenizer(std::move(words)).to_json_string();
}

}  // namespace

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

  require_option(!o.pairs() || (o.min_half_len() == 0 && !o.random_start()), task, "pairs",
                 "needs min_half_len = 0 and random_start off (every pair repeats half_len ids)");
  require_option(o.query_len() >= 0, task, "query_len", "must be >= 0 (0 = half_len / 2)");
  require_option(o.query_len() == 0 || o.pairs(), task, "query_len", "is an option of pairs; set pairs=true");
  if (o.pairs()) {
    require_option(o.half_len() >= 2, task, "half_len", "must be >= 2 with pairs (the answer follows a_j, j < L)");
    require_option(o.query_len() < o.half_len(), task, "query_len",
                   "must be < half_len (the answer a_(j+1) is in the first copy)");
    require_option(o.d_vocab() >= 3, task, "d_vocab", "must be >= 3 with pairs (the wrong answer differs)");
  }

  const int64_t L = o.half_len(), T = 1 + 2 * L;
  Rng rng(static_cast<uint64_t>(o.seed()));
  if (o.pairs()) {
    const int64_t j = o.query_len() > 0 ? o.query_len() : std::max<int64_t>(1, L / 2);
    const int64_t P = 1 + L + j;
    std::vector<int32_t> clean(static_cast<size_t>(o.n() * P)), corrupted(clean.size());  // [N, P]
    std::vector<int32_t> answer(static_cast<size_t>(o.n())), wrong(answer.size()), answer_pos(answer.size());  // [N]
    for (int64_t i = 0; i < o.n(); ++i) {
      int32_t* c = clean.data() + i * P;
      int32_t* x = corrupted.data() + i * P;
      c[0] = x[0] = 0;
      for (int64_t t = 1; t <= L; ++t) c[t] = static_cast<int32_t>(rng.uniform_int(1, o.d_vocab() - 1));
      for (int64_t t = 1; t <= L; ++t) {
        do {
          x[t] = static_cast<int32_t>(rng.uniform_int(1, o.d_vocab() - 1));
        } while (t == j + 1 && x[t] == c[t]);  // the wrong answer must differ from the right one
      }
      for (int64_t t = 0; t < j; ++t) c[1 + L + t] = x[1 + L + t] = c[1 + t];
      answer[i] = c[1 + j];
      wrong[i] = x[1 + j];
      answer_pos[i] = static_cast<int32_t>(L + j);
    }
    Dataset ds = generated_dataset(task, o, o.d_vocab(), word_vocabulary(o.d_vocab()));
    ds.clean_tokens = at::tensor(clean).view({o.n(), P});
    ds.corrupted_tokens = at::tensor(corrupted).view({o.n(), P});
    ds.answer_tokens = at::tensor(answer).view({o.n(), 1});
    ds.wrong_tokens = at::tensor(wrong).view({o.n(), 1});
    ds.answer_pos = at::tensor(answer_pos);
    return ds;
  }
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

  Dataset ds = generated_dataset(task, o, o.d_vocab(), word_vocabulary(o.d_vocab()));
  ds.tokens = at::tensor(tokens).view({o.n(), T});
  ds.labels = at::tensor(labels).view({o.n(), T});
  return ds;
}

}  // namespace mechlab::core::tasks
