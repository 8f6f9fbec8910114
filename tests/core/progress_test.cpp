// core::ProgressBar's line: the counts, and the status text some users append
// (the SAE trainer's L0, FVU and dead fraction); without a status the line is
// what it always was.
#include "core/util/progress.h"

#include <gtest/gtest.h>

#include <regex>

namespace mechlab::core {
namespace {

TEST(ProgressBar, StatusTextEndsTheLineAndIsOffByDefault) {
  ProgressBar bar("sae train", 200, "tokens", 0, /*log_every_s=*/1e9);
  bar.advance(50);
  const std::string plain = bar.line();
  // "label  [bar]  pct%  done/total unit  rate unit/s  ETA t", nothing after.
  const std::regex shape(R"(^sae train  \[#####---------------\]  25%  50/200 tokens  \S+ tokens/s  ETA \S+$)");
  EXPECT_TRUE(std::regex_match(plain, shape)) << plain;
  EXPECT_TRUE(bar.status().empty());

  bar.set_status("L0 31.2  FVU 0.0812  dead 0.4%");
  const std::string with = bar.line();
  const std::string tail = "  L0 31.2  FVU 0.0812  dead 0.4%";
  ASSERT_GT(with.size(), tail.size());
  EXPECT_EQ(with.substr(with.size() - tail.size()), tail) << with;
  EXPECT_TRUE(std::regex_match(with.substr(0, with.size() - tail.size()), shape)) << with;

  bar.set_status("");  // cleared: the plain line again
  EXPECT_TRUE(std::regex_match(bar.line(), shape)) << bar.line();
  bar.finish();
}

}  // namespace
}  // namespace mechlab::core
