// Tests for core/util/rng.h: the stream is fixed (golden values from an independent
// Python implementation of splitmix64 + xoshiro256** + Lemire's bounded draw,
// written from the papers), bounds hold, and shuffles are permutations.
#include "core/util/rng.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <vector>

namespace mechlab::core {
namespace {

using ::testing::ElementsAre;

TEST(RngTest, StreamMatchesTheReferenceImplementation) {
  Rng r(0);
  EXPECT_EQ(r.next(), 0x99ec5f36cb75f2b4ULL);
  EXPECT_EQ(r.next(), 0xbf6e1f784956452aULL);
  EXPECT_EQ(r.next(), 0x1a5f849d4933e6e0ULL);

  Rng b(42);
  std::vector<uint64_t> small;
  for (int i = 0; i < 10; ++i) small.push_back(b.below(10));
  EXPECT_THAT(small, ElementsAre(0, 3, 6, 9, 9, 7, 7, 8, 7, 5));

  Rng c(7);
  std::vector<uint64_t> large;
  for (int i = 0; i < 4; ++i) large.push_back(c.below(1000003));
  EXPECT_THAT(large, ElementsAre(700578, 278752, 839629, 981100));
}

TEST(RngTest, BoundsHoldAndEveryValueOccurs) {
  Rng r(1);
  std::vector<int> seen(7, 0);
  for (int i = 0; i < 7000; ++i) {
    const int64_t v = r.uniform_int(-3, 3);
    ASSERT_GE(v, -3);
    ASSERT_LE(v, 3);
    ++seen[v + 3];
  }
  for (int count : seen) EXPECT_GT(count, 800);  // ~1000 each
  for (int i = 0; i < 1000; ++i) {
    const double u = r.uniform();
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
  }
  EXPECT_EQ(r.below(1), 0u);
}

TEST(RngTest, ShuffleIsASeededPermutation) {
  std::vector<int> a(100);
  std::iota(a.begin(), a.end(), 0);
  std::vector<int> b = a, c = a;
  Rng r1(5), r2(5), r3(6);
  r1.shuffle(a);
  r2.shuffle(b);
  r3.shuffle(c);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  std::vector<int> sorted = a;
  std::sort(sorted.begin(), sorted.end());
  for (int i = 0; i < 100; ++i) EXPECT_EQ(sorted[i], i);
}

}  // namespace
}  // namespace mechlab::core
