// An experiment program that knows mechlab only through its installed package.
#include <mechlab/mechlab.h>

#include <cstdio>

int main() {
  using namespace mechlab;
  hooks::HookedTransformer model(core::Transformer(core::preset("tiny"), /*seed=*/0));
  at::Tensor tokens = at::tensor(std::vector<int64_t>{1, 2, 3, 4}).view({1, -1});  // [batch, pos]
  auto [logits, cache] = model.run_with_cache(tokens, hooks::NamesFilter::glob("*resid_post"));
  // ln_final and the unembedding of the cached last residual give the logits.
  std::printf("cached %zu residuals; logits %s\n", cache.size(), c10::str(logits.sizes()).c_str());
  return 0;
}
