// Path patching, attribution patching and EAP-IG checked against analytic
// identities (no reference tool needed), the circuit graph's naming, and
// bad input (each a mechlab::Error whose message is checked).
//
// Tolerances:
//  - finite differences run in float64 (model and metric): the forward
//    difference (f(x + eps d) - f(x)) / eps differs from the derivative by
//    O(eps); with eps = 1e-6 and metrics of order 1, 1e-4 relative covers
//    that and rounding (observed ~1e-7). Attention patterns are float32
//    even in float64 models (mechlab computes scores in float32), so the
//    pattern target uses eps = 1e-3 and 2e-3;
//  - identities that hold exactly in real arithmetic but sum float32 terms in
//    another order (edge sums vs node scores, linear-toy exactness): 1e-4
//    normwise relative (observed ~1e-6).
#include "core/formats/hdf5_file.h"
#include "core/model/presets.h"
#include "core/util/rng.h"
#include "hooks/hooked_transformer.h"
#include "patching/attribution.h"
#include "patching/circuit_graph.h"
#include "patching/edge_attribution.h"
#include "patching/path_patching.h"
#include "patching/sender_delta.h"
#include "tests/hooks/fixture_compare.h"
#include "tests/patching/patching_fixtures.h"
#include "tests/test_util.h"

#include <gtest/gtest.h>

using mechlab::core::H5File;
using mechlab::hooks::HookedTransformer;
using mechlab::hooks::NamesFilter;
using mechlab::testing::close;
using mechlab::testing::error_of;
using mechlab::testing::runtime_model;
using namespace mechlab::patching;

namespace {

PatchingData fixture_data(const std::string& model) {
  return mechlab::testing::read_fixture_inputs(
      H5File::open_read(mechlab::testing::test_data_h5("patching", model)));
}

// logit difference computed in float64 (the library's logit_diff upcasts to
// float32 only), for finite differences on a float64 model.
Metric logit_diff_f64(const AnswerSpec& a) {
  return Metric::custom("logit_diff_f64", [a](const at::Tensor& logits) {  // [batch, pos, d_vocab]
    at::Tensor rows = at::arange(logits.size(0));
    at::Tensor l = logits.to(at::kDouble).index({rows, a.answer_pos});   // [batch, d_vocab]
    return (l.gather(-1, a.answer_tokens) - l.gather(-1, a.wrong_tokens)).mean();
  });
}

double run_metric(HookedTransformer& model, const at::Tensor& tokens, const Metric& m,
                  const std::vector<std::pair<std::string, mechlab::hooks::HookFn>>& hooks = {}) {
  at::NoGradGuard no_grad;
  return m(model.run_with_hooks(tokens, hooks)).item<double>();
}

// ------------------------------------------------------------ circuit graph

TEST(CircuitGraph, NamesRoundTripAndEdgeCounts) {
  for (const char* preset : {"tiny", "attn-only-2l", "llama-tiny", "neox-tiny"}) {
    const auto cfg = mechlab::core::preset(preset);
    CircuitGraph g(cfg);
    for (const auto& s : g.senders()) EXPECT_EQ(g.parse_sender(node_name(s)), s) << node_name(s);
    for (const auto& r : g.receivers()) EXPECT_EQ(g.parse_receiver(receiver_name(r)), r);
    const auto edges = g.edges();
    for (const auto& e : edges) {
      const Edge back = g.parse_edge(edge_name(e));
      EXPECT_EQ(back.sender, e.sender);
      EXPECT_EQ(back.receiver, e.receiver);
    }
    // Count from the definition: per layer L, its H + 2 KV head inputs read input and every
    // node of layers < L; its MLP also reads layer L's heads unless parallel; output reads all.
    const int64_t H = cfg.n_heads, KV = cfg.kv_heads(), M = cfg.has_mlp() ? 1 : 0;
    int64_t want = 0;
    for (int64_t L = 0; L < cfg.n_layers; ++L) {
      const int64_t before = 1 + L * (H + M);
      want += (H + 2 * KV) * before;
      if (M) want += before + (cfg.parallel_attn_mlp ? 0 : H);
    }
    want += 1 + cfg.n_layers * (H + M);
    EXPECT_EQ(static_cast<int64_t>(edges.size()), want) << preset;
  }
  CircuitGraph neox(mechlab::core::preset("neox-tiny"));
  EXPECT_FALSE(neox.has_edge(neox.parse_sender("a0.h1"), neox.parse_receiver("m0")));
  CircuitGraph gpt(mechlab::core::preset("tiny"));
  EXPECT_TRUE(gpt.has_edge(gpt.parse_sender("a0.h1"), gpt.parse_receiver("m0")));
  EXPECT_EQ(edge_name(gpt.parse_edge("  a0.h3->a1.h2<q> ")), "a0.h3 -> a1.h2<q>");
  EXPECT_EQ(gpt.parse_senders("input + a0.h1+m1").size(), 3u);
}

// ------------------------------------------------------------ bad input

TEST(CircuitGraph, UnknownNodeNamesAreRefused) {
  CircuitGraph g(mechlab::core::preset("tiny"));
  std::string msg = error_of([&] { g.parse_sender("a0.x3"); });
  EXPECT_NE(msg.find("unknown circuit node \"a0.x3\"; nodes are input, a{L}.h{H}"), std::string::npos)
      << msg;
  msg = error_of([&] { g.parse_receiver("mlp1"); });
  EXPECT_NE(msg.find("unknown circuit node \"mlp1\""), std::string::npos) << msg;
  msg = error_of([&] { g.parse_receiver("a1.h2"); });
  EXPECT_NE(msg.find("receiver \"a1.h2\" must name the input it reads: a1.h2<q>, a1.h2<k> or a1.h2<v>"),
            std::string::npos) << msg;
  msg = error_of([&] { g.parse_sender("output"); });
  EXPECT_NE(msg.find("\"output\" is not a sender"), std::string::npos) << msg;
  msg = error_of([&] { g.parse_receiver("input"); });
  EXPECT_NE(msg.find("\"input\" is not a receiver"), std::string::npos) << msg;
  msg = error_of([&] { g.parse_edge("a0.h1 a1.h2<q>"); });
  EXPECT_NE(msg.find("must be \"SENDER -> RECEIVER\""), std::string::npos) << msg;
  CircuitGraph attn(mechlab::core::preset("attn-only-2l"));
  msg = error_of([&] { attn.parse_sender("m0"); });
  EXPECT_NE(msg.find("is attention-only and has no MLPs"), std::string::npos) << msg;
}

TEST(CircuitGraph, ReceiverBeforeSenderIsRefused) {
  CircuitGraph g(mechlab::core::preset("tiny"));
  std::string msg = error_of([&] { g.parse_edge("a1.h0 -> a0.h2<q>"); });
  EXPECT_NE(msg.find("edge \"a1.h0 -> a0.h2<q>\" does not exist: a1.h0 writes the residual stream at "
                     "or after the point where a0.h2<q> reads it"),
            std::string::npos) << msg;
  msg = error_of([&] { g.parse_edge("a1.h0 -> a1.h2<k>"); });  // same layer: reads before
  EXPECT_NE(msg.find("does not exist"), std::string::npos) << msg;
  msg = error_of([&] { g.parse_edge("m1 -> m1"); });
  EXPECT_NE(msg.find("does not exist"), std::string::npos) << msg;
  // Path patching with no sender before any receiver.
  HookedTransformer model = HookedTransformer::load(runtime_model("gpt2_like"));
  PatchingData data = fixture_data("gpt2_like");
  CircuitGraph mg(model.cfg());
  msg = error_of([&] {
    path_patch(model, data, mg.parse_senders("a1.h0+m1"), mg.parse_receivers("a0.h2<q>+a1.h3<v>"),
               logit_diff(data.answers()));
  });
  EXPECT_NE(msg.find("path patching a1.h0+m1 -> a0.h2<q>+a1.h3<v>: no sender writes the residual "
                     "stream before a receiver reads it"),
            std::string::npos) << msg;
}

TEST(CircuitGraph, HeadAndLayerOutOfRangeAreRefused) {
  CircuitGraph g(mechlab::core::preset("tiny"));  // 2 layers, 4 heads
  std::string msg = error_of([&] { g.parse_sender("a0.h4"); });
  EXPECT_NE(msg.find("circuit node \"a0.h4\": head 4 is out of range; layer 0 has 4 heads (0..3)"),
            std::string::npos) << msg;
  msg = error_of([&] { g.parse_receiver("a2.h0<q>"); });
  EXPECT_NE(msg.find("circuit node \"a2.h0<q>\": layer 2 is out of range; the model has 2 layers (0..1)"),
            std::string::npos) << msg;
  CircuitGraph gqa(mechlab::core::preset("llama-tiny"));  // 4 query heads, 2 kv heads
  EXPECT_NO_THROW(gqa.parse_receiver("a1.h3<q>"));
  msg = error_of([&] { gqa.parse_receiver("a1.h3<k>"); });
  EXPECT_NE(msg.find("head 3 is out of range; layer 1 has 2 key/value heads (GQA) (0..1)"),
            std::string::npos) << msg;
}

TEST(Attribution, BadOptionsAreRefused) {
  HookedTransformer model = HookedTransformer::load(runtime_model("gpt2_like"));
  PatchingData data = fixture_data("gpt2_like");
  const Metric m = logit_diff(data.answers());
  std::string msg = error_of([&] {
    attribution_sweeps(model, data, {"resid_pre"}, m,
                       AttributionOptions{}.method(AttributionMethod::eap_ig).steps(0));
  });
  EXPECT_NE(msg.find("EAP-IG needs at least 1 interpolation step, got steps = 0"), std::string::npos) << msg;
  msg = error_of([] { parse_method("eapig"); });
  EXPECT_NE(msg.find("unknown attribution method \"eapig\""), std::string::npos) << msg;
  msg = error_of([&] { attribution_gradients(model, data, m, {"hook_embed"}); });
  EXPECT_NE(msg.find("attribution at hook_embed is not supported"), std::string::npos) << msg;
  msg = error_of([&] { attribution_gradients(model, data, m, {"blocks.0.attn.hook_zz"}); });
  EXPECT_NE(msg.find("unknown hook name \"blocks.0.attn.hook_zz\""), std::string::npos) << msg;
  Metric constant = Metric::custom("constant", [](const at::Tensor&) { return at::ones({}); });
  msg = error_of([&] { edge_attribution(model, data, constant); });
  EXPECT_NE(msg.find("metric \"constant\" does not depend on the model's activations"),
            std::string::npos) << msg;
}

// ------------------------------------------------------------ finite differences

// Node and edge attribution equal the derivative of the metric along the
// patch direction: (metric(base + eps * (source - base)) - metric(base)) / eps
// as eps -> 0, on the float64 model.
TEST(Attribution, EqualsFiniteDifferenceLinearisation) {
  HookedTransformer model = HookedTransformer::load(runtime_model("gpt2_like"));
  model.model().to(at::kDouble);
  PatchingData data = fixture_data("gpt2_like");
  const Metric m = logit_diff_f64(data.answers());
  const auto& cfg = model.cfg();
  const std::vector<PatchTarget> targets = {
      PatchTarget::at("blocks.1.hook_resid_pre", cfg).with_pos(4),
      PatchTarget::at("blocks.0.attn.hook_z", cfg).with_pos(4).with_head(2),
      PatchTarget::at("blocks.1.attn.hook_v", cfg).with_head(1),
      PatchTarget::at("blocks.0.hook_mlp_out", cfg).with_pos(5),
      PatchTarget::at("blocks.1.attn.hook_pattern", cfg).with_head(3).with_pos(5),
  };
  std::vector<std::string> hooks;
  for (const auto& t : targets) hooks.push_back(t.hook_name());
  const GradientCache cache = attribution_gradients(model, data, m, hooks);
  const double base = run_metric(model, data.clean_tokens, m);
  // The gradient pass hooks hook_pattern, so layer 1 runs materialised
  // attention, whose scores mechlab computes in float32 even for float64
  // models (as TransformerLens does for half precision): 1e-7 apart.
  EXPECT_NEAR(cache.runs.base_metric, base, 1e-7);
  for (const auto& t : targets) {
    const double attr = target_attribution(cache, t).item<double>();
    const at::Tensor diff = cache.runs.source.at(t.hook_name()) - cache.runs.base.at(t.hook_name());
    auto moved = [&](double eps) {  // eps = 0: the baseline through the same (hooked) code path
      return run_metric(model, data.clean_tokens, m, {{t.hook_name(),
          [&](at::Tensor& act, const mechlab::hooks::HookPoint&) {
            act = act.clone();
            target_slice(act, t).add_(target_slice(diff, t), eps);
          }}});
    };
    const double at0 = moved(0.0);
    // Patterns are float32 (see above): a perturbation below ~1e-4 drowns in
    // their rounding, so they use larger steps and 2e-3 (first-order error
    // at eps = 1e-3 plus float32 rounding of the perturbed entries).
    const bool f32 = is_attention_map(t.site.kind);
    const std::vector<double> steps = f32 ? std::vector<double>{1e-1, 1e-2, 1e-3}
                                          : std::vector<double>{1e-2, 1e-4, 1e-6};
    std::vector<double> errors;
    for (double eps : steps) errors.push_back(std::abs((moved(eps) - at0) / eps - attr));
    EXPECT_GT(std::abs(attr), 1e-4) << t.describe() << ": a zero attribution checks nothing";
    EXPECT_LT(errors[2], (f32 ? 2e-3 : 1e-4) * std::max(1.0, std::abs(attr))) << t.describe();
    EXPECT_LE(errors[2], errors[0]) << t.describe() << ": the difference quotient must converge";
  }

  // Edges: move only the receiver's input by eps times the sender's difference.
  const EdgeScores e = edge_attribution(model, data, m);
  CircuitGraph g(cfg);
  auto [u1, base_cache] = model.run_with_cache(data.clean_tokens, NamesFilter(sender_hooks(cfg)));
  auto [u2, src_cache] = model.run_with_cache(data.corrupted_tokens, NamesFilter(sender_hooks(cfg)));
  for (const char* name : {"a0.h1 -> a1.h2<q>", "input -> a1.h0<k>", "m0 -> a1.h3<v>", "a0.h3 -> m0",
                           "a1.h1 -> output", "input -> m1"}) {
    const Edge edge = g.parse_edge(name);
    const at::Tensor d = sender_delta(model, edge.sender, base_cache.items(), src_cache.items(), at::kDouble);
    const std::string hook = g.receiver_hook(edge.receiver);
    const double eps = 1e-6;
    const double moved = run_metric(model, data.clean_tokens, m, {{hook,
        [&](at::Tensor& act, const mechlab::hooks::HookPoint&) {
          act = act.clone();
          if (edge.receiver.node.kind == CircuitNode::Kind::head) {
            act.select(2, edge.receiver.node.head).add_(d, eps);
          } else {
            act.add_(d, eps);
          }
        }}});
    const double fd = (moved - base) / eps, score = e.score(edge);
    EXPECT_GT(std::abs(score), 1e-5) << name;
    EXPECT_NEAR(score, fd, 1e-4 * std::max(1.0, std::abs(score))) << name;
  }
}

// ------------------------------------------------------------ sums over edges

// A receiver input's source-minus-base difference is the sum of its senders'
// differences, so its incoming edge scores add up to its node attribution.
TEST(Attribution, IncomingEdgesSumToTheReceiverInputsNodeAttribution) {
  for (const char* name : {"gpt2_like", "llama_like", "neox_like"}) {
    HookedTransformer model = HookedTransformer::load(runtime_model(name));
    PatchingData data = fixture_data(name);
    const Metric m = logit_diff(data.answers());
    for (const auto& opts : {AttributionOptions{},
                             AttributionOptions{}.method(AttributionMethod::eap_ig).steps(3),
                             AttributionOptions{}.direction(Direction::denoising)}) {
      const EdgeScores e = edge_attribution(model, data, m, opts);
      CircuitGraph g(model.cfg());
      std::vector<std::string> hooks;
      for (const auto& r : g.receivers()) hooks.push_back(g.receiver_hook(r));
      const GradientCache nodes = attribution_gradients(model, data, m, hooks, opts);
      std::vector<double> node_scores, edge_sums;
      for (const auto& r : g.receivers()) {
        PatchTarget t = PatchTarget::at(g.receiver_hook(r), model.cfg());
        if (r.node.kind == CircuitNode::Kind::head) t.head = r.node.head;
        node_scores.push_back(target_attribution(nodes, t).item<double>());
        const int64_t col = g.receiver_index(r);
        edge_sums.push_back(e.scores.select(1, col).nan_to_num(0).sum().item<double>());
      }
      EXPECT_TRUE(close(at::tensor(edge_sums, at::kDouble), at::tensor(node_scores, at::kDouble), 1e-4,
                        std::string(name) + " " + method_name(opts.method()) + " " +
                            direction_name(opts.direction())));
      EXPECT_EQ(e.config["forwards"].get<int64_t>(), opts.method() == AttributionMethod::eap_ig ? 5 : 2);
    }
  }
}

// A forward under at::InferenceMode caches the packed Q/K/V weights as
// inference tensors; node attribution afterwards records a graph through them
// and must still work, with the same scores as on a fresh model.
TEST(Attribution, WorksAfterAnInferenceModeForward) {
  HookedTransformer fresh = HookedTransformer::load(runtime_model("gpt2_like"));
  HookedTransformer used = HookedTransformer::load(runtime_model("gpt2_like"));
  PatchingData data = fixture_data("gpt2_like");
  {
    at::InferenceMode guard;
    used.forward(data.clean_tokens);
  }
  const Metric m = logit_diff(data.answers());
  const std::vector<std::string> hooks = {"blocks.0.attn.hook_z", "blocks.1.hook_resid_pre"};
  const GradientCache a = attribution_gradients(used, data, m, hooks, AttributionOptions{});
  const GradientCache b = attribution_gradients(fresh, data, m, hooks, AttributionOptions{});
  for (const auto& h : hooks) {
    const PatchTarget t = PatchTarget::at(h, fresh.cfg());
    EXPECT_TRUE(close(target_attribution(a, t), target_attribution(b, t), 1e-6, h));
  }
}

// ------------------------------------------------------------ EAP-IG

// A model with no final norm (and parallel attention/MLP) is linear in each
// last-layer node output and in the final residual: the gradient there does not depend on the input, so
// EAP-IG with any number of steps (and plain attribution) equals exact
// patching of that node or edge.
TEST(EapIg, ExactOnNodesTheMetricIsLinearIn) {
  // Parallel attention and MLP: the last MLP reads resid_pre, not the last
  // attention's output, so both last-layer nodes feed the logits linearly.
  mechlab::core::ModelConfig cfg = mechlab::core::preset("tiny");
  cfg.final_norm = false, cfg.parallel_attn_mlp = true;
  cfg.d_vocab = 40, cfg.n_ctx = 16, cfg.name = "linear_toy";
  HookedTransformer model{mechlab::core::Transformer(cfg, 7)};
  for (auto& [name, w] : model.model().named_parameters()) w.mul_(5.0);  // effects well above rounding
  mechlab::core::Rng rng(5);
  PatchingData data;
  data.clean_tokens = at::empty({4, 9}, at::kLong);
  for (int64_t i = 0; i < data.clean_tokens.numel(); ++i) {
    data.clean_tokens.view(-1)[i] = static_cast<int64_t>(1 + rng.below(39));
  }
  data.corrupted_tokens = data.clean_tokens.clone();
  data.corrupted_tokens.select(1, 5).fill_(3);
  data.corrupted_tokens.select(1, 2).fill_(11);
  data.answer_tokens = at::tensor({4, 9, 17, 30}, at::kLong).view({4, 1});
  data.wrong_tokens = at::tensor({8, 2, 21, 1}, at::kLong).view({4, 1});
  const Metric m = logit_diff(data.answers());

  // Exact noising patches of the last layer's head outputs and MLP output.
  SweepOptions noising;
  noising.direction(Direction::noising);
  auto exact = run_sweeps(model, data, {"attn_head_out_all_pos", "mlp_out"}, m, noising);
  const double clean = exact[0].config["clean_metric"].get<double>();
  const at::Tensor exact_heads = exact[0].values[1] - clean;  // [head]
  const at::Tensor exact_mlp = exact[1].values[1] - clean;    // [pos]
  ASSERT_GT(exact_heads.abs().max().item<double>(), 1e-3);

  CircuitGraph g(cfg);
  for (int steps : {1, 2, 7}) {
    const auto opts = AttributionOptions{}.method(AttributionMethod::eap_ig).steps(steps);
    auto est = attribution_sweeps(model, data, {"attn_head_out_all_pos", "mlp_out"}, m, opts);
    EXPECT_TRUE(close(est[0].values[1], exact_heads, 1e-4, "heads, m = " + std::to_string(steps)));
    EXPECT_TRUE(close(est[1].values[1], exact_mlp, 1e-4, "mlp, m = " + std::to_string(steps)));
    // Edges into output: exact edge patching is path patching sender -> output.
    const EdgeScores e = edge_attribution(model, data, m, opts);
    std::vector<double> got, want;
    for (const auto& s : g.senders()) {
      const ReceiverInput out = g.parse_receiver("output");
      got.push_back(e.score({s, out}));
      const PathPatchResult p = path_patch(model, data, {s}, {out}, m);
      want.push_back(p.value - p.base_metric);
    }
    EXPECT_TRUE(close(at::tensor(got, at::kDouble), at::tensor(want, at::kDouble), 1e-4,
                      "edges -> output, m = " + std::to_string(steps)));
  }
}

// On a non-linear model, EAP-IG of the input node (resid_pre 0 at every
// position) is a Riemann sum of the integrated gradient, which equals the
// exact effect of patching the whole input (the corrupted run's metric minus
// the clean run's); its error falls as the steps grow.
TEST(EapIg, ConvergesToExactPatchingAsStepsGrow) {
  HookedTransformer model = HookedTransformer::load(runtime_model("gpt2_like"));
  PatchingData data = fixture_data("gpt2_like");
  const Metric m = logit_diff(data.answers());
  const double exact = run_metric(model, data.corrupted_tokens, m) - run_metric(model, data.clean_tokens, m);
  std::vector<double> err;
  for (int steps : {1, 4, 16, 64}) {
    auto r = attribution_sweeps(model, data, {"resid_pre"}, m,
                                AttributionOptions{}.method(AttributionMethod::eap_ig).steps(steps));
    err.push_back(std::abs(r[0].values[0].sum().item<double>() - exact));
  }
  // A first-order Riemann sum: the error shrinks about 4x per 4x steps.
  for (size_t i = 1; i < err.size(); ++i) {
    EXPECT_LT(err[i], 0.5 * err[i - 1]) << "steps " << i;
  }
  EXPECT_LT(err.back(), 0.02 * std::abs(exact));
}

}  // namespace
