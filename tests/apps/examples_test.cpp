// The C++ API examples (apps/examples/) are run and their output checked, and
// the README's API example is checked to be the quickstart's marked part, so
// that neither can rot.
#include "tests/test_util.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <regex>
#include <sstream>
#include <string>

namespace mechlab {
namespace {

using ::testing::HasSubstr;
using mechlab::testing::run_program;

const std::string kSource = MECHLAB_SOURCE_DIR;

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

/// The example program next to the mechlab binary (both are built into the build folder).
std::string example(const std::string& name) {
  const std::string bin = MECHLAB_BINARY;
  return bin.substr(0, bin.rfind('/') + 1) + "example_" + name;
}

TEST(Examples, ReadmeShowsTheQuickstartVerbatim) {
  const std::string src = read_file(kSource + "/apps/examples/quickstart.cpp");
  const size_t begin = src.find("// [readme]\n"), end = src.find("    // [/readme]");
  ASSERT_NE(begin, std::string::npos);
  ASSERT_NE(end, std::string::npos);
  // The marked lines, without the 4 spaces of indentation they have inside main().
  std::istringstream lines(src.substr(begin + 12, end - begin - 12));
  std::string snippet, line;
  while (std::getline(lines, line)) snippet += (line.rfind("    ", 0) == 0 ? line.substr(4) : line) + "\n";
  const std::string readme = read_file(kSource + "/README.md");
  EXPECT_NE(readme.find("```cpp\n#include <mechlab/mechlab.h>\n\n" + snippet + "```"), std::string::npos)
      << "README.md's API example must be apps/examples/quickstart.cpp's [readme] part:\n" << snippet;
}

TEST(Examples, QuickstartFindsAndAblatesTheInductionHead) {
  const auto r = run_program(example("quickstart") + " " + kSource + "/apps/models/induction.h5");
  ASSERT_EQ(r.rc, 0) << r.output;
  // The shipped model's induction heads are in layer 1 (apps/models/README.md).
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.output, m, std::regex("best head 1\\.(\\d)\n")));
  ASSERT_TRUE(std::regex_search(r.output, m,
                                std::regex("loss on the copied tokens: ([0-9.]+), with head 1\\.\\d "
                                           "ablated: ([0-9.]+)")))
      << r.output;
  const double clean = std::stod(m[1]), ablated = std::stod(m[2]);
  // The model copies the repeated half almost perfectly (98.9% top-1), and
  // ablating its best induction head must break that: the mechanism, not a sign.
  EXPECT_LT(clean, 0.2) << r.output;
  EXPECT_GT(ablated, clean + 1.0) << r.output;
  for (const char* label : {"embed", "0_attn_out", "1_attn_out"}) {
    EXPECT_THAT(r.output, HasSubstr(label));
  }
}

// ACDC finds K-composition (a layer-0 head into a layer-1 head's key: the
// previous-token head feeding the induction heads) and a faithful circuit;
// the "seen before" probe reads it after layer 0, not at the embedding, and
// projecting layer 0's probe direction out hurts the next-token loss.
TEST(Examples, CircuitAndProbesFindTheInductionMechanism) {
  const auto r = run_program(example("circuit_and_probes") + " " + kSource + "/apps/models/induction.h5");
  ASSERT_EQ(r.rc, 0) << r.output;
  EXPECT_TRUE(std::regex_search(r.output, std::regex("\n  a0\\.h\\d -> a1\\.h\\d<k>\n"))) << r.output;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.output, m, std::regex("faithfulness ([0-9.]+)\n"))) << r.output;
  EXPECT_GT(std::stod(m[1]), 0.9) << r.output;
  auto number_after = [&](const std::string& pattern) {
    std::smatch n;
    EXPECT_TRUE(std::regex_search(r.output, n, std::regex(pattern))) << pattern << "\n" << r.output;
    return n.size() > 1 ? std::stod(n[1]) : 0.0;
  };
  const double embed = number_after("hook_embed +accuracy ([0-9.]+)");
  const double layer0 = number_after("blocks\\.0\\.hook_resid_post +accuracy ([0-9.]+)");
  EXPECT_GT(layer0, embed + 0.3) << r.output;
  EXPECT_GT(number_after("blocks\\.1\\.hook_resid_post +accuracy [0-9.]+, control [0-9.]+, selectivity \\+([0-9.]+)"),
            0.2);
  const double clean = number_after("next-token loss ([0-9.]+), with hook_embed");
  EXPECT_GT(number_after("blocks\\.0\\.hook_resid_post's probe direction projected out ([0-9.]+)"), clean + 0.3);
  EXPECT_LT(number_after("hook_embed's probe direction projected out ([0-9.]+)"), clean + 0.1);
}

TEST(Examples, QuickstartExplainsItsUsageAndRefusesABadModel) {
  const auto usage = run_program(example("quickstart"));
  EXPECT_EQ(usage.rc, 2);
  EXPECT_THAT(usage.output, HasSubstr("usage:"));
  const auto bad = run_program(example("quickstart") + " /nonexistent/model.h5");
  EXPECT_EQ(bad.rc, 1);
  EXPECT_THAT(bad.output, HasSubstr("error: "));
}

}  // namespace
}  // namespace mechlab
