// Text prompts for the CLI (run, generate): the options that choose the
// tokenizer (core::tokenizer::find_model_tokenizer) and the BOS
// (Tokenizer::to_tokens, TransformerLens's prepend_bos), and tokens given on
// the command line by id or by text. Token-id prompts are taken as given.
#pragma once

#include "core/data/tokenizer/bpe_tokenizer.h"

#include <CLI/CLI.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace mechlab::cli {

/// A token given on the command line as an id ("50256") or as one token's
/// text ("<|endoftext|>", "\n", " the"); refuses text of several tokens.
int64_t parse_token(const std::string& text, const core::tokenizer::Tokenizer* tok,
                    const std::string& option);

/// --tokenizer and --no-bos, as run and generate take them.
void add_tokenizer_options(CLI::App* cmd, std::string& tokenizer_path, bool& no_bos);

}  // namespace mechlab::cli
