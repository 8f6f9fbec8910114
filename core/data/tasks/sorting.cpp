#include "core/data/tasks/sorting.h"

#include <algorithm>

namespace mechlab::core::tasks {

Dataset make_sorting(const SortingOptions& options) {
  return make_seq_to_seq("sorting", options, [](std::vector<int32_t> x) {
    std::sort(x.begin(), x.end());
    return x;
  });
}

}  // namespace mechlab::core::tasks
