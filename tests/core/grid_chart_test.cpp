// Grid charts (core/plot/grid_chart.h): each cell is coloured on its
// panel's scale (sequential: white at lo, the scale's blue at hi;
// diverging: white in the middle), a NaN cell is grey and empty, values
// are written without "-0.00", and labels are escaped.
#include "core/plot/grid_chart.h"

#include <gmock/gmock.h>

#include <cmath>
#include <string>

namespace mechlab::core::plot {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(GridChart, CellsTakeTheirPanelsScaleAndNanIsAnEmptyGreyCell) {
  EXPECT_EQ(diverging_colour(-1), "#2166ac");
  EXPECT_EQ(diverging_colour(0), "#ffffff");
  EXPECT_EQ(diverging_colour(1), "#b2182b");
  EXPECT_EQ(diverging_colour(7), "#b2182b");  // clamped
  EXPECT_EQ(diverging_colour(NAN), "#bbbbbb");

  GridPanel seq{"accuracy", {"a<b"}, {"0", "1", "2"}, {0.5, 1.0, NAN}};
  seq.lo = 0.5, seq.hi = 1;
  GridPanel div{"selectivity", {"r"}, {"0", "1", "2"}, {-0.2, -0.001, 0.2}};
  div.lo = -0.2, div.hi = 0.2, div.diverging = true;
  const std::string svg = grid_chart_svg("t", "head", {seq, div});
  // Cells in order: white, blue, grey; then blue, near white, red.
  std::vector<std::string> fills;
  for (size_t at = svg.find("stroke=\"white\""); at != std::string::npos; at = svg.find("stroke=\"white\"", at + 1)) {
    const size_t f = svg.rfind("fill=\"", at);
    fills.push_back(svg.substr(f + 6, 7));
  }
  ASSERT_EQ(fills.size(), 6u) << svg;
  EXPECT_EQ(fills[0], "#ffffff");
  EXPECT_EQ(fills[1], "#2166ac");
  EXPECT_EQ(fills[2], "#bbbbbb");
  EXPECT_EQ(fills[3], "#2166ac");
  EXPECT_EQ(fills[5], "#b2182b");
  EXPECT_THAT(svg, HasSubstr(">1.00<"));
  EXPECT_THAT(svg, HasSubstr(">0.00<"));  // -0.001
  EXPECT_THAT(svg, Not(HasSubstr("-0.00<")));
  EXPECT_THAT(svg, Not(HasSubstr(">nan<")));
  EXPECT_THAT(svg, HasSubstr(">a&lt;b<"));
  EXPECT_THAT(svg, HasSubstr("<title>a&lt;b, head 1: 1</title>"));
}

}  // namespace
}  // namespace mechlab::core::plot
