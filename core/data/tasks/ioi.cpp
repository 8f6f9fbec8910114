#include "core/data/tasks/ioi.h"

#include "core/util/error.h"
#include "core/util/rng.h"
#include "core/data/tasks/task_options.h"
#include "core/data/tokenizer/word_tokenizer.h"

#include <algorithm>
#include <set>
#include <sstream>

namespace mechlab::core::tasks {
namespace {

std::vector<std::string> split_words(const std::string& text) {
  std::istringstream in(text);
  std::vector<std::string> out;
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

bool is_placeholder(const std::string& w) { return w.size() > 2 && w.front() == '{'; }

// Every word a prompt can contain, "<pad>" first, in a fixed order.
std::vector<std::string> ioi_vocab() {
  std::vector<std::string> vocab{kIoiPad};
  std::set<std::string> seen(vocab.begin(), vocab.end());
  auto add = [&](const std::string& w) {
    if (seen.insert(w).second) vocab.push_back(w);
  };
  for (const auto& t : ioi_templates()) {
    for (const auto& w : split_words(t)) {
      if (!is_placeholder(w)) add(w);
    }
  }
  for (const auto* list : {&ioi_names(), &ioi_places(), &ioi_objects()}) {
    for (const auto& w : *list) add(w);
  }
  return vocab;
}

WordTokenizer given_or_built(const nlohmann::json& given) {
  if (given.is_null()) return WordTokenizer(ioi_vocab());
  WordTokenizer tok;
  try {
    tok = given.is_string() ? WordTokenizer::from_json_string(given.get<std::string>())
                            : WordTokenizer::from_json(given);
  } catch (const Error& e) {
    throw Error(str_cat("ioi: option \"tokenizer\" is not a usable word tokenizer: ", e.what()));
  }
  std::string missing;
  for (const auto& w : ioi_vocab()) {
    if (!tok.contains(w)) missing += (missing.empty() ? "\"" : ", \"") + w + "\"";
  }
  MECHLAB_CHECK(missing.empty(), "ioi: the tokenizer given as option \"tokenizer\" lacks ", missing,
                "; it must hold every word of the IOI templates, names, places and objects and "
                "the pad word \"",
                kIoiPad, "\"");
  return tok;
}

// Uniform in [0, n) minus the distinct values in `excluded` (each < n).
int64_t pick_excluding(Rng& rng, int64_t n, std::vector<int64_t> excluded) {
  std::sort(excluded.begin(), excluded.end());
  int64_t v = static_cast<int64_t>(rng.below(static_cast<uint64_t>(n - excluded.size())));
  for (int64_t e : excluded) v += (v >= e);
  return v;
}

}  // namespace

const std::vector<std::string>& ioi_templates() {
  // Wang et al. 2022's BABA templates, punctuation split off; {N1} {N2} are
  // filled in ABBA or BABA order.
  static const std::vector<std::string> templates{
      "Then , {N1} and {N2} went to the {PLACE} . {S} gave a {OBJECT} to",
      "Then , {N1} and {N2} had a lot of fun at the {PLACE} . {S} gave a {OBJECT} to",
      "Then , {N1} and {N2} were working at the {PLACE} . {S} decided to give a {OBJECT} to",
      "When {N1} and {N2} got a {OBJECT} at the {PLACE} , {S} decided to give it to",
      "When {N1} and {N2} went to the {PLACE} , {S} gave a {OBJECT} to",
      "After {N1} and {N2} went to the {PLACE} , {S} gave a {OBJECT} to",
      "While {N1} and {N2} were working at the {PLACE} , {S} gave a {OBJECT} to",
      "Friends {N1} and {N2} went to the {PLACE} . {S} gave a {OBJECT} to",
  };
  return templates;
}

const std::vector<std::string>& ioi_names() {
  static const std::vector<std::string> names{"Mary",  "John",  "Alice", "Bob",  "Tom",
                                              "James", "Dan",   "Sarah", "Emma", "Michael",
                                              "David", "Laura", "Kate",  "Paul", "Lisa"};
  return names;
}

const std::vector<std::string>& ioi_places() {
  static const std::vector<std::string> places{"store",  "garden",   "restaurant",
                                               "school", "hospital", "office"};
  return places;
}

const std::vector<std::string>& ioi_objects() {
  static const std::vector<std::string> objects{"drink",      "ring",     "bone",
                                                "basketball", "computer", "necklace"};
  return objects;
}

Dataset make_ioi(const IoiOptions& o) {
  const std::string task = "ioi";
  require_option(o.n() > 0, task, "n", "must be positive");
  require_option(o.order() == "ABBA" || o.order() == "BABA" || o.order() == "mixed", task, "order",
                 "is \"" + o.order() + "\"; use ABBA, BABA or mixed");
  require_option(o.tokenizer().is_null() || o.tokenizer().is_object() || o.tokenizer().is_string(), task,
                 "tokenizer", "must be a word tokenizer's JSON object or JSON text");
  require_option(o.seed() >= 0, task, "seed", "must be >= 0");
  const WordTokenizer tok = given_or_built(o.tokenizer());

  std::vector<std::vector<std::string>> templates;
  int64_t T = 0;
  for (const auto& t : ioi_templates()) {
    templates.push_back(split_words(t));
    T = std::max<int64_t>(T, static_cast<int64_t>(templates.back().size()));
  }
  const auto& names = ioi_names();
  const auto& places = ioi_places();
  const auto& objects = ioi_objects();
  const int32_t pad = static_cast<int32_t>(tok.id(kIoiPad));

  const int64_t N = o.n();
  std::vector<int32_t> clean(static_cast<size_t>(N * T), pad);  // [N, T]
  std::vector<int32_t> corrupted(clean.size(), pad);            // [N, T]
  std::vector<uint8_t> mask(clean.size(), 0);                   // [N, T]
  std::vector<int32_t> answer(N), wrong(N), answer_pos(N);      // [N]
  std::vector<int64_t> labels(N);                               // [N]

  Rng rng(static_cast<uint64_t>(o.seed()));
  const int64_t n_names = static_cast<int64_t>(names.size());
  for (int64_t i = 0; i < N; ++i) {
    const int64_t t = static_cast<int64_t>(rng.below(templates.size()));
    const bool abba = o.order() == "ABBA" || (o.order() == "mixed" && rng.below(2) == 0);
    const int64_t io = static_cast<int64_t>(rng.below(n_names));
    const int64_t s = pick_excluding(rng, n_names, {io});
    const int64_t c = pick_excluding(rng, n_names, {io, s});
    const std::string& place = places[rng.below(places.size())];
    const std::string& object = objects[rng.below(objects.size())];

    const auto& words = templates[static_cast<size_t>(t)];
    for (size_t j = 0; j < words.size(); ++j) {
      const std::string& w = words[j];
      std::string clean_word = w, corrupted_word = w;
      if (w == "{N1}") {
        clean_word = corrupted_word = names[abba ? io : s];
      } else if (w == "{N2}") {
        clean_word = corrupted_word = names[abba ? s : io];
      } else if (w == "{S}") {
        clean_word = names[s];
        corrupted_word = names[c];
      } else if (w == "{PLACE}") {
        clean_word = corrupted_word = place;
      } else if (w == "{OBJECT}") {
        clean_word = corrupted_word = object;
      }
      const size_t k = static_cast<size_t>(i * T) + j;
      clean[k] = static_cast<int32_t>(tok.id(clean_word));
      corrupted[k] = static_cast<int32_t>(tok.id(corrupted_word));
      mask[k] = 1;
    }
    answer[i] = static_cast<int32_t>(tok.id(names[io]));
    wrong[i] = static_cast<int32_t>(tok.id(names[s]));
    answer_pos[i] = static_cast<int32_t>(words.size()) - 1;
    labels[i] = t;
  }

  Dataset ds = generated_dataset(task, o, tok.size(), tok.to_json_string());
  ds.clean_tokens = at::tensor(clean).view({N, T});
  ds.corrupted_tokens = at::tensor(corrupted).view({N, T});
  ds.attention_mask = at::tensor(mask).view({N, T});
  ds.answer_tokens = at::tensor(answer).view({N, 1});
  ds.wrong_tokens = at::tensor(wrong).view({N, 1});
  ds.answer_pos = at::tensor(answer_pos);
  ds.labels = at::tensor(labels);
  return ds;
}

}  // namespace mechlab::core::tasks
