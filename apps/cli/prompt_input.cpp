#include "apps/cli/prompt_input.h"

#include "core/util/error.h"

namespace mechlab::cli {

using core::tokenizer::EncodeOptions;
using core::tokenizer::Tokenizer;

int64_t parse_token(const std::string& text, const Tokenizer* tok, const std::string& option) {
  try {
    size_t used = 0;
    const long long id = std::stoll(text, &used);
    if (used == text.size()) return id;
  } catch (const std::exception&) {
    // not an integer: a token's text
  }
  MECHLAB_CHECK(tok != nullptr, option, " '", text,
                "' is not a token id, and there is no tokenizer to look it up (give --tokenizer)");
  if (auto id = tok->token_to_id(text)) return *id;
  const std::vector<int64_t> ids =
      tok->encode(text, EncodeOptions().add_special_tokens(false).prepend_bos(false));
  MECHLAB_CHECK(ids.size() == 1, option, " '", text, "' is ", ids.size(),
                " tokens; give one token's text or its id");
  return ids[0];
}

void add_tokenizer_options(CLI::App* cmd, std::string& tokenizer_path, bool& no_bos) {
  cmd->add_option("--tokenizer", tokenizer_path,
                  "tokenizer.json, or a folder with tokenizer.json or vocab.json + merges.txt "
                  "(default: the model folder's own, if it has one)");
  cmd->add_flag("--no-bos", no_bos,
                "Do not start text prompts with BOS (default: exactly one BOS, as "
                "TransformerLens's prepend_bos=True)");
}

}  // namespace mechlab::cli
