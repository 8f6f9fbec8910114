#include "core/data/tasks/greater_than.h"

#include "core/util/error.h"
#include "core/util/rng.h"
#include "core/data/tasks/task_options.h"
#include "core/data/tokenizer/word_tokenizer.h"

namespace mechlab::core::tasks {
namespace {

WordTokenizer greater_than_tokenizer() {
  std::vector<std::string> vocab{"The"};
  for (const auto& n : greater_than_nouns()) vocab.push_back(n);
  for (const char* w : {"lasted", "from", "the", "year", "to"}) vocab.emplace_back(w);
  for (int64_t yy = 0; yy < 100; ++yy) vocab.push_back(two_digit(yy));
  return WordTokenizer(std::move(vocab));
}

}  // namespace

const std::vector<std::string>& greater_than_nouns() {
  // From Hanna et al.'s list of event nouns.
  static const std::vector<std::string> nouns{"war",     "expedition", "project",    "voyage",
                                              "dynasty", "campaign",   "pilgrimage", "siege"};
  return nouns;
}

std::string two_digit(int64_t yy) {
  MECHLAB_ASSERT(yy >= 0 && yy < 100);
  return {static_cast<char>('0' + yy / 10), static_cast<char>('0' + yy % 10)};
}

Dataset make_greater_than(const GreaterThanOptions& o) {
  const std::string task = "greater_than";
  require_option(o.n() > 0, task, "n", "must be positive");
  require_option(o.century() >= 10 && o.century() <= 99, task, "century",
                 "must be a two-digit number 10..99");
  require_option(o.seed() >= 0, task, "seed", "must be >= 0");

  const WordTokenizer tok = greater_than_tokenizer();
  const auto& nouns = greater_than_nouns();
  const std::string century = two_digit(o.century());
  const int64_t N = o.n(), T = 12, kYearPos = 7;

  std::vector<int32_t> clean(static_cast<size_t>(N * T)), corrupted(clean.size());       // [N, T]
  std::vector<int32_t> answer(N), wrong(N), answer_pos(N, static_cast<int32_t>(T - 1));  // [N]
  std::vector<int64_t> labels(N);                                                        // [N]
  Rng rng(static_cast<uint64_t>(o.seed()));
  for (int64_t i = 0; i < N; ++i) {
    const std::string& noun = nouns[rng.below(nouns.size())];
    const int64_t yy = rng.uniform_int(2, 98);
    const std::vector<int64_t> ids = tok.encode("The " + noun + " lasted from the year " + century +
                                                " " + two_digit(yy) + " to the year " + century);
    MECHLAB_ASSERT(static_cast<int64_t>(ids.size()) == T);
    for (int64_t j = 0; j < T; ++j) {
      clean[i * T + j] = corrupted[i * T + j] = static_cast<int32_t>(ids[j]);
    }
    corrupted[i * T + kYearPos] = static_cast<int32_t>(tok.id("01"));
    answer[i] = static_cast<int32_t>(tok.id(two_digit(yy + 1)));
    wrong[i] = static_cast<int32_t>(tok.id(two_digit(yy - 1)));
    labels[i] = yy;
  }

  Dataset ds = generated_dataset(task, o, tok.size(), tok.to_json_string());
  ds.clean_tokens = at::tensor(clean).view({N, T});
  ds.corrupted_tokens = at::tensor(corrupted).view({N, T});
  ds.answer_tokens = at::tensor(answer).view({N, 1});
  ds.wrong_tokens = at::tensor(wrong).view({N, 1});
  ds.answer_pos = at::tensor(answer_pos);
  ds.labels = at::tensor(labels);
  return ds;
}

}  // namespace mechlab::core::tasks
