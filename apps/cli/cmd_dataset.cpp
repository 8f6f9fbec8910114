// mechlab dataset: make a task's dataset (core/data/tasks/) and inspect dataset files
// (core/data/dataset.h).
#include "apps/cli/commands.h"
#include "core/data/dataset.h"
#include "core/util/error.h"
#include "core/formats/hdf5_file.h"
#include "core/formats/output_file.h"
#include "core/log/log.h"
#include "core/data/tasks/tasks.h"
#include "core/data/tokenizer/word_tokenizer.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>

namespace mechlab::cli {
namespace {

// ------------------------------------------------------------ make

// A --set value: @FILE reads the file as a string; integers, floats, true/false
// and JSON objects/arrays are recognised; anything else is a string.
nlohmann::json parse_set_value(const std::string& key, const std::string& text) {
  if (!text.empty() && text[0] == '@') {
    std::ifstream in(text.substr(1));
    MECHLAB_CHECK(in, "--set ", key, "=", text, ": cannot read the file '", text.substr(1), "'");
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  if (text == "true") return true;
  if (text == "false") return false;
  if (!text.empty() && (text[0] == '{' || text[0] == '[')) {
    try {
      return nlohmann::json::parse(text);
    } catch (const nlohmann::json::parse_error& e) {
      throw Error(str_cat("--set ", key, "=", text,
                          ": the value looks like JSON but does not parse (", e.what(), ")"));
    }
  }
  const bool numeric = !text.empty() && text.find_first_of("0123456789") != std::string::npos &&
                       text.find_first_not_of("0123456789+-.eE") == std::string::npos;
  if (numeric) {
    char* end = nullptr;
    errno = 0;
    const long long i = std::strtoll(text.c_str(), &end, 10);
    if (errno == 0 && *end == '\0') return static_cast<int64_t>(i);
    errno = 0;
    const double d = std::strtod(text.c_str(), &end);
    if (errno == 0 && *end == '\0') return d;
  }
  return text;
}

std::string tasks_help() {
  std::string out =
      "Tasks and their options (set with --set key=value; --n and --seed are shortcuts):\n";
  for (const auto& info : core::tasks::task_infos()) {
    out += "\n  " + info.name + ": " + info.summary + "\n";
    for (const auto& opt : info.options) {
      std::string head = "    " + opt.key + " = " + opt.default_value.dump();
      head.resize(std::max<size_t>(head.size() + 1, 28), ' ');
      out += head + opt.help + "\n";
    }
  }
  out +=
      "\nThe formats and their sources are described in docs/ARCHITECTURE.md and in "
      "core/data/tasks/<task>.h.\n";
  return out;
}

void add_make(CLI::App& parent) {
  auto* cmd = parent.add_subcommand("make", "Generate a task's dataset and write it as HDF5");
  struct Args {
    std::string task, out;
    int64_t n = 0, seed = 0;
    std::vector<std::string> sets;
    bool overwrite = false;
  };
  auto a = std::make_shared<Args>();
  std::string names;
  for (const auto& n : core::tasks::task_names()) names += (names.empty() ? "" : ", ") + n;
  cmd->add_option("task", a->task, "Task: " + names)->required();
  cmd->add_option("--out,-o", a->out, "Dataset file to write (.h5)")->required();
  cmd->add_flag("--overwrite", a->overwrite,
                "Replace a dataset already at --out (never a file of another kind)");
  CLI::Option* n_opt =
      add_count_option(cmd, "--n", a->n, "Number of examples (tasks with an `n` option)");
  CLI::Option* seed_opt = add_count_option(
      cmd, "--seed", a->seed, "Generator seed (>= 0): the same seed gives the same file", 0);
  cmd->add_option("--set", a->sets,
                  "A task option as key=value (repeatable): integers, floats, true/false, JSON "
                  "objects/arrays; @FILE reads a file's text (e.g. tokenizer=@vocab.json)");
  cmd->footer(tasks_help());
  add_threads_option(cmd);
  cmd->callback([a, n_opt, seed_opt] {
    const auto& info = core::tasks::task_info(a->task);
    core::require_replaceable(a->out, "dataset", a->overwrite, "--overwrite");
    nlohmann::json options = nlohmann::json::object();
    for (const auto& kv : a->sets) {
      const size_t eq = kv.find('=');
      MECHLAB_CHECK(eq != std::string::npos && eq > 0, "--set \"", kv,
                    "\": write it as key=value (e.g. --set order=ABBA)");
      const std::string key = kv.substr(0, eq);
      MECHLAB_CHECK(!options.contains(key), "--set: option \"", key, "\" is given twice");
      options[key] = parse_set_value(key, kv.substr(eq + 1));
    }
    auto shortcut = [&options](const char* flag, const CLI::Option* opt, int64_t value) {
      if (opt->count() == 0) return;
      MECHLAB_CHECK(!options.contains(flag), "option \"", flag, "\" is given both as --", flag,
                    " and as --set ", flag, "=...; give it once");
      options[flag] = value;
    };
    shortcut("n", n_opt, a->n);
    shortcut("seed", seed_opt, a->seed);
    for (const auto& kv : a->sets) {
      // An @FILE option is read here; the output must not be that file.
      const size_t at = kv.find("=@");
      if (at != std::string::npos) {
        core::require_not_same_file(a->out, "--out", kv.substr(at + 2), "the --set file");
      }
    }
    // The size first: a few examples show the bytes per example, and a
    // count that cannot fit in memory is refused before anything is allocated.
    if (options.contains("n") && options["n"].is_number_integer() && options["n"].get<int64_t>() > 16) {
      nlohmann::json sample = options;
      sample["n"] = 16;
      const core::Dataset probe = core::tasks::make_task(info.name, sample);
      int64_t bytes = 0;
      for (const at::Tensor* t : {&probe.tokens, &probe.attention_mask, &probe.clean_tokens,
                                  &probe.corrupted_tokens, &probe.answer_tokens,
                                  &probe.wrong_tokens, &probe.answer_pos, &probe.labels}) {
        if (t->defined()) bytes += static_cast<int64_t>(t->nbytes());
      }
      const int64_t n = options["n"].get<int64_t>();
      // The generator's vectors and the tensors made from them: twice the data.
      const double total = 2.0 * static_cast<double>(bytes) / 16.0 * static_cast<double>(n);
      const std::string flag = n_opt->count() ? "--n" : "--set n=";
      require_memory(total > 9e18 ? INT64_MAX : static_cast<int64_t>(total),
                     str_cat(flag, n_opt->count() ? " " : "", n),
                     str_cat(n, " examples (", bytes / 16, " bytes each)"),
                     str_cat("use a smaller ", flag == "--n" ? "--n" : "n"));
    }
    const core::Dataset ds = core::tasks::make_task(info.name, options);
    core::save_dataset(a->out, ds);
    log::info(str_cat("wrote ", ds.task, " (", ds.size(), " examples of ", ds.seq_len(),
                      " tokens, d_vocab ", ds.d_vocab, ", seed ", ds.seed, ") to ", a->out));
  });
}

// ------------------------------------------------------------ inspect

struct Named {
  const char* name;
  const at::Tensor* t;
};

std::vector<Named> present(const core::Dataset& ds) {
  std::vector<Named> all{{"tokens", &ds.tokens},
                         {"attention_mask", &ds.attention_mask},
                         {"clean_tokens", &ds.clean_tokens},
                         {"corrupted_tokens", &ds.corrupted_tokens},
                         {"answer_tokens", &ds.answer_tokens},
                         {"wrong_tokens", &ds.wrong_tokens},
                         {"answer_pos", &ds.answer_pos},
                         {"labels", &ds.labels}};
  std::vector<Named> out;
  for (const auto& n : all) {
    if (n.t->defined()) out.push_back(n);
  }
  return out;
}

std::vector<int64_t> row_of(const at::Tensor& t, int64_t i) {
  at::Tensor r = t[i].to(at::kLong).contiguous().reshape(-1);
  const int64_t* p = r.data_ptr<int64_t>();
  return {p, p + r.numel()};
}

// The ids of row i of a [N, T] tensor, padding left out.
std::vector<int64_t> real_ids(const core::Dataset& ds, const at::Tensor& t, int64_t i) {
  std::vector<int64_t> ids = row_of(t, i);
  if (!ds.attention_mask.defined()) return ids;
  const std::vector<int64_t> mask = row_of(ds.attention_mask, i);
  std::vector<int64_t> out;
  for (size_t j = 0; j < ids.size(); ++j) {
    if (mask[j]) out.push_back(ids[j]);
  }
  return out;
}

std::string join_ids(const std::vector<int64_t>& ids) {
  std::string out;
  for (int64_t id : ids) out += (out.empty() ? "" : " ") + std::to_string(id);
  return out;
}

// "0: 125, 1: 130, ..." for few distinct values, else a range.
std::string label_counts(const at::Tensor& labels) {
  at::Tensor flat = labels.to(at::kLong).contiguous().reshape(-1);
  const int64_t* p = flat.data_ptr<int64_t>();
  std::map<int64_t, int64_t> counts;
  for (int64_t k = 0; k < flat.numel(); ++k) ++counts[p[k]];
  std::string out;
  if (counts.size() <= 12) {
    for (const auto& [v, c] : counts) {
      out += (out.empty() ? "" : ", ") + std::to_string(v) + (v == -1 ? " (none): " : ": ") +
             std::to_string(c);
    }
    return out;
  }
  const int64_t unlabelled = counts.count(-1) ? counts.at(-1) : 0;
  return str_cat(counts.size(), " distinct values from ", counts.begin()->first, " to ",
                 counts.rbegin()->first,
                 unlabelled ? str_cat(" (", unlabelled, " are -1 = none)") : "");
}

void print_example(const core::Dataset& ds, const core::WordTokenizer* tok, int64_t i) {
  auto text = [&](const std::vector<int64_t>& ids) {
    return tok ? tok->decode(ids) : join_ids(ids);
  };
  std::cout << "example " << i << ":\n";
  if (ds.tokens.defined())
    std::cout << "  tokens:     " << text(real_ids(ds, ds.tokens, i)) << "\n";
  if (ds.clean_tokens.defined()) {
    std::cout << "  clean:      " << text(real_ids(ds, ds.clean_tokens, i)) << "\n"
              << "  corrupted:  " << text(real_ids(ds, ds.corrupted_tokens, i)) << "\n";
  }
  if (ds.answer_tokens.defined()) {
    std::cout << "  answer:     " << text(row_of(ds.answer_tokens, i)) << "\n"
              << "  wrong:      " << text(row_of(ds.wrong_tokens, i)) << "\n";
  }
  if (ds.answer_pos.defined()) {
    const int64_t pos = ds.answer_pos[i].item<int64_t>();
    const int64_t id = ds.prompts()[i][pos].item<int64_t>();
    std::cout << "  answer_pos: " << pos << " (" << (tok ? tok->word(id) : std::to_string(id))
              << ")\n";
  }
  if (ds.labels.defined()) {
    std::cout << "  labels:     " << join_ids(row_of(ds.labels, i)) << "\n";
  }
}

void add_inspect(CLI::App& parent) {
  auto* cmd = parent.add_subcommand(
      "inspect", "Print a dataset's attributes, datasets, counts and a few decoded examples");
  struct Args {
    std::string file;
    int64_t examples = 3;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("file", a->file, "mechlab dataset (.h5)")->required();
  cmd->add_option("--examples,-k", a->examples, "How many examples to print (from the first)")
      ->capture_default_str();
  cmd->callback([a] {
    MECHLAB_CHECK(a->examples >= 0, "--examples must be >= 0, got ", a->examples);
    const core::Dataset ds = core::load_dataset(a->file);
    std::optional<core::WordTokenizer> tok;
    std::string tok_text = "none (raw ids)";
    if (!ds.tokenizer.empty()) {
      const auto j = nlohmann::json::parse(ds.tokenizer);
      const std::string kind = j["kind"].get<std::string>();
      if (kind == core::kWordTokenizerKind) {
        tok = core::WordTokenizer::from_json(j);
        tok_text = str_cat("word (", tok->size(), " words)");
      } else {
        tok_text = kind + " (examples shown as ids)";
      }
    }
    std::cout << "file:       " << a->file << "\n"
              << "task:       " << ds.task << "\n"
              << "seed:       " << ds.seed << "\n"
              << "d_vocab:    " << ds.d_vocab << "\n"
              << "tokenizer:  " << tok_text << "\n"
              << "config:     " << ds.config << "\n"
              << "datasets:\n";
    for (const auto& [name, t] : present(ds)) {
      std::string n = std::string("/") + name;
      n.resize(std::max<size_t>(n.size() + 1, 19), ' ');
      std::string dt = core::dtype_name(t->scalar_type());
      dt.resize(8, ' ');
      std::cout << "  " << n << dt << c10::str(t->sizes()) << "\n";
    }
    std::cout << "examples:   " << ds.size() << " (" << ds.seq_len() << " positions each)\n";
    if (ds.attention_mask.defined()) {
      std::cout << "real tokens: " << ds.attention_mask.sum().item<int64_t>() << " of "
                << ds.attention_mask.numel() << " positions\n";
    }
    if (ds.answer_tokens.defined()) {
      std::cout << "answers:    " << ds.answer_tokens.size(1) << " answer and "
                << ds.wrong_tokens.size(1) << " wrong token(s) per example\n";
    }
    if (ds.labels.defined()) {
      std::cout << "labels:     " << (ds.labels.dim() == 1 ? "one per example" : "one per position")
                << "; " << label_counts(ds.labels) << "\n";
    }
    const int64_t k = std::min(a->examples, ds.size());
    for (int64_t i = 0; i < k; ++i) print_example(ds, tok ? &*tok : nullptr, i);
  });
}

}  // namespace

void add_dataset_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("dataset", "Make and inspect HDF5 datasets (task generators)");
  cmd->require_subcommand(1);
  add_make(*cmd);
  add_inspect(*cmd);
}

}  // namespace mechlab::cli
