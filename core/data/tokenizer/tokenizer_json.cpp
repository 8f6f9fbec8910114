#include "core/data/tokenizer/tokenizer_json.h"

#include "core/data/tokenizer/word_tokenizer.h"
#include "core/data/tokenizer/word_tokenizer_adapter.h"
#include "core/formats/hdf5_file.h"
#include "core/util/error.h"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace mechlab::core::tokenizer {
namespace {

using nlohmann::json;

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  MECHLAB_CHECK(in.good(), "tokenizer: cannot open '", path, "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

json parse(const std::string& text, const std::string& source) {
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    throw Error(str_cat("tokenizer: ", source, " is not valid JSON: ", e.what()));
  }
}

// Reader of one JSON object with messages naming `where`.
struct Obj {
  const json& j;
  std::string where;

  bool has(const char* key) const { return j.contains(key) && !j.at(key).is_null(); }
  const json& at(const char* key) const {
    MECHLAB_CHECK(j.contains(key), where, " has no \"", key, "\"");
    return j.at(key);
  }
  bool boolean(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    MECHLAB_CHECK(j.at(key).is_boolean(), where, ": \"", key, "\" must be true or false");
    return j.at(key).get<bool>();
  }
  std::string string(const char* key) const {
    const json& v = at(key);
    MECHLAB_CHECK(v.is_string(), where, ": \"", key, "\" must be a string");
    return v.get<std::string>();
  }
  std::string type() const {
    MECHLAB_CHECK(j.is_object(), where, " must be a JSON object");
    return has("type") ? string("type") : std::string();
  }
};

// --------------------------------------------------------------- model
BpeModel read_model(const json& jm, const std::string& source) {
  MECHLAB_CHECK(jm.is_object(), "tokenizer ", source, ": \"model\" must be a JSON object");
  Obj m{jm, str_cat("tokenizer ", source, ": \"model\"")};
  const std::string type = m.type();
  MECHLAB_CHECK(type == "BPE" || (type.empty() && m.has("vocab") && m.has("merges")), "tokenizer ", source,
                ": model type '", type.empty() ? "(none)" : type,
                "' is not supported; mechlab reads byte-level BPE tokenizers (model type \"BPE\": GPT-2, "
                "GPT-NeoX, Llama 3, Qwen2)");
  if (m.has("dropout")) {
    MECHLAB_CHECK(m.j.at("dropout").is_number() && m.j.at("dropout").get<double>() == 0.0, m.where,
                  ": BPE dropout makes encoding random and is not supported; set \"dropout\" to null");
  }
  MECHLAB_CHECK(!m.boolean("byte_fallback", false), m.where,
                ": byte_fallback (SentencePiece-style BPE, e.g. Llama 2) is not supported; mechlab reads "
                "byte-level BPE");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    MECHLAB_CHECK(!m.has(key) || (m.j.at(key).is_string() && m.j.at(key).get<std::string>().empty()), m.where,
                  ": \"", key, "\" is not supported (byte-level BPE has none)");
  }
  BpeModel::Options opt;
  opt.ignore_merges(m.boolean("ignore_merges", false));
  opt.fuse_unk(m.boolean("fuse_unk", false));
  if (m.has("unk_token")) opt.unk_token(m.string("unk_token"));

  const json& jv = m.at("vocab");
  MECHLAB_CHECK(jv.is_object(), m.where, ": \"vocab\" must be an object {token: id}");
  std::unordered_map<std::string, int64_t> vocab;
  vocab.reserve(jv.size());
  for (auto it = jv.begin(); it != jv.end(); ++it) {
    MECHLAB_CHECK(it.value().is_number_integer(), m.where, ": the id of vocabulary token '", it.key(),
                  "' is not an integer");
    vocab.emplace(it.key(), it.value().get<int64_t>());
  }
  const json& jmerges = m.at("merges");
  MECHLAB_CHECK(jmerges.is_array(), m.where, ": \"merges\" must be an array");
  std::vector<std::pair<std::string, std::string>> merges;
  merges.reserve(jmerges.size());
  for (size_t i = 0; i < jmerges.size(); ++i) {
    const json& e = jmerges[i];
    if (e.is_string()) {
      const std::string s = e.get<std::string>();
      const size_t sp = s.find(' ');
      MECHLAB_CHECK(sp != std::string::npos && s.find(' ', sp + 1) == std::string::npos, m.where, ": merge ", i,
                    " '", s, "' is not two tokens separated by one space");
      merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
    } else {
      MECHLAB_CHECK(e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string(), m.where, ": merge ", i,
                    " must be \"a b\" or [\"a\", \"b\"]");
      merges.emplace_back(e[0].get<std::string>(), e[1].get<std::string>());
    }
  }
  try {
    return BpeModel(std::move(vocab), merges, opt);
  } catch (const Error& e) {
    throw Error(str_cat(e.what(), " (in ", source, ")"));
  }
}

// --------------------------------------------------------------- normalizer
Normalization read_normalizer(const json& j, const std::string& source) {
  if (j.is_null()) return Normalization::none;
  Obj n{j, str_cat("tokenizer ", source, ": \"normalizer\"")};
  const std::string type = n.type();
  if (type == "NFC") return Normalization::nfc;
  if (type == "Sequence") {
    const json& list = n.at("normalizers");
    MECHLAB_CHECK(list.is_array(), n.where, ": \"normalizers\" must be an array");
    Normalization out = Normalization::none;
    for (const json& e : list) {
      if (read_normalizer(e, source) == Normalization::nfc) out = Normalization::nfc;
    }
    return out;
  }
  throw Error(str_cat(n.where, ": normalizer type '", type,
                      "' is not supported; mechlab supports none and NFC (GPT-NeoX)"));
}

// --------------------------------------------------------------- pre-tokenizer
void read_pre_tokenizer(const json& j, const std::string& source, BpeTokenizerSpec& spec) {
  const std::string where = str_cat("tokenizer ", source, ": \"pre_tokenizer\"");
  MECHLAB_CHECK(!j.is_null(), where,
                " is null; mechlab reads byte-level BPE, which needs a ByteLevel pre-tokenizer");
  std::vector<const json*> steps;
  Obj top{j, where};
  if (top.type() == "Sequence") {
    const json& list = top.at("pretokenizers");
    MECHLAB_CHECK(list.is_array(), where, ": \"pretokenizers\" must be an array");
    for (const json& e : list) steps.push_back(&e);
  } else {
    steps.push_back(&j);
  }
  bool byte_level = false, have_split = false;
  for (const json* e : steps) {
    Obj s{*e, where};
    const std::string type = s.type();
    if (type == "ByteLevel") {
      MECHLAB_CHECK(!byte_level, where, ": two ByteLevel steps are not supported");
      byte_level = true;
      spec.add_prefix_space = s.boolean("add_prefix_space", false);
      if (s.boolean("use_regex", true)) {
        MECHLAB_CHECK(!have_split, where, ": a Split step followed by ByteLevel with use_regex = true "
                      "(two split patterns) is not supported");
        spec.pattern = SplitPattern::gpt2;
      } else if (!have_split) {
        spec.pattern = SplitPattern::none;
      }
    } else if (type == "Split") {
      MECHLAB_CHECK(!byte_level && !have_split, where,
                    ": a Split step must come once, before the ByteLevel step");
      have_split = true;
      const json& pat = s.at("pattern");
      MECHLAB_CHECK(pat.is_object() && pat.contains("Regex") && pat.at("Regex").is_string(), where,
                    ": only Split with a {\"Regex\": ...} pattern is supported");
      spec.pattern = split_pattern_from_regex(pat.at("Regex").get<std::string>());
      const std::string behavior = s.has("behavior") ? s.string("behavior") : "Isolated";
      MECHLAB_CHECK(behavior == "Isolated", where, ": Split behavior '", behavior,
                    "' is not supported (only \"Isolated\")");
      MECHLAB_CHECK(!s.boolean("invert", false), where, ": Split with invert = true is not supported");
    } else {
      throw Error(str_cat(where, ": pre-tokenizer type '", type,
                          "' is not supported; mechlab supports ByteLevel, and Split (GPT-2, Llama-3 or "
                          "Qwen2 regex) followed by ByteLevel"));
    }
  }
  MECHLAB_CHECK(byte_level, where, " has no ByteLevel step; mechlab reads byte-level BPE only");
}

// --------------------------------------------------------------- post-processor
int64_t id_of(const BpeModel& model, const std::vector<AddedToken>& added, const std::string& token,
              const std::string& where) {
  for (const AddedToken& t : added) {
    if (t.content == token) return t.id;
  }
  const auto id = model.token_to_id(token);
  MECHLAB_CHECK(id.has_value(), where, ": token '", token, "' is not in the vocabulary");
  return *id;
}

PostProcessor read_post_processor(const json& j, const std::string& source) {
  PostProcessor out;
  if (j.is_null()) return out;
  Obj p{j, str_cat("tokenizer ", source, ": \"post_processor\"")};
  const std::string type = p.type();
  if (type == "ByteLevel") return out;
  if (type == "Sequence") {
    const json& list = p.at("processors");
    MECHLAB_CHECK(list.is_array(), p.where, ": \"processors\" must be an array");
    for (const json& e : list) out.then(read_post_processor(e, source));
    return out;
  }
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    for (const char* key : {"cls", "sep"}) {
      const json& v = p.at(key);
      MECHLAB_CHECK(v.is_array() && v.size() == 2 && v[1].is_number_integer(), p.where, ": \"", key,
                    "\" must be [token, id]");
    }
    out.prefix.push_back(p.j.at("cls")[1].get<int64_t>());
    out.suffix.push_back(p.j.at("sep")[1].get<int64_t>());
    return out;
  }
  if (type == "TemplateProcessing") {
    const json& single = p.at("single");
    MECHLAB_CHECK(single.is_array(), p.where, ": \"single\" must be an array");
    const json& specials = p.at("special_tokens");
    bool seen_a = false;
    for (const json& piece : single) {
      if (piece.contains("Sequence")) {
        const json& seq = piece.at("Sequence");
        MECHLAB_CHECK(seq.value("id", "") == "A" && !seen_a, p.where,
                      ": the single template must hold sequence $A exactly once");
        seen_a = true;
      } else if (piece.contains("SpecialToken")) {
        const std::string name = piece.at("SpecialToken").value("id", "");
        MECHLAB_CHECK(specials.contains(name) && specials.at(name).contains("ids"), p.where,
                      ": special token '", name, "' of the template is not in \"special_tokens\"");
        for (const json& id : specials.at(name).at("ids")) {
          MECHLAB_CHECK(id.is_number_integer(), p.where, ": ids of '", name, "' must be integers");
          (seen_a ? out.suffix : out.prefix).push_back(id.get<int64_t>());
        }
      } else {
        throw Error(str_cat(p.where, ": template piece ", piece.dump(), " is neither a Sequence nor a SpecialToken"));
      }
    }
    MECHLAB_CHECK(seen_a, p.where, ": the single template has no $A");
    return out;
  }
  throw Error(str_cat(p.where, ": post-processor type '", type,
                      "' is not supported; mechlab supports ByteLevel, TemplateProcessing, "
                      "RobertaProcessing, BertProcessing and Sequence"));
}

Decoding read_decoder(const json& j, const std::string& source) {
  if (j.is_null()) return Decoding::join_with_spaces;
  Obj d{j, str_cat("tokenizer ", source, ": \"decoder\"")};
  const std::string type = d.type();
  MECHLAB_CHECK(type == "ByteLevel", d.where, ": decoder type '", type,
                "' is not supported; mechlab supports ByteLevel (and none)");
  return Decoding::byte_level;
}

std::vector<AddedToken> read_added_tokens(const json& j, const std::string& source) {
  std::vector<AddedToken> out;
  if (j.is_null()) return out;
  const std::string where = str_cat("tokenizer ", source, ": \"added_tokens\"");
  MECHLAB_CHECK(j.is_array(), where, " must be an array");
  for (size_t i = 0; i < j.size(); ++i) {
    Obj t{j[i], str_cat(where, "[", i, "]")};
    MECHLAB_CHECK(j[i].is_object(), t.where, " must be an object");
    AddedToken a;
    MECHLAB_CHECK(t.at("id").is_number_integer(), t.where, ": \"id\" must be an integer");
    a.id = t.at("id").get<int64_t>();
    a.content = t.string("content");
    a.single_word = t.boolean("single_word", false);
    a.lstrip = t.boolean("lstrip", false);
    a.rstrip = t.boolean("rstrip", false);
    a.special = t.boolean("special", false);
    a.normalized = t.boolean("normalized", !a.special);
    out.push_back(std::move(a));
  }
  return out;
}

// bos_token / eos_token of tokenizer_config.json: a string, {"content": ...} or null.
std::optional<std::string> config_token(const json& config, const char* key) {
  if (!config.is_object() || !config.contains(key) || config.at(key).is_null()) return std::nullopt;
  const json& v = config.at(key);
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v.at("content").is_string()) return v.at("content").get<std::string>();
  throw Error(str_cat("tokenizer_config.json: \"", key, "\" must be a string or {\"content\": ...}"));
}

void resolve_bos_eos(const BpeModel& model, const json& config, const std::string& source, BpeTokenizerSpec& spec) {
  const std::string where = str_cat("tokenizer ", source, ": tokenizer_config.json");
  const bool has_config = config.is_object();
  if (has_config && config.contains("bos_token")) {
    if (auto t = config_token(config, "bos_token")) spec.bos_id = id_of(model, spec.added_tokens, *t, where);
  } else if (!spec.post_processor.prefix.empty()) {
    spec.bos_id = spec.post_processor.prefix.front();
  } else if (auto id = model.token_to_id("<|endoftext|>")) {
    spec.bos_id = *id;
  }
  if (has_config && config.contains("eos_token")) {
    if (auto t = config_token(config, "eos_token")) spec.eos_id = id_of(model, spec.added_tokens, *t, where);
  } else if (auto id = model.token_to_id("<|endoftext|>")) {
    spec.eos_id = *id;
  }
}

bool is_file(const std::filesystem::path& p) {
  std::error_code ec;
  return std::filesystem::is_regular_file(p, ec);
}

}  // namespace

std::unique_ptr<BpeTokenizer> tokenizer_from_json(const std::string& json_text, const std::string& config_json,
                                                  const std::string& source) {
  const json j = parse(json_text, source);
  MECHLAB_CHECK(j.is_object(), "tokenizer ", source, " must be a JSON object");
  MECHLAB_CHECK(j.contains("model") && !j.at("model").is_null(), "tokenizer ", source,
                " has no \"model\"; it is not a Hugging Face tokenizer.json (for GPT-2's vocab.json + "
                "merges.txt, give their folder)");
  BpeModel model = read_model(j.at("model"), source);
  BpeTokenizerSpec spec;
  spec.source = source;
  spec.normalization = read_normalizer(j.value("normalizer", json()), source);
  read_pre_tokenizer(j.value("pre_tokenizer", json()), source, spec);
  spec.added_tokens = read_added_tokens(j.value("added_tokens", json()), source);
  spec.post_processor = read_post_processor(j.value("post_processor", json()), source);
  spec.decoding = read_decoder(j.value("decoder", json()), source);
  const json config = config_json.empty() ? json() : parse(config_json, "tokenizer_config.json");
  resolve_bos_eos(model, config, source, spec);
  return std::make_unique<BpeTokenizer>(std::move(model), std::move(spec));
}

std::unique_ptr<BpeTokenizer> tokenizer_from_vocab_merges(const std::string& vocab_json,
                                                          const std::string& merges_txt,
                                                          const std::string& config_json,
                                                          const std::string& source) {
  const json jv = parse(vocab_json, source + " (vocab.json)");
  MECHLAB_CHECK(jv.is_object(), "tokenizer ", source, ": vocab.json must be an object {token: id}");
  std::unordered_map<std::string, int64_t> vocab;
  for (auto it = jv.begin(); it != jv.end(); ++it) {
    MECHLAB_CHECK(it.value().is_number_integer(), "tokenizer ", source, ": the id of vocab.json token '",
                  it.key(), "' is not an integer");
    vocab.emplace(it.key(), it.value().get<int64_t>());
  }
  std::vector<std::pair<std::string, std::string>> merges;
  std::istringstream in(merges_txt);
  std::string line;
  for (size_t n = 1; std::getline(in, line); ++n) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || (n == 1 && line.rfind("#version", 0) == 0)) continue;
    const size_t sp = line.find(' ');
    MECHLAB_CHECK(sp != std::string::npos && line.find(' ', sp + 1) == std::string::npos, "tokenizer ", source,
                  ": merges.txt line ", n, " '", line, "' is not two tokens separated by one space");
    merges.emplace_back(line.substr(0, sp), line.substr(sp + 1));
  }
  const json config = config_json.empty() ? json() : parse(config_json, "tokenizer_config.json");
  BpeTokenizerSpec spec;
  spec.source = source;
  spec.pattern = SplitPattern::gpt2;
  if (config.is_object() && config.contains("add_prefix_space") && config.at("add_prefix_space").is_boolean()) {
    spec.add_prefix_space = config.at("add_prefix_space").get<bool>();
  }
  if (config.is_object() && config.contains("added_tokens_decoder")) {
    for (auto it = config.at("added_tokens_decoder").begin(); it != config.at("added_tokens_decoder").end(); ++it) {
      AddedToken a;
      try {
        a.id = std::stoll(it.key());
      } catch (const std::exception&) {
        throw Error(str_cat("tokenizer ", source, ": tokenizer_config.json added_tokens_decoder key '", it.key(),
                            "' is not an integer id"));
      }
      Obj t{it.value(), str_cat("tokenizer ", source, ": tokenizer_config.json added token ", it.key())};
      a.content = t.string("content");
      a.single_word = t.boolean("single_word", false);
      a.lstrip = t.boolean("lstrip", false);
      a.rstrip = t.boolean("rstrip", false);
      a.special = t.boolean("special", false);
      a.normalized = t.boolean("normalized", !a.special);
      spec.added_tokens.push_back(std::move(a));
    }
  } else if (auto it = vocab.find("<|endoftext|>"); it != vocab.end()) {
    AddedToken a;
    a.id = it->second;
    a.content = "<|endoftext|>";
    a.special = true;
    a.normalized = true;  // as GPT-2's own tokenizer.json has it
    spec.added_tokens.push_back(std::move(a));
  }
  BpeModel model;
  try {
    model = BpeModel(std::move(vocab), merges, BpeModel::Options());
  } catch (const Error& e) {
    throw Error(str_cat(e.what(), " (in ", source, ")"));
  }
  resolve_bos_eos(model, config, source, spec);
  return std::make_unique<BpeTokenizer>(std::move(model), std::move(spec));
}

std::unique_ptr<BpeTokenizer> load_tokenizer(const std::string& path) {
  namespace fs = std::filesystem;
  const fs::path p(path);
  std::error_code ec;
  MECHLAB_CHECK(fs::exists(p, ec), "tokenizer: '", path, "' does not exist");
  const fs::path dir = fs::is_directory(p, ec) ? p : p.parent_path();
  const fs::path config_path = dir / "tokenizer_config.json";
  const std::string config = is_file(config_path) ? read_file(config_path.string()) : std::string();
  if (!fs::is_directory(p, ec)) return tokenizer_from_json(read_file(path), config, path);
  if (is_file(p / "tokenizer.json")) {
    return tokenizer_from_json(read_file((p / "tokenizer.json").string()), config, (p / "tokenizer.json").string());
  }
  MECHLAB_CHECK(is_file(p / "vocab.json") && is_file(p / "merges.txt"), "tokenizer: folder '", path,
                "' has neither tokenizer.json nor vocab.json + merges.txt");
  return tokenizer_from_vocab_merges(read_file((p / "vocab.json").string()), read_file((p / "merges.txt").string()),
                                     config, path);
}

namespace {

// The word vocabulary stored in a mechlab checkpoint's `tokenizer` attribute
// (the name is core/model/checkpoint.h's kCheckpointTokenizerAttr; this
// library sits below the model's); null for any other file.
std::unique_ptr<Tokenizer> checkpoint_tokenizer(const std::string& path) {
  char magic[8] = {};
  {
    std::ifstream in(path, std::ios::binary);
    if (!in.read(magic, sizeof magic)) return nullptr;
  }
  if (std::string(magic, sizeof magic) != std::string("\x89HDF\r\n\x1a\n", 8)) return nullptr;
  const H5File file = H5File::open_read(path);
  if (!file.has_attr("", "mechlab_format") ||
      file.read_attr_string("", "mechlab_format") != "checkpoint" ||
      !file.has_attr("", "tokenizer")) {
    return nullptr;
  }
  const std::string text = file.read_attr_string("", "tokenizer");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    throw Error(str_cat("'", path, "': the stored tokenizer is not JSON (", e.what(),
                        "); rewrite the checkpoint's tokenizer attribute"));
  }
  MECHLAB_CHECK(j.is_object() && j.value("kind", "") == kWordTokenizerKind, "'", path,
                "': the stored tokenizer is not a word vocabulary ({\"kind\": \"word\", ...}); "
                "give the model's tokenizer with the tokenizer option");
  try {
    return std::make_unique<WordTokenizerAdapter>(WordTokenizer::from_json(j));
  } catch (const Error& e) {
    throw Error(str_cat("'", path, "': the stored word vocabulary is invalid: ", e.what()));
  }
}

}  // namespace

std::unique_ptr<Tokenizer> find_model_tokenizer(const std::string& model_path,
                                                const std::string& tokenizer_path) {
  if (!tokenizer_path.empty()) return load_tokenizer(tokenizer_path);
  const std::filesystem::path dir(model_path);
  std::error_code ec;
  if (std::filesystem::is_regular_file(dir, ec)) return checkpoint_tokenizer(model_path);
  if (!std::filesystem::is_directory(dir, ec)) return nullptr;
  const bool has_files = std::filesystem::exists(dir / "tokenizer.json", ec) ||
                         (std::filesystem::exists(dir / "vocab.json", ec) &&
                          std::filesystem::exists(dir / "merges.txt", ec));
  if (!has_files) return nullptr;
  return load_tokenizer(model_path);
}

}  // namespace mechlab::core::tokenizer
