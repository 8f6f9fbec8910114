// ACDC (patching/discovery/acdc.h) and its masked forward (circuit_runner.h):
//  - against a naive ACDC written independently in tests/discovery/naive_acdc.h
//    (one full hooked forward per edge, the reference's receiver_hook formula);
//  - the runner's analytic identities (full circuit = clean run, empty circuit
//    = corrupted run, output cut under mean ablation = unembedded mean);
//  - a constructed model whose circuit is known;
//  - batching, restarts, resume and refusals.
//
// Models run in float64, so the batched/restarted forwards and the naive one
// agree to ~1e-12 before kl_to_clean rounds to float32; the scores then come
// out equal (observed: identical; checked to 1e-7, a few float32 ulps of the
// KL values) and each comparison checks that no decision of the naive run is
// within 1e-6 of tau, so none flips by rounding.
#include "core/formats/hdf5_file.h"
#include "core/model/presets.h"
#include "core/util/parallel.h"
#include "hooks/hooked_transformer.h"
#include "patching/discovery/acdc.h"
#include "patching/discovery/circuit_runner.h"
#include "patching/edge_attribution.h"
#include "patching/metrics.h"
#include "tests/discovery/discovery_fixtures.h"
#include "tests/discovery/naive_acdc.h"
#include "tests/hooks/fixture_compare.h"
#include "tests/patching/patching_fixtures.h"
#include "tests/test_util.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <set>

using mechlab::discovery::AcdcOptions;
using mechlab::discovery::AcdcResult;
using mechlab::discovery::AcdcStep;
using mechlab::discovery::Ablation;
using mechlab::discovery::Circuit;
using mechlab::discovery::CircuitEdge;
using mechlab::discovery::CircuitRunner;
using mechlab::hooks::HookedTransformer;
using mechlab::testing::error_of;
using mechlab::testing::load_f64;
using mechlab::testing::fixture_data;
using mechlab::testing::kl_metric;
using mechlab::testing::kept_names;
using mechlab::testing::NaiveAcdc;
using mechlab::testing::NaiveResult;
using namespace mechlab::patching;

namespace {

// Single edges move the gpt2_like fixture's logit_diff by up to about 0.2.
constexpr double kLogitDiffTau = 0.01;

void expect_same_steps(const std::vector<AcdcStep>& got, const std::vector<AcdcStep>& want, double score_tol,
                       const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(got[i].edge, want[i].edge) << what << " step " << i;
    ASSERT_EQ(got[i].kept, want[i].kept) << what << " step " << i << " " << got[i].edge;
    ASSERT_EQ(got[i].tried, want[i].tried) << what << " step " << i << " " << got[i].edge;
    if (got[i].tried) {
      EXPECT_NEAR(got[i].score, want[i].score, score_tol) << what << " step " << i;
      EXPECT_NEAR(got[i].metric, want[i].metric, score_tol) << what << " step " << i;
    } else {
      EXPECT_TRUE(std::isnan(got[i].score)) << what << " step " << i;
    }
  }
}

}  // namespace

// A copy of a circuit (as AcdcOptions::start and AcdcResult hold) is its own:
// editing it must not edit the original.
TEST(Circuit, CopiesAreIndependentOfTheOriginal) {
  const CircuitGraph g(mechlab::core::preset("tiny"));
  const Circuit a = Circuit::full(g);
  const CircuitEdge e = a.parse_edge("a0.h1 -> a1.h2<q>");
  const CircuitEdge h = a.parse_edge("a1.h2<q> -> a1.h2");
  Circuit b = a;
  b.set_kept(e, false);
  b.set_kept(h, false);
  b.set_score(e, 1.5);
  EXPECT_TRUE(a.kept(e));
  EXPECT_TRUE(a.kept(h));
  EXPECT_TRUE(std::isnan(a.score(e)));
  EXPECT_EQ(a.removed_mask().sum().item<double>(), 0.0);
  Circuit c = Circuit::empty(g);
  c = a;
  c.set_kept(e, false);
  EXPECT_TRUE(a.kept(e));
  EXPECT_FALSE(b.kept(e));
  const AcdcOptions o = AcdcOptions().start(a);
  Circuit d = *o.start();
  d.set_kept(e, false);
  EXPECT_TRUE(o.start()->kept(e));
}

// ------------------------------------------------------------------ runner

TEST(CircuitRunner, FullCircuitIsTheCleanRunAndEmptyCircuitTheCorruptedRun) {
  for (const char* name : {"gpt2_like", "attn_only"}) {
    HookedTransformer model = load_f64(name);
    const PatchingData data = fixture_data(name);
    CircuitRunner runner(model, data, Ablation::corrupted);
    at::NoGradGuard ng;
    const at::Tensor clean = model.forward(data.clean_tokens);          // [batch, pos, d_vocab]
    const at::Tensor corrupted = model.forward(data.corrupted_tokens);  // [batch, pos, d_vocab]
    // Every receiver reads its corrupted input when every edge is removed
    // (the residual stream is the sum of its senders plus the biases).
    EXPECT_TRUE(mechlab::testing::close(runner.logits(Circuit::full(runner.graph())), clean, 1e-9, "full")) << name;
    EXPECT_TRUE(mechlab::testing::close(runner.logits(Circuit::empty(runner.graph())), corrupted, 1e-9, "empty")) << name;
    EXPECT_GT((clean - corrupted).abs().max().item<double>(), 0.1) << name;
  }
}

TEST(CircuitRunner, CuttingEveryOutputEdgeUnderMeanAblationUnembedsTheMeanResidual) {
  HookedTransformer model = load_f64("gpt2_like");
  const PatchingData data = fixture_data("gpt2_like");
  CircuitRunner runner(model, data, Ablation::mean);
  Circuit c = Circuit::full(runner.graph());
  for (const CircuitEdge& e : c.edges()) {
    if (runner.graph().receivers()[static_cast<size_t>(e.receiver)].node.kind == CircuitNode::Kind::output) {
      c.set_kept(e, false);
    }
  }
  at::NoGradGuard ng;
  auto [logits, cache] = model.run_with_cache(data.clean_tokens, mechlab::hooks::NamesFilter({"blocks.1.hook_resid_post"}));
  // output = sum over senders of their mean + the biases = the mean final residual.
  at::Tensor mean = cache["blocks.1.hook_resid_post"].mean(at::IntArrayRef{0, 1}, true);  // [1, 1, d_model]
  mechlab::core::ForwardOptions fo;
  fo.start_at_layer(model.cfg().n_layers);
  at::Tensor want = model.model().forward(mean, fo).expand_as(logits);  // [batch, pos, d_vocab]
  EXPECT_TRUE(mechlab::testing::close(runner.logits(c), want, 1e-9, "mean"));
}

// ACDC's pattern: many restarts in a row, each changing the circuit by one
// edge (removals and restorations), so the runner's memo of the shared
// senders' correction is updated one entry at a time, past its refresh after
// 32 updates, and across receivers of several layers; every restart must
// equal the full forward of its circuit.
TEST(CircuitRunner, RestartsThatChangeOneEdgeAtATimeEqualFullForwards) {
  HookedTransformer model = load_f64("gpt2_like");
  const PatchingData data = fixture_data("gpt2_like");
  CircuitRunner runner(model, data, Ablation::corrupted);
  const Metric kl = kl_metric(model, data);
  Circuit cur = Circuit::full(runner.graph());
  runner.set_state(cur, kl);
  const int n_layers = model.cfg().n_layers;
  for (int layer = n_layers - 1; layer >= 1; --layer) {
    std::vector<CircuitEdge> candidates;  // edges into receivers of layers >= layer
    for (const CircuitEdge& e : cur.edges()) {
      const auto& r = runner.graph().receivers()[static_cast<size_t>(e.receiver)];
      const int rl = r.node.kind == CircuitNode::Kind::output ? n_layers : r.node.layer;
      if (rl >= layer && e.kind == CircuitEdge::Kind::residual) candidates.push_back(e);
    }
    at::manual_seed(20 + layer);
    const at::Tensor pick = at::randint(static_cast<int64_t>(candidates.size()), {45});
    double moved = 0;
    for (int64_t i = 0; i < pick.size(0); ++i) {
      const CircuitEdge& e = candidates[static_cast<size_t>(pick[i].item<int64_t>())];
      cur.set_kept(e, !cur.kept(e));
      const double restarted = runner.restart(layer, kl, {cur.removed_mask()}).at(0);
      const double full = runner.metrics(kl, {cur}).at(0);
      ASSERT_NEAR(restarted, full, 1e-9) << "layer " << layer << ", change " << i;
      moved += std::abs(full);
    }
    EXPECT_GT(moved, 1e-3) << "layer " << layer << ": the changes did not move the metric";
  }
}

TEST(CircuitRunner, RestartFromTheStateOfAPrunedCircuitEqualsTheForwardFromTheEmbedding) {
  HookedTransformer model = load_f64("gpt2_like");
  const PatchingData data = fixture_data("gpt2_like");
  CircuitRunner runner(model, data, Ablation::corrupted, mechlab::discovery::RunnerOptions().max_copies(3));
  const Metric kl = kl_metric(model, data);
  // A pruned state: a random third of the edges removed.
  at::manual_seed(7);
  Circuit state = Circuit::full(runner.graph());
  const auto& edges = state.edges();
  at::Tensor coin = at::rand({static_cast<int64_t>(edges.size())});
  for (size_t i = 0; i < edges.size(); ++i) {
    if (coin[static_cast<int64_t>(i)].item<double>() < 0.33) state.set_kept(edges[i], false);
  }
  const double state_metric = runner.set_state(state, kl);
  EXPECT_NEAR(state_metric, runner.metrics(kl, {state})[0], 1e-6);
  for (int layer = 0; layer <= model.cfg().n_layers; ++layer) {
    // Circuits that change the state only at receivers of layers >= layer.
    std::vector<Circuit> variants;
    std::vector<at::Tensor> masks;
    for (int v = 0; v < 5; ++v) {
      Circuit c = Circuit::from_json(runner.graph(), state.to_json());
      at::Tensor flip = at::rand({static_cast<int64_t>(edges.size())});
      for (size_t i = 0; i < edges.size(); ++i) {
        const auto& r = runner.graph().receivers()[static_cast<size_t>(edges[i].receiver)];
        const int rl = r.node.kind == CircuitNode::Kind::output ? model.cfg().n_layers : r.node.layer;
        if (rl >= layer && flip[static_cast<int64_t>(i)].item<double>() < 0.3) c.set_kept(edges[i], !c.kept(edges[i]));
      }
      masks.push_back(c.removed_mask());
      variants.push_back(std::move(c));
    }
    const std::vector<double> restarted = runner.restart(layer, kl, masks);
    const std::vector<double> full = runner.metrics(kl, variants);
    ASSERT_EQ(restarted.size(), full.size());
    for (size_t i = 0; i < full.size(); ++i) EXPECT_NEAR(restarted[i], full[i], 1e-6) << "layer " << layer;
    EXPECT_GT(std::abs(full[0] - state_metric) + std::abs(full[1] - state_metric), 1e-4) << "layer " << layer;
  }
}

// Restarts at every layer's attention and MLP (RestartAt::mlp: circuits that
// differ from the state only at m{L} and above layer L; the MLP reads the
// state's resid_mid) give the full forward's metric, for a metric of the
// answer positions that are the last tokens (the last layer then runs its
// queries, MLP and output there only), one whose answers are not the last
// tokens and one that reads every position (the last layer in full).
namespace {

void expect_restarts_equal_full_forwards(const std::string& what, HookedTransformer& model, const PatchingData& data,
                                         const Metric& metric, bool answers_last, uint64_t seed = 11) {
  CircuitRunner runner(model, data, Ablation::corrupted, mechlab::discovery::RunnerOptions().max_copies(3));
  ASSERT_TRUE(runner.can_restart_at_mlp());
  ASSERT_EQ(runner.answers_are_last(metric), answers_last) << what;
  at::manual_seed(seed);
  Circuit state = Circuit::full(runner.graph());
  const auto& edges = state.edges();
  at::Tensor coin = at::rand({static_cast<int64_t>(edges.size())});
  for (size_t i = 0; i < edges.size(); ++i) {
    if (coin[static_cast<int64_t>(i)].item<double>() < 0.33) state.set_kept(edges[i], false);
  }
  runner.set_state(state, metric);
  const double state_metric = runner.metrics(metric, {state})[0];
  const int n_layers = model.cfg().n_layers;
  for (int layer = 0; layer < n_layers; ++layer) {
    for (auto at : {mechlab::discovery::RestartAt::attention, mechlab::discovery::RestartAt::mlp}) {
      const bool mlp = at == mechlab::discovery::RestartAt::mlp;
      std::vector<Circuit> variants;
      std::vector<at::Tensor> masks;
      for (int v = 0; v < 4; ++v) {
        Circuit c = Circuit::from_json(runner.graph(), state.to_json());
        at::Tensor flip = at::rand({static_cast<int64_t>(edges.size())});
        for (size_t i = 0; i < edges.size(); ++i) {
          const auto& r = runner.graph().receivers()[static_cast<size_t>(edges[i].receiver)];
          const bool own_mlp = r.node.kind == CircuitNode::Kind::mlp && r.node.layer == layer;
          const int rl = r.node.kind == CircuitNode::Kind::output ? n_layers : r.node.layer;
          // Variant 0 changes only the restart layer (its MLP input from the MLP).
          const bool may = mlp ? own_mlp || (v > 0 && rl > layer) : rl == layer || (v > 0 && rl > layer);
          if (may && flip[static_cast<int64_t>(i)].item<double>() < 0.4) c.set_kept(edges[i], !c.kept(edges[i]));
        }
        masks.push_back(c.removed_mask());
        variants.push_back(std::move(c));
      }
      const std::vector<double> restarted = runner.restart(layer, metric, masks, at);
      const std::vector<double> full = runner.metrics(metric, variants);
      ASSERT_EQ(restarted.size(), full.size());
      for (size_t i = 0; i < full.size(); ++i) {
        EXPECT_NEAR(restarted[i], full[i], 1e-6) << what << " layer " << layer << (mlp ? " mlp" : "");
      }
      EXPECT_GT(std::abs(full[0] - state_metric), 1e-6)
          << what << " layer " << layer << (mlp ? " mlp" : "") << ": the flips changed nothing";
    }
  }
  EXPECT_EQ(error_of([&] { runner.restart(n_layers, metric, {}, mechlab::discovery::RestartAt::mlp); }),
            "a restart at the MLP of layer " + std::to_string(n_layers) + " needs a layer < n_layers = " +
                std::to_string(n_layers) +
                " of a model with MLPs that are not parallel to attention; restart at the layer's attention");
}

}  // namespace

TEST(CircuitRunner, RestartsAtTheAttentionAndTheMlpEqualTheForwardFromTheEmbedding) {
  HookedTransformer model = load_f64("gpt2_like");
  const PatchingData data = fixture_data("gpt2_like");
  const at::Tensor clean = [&] {
    at::NoGradGuard ng;
    return model.forward(data.clean_tokens);
  }();
  // The fixture's answers (positions 6, 5, 6 of 7) are not all last; make them so.
  PatchingData last = data;
  last.answer_pos = at::full({data.batch()}, data.seq_len() - 1, at::kLong);
  expect_restarts_equal_full_forwards("answers last", model, last, kl_to_clean(last.answers(), clean), true);
  // The fixture's answers with prompt 1 right-padded after its answer: last real tokens.
  PatchingData padded = data;
  padded.attention_mask = at::ones({data.batch(), data.seq_len()}, at::kLong);
  padded.attention_mask[1][data.seq_len() - 1] = 0;
  expect_restarts_equal_full_forwards("answers last, padded", model, padded, kl_to_clean(padded.answers(), clean),
                                      true);
  expect_restarts_equal_full_forwards("all positions", model, data,
                                      kl_to_clean_all_positions(clean, data.attention_mask), false);
  expect_restarts_equal_full_forwards("answers not last", model, data, kl_to_clean(data.answers(), clean), false);
  // Rotary and grouped-query attention (two query heads per kv head: a head
  // group of two). Seed 13: seed 11's random state removes m1 -> output, so
  // flipping m1's inputs cannot move the metric and the test would be vacuous.
  HookedTransformer llama = load_f64("llama_like");
  ASSERT_GT(llama.cfg().n_heads, llama.cfg().kv_heads());
  PatchingData llama_data = fixture_data("llama_like");
  llama_data.answer_pos = at::full({llama_data.batch()}, llama_data.seq_len() - 1, at::kLong);
  const at::Tensor llama_clean = [&] {
    at::NoGradGuard ng;
    return llama.forward(llama_data.clean_tokens);
  }();
  expect_restarts_equal_full_forwards("llama_like, answers last", llama, llama_data,
                                      kl_to_clean(llama_data.answers(), llama_clean), true, 13);
}

// metric_by_nodes equals the full masked forward, on every fixture model
// (MLPs, attention only, rotary with grouped-query attention, parallel
// attention and MLP), for a metric of the last tokens (the last layer at
// the answers), one of the fixture's answers (not all last) and one of
// every position, with corrupted, mean and zero ablation: over circuits
// that each flip one edge of the previous one (the memo recomputes what the
// flip can change) and over wide changes.
TEST(CircuitRunner, MetricByNodesEqualsTheFullForward) {
  for (const char* name : {"gpt2_like", "attn_only", "llama_like", "neox_like"}) {
    HookedTransformer model = load_f64(name);
    const PatchingData data = fixture_data(name);
    const at::Tensor clean = [&] {
      at::NoGradGuard ng;
      return model.forward(data.clean_tokens);
    }();
    PatchingData last = data;
    last.answer_pos = at::full({data.batch()}, data.seq_len() - 1, at::kLong);
    PatchingData padded = last;  // prompt 1 right-padded after its answer
    padded.answer_pos = last.answer_pos.clone();  // a tensor copy is a view: keep `last`'s positions
    padded.answer_pos[1] = data.seq_len() - 2;
    padded.attention_mask = at::ones({data.batch(), data.seq_len()}, at::kLong);
    padded.attention_mask[1][data.seq_len() - 1] = 0;
    struct Variant {
      std::string what;
      const PatchingData* data;
      Metric metric;
      Ablation ablation;
      bool answers_last;
    };
    const std::vector<Variant> variants = {
        {"answers last", &last, kl_to_clean(last.answers(), clean), Ablation::corrupted, true},
        {"answers last, padded", &padded, kl_to_clean(padded.answers(), clean), Ablation::corrupted, true},
        {"answers not last", &data, kl_to_clean(data.answers(), clean), Ablation::corrupted, false},
        {"all positions, mean", &data, kl_to_clean_all_positions(clean, data.attention_mask), Ablation::mean, false},
        {"answers last, zero", &last, kl_to_clean(last.answers(), clean), Ablation::zero, true},
    };
    for (const Variant& v : variants) {
      const std::string what = std::string(name) + ", " + v.what;
      CircuitRunner runner(model, *v.data, v.ablation);
      ASSERT_EQ(runner.answers_are_last(v.metric), v.answers_last) << what;
      at::manual_seed(3);
      Circuit c = Circuit::full(runner.graph());
      const auto& edges = c.edges();
      const at::Tensor coin = at::rand({static_cast<int64_t>(edges.size())});
      for (size_t i = 0; i < edges.size(); ++i) {
        if (coin[static_cast<int64_t>(i)].item<double>() < 0.33) c.set_kept(edges[i], false);
      }
      const double start = runner.metric_by_nodes(v.metric, c.removed_mask());
      ASSERT_NEAR(start, runner.metrics(v.metric, {c})[0], 1e-9) << what;
      double moved = 0;
      const at::Tensor pick = at::randint(static_cast<int64_t>(edges.size()), {16});
      for (int64_t t = 0; t < pick.size(0); ++t) {
        const CircuitEdge& e = edges[static_cast<size_t>(pick[t].item<int64_t>())];
        c.set_kept(e, !c.kept(e));
        const double by_nodes = runner.metric_by_nodes(v.metric, c.removed_mask());
        const double full = runner.metrics(v.metric, {c})[0];
        ASSERT_NEAR(by_nodes, full, 1e-9) << what << ", flip " << t << " " << c.edge_name(e);
        moved += std::abs(full - start);
      }
      EXPECT_GT(moved, 1e-6) << what << ": the flips changed nothing";
      for (int w = 0; w < 3; ++w) {
        const at::Tensor flip = at::rand({static_cast<int64_t>(edges.size())});
        for (size_t i = 0; i < edges.size(); ++i) {
          if (flip[static_cast<int64_t>(i)].item<double>() < 0.4) c.set_kept(edges[i], !c.kept(edges[i]));
        }
        ASSERT_NEAR(runner.metric_by_nodes(v.metric, c.removed_mask()), runner.metrics(v.metric, {c})[0], 1e-9)
            << what << ", wide change " << w;
      }
    }
  }
}

TEST(CircuitRunner, MetricByNodesRefusesMasksOtherThanZeroAndOne) {
  HookedTransformer model = load_f64("attn_only");
  const PatchingData data = fixture_data("attn_only");
  CircuitRunner runner(model, data, Ablation::corrupted);
  const Metric kl = kl_metric(model, data);
  at::Tensor mask = Circuit::full(runner.graph()).removed_mask();
  mask[1][0] = 0.5;
  EXPECT_EQ(error_of([&] { runner.metric_by_nodes(kl, mask); }),
            "metric_by_nodes needs a removed mask of 0 and 1 (Circuit::removed_mask); entry [1, 0] is 0.5");
  EXPECT_EQ(error_of([&] { runner.metric_by_nodes(kl, mask.unsqueeze(0)); }).rfind("metric_by_nodes needs an unsplit mask", 0),
            0u);
}

namespace {

// Flips `n` edges of `c` picked at random (`seed`; an edge may come up
// twice) and calls visit(t) after flip t.
template <typename Visit>
void flip_random_edges(Circuit& c, uint64_t seed, int64_t n, const Visit& visit) {
  at::manual_seed(seed);
  const at::Tensor pick = at::randint(static_cast<int64_t>(c.edges().size()), {n});
  for (int64_t t = 0; t < n; ++t) {
    const CircuitEdge& e = c.edges()[static_cast<size_t>(pick[t].item<int64_t>())];
    c.set_kept(e, !c.kept(e));
    visit(t);
  }
}

}  // namespace

// metric_by_nodes is a function of the mask alone: after other calls have
// filled the runner's memo it gives the same bits as a new runner (an empty
// memo), which keeps a resumed ACDC's scores those of the uninterrupted run.
// float32, where a different order of sums shows.
TEST(CircuitRunner, MetricByNodesDoesNotDependOnEarlierCalls) {
  for (const char* name : {"gpt2_like", "llama_like"}) {
    HookedTransformer model = HookedTransformer::load(mechlab::testing::runtime_model(name));
    PatchingData data = fixture_data(name);
    data.answer_pos = at::full({data.batch()}, data.seq_len() - 1, at::kLong);
    const Metric kl = kl_metric(model, data);
    CircuitRunner warm(model, data, Ablation::corrupted);
    ASSERT_TRUE(warm.answers_are_last(kl));
    Circuit c = Circuit::full(warm.graph());
    flip_random_edges(c, 5, 12, [&](int64_t t) {
      const double got = warm.metric_by_nodes(kl, c.removed_mask());
      CircuitRunner cold(model, data, Ablation::corrupted);
      EXPECT_EQ(cold.metric_by_nodes(kl, c.removed_mask()), got) << name << ", call " << t;
    });
  }
}

// The node path computes a layer's head groups on separate threads
// (for_each_task); under c10::InferenceMode, as `mechlab bench acdc` runs
// it, the worker threads must be in it too, or storing a group's deltas in
// the runner's inference tensors throws. Same bits as outside it; a single
// thread would not catch a missing guard, so two are asked for.
TEST(CircuitRunner, MetricByNodesUnderInferenceModeOnTwoThreads) {
  const mechlab::testing::ScopedThreads two(2);
  const mechlab::FixedTaskThreads team(2);  // whatever else runs on this machine
  HookedTransformer model = HookedTransformer::load(mechlab::testing::runtime_model("gpt2_like"));
  PatchingData data = fixture_data("gpt2_like");
  const Metric kl = kl_metric(model, data);
  CircuitRunner plain(model, data, Ablation::corrupted);
  Circuit c = Circuit::full(plain.graph());
  c.set_kept(c.edges()[3], false);
  const double want = plain.metric_by_nodes(kl, c.removed_mask());
  double got = 0;
  {
    c10::InferenceMode inference;
    CircuitRunner runner(model, data, Ablation::corrupted);
    got = runner.metric_by_nodes(kl, c.removed_mask());
  }
  EXPECT_EQ(got, want);
}

namespace {

// A random 2-layer model of GPT-2 small's width (d_model 768, 12 heads,
// MLPs; 512 tokens) and random prompt pairs: big enough that MKL would
// split its GEMMs over threads, unlike the fixture models.
HookedTransformer gpt2_wide_model() {
  mechlab::core::ModelConfig cfg = mechlab::core::preset("gpt2-small");
  cfg.n_layers = 2;
  cfg.d_vocab = 512;
  cfg.n_ctx = 16;
  return HookedTransformer(mechlab::core::Transformer(cfg, 3));
}

PatchingData random_pairs(int64_t n, int64_t t, int64_t d_vocab) {
  at::manual_seed(11);
  PatchingData d;
  d.clean_tokens = at::randint(d_vocab, {n, t}, at::kLong);
  const at::Tensor changed = at::rand({n, t}) < 1.0 / 3;
  d.corrupted_tokens = at::where(changed, at::remainder(d.clean_tokens + 1, d_vocab), d.clean_tokens);
  d.answer_tokens = at::randint(d_vocab, {n, 1}, at::kLong);
  d.wrong_tokens = at::remainder(d.answer_tokens + 1, d_vocab);
  return d;
}

}  // namespace

// The node path's team shrinks to one thread while other processes keep
// the cores busy (task_threads), and may change between calls: a node's
// bits must not depend on it, or resumed and batched runs could decide a
// borderline edge differently. Two runners, one on a team of two and one
// on the caller alone, through the same sequence of masks, on a fixture
// model and on a GPT-2-wide one. Catches the one-thread path letting MKL
// split the wide model's GEMMs (OneThread left out).
TEST(CircuitRunner, MetricByNodesIsTheSameOnOneThreadAsOnTwo) {
  const mechlab::testing::ScopedThreads two(2);
  for (const char* name : {"llama_like", "gpt2_wide"}) {
    const bool wide = std::string(name) == "gpt2_wide";
    HookedTransformer model =
        wide ? gpt2_wide_model() : HookedTransformer::load(mechlab::testing::runtime_model(name));
    const PatchingData data = wide ? random_pairs(16, 16, model.cfg().d_vocab) : fixture_data(name);
    const Metric kl = kl_metric(model, data);
    CircuitRunner on_two(model, data, Ablation::corrupted), on_one(model, data, Ablation::corrupted);
    Circuit c = Circuit::full(on_two.graph());
    flip_random_edges(c, 7, 10, [&](int64_t t) {
      double want = 0, got = 0;
      {
        const mechlab::FixedTaskThreads team(2);
        want = on_two.metric_by_nodes(kl, c.removed_mask());
      }
      {
        const mechlab::FixedTaskThreads alone(1);
        got = on_one.metric_by_nodes(kl, c.removed_mask());
      }
      EXPECT_EQ(got, want) << name << ", call " << t;
    });
  }
}

// ---------------------------------------------------------- naive reference

namespace {

struct Case {
  const char* model;
  double tau;
  bool zero;
  bool abs_value;
  bool reverse;
  bool answers_last = false;  // answer at every prompt's last position (the runner's answers-only last layer)
  std::string name() const {
    return std::string(model) + " tau " + std::to_string(tau) + (zero ? " zero" : " corrupted") +
           (abs_value ? " abs" : "") + (reverse ? " reverse" : "") + (answers_last ? " answers last" : "");
  }
};

AcdcOptions options_of(const Case& cs) {
  return AcdcOptions()
      .threshold(cs.tau)
      .abs_value(cs.abs_value)
      .ablation(cs.zero ? Ablation::zero : Ablation::corrupted)
      .indices_mode(cs.reverse ? "reverse" : "normal");
}

// acdc() gives the naive ACDC's steps (edges, decisions, tried, scores) and circuit;
// returns the fraction of edges kept.
double expect_equals_naive(const Case& cs) {
  const std::string what = cs.name();
  HookedTransformer model = load_f64(cs.model);
  PatchingData data = fixture_data(cs.model);
  if (cs.answers_last) data.answer_pos = at::full({data.batch()}, data.seq_len() - 1, at::kLong);
  const Metric kl = kl_metric(model, data);
  NaiveAcdc naive(model, data, cs.zero);
  const NaiveResult want = naive.run(kl, cs.tau, cs.abs_value, cs.reverse);
  EXPECT_GT(want.smallest_margin, 1e-6) << what << ": a decision is too close to tau to compare";
  const AcdcResult got = mechlab::discovery::acdc(model, data, kl, options_of(cs));
  EXPECT_EQ(got.steps.size(), want.steps.size()) << what;
  for (size_t i = 0; i < std::min(got.steps.size(), want.steps.size()); ++i) {
    const auto& g = got.steps[i];
    const auto& w = want.steps[i];
    EXPECT_EQ(g.edge, w.edge) << what << " step " << i;
    EXPECT_EQ(g.kept, w.kept) << what << " step " << i << " " << g.edge;
    EXPECT_EQ(g.tried, w.tried) << what << " step " << i << " " << g.edge;
    if (w.tried) {
      EXPECT_NEAR(g.score, w.score, 1e-7) << what << " step " << i << " " << g.edge;
    } else {
      EXPECT_TRUE(std::isnan(g.score)) << what << " step " << i;
    }
    if (g.edge != w.edge || g.kept != w.kept) break;  // later steps differ as a consequence
  }
  EXPECT_EQ(kept_names(got.circuit), kept_names(want.circuit)) << what;
  EXPECT_NEAR(got.final_metric, kl(naive.forward(want.circuit)).item<double>(), 1e-5) << what;
  EXPECT_EQ(got.full_metric, 0.0) << what;  // KL of the clean run to itself
  int64_t tried = 0;
  for (const auto& s : got.steps) tried += s.tried ? 1 : 0;
  EXPECT_GE(got.trials, tried) << what;
  return static_cast<double>(got.circuit.edge_count()) / static_cast<double>(got.circuit.edges().size());
}

}  // namespace

TEST(Acdc, EqualsTheNaiveAcdcOnGpt2LikeCorrupted) {
  EXPECT_GT(expect_equals_naive({"gpt2_like", 0.001, false, false, false}), 0.4);  // many kept
  EXPECT_LT(expect_equals_naive({"gpt2_like", 0.02, false, false, false}), 0.15);   // few kept
}

// Answers at the last tokens: every restart runs the last layer at the answer positions only.
TEST(Acdc, EqualsTheNaiveAcdcWithAnswersAtTheLastTokens) {
  EXPECT_GT(expect_equals_naive({"gpt2_like", 0.001, false, false, false, true}), 0.3);
  expect_equals_naive({"llama_like", 0.002, false, false, false, true});  // rotary, GQA
  expect_equals_naive({"neox_like", 0.002, false, false, false, true});   // parallel attention/MLP
}

TEST(Acdc, EqualsTheNaiveAcdcOnGpt2LikeZeroAbsReverse) {
  expect_equals_naive({"gpt2_like", 0.005, true, false, false});
  expect_equals_naive({"gpt2_like", 0.003, false, true, true});
}

TEST(Acdc, EqualsTheNaiveAcdcOnAttnOnly) {
  EXPECT_GT(expect_equals_naive({"attn_only", 0.0002, false, false, false}), 0.8);
  EXPECT_LT(expect_equals_naive({"attn_only", 0.03, false, false, true}), 0.15);
  expect_equals_naive({"attn_only", 0.004, true, true, false});
}

// GQA (k/v receivers are kv heads; a kv head's input node is used when any
// head of its group is) and parallel attention/MLP (no edge a{L} -> m{L}).
TEST(Acdc, EqualsTheNaiveAcdcOnGqaAndParallelModels) {
  expect_equals_naive({"llama_like", 0.002, false, false, false});
  expect_equals_naive({"neox_like", 0.002, false, false, false});
  expect_equals_naive({"neox_like", 0.004, true, true, true});
}

// Trials batched as cumulative prefixes decide as one trial per forward.
TEST(Acdc, BatchedTrialsDecideExactlyAsSequentialTrials) {
  HookedTransformer model = load_f64("gpt2_like");
  const PatchingData data = fixture_data("gpt2_like");
  const Metric kl = kl_metric(model, data);
  for (double tau : {0.0005, 0.005}) {
    const AcdcResult seq = mechlab::discovery::acdc(model, data, kl, AcdcOptions().threshold(tau).max_batch(1));
    for (int64_t k : {int64_t(3), int64_t(64)}) {
      const AcdcResult bat = mechlab::discovery::acdc(model, data, kl, AcdcOptions().threshold(tau).max_batch(k));
      expect_same_steps(bat.steps, seq.steps, 1e-6, "max_batch " + std::to_string(k));
      EXPECT_EQ(kept_names(bat.circuit), kept_names(seq.circuit));
      EXPECT_LT(bat.forwards, seq.forwards) << "max_batch " << k;
    }
    // Automatic on the CPU is one trial per forward.
    const AcdcResult automatic = mechlab::discovery::acdc(model, data, kl, AcdcOptions().threshold(tau));
    expect_same_steps(automatic.steps, seq.steps, 0.0, "max_batch 0");
    EXPECT_EQ(automatic.forwards, seq.forwards);
    EXPECT_EQ(automatic.trials, seq.trials);
    int64_t tried = 0;
    for (const auto& s : seq.steps) tried += s.tried ? 1 : 0;
    EXPECT_EQ(seq.trials, tried);  // sequential: one trial per tried edge, none discarded
  }
}

// A tau sweep on one runner (acdc(runner, ...), what a job's sweep does)
// decides as separate runs that each build their own runner: the runner's
// state from an earlier tau must not leak into the next, and its forward
// count is per run.
TEST(Acdc, ATauSweepOnOneRunnerGivesTheCircuitsOfSeparateRuns) {
  HookedTransformer model = load_f64("gpt2_like");
  const PatchingData data = fixture_data("gpt2_like");
  const Metric kl = kl_metric(model, data);
  CircuitRunner runner(model, data, Ablation::corrupted);
  // Back to the first tau at the end: a run after a sparser one.
  for (double tau : {0.0005, 0.005, 0.02, 0.0005}) {
    const AcdcOptions opts = AcdcOptions().threshold(tau);
    const AcdcResult swept = mechlab::discovery::acdc(runner, kl, opts);
    const AcdcResult alone = mechlab::discovery::acdc(model, data, kl, opts);
    expect_same_steps(swept.steps, alone.steps, 0.0, "tau " + std::to_string(tau));
    EXPECT_EQ(kept_names(swept.circuit), kept_names(alone.circuit)) << tau;
    EXPECT_EQ(swept.forwards, alone.forwards) << tau;
    EXPECT_EQ(swept.final_metric, alone.final_metric) << tau;
    EXPECT_EQ(swept.config, alone.config) << tau;
  }
  const std::string e = error_of(
      [&] { mechlab::discovery::acdc(runner, kl, AcdcOptions().threshold(0.01).ablation(Ablation::zero)); });
  EXPECT_NE(e.find("ACDC ablation \"zero\" differs from the circuit runner's \"corrupted\""), std::string::npos) << e;
}

// ------------------------------------------------------ constructed circuit

namespace {

// A 2-layer attention-only model without norms whose only path from the
// tokens to the logits is: a0.h1 (previous-token head) reads the token into
// its value and writes it to a "previous token" subspace; a1.h0 attends to
// its own position and copies that subspace to an "output" subspace, which
// alone the unembedding reads. a0.h0 and a1.h1 are zero. The residual stream:
// [token (V) | position (n_ctx) | previous token (V) | output (V)].
HookedTransformer constructed_model() {
  const int V = 8, C = 8;
  mechlab::core::ModelConfig cfg;
  cfg.name = "constructed";
  cfg.n_layers = 2;
  cfg.d_model = 3 * V + C;
  cfg.n_heads = 2;
  cfg.d_head = 8;
  cfg.d_vocab = V;
  cfg.n_ctx = C;
  cfg.norm = mechlab::core::NormKind::none;
  cfg.final_norm = false;
  cfg.mlp = mechlab::core::MlpKind::none;
  mechlab::core::Transformer t(cfg);
  auto& w = t.mutable_weights();
  at::NoGradGuard ng;
  for (at::Tensor* p : {&w.W_E, &w.W_pos, &w.W_U, &w.b_U}) p->zero_();
  for (auto& b : w.blocks) {
    for (at::Tensor* p : {&b.W_Q, &b.b_Q, &b.W_K, &b.b_K, &b.W_V, &b.b_V, &b.W_O, &b.b_O}) {
      if (p->defined()) p->zero_();
    }
  }
  const int TOK = 0, POS = V, PREV = V + C, OUT = 2 * V + C;
  const double big = 10;  // attention scores 100 / sqrt(8): one-hot patterns
  for (int t = 0; t < V; ++t) {
    w.W_E[t][TOK + t] = 1;
    w.W_U[OUT + t][t] = 4;
  }
  for (int p = 0; p < C; ++p) w.W_pos[p][POS + p] = 1;
  auto& b0 = w.blocks[0];  // a0.h1: query at p matches the key at p - 1
  for (int p = 0; p < C; ++p) {
    b0.W_Q[1][POS + p][p] = big;
    if (p + 1 < C) b0.W_K[1][POS + p][p + 1] = big;
  }
  for (int t = 0; t < V; ++t) {
    b0.W_V[1][TOK + t][t] = 1;
    b0.W_O[1][t][PREV + t] = 1;
  }
  auto& b1 = w.blocks[1];  // a1.h0: attends to itself, copies "previous token" to "output"
  for (int p = 0; p < C; ++p) {
    b1.W_Q[0][POS + p][p] = big;
    b1.W_K[0][POS + p][p] = big;
  }
  for (int t = 0; t < V; ++t) {
    b1.W_V[0][PREV + t][t] = 1;
    b1.W_O[0][t][OUT + t] = 1;
  }
  t.to(at::kDouble);
  return HookedTransformer(std::move(t));
}

// Prompts whose corrupted version differs at the token before the answer position.
PatchingData constructed_data() {
  at::manual_seed(3);
  const int64_t batch = 12, pos = 6, V = 8;
  PatchingData d;
  d.clean_tokens = at::randint(V, {batch, pos}, at::kLong);
  d.corrupted_tokens = d.clean_tokens.clone();
  at::Tensor prev = d.clean_tokens.select(1, pos - 2);
  d.corrupted_tokens.select(1, pos - 2).copy_((prev + at::randint(1, V, {batch}, at::kLong)) % V);
  d.answer_tokens = prev.unsqueeze(1).clone();
  d.wrong_tokens = d.corrupted_tokens.select(1, pos - 2).unsqueeze(1).clone();
  d.answer_pos = at::full({batch}, pos - 1, at::kLong);
  return d;
}

}  // namespace

TEST(Acdc, FindsExactlyTheEdgesOfAConstructedPreviousTokenCopyCircuit) {
  HookedTransformer model = constructed_model();
  const PatchingData data = constructed_data();
  {  // the construction works: the clean run predicts the previous token
    at::NoGradGuard ng;
    at::Tensor logits = model.forward(data.clean_tokens);  // [batch, pos, d_vocab]
    EXPECT_TRUE(at::equal(logits.select(1, 5).argmax(-1), data.answer_tokens.squeeze(1)));
  }
  const Metric kl = kl_metric(model, data);
  const std::set<std::string> want = {"a1.h0 -> output", "a1.h0<v> -> a1.h0", "a0.h1 -> a1.h0<v>",
                                      "a0.h1<v> -> a0.h1", "input -> a0.h1<v>"};
  for (double tau : {0.01, 0.1}) {
    const AcdcResult r = mechlab::discovery::acdc(model, data, kl, AcdcOptions().threshold(tau));
    EXPECT_EQ(kept_names(r.circuit), want) << "tau " << tau;
    EXPECT_LT(r.final_metric, 1e-6);  // the circuit is the whole computation
  }
  // Edge attribution (logit difference, noising) ranks the three residual edges first.
  const EdgeScores eap = edge_attribution(model, data, logit_diff(data.answers()));
  const auto top = eap.top(4);
  std::set<std::string> top3;
  for (int i = 0; i < 3; ++i) top3.insert(edge_name(top[static_cast<size_t>(i)].first));
  EXPECT_EQ(top3, (std::set<std::string>{"a1.h0 -> output", "a0.h1 -> a1.h0<v>", "input -> a0.h1<v>"}));
  EXPECT_GT(std::abs(top[2].second), 100 * std::abs(top[3].second));
}

// ------------------------------------------------------------ resume, start

TEST(Acdc, ResumeFromAnyCutOfTheJournalGivesTheSameRun) {
  HookedTransformer model = load_f64("gpt2_like");
  const PatchingData data = fixture_data("gpt2_like");
  const Metric kl = kl_metric(model, data);
  const AcdcOptions opts = AcdcOptions().threshold(0.003);
  int64_t observed = 0, last_total = 0;
  const AcdcResult full = mechlab::discovery::acdc(model, data, kl, opts, {},
                                                   [&](const AcdcStep&, int64_t decided, int64_t total) {
                                                     ++observed;
                                                     EXPECT_EQ(decided, observed);
                                                     last_total = total;
                                                   });
  EXPECT_EQ(observed, static_cast<int64_t>(full.steps.size()));
  EXPECT_EQ(last_total, static_cast<int64_t>(full.circuit.edges().size()));
  const size_t n = full.steps.size();
  for (size_t cut : {size_t(0), size_t(1), n / 3, n / 2 + 1, n - 1, n}) {
    std::vector<AcdcStep> journal(full.steps.begin(), full.steps.begin() + static_cast<std::ptrdiff_t>(cut));
    int64_t new_steps = 0;
    const AcdcResult r = mechlab::discovery::acdc(model, data, kl, opts, journal,
                                                  [&](const AcdcStep&, int64_t, int64_t) { ++new_steps; });
    expect_same_steps(r.steps, full.steps, 1e-9, "cut " + std::to_string(cut));
    EXPECT_EQ(kept_names(r.circuit), kept_names(full.circuit)) << "cut " << cut;
    EXPECT_EQ(new_steps, static_cast<int64_t>(n - cut)) << "cut " << cut;
  }
  // A journal of another job: another threshold decides some edge otherwise.
  const AcdcResult other = mechlab::discovery::acdc(model, data, kl, AcdcOptions().threshold(0.02));
  size_t differ = 0;
  while (differ < n && other.steps[differ].kept == full.steps[differ].kept) ++differ;
  ASSERT_LT(differ, n);
  std::vector<AcdcStep> wrong(other.steps.begin(), other.steps.begin() + static_cast<std::ptrdiff_t>(differ + 1));
  const std::string msg = error_of([&] { mechlab::discovery::acdc(model, data, kl, opts, wrong); });
  EXPECT_NE(msg.find("belongs to another job"), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos);
  std::vector<AcdcStep> renamed(full.steps.begin(), full.steps.begin() + 3);
  renamed[2].edge = "input -> output";
  EXPECT_NE(error_of([&] { mechlab::discovery::acdc(model, data, kl, opts, renamed); }).find("another job"),
            std::string::npos);
}

TEST(Acdc, EdgesRemovedInTheStartCircuitAreNeverTried) {
  HookedTransformer model = load_f64("gpt2_like");
  const PatchingData data = fixture_data("gpt2_like");
  const Metric kl = kl_metric(model, data);
  Circuit start = Circuit::full(CircuitGraph(model.cfg()));
  std::set<std::string> removed;
  for (const CircuitEdge& e : start.edges()) {
    if (e.kind == CircuitEdge::Kind::residual && e.sender % 3 == 0) {
      start.set_kept(e, false);
      removed.insert(start.edge_name(e));
    }
  }
  const AcdcResult r = mechlab::discovery::acdc(model, data, kl, AcdcOptions().threshold(0.003).start(start));
  EXPECT_EQ(r.steps.size(), start.edges().size() - removed.size());
  for (const auto& s : r.steps) EXPECT_EQ(removed.count(s.edge), 0u) << s.edge;
  for (const CircuitEdge& e : r.circuit.edges()) {
    if (removed.count(r.circuit.edge_name(e))) {
      EXPECT_FALSE(r.circuit.kept(e));
    }
  }
  // The first decision is measured against the start circuit's metric.
  CircuitRunner runner(model, data, Ablation::corrupted);
  const double start_metric = runner.metrics(kl, {start})[0];
  ASSERT_TRUE(r.steps[0].tried);
  Circuit one = Circuit::from_json(start.graph(), start.to_json());
  one.set_kept(one.parse_edge(r.steps[0].edge), false);
  EXPECT_NEAR(r.steps[0].score, runner.metrics(kl, {one})[0] - start_metric, 1e-6);
}

// ---------------------------------------------------------------- refusals

TEST(Acdc, RefusesBadOptionsInOneLine) {
  HookedTransformer model = load_f64("attn_only");
  const PatchingData data = fixture_data("attn_only");
  const Metric kl = kl_metric(model, data);
  auto msg = [&](const AcdcOptions& o, const Metric& m) {
    const std::string e = error_of([&] { mechlab::discovery::acdc(model, data, m, o); });
    EXPECT_EQ(e.find('\n'), std::string::npos) << e;
    return e;
  };
  EXPECT_NE(msg(AcdcOptions().threshold(-0.1), kl).find("threshold -0.1 must be a number >= 0"), std::string::npos);
  EXPECT_NE(msg(AcdcOptions().threshold(NAN), kl).find("must be a number >= 0"), std::string::npos);
  EXPECT_NE(msg(AcdcOptions().indices_mode("sideways"), kl).find("unknown ACDC indices_mode \"sideways\""),
            std::string::npos);
  HookedTransformer other = load_f64("gpt2_like");
  EXPECT_NE(msg(AcdcOptions().start(Circuit::full(CircuitGraph(other.cfg()))), kl).find("another model"),
            std::string::npos);
  const Metric nan_metric = Metric::custom("broken", [](const at::Tensor& logits) {
    return logits.sum() * std::numeric_limits<double>::quiet_NaN();
  });
  EXPECT_NE(msg(AcdcOptions(), nan_metric).find("metric broken is nan on the full model"), std::string::npos);
  EXPECT_NE(error_of([] { mechlab::discovery::parse_ablation("resample"); }).find("use corrupted, mean or zero"),
            std::string::npos);
  // Removing edges lowers logit_diff, so every removal would pass the rule.
  const Metric ld = logit_diff(data.answers());
  EXPECT_NE(msg(AcdcOptions().threshold(0.01), ld)
                .find("metric logit_diff is higher when the circuit is better, so every edge would go: pass "
                      "metric.negated()"),
            std::string::npos);
  EXPECT_NO_THROW(mechlab::discovery::acdc(model, data, ld, AcdcOptions().threshold(0.01).abs_value(true)));
}

// The reference's IOI runs minimise -logit_diff: the negated metric equals
// the naive ACDC on a metric written as minus logit_diff.
TEST(Acdc, ANegatedLogitDiffEqualsTheNaiveAcdcOnMinusLogitDiff) {
  HookedTransformer model = load_f64("gpt2_like");
  const PatchingData data = fixture_data("gpt2_like");
  const Metric ld = logit_diff(data.answers());
  EXPECT_TRUE(ld.higher_is_better());
  const Metric negated = ld.negated();
  EXPECT_EQ(negated.name(), "-logit_diff");
  EXPECT_FALSE(negated.higher_is_better());
  const Metric minus = Metric::custom("minus logit_diff", [&](const at::Tensor& logits) { return -ld(logits); });
  NaiveAcdc naive(model, data, false);
  const double tau = kLogitDiffTau;
  const NaiveResult want = naive.run(minus, tau, false);
  EXPECT_GT(want.smallest_margin, 1e-6) << "a decision is too close to tau to compare";
  const AcdcResult got = mechlab::discovery::acdc(model, data, negated, AcdcOptions().threshold(tau));
  EXPECT_EQ(kept_names(got.circuit), kept_names(want.circuit));
  EXPECT_GT(got.circuit.edge_count(), 0);  // neither empty nor whole: the comparison means something
  EXPECT_LT(got.circuit.edge_count(), static_cast<int64_t>(got.circuit.edges().size()));
  ASSERT_EQ(got.steps.size(), want.steps.size());
  for (size_t i = 0; i < got.steps.size(); ++i) {
    EXPECT_EQ(got.steps[i].edge, want.steps[i].edge) << i;
    EXPECT_EQ(got.steps[i].kept, want.steps[i].kept) << i;
  }
  EXPECT_NEAR(got.full_metric, -ld(model.forward(data.clean_tokens)).item<double>(), 1e-6);
}

// ------------------------------------------------------------------ metric

TEST(Metrics, KlToCleanAllPositionsIsTheMeanKlOverRealPositions) {
  at::manual_seed(5);
  const at::Tensor clean = at::randn({3, 4, 7}, at::kDouble);   // [batch, pos, d_vocab]
  const at::Tensor run = at::randn({2, 3, 4, 7}, at::kDouble);  // [copies, batch, pos, d_vocab]
  const at::Tensor mask = at::tensor({1, 1, 1, 1, 0, 1, 1, 1, 0, 0, 1, 1}, at::kLong).view({3, 4});
  const Metric m = kl_to_clean_all_positions(clean, mask);
  const at::Tensor got = m.batched(run);
  for (int64_t c = 0; c < 2; ++c) {
    double sum = 0;
    int n = 0;
    for (int64_t b = 0; b < 3; ++b) {
      for (int64_t p = 0; p < 4; ++p) {
        if (mask[b][p].item<int64_t>() == 0) continue;
        at::Tensor pc = at::softmax(clean[b][p], 0), pr = at::softmax(run[c][b][p], 0);
        sum += (pc * (pc.log() - pr.log())).sum().item<double>();
        ++n;
      }
    }
    EXPECT_NEAR(got[c].item<double>(), sum / n, 1e-5) << "copy " << c;
  }
  EXPECT_NEAR(m(clean).item<double>(), 0.0, 1e-6);
}
