// Datasets: the prompts every experiment reads, in one HDF5 file.
//
// Layout (mechlab_format = "dataset", mechlab_version = 1):
//
//   /                        root group, attributes:
//     mechlab_format   string  "dataset"
//     mechlab_version  int64   1; readers refuse newer versions
//     task             string  generator name ("induction", "ioi", ...) or "custom"
//     tokenizer        string  JSON of the tokenizer the ids belong to
//                              (core/data/tokenizer/word_tokenizer.h: {"kind": "word", "vocab": [...]}),
//                              or "" when the ids are raw (toy tasks over 0..d_vocab-1)
//     d_vocab          int64   every token id is in [0, d_vocab)
//     seed             int64   the generator's seed (-1 when not generated)
//     config           string  the generator's options as JSON ("{}" when none)
//   /tokens            int32 [N, T]   prompts (required unless the dataset is a
//                                     clean/corrupted pair set)
//   /attention_mask    uint8 [N, T]   optional; 1 = real token, 0 = padding
//   /clean_tokens      int32 [N, T]   patching tasks: clean and corrupted prompts,
//   /corrupted_tokens  int32 [N, T]   always together, same shape
//   /answer_tokens     int32 [N, K]   patching tasks: correct answers and the
//   /wrong_tokens      int32 [N, K]   wrong ones they are compared with
//   /answer_pos        int32 [N]      optional: the position whose logits
//                                     answer (default: the last real token)
//   /labels            int64 [N] or [N, T]   probing tasks; -1 = no label here
//
// Every dataset present must have the dtype and rank above and the same N
// (and T where it has a T axis); the reader checks this before returning, and
// names the dataset and what it expected. Writing goes to `path + ".tmp"` and
// renames, so an interrupted write never leaves a partial file.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

namespace mechlab::core {

inline constexpr const char* kDatasetFormat = "dataset";
inline constexpr int64_t kDatasetVersion = 1;

struct Dataset {
  std::string task = "custom";
  std::string tokenizer;     ///< tokenizer JSON, "" = raw ids
  int64_t d_vocab = 0;       ///< ids are in [0, d_vocab)
  int64_t seed = -1;
  std::string config = "{}"; ///< generator options as JSON

  at::Tensor tokens;            ///< int32 [N, T] (undefined if absent)
  at::Tensor attention_mask;    ///< uint8 [N, T]
  at::Tensor clean_tokens;      ///< int32 [N, T]
  at::Tensor corrupted_tokens;  ///< int32 [N, T]
  at::Tensor answer_tokens;     ///< int32 [N, K]
  at::Tensor wrong_tokens;      ///< int32 [N, K]
  at::Tensor answer_pos;        ///< int32 [N]
  at::Tensor labels;            ///< int64 [N] or [N, T]

  /// Number of examples N.
  int64_t size() const;
  /// Sequence length T.
  int64_t seq_len() const;
  /// The prompts a model runs on: tokens, or clean_tokens for pair sets.
  const at::Tensor& prompts() const;

  /// Checks dtypes, ranks, matching N/T, id ranges and mask values; throws
  /// mechlab::Error naming `where` (a path) and the offending dataset.
  void validate(const std::string& where = "dataset") const;
  /// Throws unless every token id is below `model_d_vocab` (a model's vocab
  /// may be smaller than the dataset's d_vocab claims).
  void check_vocab(int64_t model_d_vocab, const std::string& where = "dataset") const;
};

/// Validates and writes (replacing any file at `path`, atomically).
void save_dataset(const std::string& path, const Dataset& ds);
/// Reads and validates, refusing non-mechlab files, other formats and newer
/// versions with a message naming `path`.
Dataset load_dataset(const std::string& path);

}  // namespace mechlab::core
