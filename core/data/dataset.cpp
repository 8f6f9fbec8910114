#include "core/data/dataset.h"

#include "core/util/error.h"
#include "core/formats/hdf5_file.h"
#include "core/data/tokenizer/word_tokenizer.h"

#include <nlohmann/json.hpp>


namespace mechlab::core {
namespace {

// What each dataset of the layout must look like (see core/data/dataset.h).
enum class Axes { NT, NK, N, N_or_NT };

struct Field {
  const char* name;  // HDF5 dataset name under the root
  at::ScalarType dtype;
  Axes axes;
  at::Tensor Dataset::*member;
  bool is_ids;  // holds token ids, checked against d_vocab
};

const Field kFields[] = {
    {"tokens", at::kInt, Axes::NT, &Dataset::tokens, true},
    {"attention_mask", at::kByte, Axes::NT, &Dataset::attention_mask, false},
    {"clean_tokens", at::kInt, Axes::NT, &Dataset::clean_tokens, true},
    {"corrupted_tokens", at::kInt, Axes::NT, &Dataset::corrupted_tokens, true},
    {"answer_tokens", at::kInt, Axes::NK, &Dataset::answer_tokens, true},
    {"wrong_tokens", at::kInt, Axes::NK, &Dataset::wrong_tokens, true},
    {"answer_pos", at::kInt, Axes::N, &Dataset::answer_pos, false},
    {"labels", at::kLong, Axes::N_or_NT, &Dataset::labels, false},
};

const char* shape_text(Axes a) {
  switch (a) {
    case Axes::NT:
      return "[N, T]";
    case Axes::NK:
      return "[N, K]";
    case Axes::N:
      return "[N]";
    case Axes::N_or_NT:
      return "[N] or [N, T]";
  }
  return "?";
}

bool rank_ok(Axes a, int64_t rank) {
  switch (a) {
    case Axes::NT:
    case Axes::NK:
      return rank == 2;
    case Axes::N:
      return rank == 1;
    case Axes::N_or_NT:
      return rank == 1 || rank == 2;
  }
  return false;
}

std::string known_names() {
  std::string out;
  for (const Field& f : kFields) out += std::string(out.empty() ? "/" : ", /") + f.name;
  return out;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

// Refuses a dtype or rank other than the layout's, before any data is read.
void check_kind(const std::string& where, const Field& f, at::ScalarType dtype,
                const std::vector<int64_t>& shape) {
  MECHLAB_CHECK(dtype == f.dtype, where, ": /", f.name, " has dtype ", dtype_name(dtype),
                "; it must be ", dtype_name(f.dtype), " ", shape_text(f.axes),
                " (convert it, e.g. numpy .astype('", dtype_name(f.dtype), "'))");
  MECHLAB_CHECK(rank_ok(f.axes, static_cast<int64_t>(shape.size())), where, ": /", f.name,
                " has shape ", shape_str(shape), "; it must be ", shape_text(f.axes));
}

// "example 3, position 7" for [N, T] tensors, "example 3, answer 0" for [N, K].
std::string element_at(const at::Tensor& t, int64_t flat, Axes axes) {
  if (t.dim() == 1) return str_cat("example ", flat);
  const int64_t cols = t.size(1);
  return str_cat("example ", flat / cols, axes == Axes::NK ? ", answer " : ", position ",
                 flat % cols);
}

// The first element where `bad` (a bool tensor shaped like `t`) holds, or -1.
int64_t first_true(const at::Tensor& bad) {
  if (!bad.any().item<bool>()) return -1;
  return bad.reshape(-1).nonzero().select(1, 0)[0].item<int64_t>();
}

void check_ids_below(const std::string& where, const Field& f, const at::Tensor& t, int64_t limit,
                     const std::string& limit_text) {
  if (t.numel() == 0) return;
  const int64_t flat = first_true((t < 0) | (t >= limit));
  if (flat < 0) return;
  const int64_t id = t.reshape(-1)[flat].item<int64_t>();
  throw Error(str_cat(where, ": /", f.name, " ", element_at(t, flat, f.axes), " holds token id ",
                      id, ", outside [0, ", limit_text, ")"));
}

nlohmann::json parse_json_attr(const std::string& where, const char* name,
                               const std::string& text) {
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    throw Error(str_cat(where, ": the '", name, "' attribute is not valid JSON (", e.what(), ")"));
  }
}

}  // namespace

// ------------------------------------------------------------ Dataset

const at::Tensor& Dataset::prompts() const {
  if (tokens.defined()) return tokens;
  MECHLAB_CHECK(clean_tokens.defined(),
                "dataset has neither /tokens nor /clean_tokens: there are no prompts to run");
  return clean_tokens;
}

int64_t Dataset::size() const { return prompts().size(0); }

int64_t Dataset::seq_len() const { return prompts().size(1); }

void Dataset::validate(const std::string& where) const {
  MECHLAB_CHECK(tokens.defined() || clean_tokens.defined(), where,
                ": the dataset has neither /tokens nor /clean_tokens; give prompts as /tokens "
                "(or as a /clean_tokens + /corrupted_tokens pair set)");
  MECHLAB_CHECK(d_vocab > 0, where, ": d_vocab is ", d_vocab,
                "; it must be positive (every token id is in [0, d_vocab))");
  MECHLAB_CHECK(clean_tokens.defined() == corrupted_tokens.defined(), where, ": /",
                clean_tokens.defined() ? "clean_tokens" : "corrupted_tokens", " is given without /",
                clean_tokens.defined() ? "corrupted_tokens" : "clean_tokens",
                "; a pair set needs both, with the same shape");
  MECHLAB_CHECK(answer_tokens.defined() == wrong_tokens.defined(), where, ": /",
                answer_tokens.defined() ? "answer_tokens" : "wrong_tokens", " is given without /",
                answer_tokens.defined() ? "wrong_tokens" : "answer_tokens",
                "; metrics compare answers with wrong answers, so give both");

  for (const Field& f : kFields) {
    const at::Tensor& t = this->*f.member;
    if (t.defined()) check_kind(where, f, t.scalar_type(), t.sizes().vec());
  }

  // Every dataset has one row per example, and [N, T] ones the prompts' T.
  const char* ref_name = tokens.defined() ? "tokens" : "clean_tokens";
  const int64_t n = prompts().size(0), seq = prompts().size(1);
  for (const Field& f : kFields) {
    const at::Tensor& t = this->*f.member;
    if (!t.defined()) continue;
    MECHLAB_CHECK(t.size(0) == n, where, ": /", f.name, " has ", t.size(0), " rows but /", ref_name,
                  " has ", n, "; every dataset needs one row per example");
    const bool has_t = f.axes == Axes::NT || (f.axes == Axes::N_or_NT && t.dim() == 2);
    if (has_t) {
      MECHLAB_CHECK(t.size(1) == seq, where, ": /", f.name, " has ", t.size(1), " positions but /",
                    ref_name, " has ", seq,
                    "; per-position datasets must match the prompts' length T");
    }
  }

  for (const Field& f : kFields) {
    const at::Tensor& t = this->*f.member;
    if (t.defined() && f.is_ids) {
      check_ids_below(where, f, t, d_vocab, str_cat("d_vocab = ", d_vocab));
    }
  }
  if (attention_mask.defined() && attention_mask.numel() > 0) {
    const int64_t flat = first_true(attention_mask > 1);
    MECHLAB_CHECK(flat < 0, where, ": /attention_mask ", element_at(attention_mask, flat, Axes::NT),
                  " is ", flat < 0 ? 0 : attention_mask.reshape(-1)[flat].item<int64_t>(),
                  "; the mask holds 1 (real token) or 0 (padding)");
  }
  if (answer_pos.defined() && answer_pos.numel() > 0) {
    const int64_t flat = first_true((answer_pos < 0) | (answer_pos >= seq));
    MECHLAB_CHECK(flat < 0, where, ": /answer_pos example ", flat, " is ",
                  flat < 0 ? 0 : answer_pos[flat].item<int64_t>(), ", outside the prompt [0, ", seq,
                  ")");
    if (attention_mask.defined()) {
      at::Tensor at_pos =
          attention_mask.gather(1, answer_pos.to(at::kLong).unsqueeze(1));  // [N, 1]
      const int64_t bad = first_true(at_pos.squeeze(1) == 0);
      MECHLAB_CHECK(bad < 0, where, ": /answer_pos example ", bad, " points at position ",
                    bad < 0 ? 0 : answer_pos[bad].item<int64_t>(),
                    ", which /attention_mask marks as padding");
    }
  }

  if (!tokenizer.empty()) {
    const nlohmann::json j = parse_json_attr(where, "tokenizer", tokenizer);
    MECHLAB_CHECK(j.is_object() && j.contains("kind") && j["kind"].is_string(), where,
                  ": the 'tokenizer' attribute must be a JSON object with a \"kind\" (or \"\" for "
                  "raw ids)");
    if (j["kind"] == kWordTokenizerKind) {
      WordTokenizer tok;
      try {
        tok = WordTokenizer::from_json(j);
      } catch (const Error& e) {
        throw Error(str_cat(where, ": bad 'tokenizer' attribute: ", e.what()));
      }
      MECHLAB_CHECK(tok.size() == d_vocab, where, ": the word tokenizer has ", tok.size(),
                    " words but d_vocab is ", d_vocab, "; they must be equal");
    }
  }
  parse_json_attr(where, "config", config);
}

void Dataset::check_vocab(int64_t model_d_vocab, const std::string& where) const {
  for (const Field& f : kFields) {
    const at::Tensor& t = this->*f.member;
    if (!t.defined() || !f.is_ids || t.numel() == 0) continue;
    const int64_t flat = first_true(t >= model_d_vocab);
    if (flat < 0) continue;
    const int64_t id = t.reshape(-1)[flat].item<int64_t>();
    throw Error(str_cat(where, ": /", f.name, " ", element_at(t, flat, f.axes), " holds token id ",
                        id, " but the model's d_vocab is ", model_d_vocab,
                        " (the dataset's ids go up to ", t.max().item<int64_t>(),
                        "); use a model with d_vocab >= ", t.max().item<int64_t>() + 1,
                        " or a dataset made for this model"));
  }
}

// ------------------------------------------------------------ files

void save_dataset(const std::string& path, const Dataset& ds) {
  const std::string where = "cannot save dataset '" + path + "'";
  ds.validate(where);
  H5File::write_atomically(path, [&](H5File& file) {
    file.write_attr("", "mechlab_format", std::string(kDatasetFormat));
    file.write_attr("", "mechlab_version", kDatasetVersion);
    file.write_attr("", "task", ds.task);
    file.write_attr("", "tokenizer", ds.tokenizer);
    file.write_attr("", "d_vocab", ds.d_vocab);
    file.write_attr("", "seed", ds.seed);
    file.write_attr("", "config", ds.config);
    for (const Field& f : kFields) {
      const at::Tensor& t = ds.*f.member;
      if (t.defined()) file.write_tensor(f.name, t);
    }
  });
}

Dataset load_dataset(const std::string& path) {
  H5File file = H5File::open_read(path);
  const std::string where = "'" + path + "'";

  MECHLAB_CHECK(file.has_attr("", "mechlab_format"), where,
                " is not a mechlab file (it has no 'mechlab_format' attribute); make datasets "
                "with `mechlab dataset make` or core::save_dataset");
  const std::string format = file.read_attr_string("", "mechlab_format");
  MECHLAB_CHECK(format == kDatasetFormat, where, ": this file is a '", format, "', not a dataset");
  MECHLAB_CHECK(file.has_attr("", "mechlab_version"), where,
                " is not a valid dataset: it has no 'mechlab_version' attribute");
  const int64_t version = file.read_attr_int("", "mechlab_version");
  MECHLAB_CHECK(version <= kDatasetVersion, where, ": this file is dataset version ", version,
                " but this mechlab reads up to version ", kDatasetVersion, "; upgrade mechlab");
  MECHLAB_CHECK(version >= 1, where, " is not a valid dataset: mechlab_version is ", version,
                " (versions start at 1)");
  MECHLAB_CHECK(file.has_attr("", "d_vocab"), where,
                " is not a valid dataset: it has no 'd_vocab' attribute");

  Dataset ds;
  ds.d_vocab = file.read_attr_int("", "d_vocab");
  // The rest are descriptive: files written by other tools may leave them out.
  if (file.has_attr("", "task")) ds.task = file.read_attr_string("", "task");
  if (file.has_attr("", "tokenizer")) ds.tokenizer = file.read_attr_string("", "tokenizer");
  if (file.has_attr("", "seed")) ds.seed = file.read_attr_int("", "seed");
  if (file.has_attr("", "config")) ds.config = file.read_attr_string("", "config");

  // A misspelt name would otherwise be dropped without a word.
  for (const std::string& name : file.list("")) {
    bool known = false;
    for (const Field& f : kFields) known = known || name == f.name;
    MECHLAB_CHECK(known && !file.is_group(name), where, ": unexpected ",
                  file.is_group(name) ? "group" : "dataset", " '/", name,
                  "'; a mechlab dataset holds only ", known_names());
  }
  // Dtypes and ranks are checked from the file's metadata before any data is read.
  for (const Field& f : kFields) {
    if (file.exists(f.name)) check_kind(where, f, file.dtype(f.name), file.shape(f.name));
  }
  for (const Field& f : kFields) {
    if (file.exists(f.name)) ds.*f.member = file.read_tensor(f.name);
  }
  ds.validate(where);
  return ds;
}

}  // namespace mechlab::core
