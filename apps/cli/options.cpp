#include "apps/cli/commands.h"
#include "core/util/error.h"
#include "core/util/interrupt.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <thread>
#include <vector>

namespace mechlab::cli {

at::Device parse_device(const std::string& text) {
  if (text == "auto") return at::hasCUDA() ? at::Device("cuda") : at::Device("cpu");
  at::Device d("cpu");
  try {
    d = at::Device(text);
  } catch (const std::exception&) {
    throw Error(str_cat("unknown device \"", text, "\"; use cpu, cuda, cuda:N or auto"));
  }
  MECHLAB_CHECK(!d.is_cuda() || at::hasCUDA(), "device \"", text,
                "\" asked for, but no CUDA GPU is available here; use --device cpu");
  return d;
}

at::ScalarType parse_dtype(const std::string& text) {
  if (text == "f32" || text == "float32") return at::kFloat;
  if (text == "bf16" || text == "bfloat16") return at::kBFloat16;
  if (text == "f16" || text == "float16") return at::kHalf;
  throw Error(str_cat("unknown dtype \"", text, "\"; use f32, bf16 or f16"));
}

std::string human_bytes(int64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) v /= 1024, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
  return buf;
}

core::ProcessOptions ProcessFlags::options() const {
  // Individually named steps are strict (an inapplicable one is an error);
  // --process adds every step and skips those the model cannot take.
  if (all) return core::ProcessOptions::all();
  return core::ProcessOptions()
      .fold_ln(fold_ln)
      .center_writing_weights(center_writing_weights)
      .center_unembed(center_unembed)
      .fold_value_biases(fold_value_biases);
}

void add_process_flags(CLI::App* cmd, ProcessFlags& flags) {
  const char* group = "Weight processing (TransformerLens's process_weights_; default: none)";
  cmd->add_flag("--process", flags.all,
                "All four steps below, skipping (with a warning) those the model cannot take, "
                "as TransformerLens's from_pretrained")
      ->group(group);
  cmd->add_flag("--fold-ln", flags.fold_ln,
                "Fold norm weights into the next layers; norms become LNPre/RMSPre")
      ->group(group);
  cmd->add_flag("--center-writing-weights", flags.center_writing_weights,
                "Remove the d_model mean of W_E, W_pos, W_O, b_O, W_out, b_out (LayerNorm only)")
      ->group(group);
  cmd->add_flag("--center-unembed", flags.center_unembed,
                "Remove the vocabulary mean of W_U and b_U (log-probs unchanged)")
      ->group(group);
  cmd->add_flag("--fold-value-biases", flags.fold_value_biases, "Fold b_V through W_O into b_O")
      ->group(group);
}

}  // namespace mechlab::cli

namespace mechlab::cli {

int max_threads() {
  const unsigned hw = std::thread::hardware_concurrency();
  return 4 * static_cast<int>(hw == 0 ? 1 : hw);
}

void add_threads_option(CLI::App* cmd, const std::string& use) {
  cmd->add_option_function<int>(
         "--threads",
         [](const int& n) {
           MECHLAB_CHECK(n >= 0 && n <= max_threads(), "--threads must be between 1 and ",
                         max_threads(), " (4 x the ", max_threads() / 4,
                         " hardware threads here), or 0 for LibTorch's default; got ", n);
           if (n > 0) at::set_num_threads(n);
         },
         str_cat("CPU threads, 1 to ", max_threads(), " (0 = LibTorch's default: all cores)",
                 use.empty() ? "" : ". " + use))
      ->default_str("0");
}

void handle_interrupts(bool polled, const char* unpolled_note) {
  core::install_interrupt_handler(polled, unpolled_note);
}

namespace {
CLI::Validator number_check(bool strict) {
  return CLI::Validator(
      [strict](std::string& text) -> std::string {
        double v = 0;
        try {
          size_t used = 0;
          v = std::stod(text, &used);
          if (used != text.size()) return "must be a number, got '" + text + "'";
        } catch (const std::exception&) {
          return "must be a number, got '" + text + "'";
        }
        if (strict ? v > 0 : v >= 0) return "";
        return std::string(strict ? "must be > 0" : "must be >= 0") + ", got " + text;
      },
      strict ? "> 0" : ">= 0");
}
}  // namespace

CLI::Validator positive() { return number_check(true); }
CLI::Validator non_negative() { return number_check(false); }

CLI::Option* add_count_option(CLI::App* cmd, const std::string& name, int64_t& target,
                              const std::string& description, int64_t min) {
  return cmd
      ->add_option_function<std::string>(
          name,
          [name, &target, min](const std::string& text) {
            int64_t v = 0;
            bool ok = false;
            try {
              size_t used = 0;
              v = std::stoll(text, &used);
              ok = used == text.size();
              if (!ok) {
                // "1e6": a whole number written in scientific notation.
                const double d = std::stod(text, &used);
                ok = used == text.size() && d == std::floor(d) && std::fabs(d) < 9.2e18;
                v = ok ? static_cast<int64_t>(d) : 0;
              }
            } catch (const std::exception&) {
              ok = false;
            }
            MECHLAB_CHECK(ok, name, " must be a whole number, got '", text, "'");
            MECHLAB_CHECK(v >= min, name, min == 1 ? " must be > 0" : " must be >= 0", ", got ", v);
            target = v;
          },
          description)
      ->type_name("INT")  // parsed as text (to accept "1e6"), shown as what it is
      ->default_str(std::to_string(target));
}

int64_t physical_memory_bytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? static_cast<int64_t>(pages) * page : 0;
}

void require_memory(int64_t bytes, const std::string& option_and_value, const std::string& what,
                    const std::string& hint) {
  const int64_t have = physical_memory_bytes();
  if (have <= 0 || bytes <= have) return;
  char need[32], ram[32];
  std::snprintf(need, sizeof need, "%.1f", static_cast<double>(bytes) / 1e9);
  std::snprintf(ram, sizeof ram, "%.1f", static_cast<double>(have) / 1e9);
  throw Error(str_cat(option_and_value, " needs about ", need, " GB of memory for ", what,
                      "; this machine has ", ram, " GB; ", hint));
}

std::string with_flag_names(std::string message) {
  // Library spelling -> the flag that sets it (cache, train, new, dataset
  // make, patch: --overwrite/--resume; every model-loading command: --process).
  static const std::pair<const char*, const char*> kFlags[] = {
      {"`CacheOptions::batch_size`", "--batch-size"},
      {"`CacheOptions::chunk_rows`", "--chunk-rows"},
      {"`CacheOptions::shard_index`", "I of --shard I/N"},
      {"`CacheOptions::shard_count`", "N of --shard I/N"},
      {"`resume`", "--resume"},
      {"`overwrite`", "--overwrite"},
      {"`ProcessOptions::all()`", "--process"},
      {"`ProbeRunOptions::hooks`", "--hooks"},
      {"`ProbeRunOptions::label`", "--label"},
      {"`ProbeRunOptions::test_fraction`", "--test-fraction"},
      {"`ProbeRunOptions::seed`", "--seed"},
      {"`ProbeRunOptions::resamples`", "--resamples"},
      {"`ProbeRunOptions::confidence`", "--confidence"},
      {"`ProbeRunOptions::batch_size`", "--batch-size"},
      {"`ProbeRunOptions::max_examples`", "--max-examples"},
      {"`ProbeRunOptions::ablate_examples`", "--ablate-examples"},
      {"`ProbeRunOptions::ablate`", "--ablate"},
      {"`ProbeRunOptions::split_by`", "--split-by"},
      {"`ProbeRunOptions::device`", "--device"},
      {"`ProbeRunOptions::split_heads`", "--split-heads"},
      {"`ProbeRunOptions::position`", "--position"},
      {"`ProbeRunOptions::attach`", "--sae"},
      {"`split_heads`", "--split-heads"},
      {"`ProbeOptions::C`", "--C"},
      {"`ProbeOptions::max_iter`", "--max-iter"},
      {"`ProbeOptions::tol`", "--tol"},
      {"`ProbeOptions::solver`", "--solver"},
      {"`ProbeOptions::penalty`", "--penalty"},
      {"`ProbeOptions::epochs`", "--epochs"},
      {"`make_task(\"ioi\")`", "`mechlab dataset make ioi --out ioi.h5`"},
  };
  for (const auto& [from, to] : kFlags) {
    const std::string f = from;
    for (size_t at = message.find(f); at != std::string::npos; at = message.find(f, at)) {
      message.replace(at, f.size(), to);
      at += std::string(to).size();
    }
  }
  return message;
}

std::string printable(const std::string& text) {
  std::string out;
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  auto hex = [&out](unsigned char c) {
    char buf[5];
    std::snprintf(buf, sizeof buf, "\\x%02x", c);
    out += buf;
  };
  for (size_t i = 0; i < n;) {
    const unsigned char c = s[i];
    if (c < 0x20 || c == 0x7f) {
      hex(c);
      ++i;
      continue;
    }
    if (c < 0x80) {
      out += static_cast<char>(c);
      ++i;
      continue;
    }
    // A well-formed UTF-8 sequence passes whole; any other byte is escaped.
    const size_t len = (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
    bool ok = len > 0 && i + len <= n && !(len == 2 && c < 0xc2);
    for (size_t k = 1; ok && k < len; ++k) ok = (s[i + k] & 0xc0) == 0x80;
    if (ok) {
      out.append(text, i, len);
      i += len;
    } else {
      hex(c);
      ++i;
    }
  }
  return out;
}

namespace {
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] != b[j - 1] ? 1 : 0)});
      diag = up;
    }
  }
  return row[b.size()];
}
}  // namespace

std::string unknown_command_message(const CLI::App& app, int argc, char** argv) {
  const CLI::App* at = &app;
  std::string path;  // the commands named so far, e.g. "dataset "
  for (int i = 1; i < argc; ++i) {
    const std::string word = argv[i];
    if (word.empty() || word[0] == '-') continue;  // the parents' flags take no values
    const auto subs = at->get_subcommands([](const CLI::App*) { return true; });
    if (subs.empty()) return "";  // a leaf command: the rest are its arguments
    const CLI::App* next = nullptr;
    std::string best;
    size_t best_d = std::string::npos;
    for (const CLI::App* sub : subs) {
      if (sub->check_name(word)) next = sub;
      const size_t d = edit_distance(word, sub->get_name());
      if (d < best_d) best_d = d, best = sub->get_name();
    }
    if (next == nullptr) {
      std::string msg = str_cat("unknown command '", path, word, "'");
      if (best_d <= std::max<size_t>(2, word.size() / 3)) {
        msg += str_cat("; did you mean '", path, best, "'?");
      } else {
        msg += str_cat("; `mechlab ", path, "--help` lists the commands");
      }
      return msg;
    }
    path += next->get_name() + " ";
    at = next;
  }
  return "";
}

}  // namespace mechlab::cli
