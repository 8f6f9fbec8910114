// ACDC against the reference implementation (Conmy et al., ACDC repository
// at bc99ace8, acdc/TLACDCExperiment.py) on mechlab models: every decision in
// order, its score and the final circuit. Fixtures and how they were made:
// tests/data/discovery/acdc/README.md (scripts/fixtures/make_acdc_fixtures.py).
//
// Tolerances (the README's): scores and metrics within 1e-5 + 1e-4 * |ref|
// (float32 KL values from two runtimes); decisions identical, which the
// fixtures make safe by keeping every tried edge at least 1.5e-5 from tau.
#include "hooks/hooked_transformer.h"
#include "patching/discovery/acdc.h"
#include "patching/discovery/circuit_runner.h"
#include "patching/metrics.h"
#include "patching/patching_data.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

using mechlab::discovery::AcdcOptions;
using mechlab::discovery::AcdcResult;
using mechlab::discovery::Circuit;
using mechlab::discovery::CircuitEdge;
using mechlab::hooks::HookedTransformer;
using namespace mechlab::patching;

namespace {

const std::string kDir = std::string(MECHLAB_TEST_DATA) + "/discovery/acdc";

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  return nlohmann::json::parse(in);
}

at::Tensor tokens_of(const nlohmann::json& rows) {
  std::vector<int64_t> flat;
  for (const auto& r : rows) {
    for (const auto& t : r) flat.push_back(t.get<int64_t>());
  }
  const auto b = static_cast<int64_t>(rows.size());
  return at::tensor(flat, at::kLong).view({b, -1}).clone();
}

bool close(double got, double want) { return std::abs(got - want) <= 1e-5 + 1e-4 * std::abs(want); }

std::vector<std::string> fixture_files() {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(kDir)) {
    const std::string name = e.path().filename().string();
    if (name.find("_tau") != std::string::npos && e.path().extension() == ".json") out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

class AcdcReference : public ::testing::TestWithParam<std::string> {};

TEST_P(AcdcReference, SameDecisionsScoresAndCircuitAsTheReference) {
  const nlohmann::json f = read_json(kDir + "/" + GetParam());
  ASSERT_EQ(f.at("format"), "mechlab_acdc_reference");
  ASSERT_TRUE(f.at("near_threshold").empty()) << "a regenerated fixture has near-ties; see the README";
  HookedTransformer model =
      HookedTransformer::load(std::string(MECHLAB_SOURCE_DIR) + "/" + f.at("model").get<std::string>());

  PatchingData data;
  data.clean_tokens = tokens_of(f.at("clean_tokens"));
  data.corrupted_tokens = tokens_of(f.at("corrupted_tokens"));
  // KL reads no answer tokens; the last column stands in so the data validate.
  data.answer_tokens = data.clean_tokens.narrow(1, data.seq_len() - 1, 1).clone();
  data.wrong_tokens = data.answer_tokens.clone();
  Metric metric = [&] {
    at::NoGradGuard ng;
    return kl_to_clean(data.answers(), model.forward(data.clean_tokens));
  }();

  const auto& o = f.at("options");
  const AcdcResult r = mechlab::discovery::acdc(
      model, data, metric,
      AcdcOptions()
          .threshold(o.at("threshold").get<double>())
          .abs_value(o.at("abs_value").get<bool>())
          .ablation(mechlab::discovery::parse_ablation(o.at("ablation").get<std::string>()))
          .indices_mode(o.at("indices_mode").get<std::string>()));

  const auto& steps = f.at("steps");
  ASSERT_EQ(r.steps.size(), steps.size());
  for (size_t i = 0; i < steps.size(); ++i) {
    const auto& want = steps[i];
    const auto& got = r.steps[i];
    ASSERT_EQ(got.edge, want.at("edge").get<std::string>()) << "step " << i;
    ASSERT_EQ(got.kept, want.at("kept").get<bool>()) << "step " << i << " " << got.edge;
    ASSERT_EQ(got.tried, want.at("tried").get<bool>()) << "step " << i << " " << got.edge;
    if (!got.tried) continue;
    EXPECT_TRUE(close(got.score, want.at("increase").get<double>()))
        << "step " << i << " " << got.edge << ": score " << got.score << " vs " << want.at("increase");
    EXPECT_TRUE(close(got.metric, want.at("metric").get<double>()))
        << "step " << i << " " << got.edge << ": metric " << got.metric << " vs " << want.at("metric");
  }

  std::set<std::string> kept, want_kept;
  for (const CircuitEdge& e : r.circuit.edges()) {
    if (r.circuit.kept(e)) kept.insert(r.circuit.edge_name(e));
  }
  for (const auto& e : f.at("kept_edges")) want_kept.insert(e.get<std::string>());
  EXPECT_EQ(kept, want_kept);
  EXPECT_EQ(r.circuit.edge_count(), f.at("n_kept").get<int64_t>());
  EXPECT_EQ(static_cast<int64_t>(r.circuit.edges().size()), f.at("n_edges").get<int64_t>());
  EXPECT_NEAR(r.full_metric, 0.0, 1e-6);
  EXPECT_TRUE(close(r.final_metric, f.at("final_metric").get<double>()))
      << r.final_metric << " vs " << f.at("final_metric");
}

INSTANTIATE_TEST_SUITE_P(Fixtures, AcdcReference, ::testing::ValuesIn(fixture_files()),
                         [](const ::testing::TestParamInfo<std::string>& i) {
                           std::string n = i.param.substr(0, i.param.size() - 5);
                           for (char& c : n) c = std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
                           return n;
                         });

// Every fixture run is present, so a lost file cannot shrink the check silently.
TEST(AcdcReferenceFixtures, AllTenRunsArePresent) { EXPECT_EQ(fixture_files().size(), 10u); }

}  // namespace
