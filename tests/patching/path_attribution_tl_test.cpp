// Path patching, node/edge attribution patching and EAP-IG against
// TransformerLens 2.18 hooks. Fixtures: tests/data/patching/paths/<model>.h5,
// made by scripts/fixtures/make_path_attribution_fixtures.py (its own
// implementation: the three-run path patching with run 2 executed and hooks
// freezing every head and MLP; gradients from TL backward hooks; hook_result
// for the head outputs); see tests/data/patching/README.md.
// Tolerance: kF32Tol (fixture_compare.h: 1e-5 normwise plus an element-wise
// bound), as for the activation-patching fixtures: the
// computations are the same functions with float operations reordered
// (closed-form run 2, stacked run 3, fused vs split attention, sums in
// another order); observed errors are below 1e-5.
#include "core/formats/hdf5_file.h"
#include "hooks/hooked_transformer.h"
#include "patching/attribution.h"
#include "patching/edge_attribution.h"
#include "patching/path_patching.h"
#include "patching/plan.h"
#include "tests/hooks/fixture_compare.h"

#include "tests/patching/patching_fixtures.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

using mechlab::core::H5File;
using mechlab::hooks::HookedTransformer;
using mechlab::testing::close;
using namespace mechlab::patching;

namespace {

constexpr auto kTol = mechlab::testing::kF32Tol;

using mechlab::testing::runtime_model;
using mechlab::testing::test_data_h5;

std::vector<std::string> json_list(const H5File& f, const std::string& obj, const std::string& attr) {
  return nlohmann::json::parse(f.read_attr_string(obj, attr)).get<std::vector<std::string>>();
}

class PathAttributionTL : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    ref_ = std::make_unique<H5File>(H5File::open_read(test_data_h5("patching/paths", GetParam())));
    model_ = std::make_unique<HookedTransformer>(
        HookedTransformer::load(runtime_model(GetParam())));
    data_ = mechlab::testing::read_fixture_inputs(*ref_);
  }

  // The edge scores in the fixture's order (it names each edge).
  void check_edges(const std::string& dataset, const AttributionOptions& opts) {
    const EdgeScores e = edge_attribution(*model_, data_, logit_diff(data_.answers()), opts);
    const std::vector<std::string> names = json_list(*ref_, dataset, "edges");
    ASSERT_EQ(e.all().size(), names.size()) << "the two graphs have different edge sets";
    std::vector<double> got;
    for (const auto& n : names) got.push_back(e.score(e.graph.parse_edge(n)));
    EXPECT_TRUE(close(at::tensor(got, at::kDouble), ref_->read_tensor(dataset), kTol,
                      GetParam() + " " + dataset));
  }

  void check_nodes(const std::string& group, const AttributionOptions& opts) {
    const std::vector<std::string> sweeps = ref_->list(group);
    ASSERT_GE(sweeps.size(), 8u);
    auto results = attribution_sweeps(*model_, data_, sweeps, logit_diff(data_.answers()), opts);
    for (size_t i = 0; i < sweeps.size(); ++i) {
      EXPECT_EQ(results[i].sweep, std::string(method_name(opts.method())) + ":" + sweeps[i]);
      EXPECT_TRUE(close(results[i].values, ref_->read_tensor(group + "/" + sweeps[i]), kTol,
                        GetParam() + " " + group + " " + sweeps[i]));
    }
  }

  std::unique_ptr<H5File> ref_;
  std::unique_ptr<HookedTransformer> model_;
  PatchingData data_;
};

// Through the plan and runner (patching/plan.h): the specs go through
// CircuitGraph::parse_path, as `mechlab patch --path` sends them.
TEST_P(PathAttributionTL, PathPatchingCasesBothDirections) {
  for (Direction dir : {Direction::noising, Direction::denoising}) {
    const std::string ds = std::string("path/") + direction_name(dir);
    const std::vector<std::string> cases = json_list(*ref_, ds, "cases");
    const auto results = run_patching(*model_, data_, PatchPlan().paths(cases).directions({dir}));
    ASSERT_EQ(results.size(), cases.size());
    std::vector<double> got;
    for (size_t i = 0; i < cases.size(); ++i) {
      EXPECT_EQ(results[i].name, cases[i]);
      EXPECT_EQ(results[i].kind, ResultKind::path);
      got.push_back(results[i].values.item<double>());
    }
    EXPECT_TRUE(close(at::tensor(got, at::kDouble), ref_->read_tensor(ds), kTol, GetParam() + " " + ds));
    const double clean = ref_->read_tensor("path/clean_metric").item<double>();
    const double corrupted = ref_->read_tensor("path/corrupted_metric").item<double>();
    const PatchStats& st = results.back().stats;
    EXPECT_NEAR(st.base_metric, dir == Direction::noising ? clean : corrupted, 1e-4);
    EXPECT_NEAR(st.source_metric, dir == Direction::noising ? corrupted : clean, 1e-4);
    EXPECT_NEAR(st.clean_metric, clean, 1e-4);
    EXPECT_NEAR(st.corrupted_metric, corrupted, 1e-4);
  }
}

TEST_P(PathAttributionTL, PathPatchingSweepsOverEverySenderHead) {
  const CircuitGraph g(model_->cfg());
  const std::vector<std::string> receivers = json_list(*ref_, "path/sweeps", "receivers");
  const at::Tensor want = ref_->read_tensor("path/sweeps");  // [sweeps, layer, head]
  for (size_t i = 0; i < receivers.size(); ++i) {
    SweepResult r = path_patch_sweep(*model_, data_, g.parse_receivers(receivers[i]),
                                     logit_diff(data_.answers()));
    EXPECT_EQ(r.sweep, "path:" + receivers[i]);
    EXPECT_EQ(r.axes, (std::vector<std::string>{"layer", "head"}));
    EXPECT_TRUE(close(r.values, want[static_cast<int64_t>(i)], kTol, GetParam() + " -> " + receivers[i]));
  }
}

TEST_P(PathAttributionTL, NodeAttribution) { check_nodes("attribution", AttributionOptions{}); }

TEST_P(PathAttributionTL, EdgeAttribution) { check_edges("edges/attribution", AttributionOptions{}); }

TEST_P(PathAttributionTL, EapIgNodesAndEdges) {
  const int steps = static_cast<int>(ref_->read_attr_int("edges/eap_ig", "steps"));
  const auto opts = AttributionOptions{}.method(AttributionMethod::eap_ig).steps(steps);
  check_edges("edges/eap_ig", opts);
  check_nodes("eap_ig", opts);
}

INSTANTIATE_TEST_SUITE_P(Models, PathAttributionTL,
                         ::testing::Values("gpt2_like", "attn_only", "llama_like", "neox_like"));

}  // namespace
