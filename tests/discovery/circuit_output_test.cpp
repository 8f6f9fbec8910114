// A job's outputs (patching/discovery/circuit_output.h): circuit.json,
// circuit.h5 and circuit.dot agree with the circuit; the picture draws only
// kept edges, coloured by receiver channel and sized by |score|; a missing
// Graphviz is an error that leaves the data files written.
#include "core/formats/hdf5_file.h"
#include "core/model/presets.h"
#include "patching/discovery/circuit_output.h"
#include "tests/test_util.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

using mechlab::discovery::Circuit;
using mechlab::discovery::CircuitEdge;
using mechlab::discovery::CircuitOutputOptions;
using mechlab::discovery::CircuitRecord;
using mechlab::patching::CircuitGraph;
using mechlab::testing::error_of;
using mechlab::testing::temp_path;
namespace fs = std::filesystem;

namespace {

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// In "tiny" (2 layers, 4 heads, MLPs): input feeds a0.h1's value input and
// a1.h2's query input; a0.h1 feeds a1.h2's key input and m1; a1.h2 and m1
// feed the output. Scores: 0.4 on a1.h2 -> output (the largest), others smaller.
CircuitRecord small_record() {
  Circuit c = Circuit::empty(CircuitGraph(mechlab::core::preset("tiny")));
  const std::vector<std::pair<std::string, double>> kept = {
      {"input -> a0.h1<v>", 0.1}, {"a0.h1<v> -> a0.h1", 0.1}, {"input -> a1.h2<q>", -0.2},
      {"a1.h2<q> -> a1.h2", -0.2}, {"a0.h1 -> a1.h2<k>", 0.3}, {"a1.h2<k> -> a1.h2", 0.3},
      {"a0.h1 -> m1", 0.05},       {"m1 -> output", -0.1},     {"a1.h2 -> output", 0.4}};
  for (const auto& [name, s] : kept) {
    c.set_kept(c.parse_edge(name), true);
    c.set_score(c.parse_edge(name), s);
  }
  c.set_score(c.parse_edge("a0.h0 -> output"), 0.01);  // scored, removed
  CircuitRecord r{c};
  r.trace = nlohmann::json::array({{{"edge", "a0.h0 -> output"}, {"kept", false}, {"metric", 0.5}}});
  r.config = {{"name", "small"}, {"method", "eap"}};
  r.versions = {{"mechlab", "0.1.0"}, {"method", "eap"}};
  r.results = {{"edges_kept", c.edge_count()}};
  return r;
}

}  // namespace

TEST(CircuitOutput, JsonAndHdf5HoldTheCircuitTheTraceAndTheConfig) {
  const std::string dir = temp_path("circuit_output", "json_h5");
  const CircuitRecord rec = small_record();
  const auto files = mechlab::discovery::write_circuit_outputs(dir, rec, CircuitOutputOptions().svg(false));
  const nlohmann::json doc = mechlab::discovery::read_circuit_document(files.json);
  EXPECT_EQ(doc["circuit"], rec.circuit.to_json());
  EXPECT_EQ(doc["circuit"]["n_kept"], 9);
  EXPECT_EQ(doc["trace"], rec.trace);
  EXPECT_EQ(doc["config"], rec.config);
  EXPECT_EQ(doc["versions"], rec.versions);
  // The JSON reads back to the same circuit.
  const Circuit back = Circuit::from_json(rec.circuit.graph(), doc["circuit"]);
  EXPECT_TRUE(back.kept_residual().equal(rec.circuit.kept_residual()));

  auto h5 = mechlab::core::H5File::open_read(files.h5);
  EXPECT_EQ(h5.read_attr_string("", "mechlab_format"), "circuit");
  EXPECT_TRUE(h5.read_tensor("circuit/kept_residual").to(at::kBool).equal(rec.circuit.kept_residual()));
  EXPECT_TRUE(h5.read_tensor("circuit/kept_head_input").to(at::kBool).equal(rec.circuit.kept_head_input()));
  const at::Tensor scores = h5.read_tensor("circuit/scores");
  const auto& g = rec.circuit.graph();
  const auto e = g.parse_edge("a1.h2 -> output");
  EXPECT_DOUBLE_EQ(scores[g.sender_index(e.sender)][g.receiver_index(e.receiver)].item<double>(), 0.4);
  EXPECT_EQ(scores.isnan().logical_not().sum().item<int64_t>(), 7);  // the residual edges with a score
  EXPECT_EQ(h5.read_attr_string("circuit", "json"), slurp(files.json));
  EXPECT_EQ(nlohmann::json::parse(h5.read_attr_string("circuit", "senders"))[0], "input");
  // Nothing staged is left behind.
  for (const auto& entry : fs::directory_iterator(dir)) {
    EXPECT_EQ(entry.path().string().find(".tmp"), std::string::npos) << entry.path();
  }
  EXPECT_FALSE(fs::exists(dir + "/circuit.svg"));
}

TEST(CircuitOutput, DotDrawsOnlyKeptEdgesColouredByChannelAndSizedByScore) {
  const CircuitRecord rec = small_record();
  const std::string dot = mechlab::discovery::circuit_dot(rec.circuit, "t");
  auto line_of = [&](const std::string& edge) {
    const size_t at = dot.find(edge + " [color");  // not the invisible rank links
    EXPECT_NE(at, std::string::npos) << edge << "\n" << dot;
    return at == std::string::npos ? std::string() : dot.substr(at, dot.find('\n', at) - at);
  };
  // q blue, k green, v vermillion, MLP/output grey; width 1 + 5 |s| / 0.4.
  EXPECT_NE(line_of("\"input\" -> \"a1.h2\"").find("#0072B2"), std::string::npos);
  EXPECT_NE(line_of("\"input\" -> \"a1.h2\"").find("penwidth=3.50"), std::string::npos);
  EXPECT_NE(line_of("\"a0.h1\" -> \"a1.h2\"").find("#009E73"), std::string::npos);
  EXPECT_NE(line_of("\"input\" -> \"a0.h1\"").find("#D55E00"), std::string::npos);
  EXPECT_NE(line_of("\"a0.h1\" -> \"m1\"").find("#777777"), std::string::npos);
  EXPECT_NE(line_of("\"a1.h2\" -> \"output\"").find("penwidth=6.00"), std::string::npos);
  EXPECT_NE(line_of("\"m1\" -> \"output\"").find("penwidth=2.25"), std::string::npos);
  // A two-line title: the DOT line break, not an escaped backslash.
  EXPECT_NE(dot.find("label=\"t\\n9 of "), std::string::npos) << dot;
  // The removed (scored) edge and nodes without kept edges are absent.
  EXPECT_EQ(dot.find("a0.h0"), std::string::npos);
  EXPECT_EQ(dot.find("m0"), std::string::npos);
  // One rank per layer part, in order: input, a0 heads, a1 heads, m1, output.
  const size_t r_in = dot.find("rank=same; \"input\""), r_a0 = dot.find("rank=same; \"a0.h1\"");
  const size_t r_a1 = dot.find("rank=same; \"a1.h2\""), r_m1 = dot.find("rank=same; \"m1\"");
  const size_t r_out = dot.find("rank=same; \"output\"");
  ASSERT_NE(r_out, std::string::npos);
  EXPECT_LT(r_in, r_a0);
  EXPECT_LT(r_a0, r_a1);
  EXPECT_LT(r_a1, r_m1);
  EXPECT_LT(r_m1, r_out);
  // 6 drawn residual edges (head-input edges are not drawn) + 4 invisible rank links.
  size_t arrows = 0;
  for (size_t at = dot.find(" -> "); at != std::string::npos; at = dot.find(" -> ", at + 1)) ++arrows;
  EXPECT_EQ(arrows, 6u + 4u);
}

// A residual edge whose head input is removed is patched by the forward, so
// the picture leaves it out.
TEST(CircuitOutput, DotLeavesOutEdgesIntoARemovedHeadInput) {
  CircuitRecord rec = small_record();
  rec.circuit.set_kept(rec.circuit.parse_edge("a1.h2<k> -> a1.h2"), false);
  const std::string dot = mechlab::discovery::circuit_dot(rec.circuit, "t");
  EXPECT_EQ(dot.find("\"a0.h1\" -> \"a1.h2\" [color"), std::string::npos);
  EXPECT_NE(dot.find("\"input\" -> \"a1.h2\" [color"), std::string::npos);
}

TEST(CircuitOutput, SvgIsDrawnByGraphviz) {
  ASSERT_EQ(std::system("command -v dot >/dev/null 2>&1"), 0) << "Graphviz dot is not installed; scripts/setup.sh installs it";
  const std::string dir = temp_path("circuit_output", "svg");
  const auto files = mechlab::discovery::write_circuit_outputs(dir, small_record());
  ASSERT_EQ(files.svg, dir + "/circuit.svg");
  const std::string svg = slurp(files.svg);
  EXPECT_NE(svg.find("<svg"), std::string::npos);
  EXPECT_NE(svg.find("a1.h2"), std::string::npos);
  EXPECT_NE(svg.find("#0072b2"), std::string::npos);  // dot lowercases colours
}

TEST(CircuitOutput, MissingGraphvizSaysToInstallItAndTheDataFilesAreWritten) {
  const std::string dir = temp_path("circuit_output", "no_dot");
  fs::create_directories(dir);
  { std::ofstream(dir + "/circuit.svg") << "<svg>an older circuit</svg>"; }
  const auto files = mechlab::discovery::write_circuit_outputs(
      dir, small_record(), CircuitOutputOptions().dot_program("mechlab-no-such-dot-program"));
  const std::string& msg = files.svg_error;
  EXPECT_TRUE(files.svg.empty());
  EXPECT_NE(msg.find("install graphviz"), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  EXPECT_TRUE(fs::exists(dir + "/circuit.json"));
  EXPECT_TRUE(fs::exists(dir + "/circuit.h5"));
  EXPECT_TRUE(fs::exists(dir + "/circuit.dot"));
  EXPECT_FALSE(fs::exists(dir + "/circuit.svg"));  // the older picture is gone with its circuit
}

TEST(CircuitOutput, AFailedWriteLeavesNothingAndTheOldFilesUntouched) {
  const std::string dir = temp_path("circuit_output", "failed");
  fs::create_directories(dir);
  { std::ofstream(dir + "/circuit.json") << "old"; }
  fs::create_directories(dir + "/circuit.h5.new.tmp");  // the HDF5 staging path is taken by a folder
  EXPECT_FALSE(error_of([&] {
                 mechlab::discovery::write_circuit_outputs(dir, small_record(), CircuitOutputOptions().svg(false));
               }).empty());
  EXPECT_EQ(slurp(dir + "/circuit.json"), "old");
  EXPECT_FALSE(fs::exists(dir + "/circuit.json.new.tmp"));
  EXPECT_FALSE(fs::exists(dir + "/circuit.dot.new.tmp"));
  EXPECT_FALSE(fs::exists(dir + "/circuit.dot"));
}

TEST(CircuitOutput, ReadingSomethingElseNamesTheFile) {
  const std::string path = temp_path("circuit_output", "other.json");
  { std::ofstream(path) << "{\"mechlab_format\": \"patching\"}"; }
  EXPECT_NE(error_of([&] { mechlab::discovery::read_circuit_document(path); }).find("not a mechlab circuit file"),
            std::string::npos);
}
