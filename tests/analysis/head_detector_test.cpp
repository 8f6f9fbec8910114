// Tests for hooks/analysis/head_detector.h against TransformerLens 2.x detect_head
// (tests/data/train/head_detector.h5, made by
// scripts/fixtures/make_train_fixtures.py on the runtime fixture models).
#include "hooks/analysis/head_detector.h"

#include "core/formats/hdf5_file.h"
#include "tests/test_util.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace mechlab::analysis {
namespace {

using ::testing::HasSubstr;
using mechlab::testing::error_of;
using hooks::HookedTransformer;

const std::string kData = MECHLAB_TEST_DATA;

TEST(HeadDetectorTest, MatchesTransformerLensForEveryTypeMeasureAndOption) {
  core::H5File ref = core::H5File::open_read(kData + "/train/head_detector.h5");
  int compared = 0;
  for (const std::string model_name : {"attn_only", "gpt2_like"}) {
    HookedTransformer model = HookedTransformer::load(kData + "/runtime/" + model_name + ".h5");
    for (int s = 0; s < 2; ++s) {
      const std::string seq = model_name + "/s" + std::to_string(s);
      at::Tensor tokens = ref.read_tensor(model_name + "/tokens" + std::to_string(s));
      for (const char* type : {"previous_token", "duplicate_token", "induction"}) {
        for (const char* measure : {"mul", "abs"}) {
          for (int bos = 0; bos < 2; ++bos) {
            for (int cur = 0; cur < 2; ++cur) {
              const std::string key = seq + "/" + type + "/" + measure + "/bos" +
                                      std::to_string(bos) + "_cur" + std::to_string(cur);
              HeadDetectorOptions opt;
              opt.exclude_bos(bos == 1).exclude_current_token(cur == 1);
              opt.error_measure(std::string(measure) == "abs" ? ErrorMeasure::abs : ErrorMeasure::mul);
              at::Tensor got = detect_head(model, tokens, parse_head_type(type), opt);
              at::Tensor want = ref.read_tensor(key);
              // mul: float32 ratios, 1e-5. abs: TransformerLens rounds to 3
              // decimals; a value within float noise of a rounding boundary
              // may land one step away, hence 1e-3 + 1e-6.
              const double atol = std::string(measure) == "abs" ? 1e-3 + 1e-6 : 1e-5;
              EXPECT_TRUE(at::allclose(got, want, 0, atol)) << key << "\n" << got << "\n" << want;
              ++compared;
            }
          }
        }
      }
    }
  }
  EXPECT_EQ(compared, 96);
}

TEST(HeadDetectorTest, DetectionPatternsOnAKnownSequence) {
  at::Tensor t = at::tensor(std::vector<int64_t>{0, 7, 8, 7, 8});
  at::Tensor prev = detection_pattern(HeadType::previous_token, t);
  EXPECT_EQ(prev.sum().item<double>(), 4);
  EXPECT_EQ(prev[3][2].item<double>(), 1);
  at::Tensor dup = detection_pattern(HeadType::duplicate_token, t);
  EXPECT_EQ(dup.sum().item<double>(), 2);  // 3 -> 1 and 4 -> 2
  EXPECT_EQ(dup[3][1].item<double>(), 1);
  at::Tensor ind = detection_pattern(HeadType::induction, t);
  EXPECT_EQ(ind.sum().item<double>(), 2);  // 3 -> 2 and 4 -> 3: the token after the earlier copy
  EXPECT_EQ(ind[3][2].item<double>(), 1);
  EXPECT_EQ(ind[4][3].item<double>(), 1);
}

TEST(HeadDetectorTest, ScoresAPerfectPatternOne) {
  at::Tensor t = at::tensor(std::vector<int64_t>{0, 3, 4, 5});
  at::Tensor det = detection_pattern(HeadType::previous_token, t);
  at::Tensor pattern = det.clone();
  pattern[0][0] = 1;  // position 0 can only attend to itself
  EXPECT_NEAR(head_similarity_score(pattern, det).item<double>(), 0.75, 1e-6);
  EXPECT_NEAR(head_similarity_score(pattern, det, HeadDetectorOptions().exclude_bos(true))
                  .item<double>(), 1.0, 1e-6);
}

TEST(HeadDetectorTest, RefusesBadInput) {
  HookedTransformer model = HookedTransformer::load(kData + "/runtime/attn_only.h5");
  at::Tensor t = at::tensor(std::vector<int64_t>{0, 3, 4, 5});
  EXPECT_THAT(error_of([&] { parse_head_type("copy_suppression"); }), HasSubstr("previous_token"));
  EXPECT_THAT(error_of([&] { detect_head(model, t, at::ones({4, 4})); }),
              HasSubstr("lower triangular"));
  EXPECT_THAT(error_of([&] { detect_head(model, t, at::ones({3, 3}).tril()); }),
              HasSubstr("[pos, pos]"));
}

}  // namespace
}  // namespace mechlab::analysis
