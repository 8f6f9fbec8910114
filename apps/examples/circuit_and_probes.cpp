// Circuit discovery and probing through the C++ API on the shipped induction
// model: ACDC on induction prompt pairs (the circuit that predicts the copied
// token, and how faithful it is), then one linear probe per layer for "this
// token appeared earlier", with Hewitt & Liang's control task, and what
// ablating each probe's direction does to the loss. These are the pieces;
// probes::run_probes (probes/probe_run.h, `mechlab probe`) does the probing
// part in one call, from a model or an activation store, with bootstrap
// intervals, and per head (split_heads), at one position, or on an SAE's
// latents (attach).
//
// Build: every example under apps/examples/ is built with mechlab
// (build/example_circuit_and_probes) and run by tests/apps/examples_test.cpp.
// Run:   build/example_circuit_and_probes apps/models/induction.h5
#include <mechlab/mechlab.h>

#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s MODEL   (a mechlab checkpoint or a Hugging Face folder)\n", argv[0]);
    return 2;
  }
  const std::string path = argv[1];
  try {
    using namespace mechlab;
    auto model = hooks::HookedTransformer::from_pretrained(path);
    const int64_t d_vocab = model.cfg().d_vocab;

    // ---- ACDC (Conmy et al. 2023). Clean: BOS a_1..a_8 a_1..a_3, answer a_4;
    // corrupted: the first copy replaced, so only induction predicts a_4.
    const core::Dataset pairs = core::tasks::make_task("induction", {{"n", 16}, {"seed", 1}, {"pairs", true},
                                                                      {"half_len", 8}, {"query_len", 3},
                                                                      {"d_vocab", d_vocab}});
    const auto data = patching::PatchingData::from_dataset(pairs);
    discovery::CircuitRunner runner(model, data, discovery::Ablation::corrupted);
    // KL to the clean run at the answer: 0 for the full model, it grows as the circuit breaks.
    const patching::Metric kl = patching::kl_to_clean(data.answers(), runner.clean_logits());
    const discovery::AcdcResult acdc = discovery::acdc(runner, kl, discovery::AcdcOptions().threshold(0.05));
    // Edges are named sender -> receiver; a head's receivers are its query,
    // key and value inputs ("a1.h2<k>": the key input of layer 1's head 2),
    // and "a1.h2<k> -> a1.h2" says that input is used.
    std::printf("ACDC kept %lld of %lld edges:\n", (long long)acdc.circuit.edge_count(),
                (long long)acdc.circuit.edges().size());
    for (const discovery::CircuitEdge& e : acdc.circuit.edges()) {
      if (acdc.circuit.kept(e)) std::printf("  %s\n", acdc.circuit.edge_name(e).c_str());
    }
    // Faithfulness (m(C) - m(empty)) / (m(full) - m(empty)): 1 = the circuit does all the work.
    const auto m = runner.metrics(kl, {discovery::Circuit::full(runner.graph()), acdc.circuit,
                                       discovery::Circuit::empty(runner.graph())});
    std::printf("KL: full %.3f, circuit %.3f, empty %.3f; faithfulness %.3f\n", m[0], m[1], m[2],
                discovery::faithfulness(m[1], m[0], m[2]));

    // ---- Probes (Alain & Bengio 2016), as scikit-learn's LogisticRegression
    // on cached activations, but every layer's probe in one batched fit.
    // Prompts of repeated random tokens; the label: has this token appeared
    // earlier in its prompt (BOS: no label, -1)?
    const core::Dataset repeats = core::tasks::make_task("induction", {{"n", 64}, {"seed", 2}, {"d_vocab", d_vocab}});
    const at::Tensor tokens = repeats.tokens.to(at::kLong);                                   // [N, T]
    // (no dataset /labels needed for "repeated"; the last argument names the data in errors)
    const at::Tensor labels = probes::token_labels("repeated", tokens, {}, "the prompts");    // [N, T]
    const std::vector<std::string> sites = {"hook_embed", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"};
    auto [logits, cache] = model.run_with_cache(tokens, sites);
    const probes::ProbeFeatures f = probes::features_from_cache(cache, sites);  // x [P, N*T, d_model]
    const at::Tensor rows = labels.reshape({-1}).ge(0).nonzero().squeeze(1);  // the labelled rows
    const at::Tensor x = f.x.index_select(1, rows), y = labels.reshape({-1}).index_select(0, rows);
    const at::Tensor ids = tokens.reshape({-1}).index_select(0, rows);
    // Each row's prompt: these prompts have no padding, so row r is prompt
    // r / T (padded prompts: pass the attention mask to features_from_cache
    // as its row_mask, and take the prompts of the rows it keeps).
    const at::Tensor prompt = rows.div(tokens.size(1), "floor");
    // Train and test hold whole prompts (scikit-learn's GroupShuffleSplit).
    const probes::Split split = probes::group_split(prompt, probes::SplitOptions().test_fraction(0.25).seed(0));
    auto fit_and_score = [&](const at::Tensor& target) {  // -> (probes, test accuracy [P])
      probes::LinearProbes p =
          probes::fit_logistic(x.index_select(1, split.train), target.index_select(0, split.train));
      const at::Tensor predicted = p.predict(x.index_select(1, split.test));  // [P, test rows]
      return std::make_pair(p, probes::accuracy(predicted, target.index_select(0, split.test)));
    };
    const auto [fitted, accuracy] = fit_and_score(y);
    // Hewitt & Liang's control task: each token type gets a random label. The
    // embedding knows the token, not whether it came before: there the
    // control beats the task (selectivity < 0), after layer 0 it does not.
    const at::Tensor control = fit_and_score(probes::control_labels(ids, y, /*seed=*/0)).second;
    const at::Tensor selectivity = probes::selectivity(accuracy, control);
    std::printf("probes for 'this token appeared earlier' (%lld test tokens):\n", (long long)split.test.size(0));
    for (size_t i = 0; i < sites.size(); ++i) {
      const int64_t p = static_cast<int64_t>(i);
      std::printf("  %-26s accuracy %.3f, control %.3f, selectivity %+.3f\n", sites[i].c_str(),
                  accuracy[p].item<double>(), control[p].item<double>(), selectivity[p].item<double>());
    }
    // Does the model use what a probe reads? Project the probe's direction
    // out of its hook during a forward and compare the next-token loss.
    const at::Tensor few = tokens.slice(0, 0, 8);
    for (size_t i = 0; i < sites.size(); ++i) {
      auto ablate = std::make_shared<probes::ProbeIntervention>(
          probes::probe_directions(fitted, static_cast<int64_t>(i)), probes::InterventionMode::ablate);
      const probes::InterventionEffect e = probes::intervention_effect(
          model, sites[i], ablate, few, [&](const at::Tensor& lg) { return core::mean_loss(lg, few); });
      std::printf("next-token loss %.3f, with %s's probe direction projected out %.3f\n", e.baseline,
                  sites[i].c_str(), e.intervened);
    }
  } catch (const mechlab::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
