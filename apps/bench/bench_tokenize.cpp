// mechlab bench tokenize: byte-level BPE encoding speed, single-threaded.
//   pre-tokenize only    the split pattern's scanner alone (no BPE)
//   encode, cold cache   the first pass over the text with a freshly loaded tokenizer
//   encode, warm cache   later passes (median): the word cache holds the frequent words
// The text is a list of documents (a file split at blank lines, "\n\n"), each one encode
// call, as `tokenizers`' encode_batch gets them. The comparison with the Rust `tokenizers`
// library is run by scripts/bench/tokenize_vs_tokenizers.sh, which measures it on the same
// text in the same run and passes its timings in with --baseline-json so that one table
// holds both rates and the ratios.
#include "apps/bench/bench_util.h"
#include "apps/cli/commands.h"
#include "core/formats/text_file.h"
#include "core/util/error.h"
#include "core/util/rng.h"
#include "core/data/tokenizer/tokenizer_json.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>

namespace mechlab::cli {
namespace {

std::vector<std::string> split_documents(const std::string& text) {
  std::vector<std::string> docs;
  size_t start = 0;
  while (true) {
    const size_t end = text.find("\n\n", start);
    docs.push_back(text.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) break;
    start = end + 2;
  }
  return docs;
}

// About `bytes` of English-like text: pseudo-words with a Zipf-like frequency, punctuation,
// numbers, newlines and blank lines between documents.
std::string generate_text(int64_t bytes, uint64_t seed) {
  static const char* syllables[] = {"the", "an", "in", "er", "on", "at", "re", "st", "ing", "ed", "ou", "al",
                                    "or", "ti", "is", "ar", "ent", "ion", "ly", "de", "pro", "com", "ca", "mo"};
  core::Rng rng(seed);
  std::vector<std::string> words;
  for (int i = 0; i < 20000; ++i) {
    std::string w;
    const int n = 1 + static_cast<int>(rng.below(4));
    for (int k = 0; k < n; ++k) w += syllables[rng.below(sizeof(syllables) / sizeof(*syllables))];
    words.push_back(w);
  }
  std::string out;
  out.reserve(static_cast<size_t>(bytes) + 64);
  while (static_cast<int64_t>(out.size()) < bytes) {
    const int sentences = 3 + static_cast<int>(rng.below(20));
    for (int s = 0; s < sentences; ++s) {
      const int n = 5 + static_cast<int>(rng.below(15));
      for (int k = 0; k < n; ++k) {
        const double u = rng.uniform();
        if (rng.below(25) == 0) {
          out += std::to_string(rng.below(100000));
        } else {
          std::string w = words[static_cast<size_t>(u * u * u * static_cast<double>(words.size()))];
          if (k == 0) w[0] = static_cast<char>(w[0] - 'a' + 'A');
          out += w;
        }
        out += (k + 1 < n) ? (rng.below(12) == 0 ? ", " : " ") : "";
      }
      out += rng.below(6) == 0 ? "?\n" : ". ";
    }
    out += "\n\n";
  }
  return out;
}

}  // namespace

void add_bench_tokenize(CLI::App& bench) {
  auto* cmd = bench.add_subcommand(
      "tokenize",
      "Byte-level BPE encoding speed on one thread (pre-tokenize only, cold and warm word cache); "
      "with --baseline-json, also the Rust `tokenizers` timings measured on the same text and the ratios. "
      "scripts/bench/tokenize_vs_tokenizers.sh runs the whole comparison.");
  struct Args {
    std::string tokenizer, text_file, baseline_json, ids_out;
    int64_t mb = 10;
    int repeats = 3;
    uint64_t seed = 0;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--tokenizer", a->tokenizer, "tokenizer.json or a folder (as `mechlab tokenize` takes)")->required();
  cmd->add_option("--text-file", a->text_file,
                  "UTF-8 text to encode, split into documents at blank lines (default: --mb MB of generated "
                  "English-like text)");
  cmd->add_option("--mb", a->mb, "MB (10^6 bytes) of generated text when no --text-file is given")
      ->capture_default_str()
      ->check(positive());
  cmd->add_option("--seed", a->seed, "Seed of the generated text")->capture_default_str();
  cmd->add_option("--repeats", a->repeats, "Timed warm passes (the median is reported)")
      ->capture_default_str()
      ->check(positive());
  cmd->add_option("--baseline-json", a->baseline_json,
                  "Timings measured elsewhere on the same text, to put in the table: {\"baseline\": NAME, "
                  "\"rows\": [{\"name\", \"ms\" (median), \"q1\", \"q3\", \"runs\", \"note\"}]}; ratios are "
                  "then against NAME");
  cmd->add_option("--ids-out", a->ids_out,
                  "Write the ids of all documents, in order, as little-endian int32 (to check them against "
                  "another tokenizer)");
  cmd->callback([a] {
    std::string text;
    std::string source;
    if (!a->text_file.empty()) {
      std::ifstream in(a->text_file, std::ios::binary);
      MECHLAB_CHECK(in.good(), "cannot open --text-file '", a->text_file, "'");
      std::ostringstream ss;
      ss << in.rdbuf();
      text = ss.str();
      source = a->text_file;
    } else {
      text = generate_text(a->mb * 1000000, a->seed);
      source = str_cat("generated, seed ", a->seed);
    }
    const std::vector<std::string> docs = split_documents(text);
    const double mb = static_cast<double>(text.size()) / 1e6;
    const at::Device cpu(at::kCPU);

    auto tok = core::tokenizer::load_tokenizer(a->tokenizer);
    std::vector<int64_t> ids;
    // The word cache lives in the tokenizer: a freshly loaded one is cold.
    auto encode_all = [&] {
      ids.clear();
      for (const std::string& d : docs) {
        const auto v = tok->encode(d, core::tokenizer::EncodeOptions().add_special_tokens(false));
        ids.insert(ids.end(), v.begin(), v.end());
      }
    };
    // Cold: the first pass of a freshly loaded tokenizer (loading untimed),
    // --repeats times; the last one loaded stays, warm, for the rest.
    std::vector<double> cold;
    for (int r = 0; r < a->repeats; ++r) {
      tok = core::tokenizer::load_tokenizer(a->tokenizer);
      const auto t0 = std::chrono::steady_clock::now();
      encode_all();
      cold.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    const bench::Stats cold_ms = bench::summarize(cold);
    const bench::Stats warm_ms = bench::time_ms(encode_all, 0, a->repeats, cpu);
    const size_t n_tokens = ids.size();
    std::vector<std::string_view> words;
    size_t n_words = 0;
    const bench::Stats split_ms = bench::time_ms(
        [&] {
          n_words = 0;
          for (const std::string& d : docs) {
            words.clear();
            core::tokenizer::split(tok->spec().pattern, d, words);
            n_words += words.size();
          }
        },
        0, a->repeats, cpu);

    std::vector<bench::Row> rows = {
        {"mechlab pre-tokenize only", split_ms, str_cat(n_words, " words")},
        {"mechlab encode, cold cache", cold_ms, "first pass after loading"},
        {"mechlab encode, warm cache", warm_ms, str_cat(n_tokens, " tokens, 1 thread")},
    };
    std::string baseline = "mechlab encode, warm cache";
    if (!a->baseline_json.empty()) {
      std::ifstream in(a->baseline_json);
      MECHLAB_CHECK(in.good(), "cannot open --baseline-json '", a->baseline_json, "'");
      nlohmann::json j;
      try {
        in >> j;
        baseline = j.at("baseline").get<std::string>();
        for (const auto& r : j.at("rows")) {
          // Each figure is a median of stated runs: runs, q1 and q3 are required.
          MECHLAB_CHECK(r.contains("runs") && r.contains("q1") && r.contains("q3"), "--baseline-json '",
                        a->baseline_json, "': row '", r.value("name", "?"), "' has no \"runs\", \"q1\" "
                        "and \"q3\": give each median with its run count and quartiles");
          bench::Stats s;
          s.median = r.at("ms").get<double>();
          s.q1 = r.at("q1").get<double>();
          s.q3 = r.at("q3").get<double>();
          s.n = r.at("runs").get<int64_t>();
          MECHLAB_CHECK(s.n >= 1, "--baseline-json '", a->baseline_json, "': row '",
                        r.at("name").get<std::string>(), "' has runs ", s.n, "; it must be at least 1");
          rows.push_back({r.at("name").get<std::string>(), s, r.value("note", "")});
        }
      } catch (const nlohmann::json::exception& e) {
        throw Error(str_cat("--baseline-json '", a->baseline_json, "': ", e.what()));
      }
    }
    if (!a->ids_out.empty()) {
      std::string bytes;  // little-endian int32 per id
      bytes.reserve(ids.size() * sizeof(int32_t));
      for (int64_t id : ids) {
        const auto v = static_cast<int32_t>(id);
        bytes.append(reinterpret_cast<const char*>(&v), sizeof v);
      }
      core::write_text_file(a->ids_out, bytes);  // checked, written whole
    }
    std::printf("tokenizer: %s\ntext: %s, %.2f MB, %zu documents, %zu tokens\n", tok->describe().c_str(),
                source.c_str(), mb, docs.size(), n_tokens);
    bench::print_table("mechlab bench tokenize (time for the whole text)", rows, baseline, mb, "MB");
  });
}

}  // namespace mechlab::cli
