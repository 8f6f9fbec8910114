#include "core/data/tokenizer/tokenizer.h"

namespace mechlab::core::tokenizer {

std::vector<std::string> Tokenizer::to_str_tokens(const std::vector<int64_t>& ids) const {
  std::vector<std::string> out;
  out.reserve(ids.size());
  for (int64_t id : ids) out.push_back(decode_ids({id}, false));
  return out;
}

}  // namespace mechlab::core::tokenizer
