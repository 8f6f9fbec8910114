// Quickstart of the C++ API: build a small model, cache activations, ablate a
// head with a temporary hook, and attribute the logit difference to residual
// components. Run: build/example_quickstart
#include "core/model/presets.h"
#include "hooks/hooked_transformer.h"

#include <ATen/ATen.h>

#include <cstdio>

using namespace mechlab;
using hooks::HookPoint;
using hooks::NamesFilter;
using hooks::PosSlice;

int main() {
  hooks::HookedTransformer model(core::Transformer(core::preset("tiny"), /*seed=*/0));
  at::Tensor tokens = at::tensor(std::vector<int64_t>{11, 42, 7, 99, 11, 42, 7}).view({1, -1});  // [batch, pos]

  auto [logits, cache] = model.run_with_cache(tokens, NamesFilter::glob("blocks.1.*"));
  std::printf("cached %zu activations; layer-1 pattern %s\n", cache.size(),
              c10::str(cache.get("pattern", 1).sizes()).c_str());

  at::Tensor ablated = model.run_with_hooks(tokens, {{"blocks.1.attn.hook_z",
      [](at::Tensor& z, const HookPoint&) { z = z.clone(); z.select(2, 3).zero_(); }}});
  std::printf("zero-ablating head 1.3 moves the logits by %.4g (max abs)\n",
              (ablated - logits).abs().max().item<double>());

  auto [l2, full] = model.run_with_cache(tokens);
  auto parts = full.decompose_resid(-1, false, "all", false, PosSlice(-1));
  at::Tensor answer = at::tensor(std::vector<int64_t>{99}), wrong = at::tensor(std::vector<int64_t>{7});
  at::Tensor attrs = full.logit_attrs(parts.tensor, answer, wrong, PosSlice(-1));  // [component, batch]
  for (size_t i = 0; i < parts.labels.size(); ++i) {
    std::printf("  %-12s %+.5f\n", parts.labels[i].c_str(), attrs[i][0].item<double>());
  }
  return 0;
}
