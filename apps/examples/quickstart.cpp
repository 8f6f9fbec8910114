// Quickstart of the C++ API on the shipped induction model: cache attention
// patterns, find the induction heads, ablate the best one with a temporary
// hook, and attribute the logit of the copied token to residual components.
//
// Build: every example under apps/examples/ is built with mechlab
// (build/example_quickstart) and run by tests/apps/examples_test.cpp.
// Run:   build/example_quickstart apps/models/induction.h5
// The part between the [readme] markers is the README's API example
// (tests/apps/examples_test.cpp checks that the two are the same text).
#include <mechlab/mechlab.h>

#include <cstdio>
#include <string>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s MODEL   (a mechlab checkpoint or a Hugging Face folder)\n", argv[0]);
    return 2;
  }
  const std::string path = argv[1];
  try {
    // [readme]
    using namespace mechlab;
    using hooks::HookedTransformer, hooks::HookPoint, hooks::NamesFilter;
    using hooks::PosSlice, hooks::ResidOptions;

    // A mechlab checkpoint or a Hugging Face folder; PretrainedOptions() picks
    // weight processing (TransformerLens's fold_ln, centring...), dtype, device
    // and tokenizer.
    auto model = HookedTransformer::from_pretrained(path);

    // BOS (id 0), 10 random tokens, the same 10 again: the second half can be
    // predicted only by copying (induction).
    const int64_t L = 10;
    at::manual_seed(0);
    at::Tensor half = at::randint(1, model.cfg().d_vocab, {1, L}, at::kLong);
    at::Tensor tokens = at::cat({at::zeros({1, 1}, at::kLong), half, half}, 1);  // [batch, pos]

    // Cache what you need (a list, a glob or a predicate), as TransformerLens does.
    auto [logits, cache] = model.run_with_cache(tokens, NamesFilter::glob("*hook_pattern"));
    at::Tensor pattern = cache.get("pattern", 1);  // [batch, head, q_pos, k_pos]

    // Induction score: attention from each token of the second half to the
    // token after its first occurrence (offset L - 1 back).
    at::Tensor score = pattern[0].diagonal(-(L - 1), 1, 2).narrow(1, 1, L).mean(1);  // [head]
    const int64_t head = score.argmax().item<int64_t>();
    std::printf("layer-1 induction scores:");
    for (int64_t h = 0; h < score.size(0); ++h) std::printf(" 1.%lld %.2f", (long long)h, score[h].item<double>());
    std::printf("; best head 1.%lld\n", (long long)head);

    // Temporary hooks, removed when the call returns: zero-ablate that head.
    // Loss on the copied tokens: positions L + 1 .. 2L - 1 predict half[1..].
    auto copy_loss = [&](const at::Tensor& lg) {
      return core::loss_per_token(lg, tokens).narrow(1, L + 1, L - 1).mean().item<double>();
    };
    at::Tensor ablated = model.run_with_hooks(tokens, {{"blocks.1.attn.hook_z",
        [head](at::Tensor& z, const HookPoint&) { z = z.clone(); z.select(2, head).zero_(); }}});
    std::printf("loss on the copied tokens: %.3f, with head 1.%lld ablated: %.3f\n",
                copy_loss(logits), (long long)head, copy_loss(ablated));

    // Residual-stream analysis: which components write the logit of the token
    // to copy, against the current one, at the second-to-last position.
    auto [l2, full] = model.run_with_cache(tokens);
    auto parts = full.decompose_resid(ResidOptions().pos(-2));
    at::Tensor answer = half.select(1, L - 1), wrong = half.select(1, L - 2);  // [batch]
    at::Tensor attrs = full.logit_attrs(parts.tensor, answer, wrong, PosSlice(-2));  // [component, batch]
    for (size_t i = 0; i < parts.labels.size(); ++i) {
      std::printf("  %-12s %+.3f\n", parts.labels[i].c_str(), attrs[i][0].item<double>());
    }
    // [/readme]
  } catch (const mechlab::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
