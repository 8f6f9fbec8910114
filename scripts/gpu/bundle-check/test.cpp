#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

TEST(BundleCheck, JsonRoundTrip) {
  auto j = nlohmann::json::parse(R"({"a": [1, 2, 3]})");
  EXPECT_THAT(j["a"].get<std::vector<int>>(), ::testing::ElementsAre(1, 2, 3));
  spdlog::info("gtest + gmock + spdlog ok");
}
