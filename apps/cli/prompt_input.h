// Text prompts for the CLI (run, generate, info): the tokenizer that comes with
// a Hugging Face model folder, and TransformerLens's prepend_bos.
//
// BOS: text prompts start with exactly one BOS when the tokenizer has one, as
// TransformerLens's to_tokens with its default prepend_bos=True (GPT-2 and
// GPT-NeoX get <|endoftext|>, Llama 3 keeps its <|begin_of_text|>);
// --no-bos leaves it out, also where the tokenizer's post-processor would add
// it (prepend_bos=False). Token-id prompts are taken as given.
#pragma once

#include "core/data/tokenizer/bpe_tokenizer.h"

#include <CLI/CLI.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace mechlab::cli {

/// The tokenizer for `model_path`: `tokenizer_path` when given, else the
/// model folder's tokenizer.json or vocab.json + merges.txt; null when there
/// is none (a mechlab checkpoint, a folder without tokenizer files).
std::unique_ptr<core::tokenizer::BpeTokenizer> model_tokenizer(const std::string& model_path,
                                                               const std::string& tokenizer_path);

/// The ids of a text prompt, with a BOS first unless `no_bos` (see above).
std::vector<int64_t> encode_prompt(const core::tokenizer::Tokenizer& tok, const std::string& text,
                                   bool no_bos);

/// A token given on the command line as an id ("50256") or as one token's
/// text ("<|endoftext|>", "\n", " the"); refuses text of several tokens.
int64_t parse_token(const std::string& text, const core::tokenizer::Tokenizer* tok,
                    const std::string& option);

/// --tokenizer and --no-bos, as run and generate take them.
void add_tokenizer_options(CLI::App* cmd, std::string& tokenizer_path, bool& no_bos);

}  // namespace mechlab::cli
