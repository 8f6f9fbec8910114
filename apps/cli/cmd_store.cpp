// mechlab store: look inside an activation store (core/store/activation_store.h).
#include "apps/cli/commands.h"
#include "core/store/activation_store.h"
#include "core/util/error.h"
#include "core/data/tokenizer/tokenizer_json.h"
#include "core/data/tokenizer/word_tokenizer.h"
#include "core/data/tokenizer/word_tokenizer_adapter.h"
#include "core/formats/hdf5_file.h"

#include <nlohmann/json.hpp>

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <iostream>

namespace mechlab::cli {
namespace {

// "START:END" -> [start, end); refuses other forms and empty ranges.
std::pair<int64_t, int64_t> parse_row_range(const std::string& text) {
  const size_t colon = text.find(':');
  int64_t start = -1, end = -1;
  bool ok = colon != std::string::npos;
  try {
    size_t used = 0;
    if (ok) {
      start = std::stoll(text.substr(0, colon), &used);
      ok = used == colon;
    }
    if (ok) {
      end = std::stoll(text.substr(colon + 1), &used);
      ok = used == text.size() - colon - 1;
    }
  } catch (const std::exception&) {
    ok = false;
  }
  MECHLAB_CHECK(ok && start >= 0 && end > start, "--rows wants START:END with 0 <= START < END "
                "(e.g. --rows 100:110), got '", text, "'");
  return {start, end};
}

// The tokenizer the store's tokens belong to: --tokenizer, else the
// dataset's recorded tokenizer (the store's job names the dataset file),
// else the model's (its folder's files or its checkpoint's vocabulary).
std::unique_ptr<core::tokenizer::Tokenizer> store_tokenizer(const core::StoreHeader& h,
                                                            const std::string& given) {
  if (!given.empty()) return core::tokenizer::find_model_tokenizer("", given);
  std::error_code ec;
  const nlohmann::json job = nlohmann::json::parse(h.job, nullptr, /*allow_exceptions=*/false);
  const std::string dataset = job.is_object() ? job.value("dataset", "") : "";
  if (!dataset.empty() && std::filesystem::is_regular_file(dataset, ec)) {
    const core::H5File f = core::H5File::open_read(dataset);
    if (f.has_attr("", "tokenizer")) {
      const std::string text = f.read_attr_string("", "tokenizer");
      if (!text.empty()) {
        return std::make_unique<core::tokenizer::WordTokenizerAdapter>(
            core::WordTokenizer::from_json_string(text));
      }
    }
  }
  if (std::filesystem::exists(h.model, ec)) return core::tokenizer::find_model_tokenizer(h.model);
  return nullptr;
}

void print_rows(const core::ActivationStore& s, const std::string& range, const std::string& hook,
                const std::string& tokenizer) {
  MECHLAB_CHECK(!range.empty() && !hook.empty(),
                "--rows and --hook go together: give both (e.g. --rows 100:110 --hook ",
                s.header().hooks.empty() ? std::string("HOOK") : s.header().hooks.front(), ")");
  const auto& hooks = s.header().hooks;
  if (std::find(hooks.begin(), hooks.end(), hook) == hooks.end()) {
    std::string have;
    for (const auto& h : hooks) have += (have.empty() ? "" : ", ") + h;
    throw Error(str_cat("--hook '", hook, "' is not in store '", s.path(), "'; it holds: ", have));
  }
  const auto [start, end] = parse_row_range(range);
  MECHLAB_CHECK(end <= s.num_rows(), "--rows ", range, " reaches past the store's ", s.num_rows(),
                " committed rows; use rows within 0:", s.num_rows());
  const auto tok = store_tokenizer(s.header(), tokenizer);
  const int64_t n = end - start;
  const at::Tensor acts = s.rows(hook, start, n).to(at::kFloat).reshape({n, -1});  // [n, d]
  const at::Tensor ids = s.token_ids(start, n).to(at::kLong);                      // [n]
  const at::Tensor src = s.row_source(start, n).to(at::kLong);                     // [n, 2]
  const int64_t d = acts.size(1), shown = std::min<int64_t>(d, 6);
  std::printf("%s rows %lld:%lld (d = %lld; first %lld values shown)\n", hook.c_str(),
              static_cast<long long>(start), static_cast<long long>(end),
              static_cast<long long>(d), static_cast<long long>(shown));
  std::printf("  %-8s %-8s %-5s %-24s %-9s %s\n", "row", "example", "pos", "token", "norm",
              "values");
  for (int64_t i = 0; i < n; ++i) {
    const int64_t id = ids[i].item<int64_t>();
    std::string token = std::to_string(id);
    if (tok && id >= 0 && id < tok->vocab_size()) {
      token += " " + nlohmann::json(tok->decode({id}))
                         .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    }
    std::string values;
    for (int64_t k = 0; k < shown; ++k) {
      char buf[24];
      std::snprintf(buf, sizeof buf, "%s%+.4f", k ? " " : "", acts[i][k].item<double>());
      values += buf;
    }
    std::printf("  %-8lld %-8lld %-5lld %-24s %-9.4f %s\n", static_cast<long long>(start + i),
                static_cast<long long>(src[i][0].item<int64_t>()),
                static_cast<long long>(src[i][1].item<int64_t>()), printable(token).c_str(),
                acts[i].norm().item<double>(), values.c_str());
  }
}

}  // namespace

void add_store_command(CLI::App& app) {
  auto* store = app.add_subcommand("store", "Activation stores written by `mechlab cache`");
  store->require_subcommand(1);
  auto* cmd = store->add_subcommand(
      "inspect", "Print a store's model, hooks, shapes, progress and per-hook statistics");
  struct Args {
    std::string path, rows, hook, tokenizer;
    bool check = false;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("store", a->path, "Activation store (.h5)")->required();
  cmd->add_flag("--check", a->check,
                "Read every committed row and refuse the store if any value is NaN/Inf "
                "(names the row, example and position)");
  cmd->add_option("--rows", a->rows,
                  "Print rows START:END (half-open, as Python slices) of --hook with their "
                  "dataset example, position and token");
  cmd->add_option("--hook", a->hook, "The hook whose rows --rows prints");
  cmd->add_option("--tokenizer", a->tokenizer,
                  "Decode tokens with this tokenizer (default: the dataset's or model's, when "
                  "either records one; else ids only)");
  cmd->callback([a] {
    auto s = core::ActivationStore::open(a->path);
    if (!a->rows.empty() || !a->hook.empty()) {
      print_rows(s, a->rows, a->hook, a->tokenizer);
      return;
    }
    const auto& h = s.header();
    std::cout << "activation store " << a->path << "\n"
              << "  model        " << h.model << " (config hash " << h.config_hash << ")\n"
              << "  dtype        " << core::dtype_name(h.dtype) << "\n"
              << "  rows         " << h.rows_committed << " committed of " << h.rows_total
              << (h.complete ? " (complete)" : " (unfinished: continue with mechlab cache --resume)")
              << "\n"
              << "  chunk_rows   " << h.chunk_rows << "\n"
              << "  job          " << h.job << "\n"
              << (s.shard_count() > 1 ? str_cat("  shards       ", s.shard_count(), " (a store set)\n")
                                      : std::string())
              << "  hooks        " << h.hooks.size() << "\n";
    const int64_t sample = std::min<int64_t>(s.num_rows(), h.chunk_rows);
    for (const auto& name : h.hooks) {
      std::printf("    %-36s per token %-12s d = %-6lld", name.c_str(),
                  c10::str(c10::IntArrayRef(h.hook_shapes.at(name))).c_str(),
                  static_cast<long long>(h.width(name)));
      if (sample > 0) {
        at::Tensor x = s.rows(name, 0, sample).to(at::kFloat);
        std::printf("  first %lld rows: mean %+.4f std %.4f", static_cast<long long>(sample),
                    x.mean().item<double>(), x.std().item<double>());
      }
      std::printf("\n");
    }
    if (a->check) {
      s.check_all_finite();
      std::cout << "  check        every committed value is finite\n";
    }
  });
}

}  // namespace mechlab::cli
