// Loading byte-level BPE tokenizers from Hugging Face files.
//
// tokenizer.json (the `tokenizers` serialisation), the parts mechlab reads:
//   model            {"type": "BPE", "vocab": {token: id}, "merges": ["a b", ...] or
//                    [["a", "b"], ...], "ignore_merges", "unk_token", "fuse_unk",
//                    "dropout": null|0, "byte_fallback": false,
//                    "continuing_subword_prefix"/"end_of_word_suffix": null|""}
//   normalizer       null | {"type": "NFC"} | {"type": "Sequence", "normalizers": [NFC]}
//   pre_tokenizer    {"type": "ByteLevel", "add_prefix_space", "use_regex"} (GPT-2, GPT-NeoX)
//                    | {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern":
//                    {"Regex": R}, "behavior": "Isolated", "invert": false},
//                    {"type": "ByteLevel", "use_regex": false}]} (Llama 3, Qwen2; R is one
//                    of the patterns of core/data/tokenizer/pretokenizer.h)
//   post_processor   null | ByteLevel | TemplateProcessing (single) | RobertaProcessing |
//                    BertProcessing | Sequence of these
//   decoder          null (tokens joined by spaces) | ByteLevel
//   added_tokens     [{"id", "content", "single_word", "lstrip", "rstrip", "normalized",
//                    "special"}]
// Anything else (another model type, normalizer, pre-tokenizer, decoder, BPE dropout) is
// refused naming the key and what is supported, never ignored: ignoring it would change ids.
//
// vocab.json + merges.txt (GPT-2's files): the GPT-2 pattern, no normalizer, the ByteLevel
// decoder, "<|endoftext|>" as the special token when in the vocabulary (or the
// added_tokens_decoder of tokenizer_config.json when present).
//
// BOS/EOS ids: bos_token / eos_token of tokenizer_config.json beside the files when present;
// otherwise the first token the post-processor puts before the text as BOS; otherwise
// "<|endoftext|>" as both when in the vocabulary (GPT-2, GPT-NeoX: TransformerLens prepends it).
#pragma once

#include "core/data/tokenizer/bpe_tokenizer.h"

#include <memory>
#include <string>

namespace mechlab::core::tokenizer {

/// A tokenizer from a tokenizer.json file, or a folder holding tokenizer.json or
/// vocab.json + merges.txt (and optionally tokenizer_config.json).
///
/// Example: auto tok = load_tokenizer("tests/data/tokenizers/llama3");
std::unique_ptr<BpeTokenizer> load_tokenizer(const std::string& path);

/// The tokenizer that comes with a model: `tokenizer_path` when given, else
/// the model folder's tokenizer.json or vocab.json + merges.txt, or the word
/// vocabulary a mechlab checkpoint stores (its `tokenizer` attribute,
/// core/model/checkpoint.h); null when there is none.
std::unique_ptr<Tokenizer> find_model_tokenizer(const std::string& model_path,
                                                   const std::string& tokenizer_path = "");

/// A tokenizer from the text of a tokenizer.json; `config_json` is the text of
/// tokenizer_config.json or empty; `source` names it in messages.
std::unique_ptr<BpeTokenizer> tokenizer_from_json(const std::string& json_text, const std::string& config_json,
                                                  const std::string& source);

/// A GPT-2-style tokenizer from the text of vocab.json and merges.txt.
std::unique_ptr<BpeTokenizer> tokenizer_from_vocab_merges(const std::string& vocab_json,
                                                          const std::string& merges_txt,
                                                          const std::string& config_json,
                                                          const std::string& source);

}  // namespace mechlab::core::tokenizer
