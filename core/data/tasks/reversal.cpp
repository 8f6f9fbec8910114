#include "core/data/tasks/reversal.h"

#include <algorithm>

namespace mechlab::core::tasks {

Dataset make_reversal(const ReversalOptions& options) {
  return make_seq_to_seq("reversal", options, [](std::vector<int32_t> x) {
    std::reverse(x.begin(), x.end());
    return x;
  });
}

}  // namespace mechlab::core::tasks
