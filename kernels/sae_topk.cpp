#include "kernels/sae_topk.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

namespace mechlab::kernels {
namespace {

void validate(const SaeTopkArgs& a) {
  MECHLAB_CHECK(a.x.defined() && a.x.dim() == 2, "sae_topk: x must be [n, m]; got ",
                a.x.defined() ? c10::str(a.x.sizes()) : std::string("undefined"));
  MECHLAB_CHECK(a.x.scalar_type() == at::kFloat || a.x.scalar_type() == at::kDouble,
                "sae_topk: x must be float32 or float64; got ", a.x.scalar_type());
  MECHLAB_CHECK(a.k >= 0 && a.k <= a.x.size(1), "sae_topk: k must be in [0, m = ", a.x.size(1), "]; got ", a.k);
}

at::Tensor topk_aten(const SaeTopkArgs& a) {
  return std::get<1>(at::topk(a.x, a.k, -1, /*largest=*/true, /*sorted=*/true));  // [n, k]
}

// One row at a time: a heap of the k best (key, index) seen so far, its
// worst on top; an entry enters only when its key is strictly above the
// worst's, so of equal keys the lower indices stay. On random rows the heap
// changes about k ln(m / k) times, so the pass is one compare per entry.
template <typename T, typename K>
at::Tensor topk_cpu_t(const SaeTopkArgs& a) {
  const at::Tensor x = a.x.contiguous();
  const int64_t n = x.size(0), m = x.size(1), k = a.k;
  at::Tensor out = at::empty({n, k}, x.options().dtype(at::kLong));  // [n, k]
  const T* xp = x.data_ptr<T>();
  int64_t* op = out.data_ptr<int64_t>();
  using Entry = std::pair<K, int64_t>;
  // "a ranks before b": larger key, then lower index. With it std's heap
  // keeps the entry ranked last on top.
  const auto before = [](const Entry& p, const Entry& q) {
    return p.first > q.first || (p.first == q.first && p.second < q.second);
  };
  at::parallel_for(0, n, 4, [&](int64_t b, int64_t e) {
    std::vector<Entry> heap(static_cast<size_t>(k));
    for (int64_t r = b; r < e; ++r) {
      if (k == 0) continue;
      const T* row = xp + r * m;
      const auto key = [&](int64_t i) {
        K bits;
        std::memcpy(&bits, row + i, sizeof(K));
        return detail::float_order_key(bits);
      };
      for (int64_t i = 0; i < k; ++i) heap[i] = {key(i), i};
      std::make_heap(heap.begin(), heap.end(), before);
      K worst = heap.front().first;
      for (int64_t i = k; i < m; ++i) {
        const K ki = key(i);
        if (ki <= worst) continue;
        std::pop_heap(heap.begin(), heap.end(), before);
        heap.back() = {ki, i};
        std::push_heap(heap.begin(), heap.end(), before);
        worst = heap.front().first;
      }
      std::sort(heap.begin(), heap.end(), before);
      for (int64_t j = 0; j < k; ++j) op[r * k + j] = heap[j].second;
    }
  });
  return out;
}

at::Tensor topk_cpu(const SaeTopkArgs& a) {
  return a.x.scalar_type() == at::kFloat ? topk_cpu_t<float, uint32_t>(a) : topk_cpu_t<double, uint64_t>(a);
}

}  // namespace

const KernelFamily<SaeTopkArgs>& sae_topk_family() {
  static const KernelFamily<SaeTopkArgs> family(
      "sae_topk", validate,
      {
#ifdef MECHLAB_HAVE_CUDA
          {"cuda", Runs::cuda, detail::sae_topk_cuda_unsupported, detail::sae_topk_cuda},
#endif
          {"cpu", Runs::anywhere,
           [](const SaeTopkArgs& a) {
             return a.x.is_cpu() ? std::string() : str_cat("it runs on CPU tensors, these are on ", a.x.device());
           },
           topk_cpu},
          {"aten", Runs::anywhere, [](const SaeTopkArgs&) { return std::string(); }, topk_aten},
      });
  return family;
}

at::Tensor sae_topk(const at::Tensor& x, int64_t k) { return sae_topk_family()(SaeTopkArgs{x, k}); }

}  // namespace mechlab::kernels
