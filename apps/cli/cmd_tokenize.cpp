// mechlab tokenize: encode text (or decode ids) with a Hugging Face byte-level BPE tokenizer,
// printing ids and string tokens.
#include "apps/cli/commands.h"
#include "core/util/error.h"
#include "core/data/tokenizer/tokenizer_json.h"

#include <nlohmann/json.hpp>

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>

namespace mechlab::cli {
namespace {

std::vector<int64_t> parse_ids(const std::string& text) {
  std::vector<int64_t> ids;
  std::string item;
  std::istringstream in(text);
  while (std::getline(in, item, ',')) {
    const size_t b = item.find_first_not_of(" \t[]"), e = item.find_last_not_of(" \t[]");
    if (b == std::string::npos) continue;
    item = item.substr(b, e - b + 1);
    try {
      size_t used = 0;
      ids.push_back(std::stoll(item, &used));
      MECHLAB_CHECK(used == item.size(), "");
    } catch (const std::exception&) {
      throw Error(str_cat("--decode: '", item, "' is not an integer id; give ids like 15496,995"));
    }
  }
  return ids;
}

}  // namespace

void add_tokenize_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "tokenize",
      "Encode text with a Hugging Face byte-level BPE tokenizer (GPT-2, GPT-NeoX, Llama 3, Qwen2 "
      "styles) and print the ids and string tokens; or decode ids with --decode.");
  struct Args {
    std::string tokenizer, file, decode;
    std::vector<std::string> texts;
    bool no_special = false, prepend_bos = false, no_bos = false, json = false;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("tokenizer", a->tokenizer,
                  "tokenizer.json, or a folder holding tokenizer.json or vocab.json + merges.txt "
                  "(tokenizer_config.json beside them gives BOS/EOS)")
      ->required();
  cmd->add_option("--text", a->texts, "Text to encode; repeat for several texts");
  cmd->add_option("--file", a->file, "Encode the whole content of this UTF-8 file as one text");
  cmd->add_option("--decode", a->decode, "Decode these comma-separated ids instead, e.g. 15496,995");
  cmd->add_flag("--no-special-tokens", a->no_special,
                "Do not apply the tokenizer's post-processor (Hugging Face add_special_tokens=False: "
                "no Llama-3 BOS)");
  auto* pb = cmd->add_flag("--prepend-bos", a->prepend_bos,
                           "Start the ids with exactly one BOS (TransformerLens prepend_bos=True; GPT-2 "
                           "gets <|endoftext|>)");
  cmd->add_flag("--no-bos", a->no_bos, "Leave out a BOS the post-processor would put first (prepend_bos=False)")
      ->excludes(pb);
  cmd->add_flag("--json", a->json,
                "Print one JSON object per text: {\"text\", \"ids\", \"str_tokens\"} (decode: {\"ids\", \"text\"})");
  cmd->callback([a] {
    const auto tok = core::tokenizer::load_tokenizer(a->tokenizer);
    if (!a->decode.empty()) {
      MECHLAB_CHECK(a->texts.empty() && a->file.empty(), "give either --decode or --text/--file, not both");
      const std::vector<int64_t> ids = parse_ids(a->decode);
      const std::string text = tok->decode(ids);
      if (a->json) {
        std::cout << nlohmann::json{{"ids", ids}, {"text", text}}.dump() << "\n";
      } else {
        std::cout << text << "\n";
      }
      return;
    }
    std::vector<std::string> texts = a->texts;
    if (!a->file.empty()) {
      // A directory opens as an ifstream on Linux and reads as empty text:
      // refuse anything but a regular file (stat, not std::filesystem: see
      // the LibTorch trap in docs/ARCHITECTURE.md).
      struct stat st {};
      MECHLAB_CHECK(::stat(a->file.c_str(), &st) == 0, "cannot open --file '", a->file, "': ",
                    std::strerror(errno));
      MECHLAB_CHECK(S_ISREG(st.st_mode), "--file '", a->file, "' is ",
                    S_ISDIR(st.st_mode) ? "a directory" : "not a regular file",
                    "; give the path of a UTF-8 text file");
      std::ifstream in(a->file, std::ios::binary);
      MECHLAB_CHECK(in.good(), "cannot open --file '", a->file, "'");
      std::ostringstream ss;
      ss << in.rdbuf();
      MECHLAB_CHECK(!in.bad(), "cannot read --file '", a->file, "'");
      texts.push_back(ss.str());
    }
    MECHLAB_CHECK(!texts.empty(), "nothing to encode: give --text \"...\" or --file F (or --decode ids)");
    core::tokenizer::EncodeOptions options;
    options.add_special_tokens(!a->no_special);
    if (a->prepend_bos) options.prepend_bos(true);
    if (a->no_bos) options.prepend_bos(false);
    if (!a->json) std::cout << tok->describe() << "\n";
    for (const std::string& text : texts) {
      const std::vector<int64_t> ids = tok->encode(text, options);
      const std::vector<std::string> strs = tok->to_str_tokens(ids);
      if (a->json) {
        std::cout << nlohmann::json{{"text", text}, {"ids", ids}, {"str_tokens", strs}}.dump() << "\n";
        continue;
      }
      std::cout << "\ntext:   " << nlohmann::json(text).dump() << "\n"
                << "ids:    " << nlohmann::json(ids).dump() << " (" << ids.size() << " tokens)\n"
                << "tokens: ";
      for (size_t i = 0; i < strs.size(); ++i) {
        // JSON quoting makes spaces, tabs and newlines visible.
        std::cout << (i ? " " : "") << nlohmann::json(strs[i]).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
      }
      std::cout << "\n";
    }
  });
}

}  // namespace mechlab::cli
