// Post-processing of one encoded sequence: the special tokens placed around it
// (`post_processor` of tokenizer.json). TemplateProcessing's single-sequence template
// ("<|begin_of_text|> $A"), RobertaProcessing (<s> $A </s>), BertProcessing ([CLS] $A
// [SEP]), ByteLevel (offsets only: no ids) and a Sequence of these reduce to ids before and
// after the sequence.
#pragma once

#include <cstdint>
#include <vector>

namespace mechlab::core::tokenizer {

struct PostProcessor {
  std::vector<int64_t> prefix;  ///< ids before the sequence
  std::vector<int64_t> suffix;  ///< ids after it

  /// Applies `next` after this one (a Sequence of processors).
  void then(const PostProcessor& next) {
    prefix.insert(prefix.begin(), next.prefix.begin(), next.prefix.end());
    suffix.insert(suffix.end(), next.suffix.begin(), next.suffix.end());
  }
};

}  // namespace mechlab::core::tokenizer
