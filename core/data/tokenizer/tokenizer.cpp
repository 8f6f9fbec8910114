#include "core/data/tokenizer/tokenizer.h"

namespace mechlab::core::tokenizer {

std::vector<std::string> Tokenizer::to_str_tokens(const std::vector<int64_t>& ids) const {
  std::vector<std::string> out;
  out.reserve(ids.size());
  for (int64_t id : ids) out.push_back(decode_ids({id}, false));
  return out;
}

std::vector<int64_t> Tokenizer::to_tokens(std::string_view text, bool prepend_bos) const {
  EncodeOptions options;
  if (!prepend_bos) {
    options.prepend_bos(false);
  } else if (bos_id()) {
    options.prepend_bos(true);
  }
  return encode_ids(text, options);
}

}  // namespace mechlab::core::tokenizer
