// The patching plan and runner (patching/plan.h): the same numbers as the
// functions it calls, typed axes, labels and baselines, errors before any
// forward; the path-spec parser; the metric factory; IOI position labels.
#include "core/data/tasks/ioi.h"
#include "core/formats/hdf5_file.h"
#include "core/model/presets.h"
#include "hooks/hooked_transformer.h"
#include "patching/circuit_graph.h"
#include "patching/heatmap.h"
#include "patching/edge_attribution.h"
#include "patching/metrics.h"
#include "patching/patching_data.h"
#include "patching/path_patching.h"
#include "patching/plan.h"
#include "patching/sweeps.h"
#include "tests/patching/patching_fixtures.h"
#include "tests/test_util.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <set>

using mechlab::core::H5File;
using mechlab::hooks::HookedTransformer;
using mechlab::testing::error_of;
using mechlab::testing::runtime_model;
using namespace mechlab::patching;

namespace {

PatchingData fixture_data(const std::string& model) {
  return mechlab::testing::read_fixture_inputs(
      H5File::open_read(mechlab::testing::test_data_h5("patching", model)));
}

double unpatched(HookedTransformer& model, const at::Tensor& tokens, const Metric& m) {
  at::NoGradGuard no_grad;
  return m(model.forward(tokens)).item<double>();
}

TEST(PathSpec, ParsesAndNamesPaths) {
  CircuitGraph g(mechlab::core::preset("tiny"));
  const PathSpec p = g.parse_path(" a0.h1 + m0->a1.h2<q>+output ");
  ASSERT_EQ(p.senders.size(), 2u);
  ASSERT_EQ(p.receivers.size(), 2u);
  EXPECT_EQ(p.senders[1], g.parse_sender("m0"));
  EXPECT_EQ(p.receivers[0], g.parse_receiver("a1.h2<q>"));
  EXPECT_EQ(path_name(p), "a0.h1+m0 -> a1.h2<q>+output");
}

TEST(PathSpec, ErrorsNameTheSpecAndTheFix) {
  CircuitGraph g(mechlab::core::preset("tiny"));
  std::string msg = error_of([&] { g.parse_path("a0.h1 a1.h2<q>"); });
  EXPECT_NE(msg.find("path \"a0.h1 a1.h2<q>\" must be \"SENDERS -> RECEIVERS\" with one \"->\""),
            std::string::npos) << msg;
  msg = error_of([&] { g.parse_path("a0.h1 -> m0 -> output"); });
  EXPECT_NE(msg.find("with one \"->\""), std::string::npos) << msg;
  msg = error_of([&] { g.parse_path(" -> a1.h2<q>"); });
  EXPECT_NE(msg.find("has no senders before \"->\""), std::string::npos) << msg;
  msg = error_of([&] { g.parse_path("a0.h1 ->  "); });
  EXPECT_NE(msg.find("has no receivers after \"->\""), std::string::npos) << msg;
  msg = error_of([&] { g.parse_path("a0.h1+a0.x2 -> output"); });
  EXPECT_NE(msg.find("unknown circuit node \"a0.x2\""), std::string::npos) << msg;
  msg = error_of([&] { g.parse_path("a0.h1 -> a1.h2"); });
  EXPECT_NE(msg.find("must name the input it reads"), std::string::npos) << msg;
  msg = error_of([&] { g.parse_path("a1.h0+m1 -> a0.h2<q>+a1.h3<v>"); });
  EXPECT_NE(msg.find("path \"a1.h0+m1 -> a0.h2<q>+a1.h3<v>\": no sender writes the residual stream "
                     "before a receiver reads it"),
            std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
}

TEST(MetricFactory, NamesLiveInOneCatalog) {
  HookedTransformer model = HookedTransformer::load(runtime_model("gpt2_like"));
  const PatchingData data = fixture_data("gpt2_like");
  std::string names;
  for (const auto& m : metric_catalog()) {
    names += (names.empty() ? "" : ", ") + std::string(m.name);
    // Every catalogued name builds.
    EXPECT_EQ(make_metric(MetricOptions().name(m.name), model, data, Direction::denoising).name(),
              m.name);
  }
  EXPECT_EQ(names, metric_names());
  std::string msg = error_of([&] {
    make_metric(MetricOptions().name("lgoit_diff"), model, data, Direction::denoising);
  });
  EXPECT_NE(msg.find(std::string("unknown metric \"lgoit_diff\"; metrics: ") + metric_names()),
            std::string::npos) << msg;
  msg = error_of([&] {
    make_metric(MetricOptions().name("logit_diff").clean_baseline(1.0), model, data,
                Direction::denoising);
  });
  EXPECT_NE(msg.find("belong to normalised_logit_diff"), std::string::npos) << msg;
}

TEST(MetricFactory, NormalisedLogitDiffTakesGivenOrMeasuredBaselines) {
  HookedTransformer model = HookedTransformer::load(runtime_model("gpt2_like"));
  const PatchingData data = fixture_data("gpt2_like");
  const Metric ld = logit_diff(data.answers());
  const double lc = unpatched(model, data.clean_tokens, ld);
  const double lx = unpatched(model, data.corrupted_tokens, ld);
  // Analytic: (ld - corrupted) / (clean - corrupted).
  const Metric measured =
      make_metric(MetricOptions().name("normalised_logit_diff"), model, data, Direction::noising);
  EXPECT_NEAR(unpatched(model, data.clean_tokens, measured), 1.0, 1e-5);
  EXPECT_NEAR(unpatched(model, data.corrupted_tokens, measured), 0.0, 1e-5);
  const Metric given = make_metric(
      MetricOptions().name("normalised_logit_diff").clean_baseline(lc + 2).corrupted_baseline(lx - 1),
      model, data, Direction::noising);
  EXPECT_NEAR(unpatched(model, data.clean_tokens, given), (lc - (lx - 1)) / ((lc + 2) - (lx - 1)), 1e-5);
}

TEST(PatchPlan, RefusesBadPlansBeforeAnyForward) {
  const auto cfg = mechlab::core::preset("tiny");
  auto msg = [&](const PatchPlan& p) { return error_of([&] { p.check(cfg); }); };
  EXPECT_NE(msg(PatchPlan()).find("the patching plan has nothing to do"), std::string::npos);
  EXPECT_NE(msg(PatchPlan().sweeps({"head_out"})).find("unknown sweep \"head_out\""), std::string::npos);
  EXPECT_NE(msg(PatchPlan().edges(true)).find("set its method to attribution or eap-ig"),
            std::string::npos);
  EXPECT_NE(msg(PatchPlan().paths({"a0.h1 -> a1.h2<q>"}).method(PatchMethod::eap_ig))
                .find("exact path patching, which has no eap-ig form"),
            std::string::npos);
  EXPECT_NE(msg(PatchPlan().sweeps({"path:a1.h0<q>"}).method(PatchMethod::attribution))
                .find("sweep path:a1.h0<q> is path patching"),
            std::string::npos);
  EXPECT_NE(msg(PatchPlan().paths({"a0.h1 a1.h2<q>"})).find("must be \"SENDERS -> RECEIVERS\""),
            std::string::npos);
  EXPECT_NE(msg(PatchPlan().sweeps({"resid_pre"}).steps(0)).find("steps"), std::string::npos);
  EXPECT_NE(msg(PatchPlan().sweeps({"resid_pre"}).metric(MetricOptions().name("acc")))
                .find("unknown metric \"acc\""),
            std::string::npos);
  EXPECT_EQ(parse_patch_method("patching"), PatchMethod::activation);
  EXPECT_NE(error_of([] { parse_patch_method("acdc"); }).find("unknown patching method \"acdc\""),
            std::string::npos);
}

// The runner gives the numbers of the functions it calls, typed.
TEST(PatchPlan, RunnerResultsAreTypedAndMatchTheDirectCalls) {
  HookedTransformer model = HookedTransformer::load(runtime_model("gpt2_like"));
  const PatchingData data = fixture_data("gpt2_like");
  const auto& cfg = model.cfg();
  std::vector<std::string> pos_labels;
  for (int64_t p = 0; p < data.seq_len(); ++p) pos_labels.push_back("slot" + std::to_string(p));
  const PatchPlan plan = PatchPlan()
                             .sweeps({"attn_head_out_all_pos", "resid_pre", "path:a1.h0<q>"})
                             .paths({"a0.h1+m0 -> a1.h2<q>+output"})
                             .position_labels(pos_labels)
                             .model_id("gpt2_like.h5")
                             .dataset_task("fixture");
  const auto results = run_patching(model, data, plan);
  ASSERT_EQ(results.size(), 4u);

  const Metric ld = logit_diff(data.answers());
  const double clean = unpatched(model, data.clean_tokens, ld);
  const double corrupted = unpatched(model, data.corrupted_tokens, ld);
  const auto direct = run_sweeps(model, data, {"attn_head_out_all_pos", "resid_pre"}, ld);
  for (size_t i = 0; i < 2; ++i) {
    const PatchResult& r = results[i];
    EXPECT_EQ(r.name, direct[i].sweep);
    EXPECT_EQ(r.kind, ResultKind::node_sweep);
    EXPECT_EQ(r.direction, Direction::denoising);  // TL's default for exact node sweeps
    EXPECT_TRUE(at::equal(r.values, direct[i].values)) << r.name;
    ASSERT_EQ(r.axes.size(), static_cast<size_t>(r.values.dim()));
    for (size_t a = 0; a < r.axes.size(); ++a) {
      EXPECT_EQ(r.axes[a].name, direct[i].axes[a]);
      EXPECT_EQ(r.axes[a].size, r.values.size(static_cast<int64_t>(a)));
      EXPECT_EQ(static_cast<int64_t>(r.axes[a].labels.size()), r.axes[a].size);
    }
    EXPECT_NEAR(r.stats.clean_metric, clean, 1e-4);
    EXPECT_NEAR(r.stats.corrupted_metric, corrupted, 1e-4);
    EXPECT_EQ(r.stats.base_metric, r.stats.corrupted_metric);  // denoising patches the corrupted run
    EXPECT_GT(r.stats.forwards, 0);
    EXPECT_EQ(r.provenance.model_config_hash, cfg.hash());
    EXPECT_EQ(r.provenance.model_id, "gpt2_like.h5");
    EXPECT_EQ(r.provenance.n_prompts, data.batch());
    EXPECT_EQ(r.provenance.plan.sweeps(), plan.sweeps());
  }
  EXPECT_EQ(results[0].axes[0].name, "layer");
  EXPECT_EQ(results[0].axes[1].name, "head");
  EXPECT_EQ(results[0].axes[1].size, cfg.n_heads);
  EXPECT_EQ(results[1].axes[1].name, "pos");
  EXPECT_EQ(results[1].axes[1].labels, pos_labels);

  CircuitGraph g(cfg);
  const PathPatchResult direct_path = path_patch(model, data, g.parse_senders("a0.h1+m0"),
                                                 g.parse_receivers("a1.h2<q>+output"), ld);
  const PatchResult& sweep = results[2];
  EXPECT_EQ(sweep.kind, ResultKind::path_sweep);
  EXPECT_EQ(sweep.direction, Direction::noising);  // Wang et al.'s default
  EXPECT_TRUE(at::equal(sweep.values,
                        path_patch_sweep(model, data, g.parse_receivers("a1.h0<q>"), ld).values));
  const PatchResult& path = results[3];
  EXPECT_EQ(path.kind, ResultKind::path);
  EXPECT_EQ(path.values.dim(), 0);
  EXPECT_NEAR(path.values.item<double>(), direct_path.value, 1e-6);
  EXPECT_EQ(path.stats.base_metric, direct_path.base_metric);
  EXPECT_NEAR(path.stats.clean_metric, clean, 1e-4);  // noising: the base run is the clean one

  // Top effects against a naive scan of the values.
  const PatchResult& heads = results[0];
  const auto top = top_effects(heads, 3);
  ASSERT_EQ(top.size(), 3u);
  at::Tensor change = (heads.values.to(at::kDouble) - heads.stats.base_metric).abs();  // [layer, head]
  const int64_t best = change.argmax().item<int64_t>();
  const int64_t l = best / cfg.n_heads, h = best % cfg.n_heads;
  EXPECT_EQ(top[0].label, "L" + std::to_string(l) + " H" + std::to_string(h));
  EXPECT_EQ(top[0].index, (std::vector<int64_t>{l, h}));
  EXPECT_NEAR(std::fabs(top[0].change), change.max().item<double>(), 1e-9);
  EXPECT_NEAR(top[0].normalised, (top[0].value - corrupted) / (clean - corrupted), 1e-4);
  EXPECT_GE(std::fabs(top[0].change), std::fabs(top[1].change));
  EXPECT_GE(std::fabs(top[1].change), std::fabs(top[2].change));
}

TEST(PatchPlan, EdgesAndAttributionThroughTheRunner) {
  HookedTransformer model = HookedTransformer::load(runtime_model("gpt2_like"));
  const PatchingData data = fixture_data("gpt2_like");
  const Metric ld = logit_diff(data.answers());
  const auto results = run_patching(
      model, data, PatchPlan().sweeps({"mlp_out"}).edges(true).method(PatchMethod::eap_ig).steps(3));
  ASSERT_EQ(results.size(), 2u);
  AttributionOptions opts = AttributionOptions{}.method(AttributionMethod::eap_ig).steps(3);
  const auto node = attribution_sweeps(model, data, {"mlp_out"}, ld, opts);
  EXPECT_EQ(results[0].name, "eap-ig:mlp_out");
  EXPECT_TRUE(results[0].values_are_changes);
  EXPECT_EQ(results[0].direction, Direction::noising);
  EXPECT_TRUE(at::allclose(results[0].values, node[0].values, 1e-6, 1e-7));
  const PatchResult& edges = results[1];
  EXPECT_EQ(edges.kind, ResultKind::edges);
  ASSERT_NE(edges.edge_scores, nullptr);
  CircuitGraph g(model.cfg());
  ASSERT_EQ(edges.axes.size(), 2u);
  EXPECT_EQ(edges.axes[0].name, "sender");
  EXPECT_EQ(edges.axes[0].size, static_cast<int64_t>(g.senders().size()));
  EXPECT_EQ(edges.axes[1].size, static_cast<int64_t>(g.receivers().size()));
  const EdgeScores direct = edge_attribution(model, data, ld, opts);
  EXPECT_TRUE(at::allclose(edges.values.nan_to_num(0), direct.scores.nan_to_num(0), 1e-6, 1e-7));
  // The top edge of the typed result is the top edge of the scores.
  const auto top = top_effects(edges, 1);
  ASSERT_EQ(top.size(), 1u);
  EXPECT_EQ(top[0].label, edge_name(direct.top(1)[0].first));
}

// IOI columns are labelled with template slots that hold for the examples,
// checked against the data itself: S2 is where clean and corrupted differ,
// IO where the clean prompt holds the answer.
TEST(PositionLabels, IoiPositionsNameTheirTemplateSlots) {
  const auto ds = mechlab::core::tasks::make_ioi(
      mechlab::core::tasks::IoiOptions{}.n(12).seed(4));
  const auto labels = position_labels(ds);
  ASSERT_EQ(static_cast<int64_t>(labels.size()), ds.clean_tokens.size(1));
  at::Tensor clean = ds.clean_tokens.to(at::kLong), corrupted = ds.corrupted_tokens.to(at::kLong);
  at::Tensor answer = ds.answer_tokens.to(at::kLong).select(1, 0);  // [N]
  for (int64_t p = 0; p < clean.size(1); ++p) {
    std::set<std::string> slots;
    const std::string body = labels[p].substr(labels[p].find(": ") + 2);
    for (size_t b = 0, e; b <= body.size(); b = e + 1) {
      e = body.find('|', b);
      if (e == std::string::npos) e = body.size();
      slots.insert(body.substr(b, e - b));
    }
    EXPECT_EQ(labels[p].rfind(std::to_string(p) + ": ", 0), 0u) << labels[p];
    const bool s2 = (clean.select(1, p) != corrupted.select(1, p)).any().item<bool>();
    const bool io = (clean.select(1, p) == answer).any().item<bool>();
    if (slots.count("…") == 0) {  // every slot at p is listed
      EXPECT_EQ(slots.count("S2") == 1, s2) << labels[p];
      EXPECT_EQ(slots.count("IO") == 1, io) << labels[p];
    }
    EXPECT_EQ(labels[p].find('/'), std::string::npos) << labels[p];
  }
}

}  // namespace

namespace {

// [hardening] 16: the legend says what the colour is, and a small grid is
// still as wide as its title.
TEST(Heatmap, LegendNamesTheScaleAndSmallGridsKeepTheirTitle) {
  SweepResult r;
  r.sweep = "attn_head_out_all_pos";
  r.values = at::tensor({0.5, -0.25, 1.0, 0.0}, at::kFloat).reshape({1, 4});  // [layer, head]
  r.axes = {"layer", "head"};
  r.labels = {{"0"}, {"0", "1", "2", "3"}};
  r.config = {{"direction", "denoising"}, {"metric", "logit_diff"}, {"clean_metric", 2.0},
              {"corrupted_metric", 0.0}};
  const std::string title(70, 'T');
  auto width_of = [](const std::string& svg) {
    const size_t at = svg.find("width=\"") + 7;
    return std::stoi(svg.substr(at, svg.find('"', at) - at));
  };
  std::string svg = heatmap_svg(r, title);
  // 15px bold capitals are at least 8px wide each.
  EXPECT_GE(width_of(svg), 70 * 8) << svg.substr(0, 200);
  EXPECT_NE(svg.find("colour: normalised metric, 0 = corrupted (0), 1 = clean (2); white = unpatched (0)"),
            std::string::npos);
  // value 1.0 on the 0..2 scale is 0.5, the cell's tooltip says so.
  EXPECT_NE(svg.find("value 1 (normalised 0.5)"), std::string::npos);
  r.config["direction"] = "noising";
  EXPECT_NE(heatmap_svg(r, "t").find("white = unpatched (1)"), std::string::npos);
  r.config["method"] = "eap-ig";
  svg = heatmap_svg(r, "t");
  EXPECT_NE(svg.find("colour: estimated change in metric (eap-ig); white = no change"), std::string::npos);
  EXPECT_EQ(svg.find("metric after patching"), std::string::npos);
}

}  // namespace
