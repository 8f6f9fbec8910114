#include "core/data/tokenizer/word_tokenizer.h"

#include "core/util/error.h"

#include <cctype>
#include <sstream>

namespace mechlab::core {
namespace {

bool has_space(const std::string& w) {
  for (unsigned char c : w) {
    if (std::isspace(c)) return true;
  }
  return false;
}

}  // namespace

WordTokenizer::WordTokenizer(std::vector<std::string> vocab) : vocab_(std::move(vocab)) {
  index_.reserve(vocab_.size());
  for (size_t i = 0; i < vocab_.size(); ++i) {
    const std::string& w = vocab_[i];
    MECHLAB_CHECK(!w.empty(), "word tokenizer: word ", i, " of the vocabulary is empty");
    MECHLAB_CHECK(!has_space(w), "word tokenizer: word ", i, " \"", w,
                  "\" contains whitespace; text is split on whitespace, so it could never be "
                  "encoded");
    const auto [it, inserted] = index_.emplace(w, static_cast<int64_t>(i));
    MECHLAB_CHECK(inserted, "word tokenizer: \"", w, "\" appears twice in the vocabulary (ids ",
                  it->second, " and ", i, "); every word must have one id");
  }
}

std::vector<int64_t> WordTokenizer::encode(const std::string& text) const {
  std::istringstream in(text);
  std::vector<int64_t> ids;
  std::string word, unknown;
  while (in >> word) {
    const auto it = index_.find(word);
    if (it == index_.end()) {
      unknown += (unknown.empty() ? "\"" : ", \"") + word + "\"";
      continue;
    }
    ids.push_back(it->second);
  }
  MECHLAB_CHECK(unknown.empty(), "word tokenizer: unknown word(s) ", unknown, " in \"", text,
                "\"; the vocabulary has ", size(),
                " words and no unknown-word token: add them to the vocabulary");
  return ids;
}

const std::string& WordTokenizer::word(int64_t id) const {
  MECHLAB_CHECK(id >= 0 && id < size(), "word tokenizer: token id ", id,
                " is outside the vocabulary [0, ", size(), ")");
  return vocab_[static_cast<size_t>(id)];
}

std::vector<std::string> WordTokenizer::to_str_tokens(const std::vector<int64_t>& ids) const {
  std::vector<std::string> out;
  out.reserve(ids.size());
  for (int64_t id : ids) out.push_back(word(id));
  return out;
}

std::string WordTokenizer::decode(const std::vector<int64_t>& ids) const {
  std::string out;
  for (int64_t id : ids) {
    if (!out.empty()) out += ' ';
    out += word(id);
  }
  return out;
}

std::string WordTokenizer::decode(const at::Tensor& ids) const {
  MECHLAB_CHECK(ids.dim() == 1, "word tokenizer: decode takes a 1-D tensor of ids [pos], got ",
                ids.dim(), " dimensions");
  MECHLAB_CHECK(!at::isFloatingType(ids.scalar_type()) && !at::isComplexType(ids.scalar_type()),
                "word tokenizer: decode takes integer ids, got ", ids.scalar_type());
  at::Tensor c = ids.to(at::kCPU, at::kLong).contiguous();
  const int64_t* p = c.data_ptr<int64_t>();
  return decode(std::vector<int64_t>(p, p + c.numel()));
}

int64_t WordTokenizer::id(const std::string& w) const {
  const auto it = index_.find(w);
  MECHLAB_CHECK(it != index_.end(), "word tokenizer: unknown word \"", w, "\" (the vocabulary has ",
                size(), " words)");
  return it->second;
}

nlohmann::json WordTokenizer::to_json() const {
  return nlohmann::json{{"kind", kWordTokenizerKind}, {"vocab", vocab_}};
}

WordTokenizer WordTokenizer::from_json(const nlohmann::json& j) {
  MECHLAB_CHECK(j.is_object(),
                "word tokenizer: JSON must be an object {\"kind\": \"word\", "
                "\"vocab\": [...]}, got ",
                j.type_name());
  for (const auto& item : j.items()) {
    MECHLAB_CHECK(item.key() == "kind" || item.key() == "vocab", "word tokenizer: unknown key \"",
                  item.key(), "\"; expected only \"kind\" and \"vocab\"");
  }
  MECHLAB_CHECK(j.contains("kind") && j["kind"].is_string(),
                "word tokenizer: JSON needs \"kind\": \"word\"");
  const std::string kind = j["kind"].get<std::string>();
  MECHLAB_CHECK(kind == kWordTokenizerKind, "word tokenizer: JSON has kind \"", kind,
                "\"; only \"word\" tokenizers are read here");
  MECHLAB_CHECK(j.contains("vocab") && j["vocab"].is_array(),
                "word tokenizer: JSON needs \"vocab\": a list of words");
  std::vector<std::string> vocab;
  vocab.reserve(j["vocab"].size());
  for (size_t i = 0; i < j["vocab"].size(); ++i) {
    const auto& w = j["vocab"][i];
    MECHLAB_CHECK(w.is_string(), "word tokenizer: vocab entry ", i, " is ", w.dump(),
                  ", not a string");
    vocab.push_back(w.get<std::string>());
  }
  return WordTokenizer(std::move(vocab));
}

std::string WordTokenizer::to_json_string() const { return to_json().dump(); }

WordTokenizer WordTokenizer::from_json_string(const std::string& text) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    throw Error(str_cat("word tokenizer: not valid JSON: ", e.what()));
  }
  return from_json(j);
}

}  // namespace mechlab::core
