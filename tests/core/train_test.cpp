// Tests for core/train/: AdamW and clipping against torch.optim.AdamW
// (tests/data/train/adamw.h5, see its README), the learning-rate schedule,
// config refusals, exact resume, and the induction recipe trained short.
#include "core/formats/hdf5_file.h"
#include "core/model/checkpoint.h"
#include "core/train/adamw.h"
#include "core/train/lr_schedule.h"
#include "core/train/objective.h"
#include "core/train/trainer.h"
#include "hooks/analysis/head_detector.h"
#include "tests/test_util.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

namespace mechlab::core::train {
namespace {

using ::testing::HasSubstr;
using mechlab::testing::error_of;

std::string data_path(const std::string& name) {
  return std::string(MECHLAB_TEST_DATA) + "/train/" + name;
}
std::string temp_path(const std::string& name) {
  return mechlab::testing::temp_path("train_test", name);
}

// A small induction run: 2-layer attention-only model, 16-token vocabulary.
nlohmann::json small_config() {
  return {{"name", "small"},
          {"model", {{"preset", "attn-only-2l"}, {"d_model", 32}, {"n_heads", 2}}},
          {"data", {{"task", "induction"}, {"options", {{"n", 256}, {"half_len", 6}, {"d_vocab", 16}}}}},
          {"train_fraction", 0.75},
          {"steps", 8},
          {"batch_size", 16},
          {"lr", 3e-3},
          {"warmup_steps", 2},
          {"eval_every", 2},
          {"checkpoint_every", 3},
          {"seed", 5}};
}

// --------------------------------------------------------------- AdamW
TEST(AdamWTest, MatchesTorchOptimAdamWWithClipping) {
  H5File f = H5File::open_read(data_path("adamw.h5"));
  const at::Tensor lrs = f.read_tensor("lr"), norms = f.read_tensor("grad_norm");
  std::vector<at::Tensor> params;
  for (int i = 0; i < 3; ++i) {
    params.push_back(f.read_tensor("initial/p" + std::to_string(i)).requires_grad_(true));
  }
  AdamW opt(params, AdamWOptions()
                        .beta1(f.read_attr_double("", "beta1"))
                        .beta2(f.read_attr_double("", "beta2"))
                        .eps(f.read_attr_double("", "eps"))
                        .weight_decay(f.read_attr_double("", "weight_decay")));
  const double max_norm = f.read_attr_double("", "max_norm");
  bool clipped = false;
  for (int64_t s = 0; s < lrs.size(0); ++s) {
    for (int i = 0; i < 3; ++i) {
      params[i].mutable_grad() =
          f.read_tensor("grads/s" + std::to_string(s) + "/p" + std::to_string(i));
    }
    const double norm = clip_grad_norm(params, max_norm);
    EXPECT_NEAR(norm, norms[s].item<double>(), 1e-5 * norms[s].item<double>()) << "step " << s;
    clipped = clipped || norm > max_norm;
    opt.step(lrs[s].item<double>());
    opt.zero_grad();
  }
  EXPECT_TRUE(clipped) << "the fixture should exercise clipping";
  EXPECT_EQ(opt.steps_taken(), lrs.size(0));
  // Tolerance: float32 arithmetic in a different order (fused kernel vs the
  // textbook loop); relative 1e-5 is ~100 float32 ulps.
  for (int i = 0; i < 3; ++i) {
    const std::string p = "p" + std::to_string(i);
    EXPECT_TRUE(at::allclose(params[i].detach(), f.read_tensor("final/" + p), 1e-5, 1e-6)) << p;
    EXPECT_TRUE(at::allclose(opt.exp_avg()[i], f.read_tensor("exp_avg/" + p), 1e-5, 1e-7)) << p;
    EXPECT_TRUE(at::allclose(opt.exp_avg_sq()[i], f.read_tensor("exp_avg_sq/" + p), 1e-5, 1e-9))
        << p;
  }
}

TEST(AdamWTest, ParameterWithoutGradientIsLeftAlone) {
  at::Tensor a = at::ones({3}).requires_grad_(true), b = at::ones({2}).requires_grad_(true);
  AdamW opt({a, b}, AdamWOptions().weight_decay(0.1));
  a.mutable_grad() = at::ones({3});
  opt.step(0.1);
  EXPECT_TRUE(at::equal(b.detach(), at::ones({2})));
  EXPECT_FALSE(at::equal(a.detach(), at::ones({3})));
}

TEST(AdamWTest, RefusesBadHyperParameters) {
  at::Tensor a = at::ones({3}).requires_grad_(true);
  EXPECT_THAT(error_of([&] { AdamW({a}, AdamWOptions().beta2(1.0)); }), HasSubstr("beta2"));
  EXPECT_THAT(error_of([&] { AdamW({a}, AdamWOptions().weight_decay(-1)); }),
              HasSubstr("weight_decay"));
}

// --------------------------------------------------------------- schedule
TEST(LrScheduleTest, LinearWarmupThenCosineToTheFloor) {
  LrSchedule s{1.0, 0.1, 4, 14};
  EXPECT_DOUBLE_EQ(s.at(0), 0.25);
  EXPECT_DOUBLE_EQ(s.at(3), 1.0);
  EXPECT_DOUBLE_EQ(s.at(4), 1.0);                 // cosine starts at the peak
  EXPECT_NEAR(s.at(9), 0.55, 1e-12);              // halfway: (peak + floor) / 2
  EXPECT_NEAR(s.at(13), 0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * 0.9)), 1e-12);
  EXPECT_DOUBLE_EQ(s.at(100), 0.1);               // past the end: the floor
  LrSchedule constant{0.5, 0.5, 0, 10};
  EXPECT_DOUBLE_EQ(constant.at(7), 0.5);
}

// --------------------------------------------------------------- config
TEST(TrainConfigTest, RoundTripsThroughJson) {
  TrainConfig c = TrainConfig::from_json(small_config());
  EXPECT_EQ(c.steps, 8);
  EXPECT_EQ(TrainConfig::from_json(c.to_json()).to_json(), c.to_json());
}

TEST(TrainConfigTest, RefusesBadValuesNamingTheKey) {
  auto refuse = [](const std::string& key, const nlohmann::json& value) {
    nlohmann::json j = small_config();
    j[key] = value;
    return error_of([&] { TrainConfig::from_json(j); });
  };
  EXPECT_THAT(refuse("lr", -1e-3), HasSubstr("\"lr\" must be positive"));
  EXPECT_THAT(refuse("steps", 0), HasSubstr("\"steps\" must be positive"));
  EXPECT_THAT(refuse("init_std", 0.0), HasSubstr("\"init_std\" must be positive"));
  EXPECT_THAT(refuse("train_fraction", 1.0), HasSubstr("train_fraction"));
  EXPECT_THAT(refuse("steps", "many"), HasSubstr("\"steps\" must be an integer"));
  EXPECT_THAT(refuse("objective", "contrastive"), HasSubstr("\"objective\" must be"));
  EXPECT_THAT(refuse("lerning_rate", 1e-3), HasSubstr("unknown key \"lerning_rate\""));
  nlohmann::json both = small_config();
  both["data"]["path"] = "x.h5";
  EXPECT_THAT(error_of([&] { TrainConfig::from_json(both); }), HasSubstr("exactly one of"));
}

TEST(TrainConfigTest, RefusesDModelNotDivisibleByHeads) {
  nlohmann::json j = small_config();
  j["model"] = {{"preset", "attn-only-2l"}, {"d_model", 30}, {"n_heads", 4}};
  EXPECT_THAT(error_of([&] { Trainer(TrainConfig::from_json(j), TrainerOptions().progress(false)); }),
              HasSubstr("d_model (30) must be divisible by n_heads (4)"));
}

TEST(TrainConfigTest, RefusesUnknownTaskListingTheTasks) {
  nlohmann::json j = small_config();
  j["data"] = {{"task", "inducton"}};
  const std::string msg =
      error_of([&] { Trainer(TrainConfig::from_json(j), TrainerOptions().progress(false)); });
  EXPECT_THAT(msg, HasSubstr("inducton"));
  EXPECT_THAT(msg, HasSubstr("induction"));
}

TEST(TrainConfigTest, RefusesAnswerObjectiveOnDataWithoutAnswers) {
  nlohmann::json j = small_config();
  j["objective"] = "answer";
  EXPECT_THAT(error_of([&] { Trainer(TrainConfig::from_json(j), TrainerOptions().progress(false)); }),
              HasSubstr("no /answer_tokens"));
}

// --------------------------------------------------------------- data
TEST(TrainDataTest, InductionScoresTheRepeatedHalfAfterItsFirstToken) {
  TrainData d = load_train_data(TrainConfig::from_json(small_config()));
  EXPECT_EQ(d.train.size(), 192);
  EXPECT_EQ(d.test.size(), 64);
  // T = 13 (BOS + 6 + 6): predictions 7..11 (targets 8..12) are scored.
  at::Tensor expected = at::zeros({12}, at::kBool);
  expected.slice(0, 7, 12).fill_(true);
  EXPECT_TRUE(at::equal(d.train.scored[0], expected));
}

TEST(TrainDataTest, AnswerObjectiveReadsAnswerPositions) {
  nlohmann::json j = small_config();
  j["data"] = {{"task", "modular_addition"}, {"options", {{"p", 7}}}};
  j["objective"] = "answer";
  TrainData d = load_train_data(TrainConfig::from_json(j));
  ASSERT_EQ(d.train.size() + d.test.size(), 49);
  at::Tensor t = d.train.tokens;
  EXPECT_TRUE(at::equal(d.train.answer, (t.select(1, 0) + t.select(1, 1)).remainder(7)));
  EXPECT_TRUE(at::equal(d.train.answer_pos, at::full({d.train.size()}, 2, at::kLong)));
}

// --------------------------------------------------------------- resume
TEST(TrainerTest, ResumedRunRepeatsTheUninterruptedRunBitForBit) {
  const TrainConfig cfg = TrainConfig::from_json(small_config());
  Trainer full(cfg, TrainerOptions().progress(false));
  std::vector<double> want;
  for (int i = 0; i < 8; ++i) want.push_back(full.step());

  const std::string dir = temp_path("resume_run");
  {
    Trainer first(cfg, TrainerOptions().out_dir(dir).overwrite(true).progress(false));
    first.run(/*max_steps=*/5);  // checkpoints at step 3 and at the end (5)
    EXPECT_EQ(first.steps_done(), 5);
  }
  Trainer resumed(cfg, TrainerOptions().out_dir(dir).resume(true).progress(false));
  ASSERT_EQ(resumed.steps_done(), 5);
  for (int i = 5; i < 8; ++i) EXPECT_EQ(resumed.step(), want[i]) << "step " << i;
  // The next-step loss is the same, and so is every weight.
  auto a = full.model().named_parameters(), b = resumed.model().named_parameters();
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(at::equal(a[i].second, b[i].second)) << a[i].first;
}

TEST(TrainerTest, ResumeKeepsTheLogAndRefusesAnotherConfig) {
  const std::string dir = temp_path("resume_log");
  nlohmann::json j = small_config();
  {
    Trainer t(TrainConfig::from_json(j), TrainerOptions().out_dir(dir).overwrite(true).progress(false));
    t.run(4);
    ASSERT_EQ(t.log().rows().size(), 2u);  // steps 2 and 4
  }
  Trainer again(TrainConfig::from_json(j), TrainerOptions().out_dir(dir).resume(true).progress(false));
  EXPECT_EQ(again.log().rows().size(), 2u);
  again.run();
  EXPECT_EQ(again.log().rows().back().step, 8);
  EXPECT_EQ(again.log().rows().size(), 4u);
  std::ifstream csv(dir + "/train_log.csv");
  std::string header;
  std::getline(csv, header);
  EXPECT_THAT(header, HasSubstr("step,lr,train_loss"));

  j["lr"] = 1e-3;
  EXPECT_THAT(error_of([&] {
                Trainer(TrainConfig::from_json(j),
                        TrainerOptions().out_dir(dir).resume(true).progress(false));
              }),
              HasSubstr("\"lr\" is 0.003 there, 0.001 here"));
  EXPECT_THAT(error_of([&] {
                Trainer(TrainConfig::from_json(j), TrainerOptions().out_dir(dir).progress(false));
              }),
              HasSubstr("pass `resume` to continue it or `overwrite` to start again"));
  // The final model loads as a plain checkpoint.
  EXPECT_EQ(Transformer::load(dir + "/model.h5").config().d_model, 32);
}

// Writes small_config() (with `changes`) to a JSON file for the CLI.
std::string write_config(const std::string& name, const nlohmann::json& changes) {
  nlohmann::json j = small_config();
  for (const auto& item : changes.items()) j[item.key()] = item.value();
  const std::string path = temp_path(name + ".json");
  std::ofstream out(path);
  out << j.dump(2);
  out.close();
  EXPECT_TRUE(out.good()) << path;
  return path;
}

// The evaluation on the summary line "small: 8 steps...; test loss ...,
// test accuracy ... (N predictions); train accuracy ..." (the log lines
// before it also say "test loss").
std::string summary_of(const std::string& output) {
  const auto line = output.find("small: 8 steps");
  if (line == std::string::npos) return "";
  const auto at = output.find("test loss ", line);
  if (at == std::string::npos) return "";
  return output.substr(at, output.find('\n', at) - at);
}

// A run that diverges (lr 1e30 with weight decay overflows the weights within
// a few steps) stops with an error and a non-zero exit instead of finishing
// with a NaN model; its last checkpoint holds finite weights and resumes.
TEST(TrainerTest, DivergingRunStopsAtTheFirstNonFiniteLoss) {
  const std::string cfg = write_config(
      "diverge", {{"lr", 1e30}, {"weight_decay", 1.0}, {"warmup_steps", 0}, {"checkpoint_every", 1}});
  const std::string dir = temp_path("diverge_run");
  const auto r = mechlab::testing::run_cli("train " + cfg + " --out " + dir +
                                           " --overwrite --no-progress");
  EXPECT_NE(r.rc, 0) << r.output;
  EXPECT_THAT(r.output, ::testing::ContainsRegex("loss became (NaN|Inf) at step [0-9]+ of 8 "
                                                 "\\(learning rate too high\\?\\)"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/model.h5")) << "no final model from a diverged run";
  Checkpoint ckpt = load_checkpoint(dir + "/checkpoint.h5");
  for (const auto& [name, t] : ckpt.params) {
    EXPECT_TRUE(at::isfinite(t).all().item<bool>()) << name;
  }
  const int64_t saved = H5File::open_read(dir + "/checkpoint.h5").read_attr_int("train", "step");
  EXPECT_THAT(r.output, HasSubstr("at step " + std::to_string(saved + 1) + " of 8"));
  EXPECT_THAT(r.output, HasSubstr("the checkpoint of step " + std::to_string(saved)));
  // The loop's refusals name the options (`resume`, `overwrite`); the CLI
  // user reads the flags instead.
  const auto again = mechlab::testing::run_cli("train " + cfg + " --out " + dir + " --no-progress");
  EXPECT_EQ(again.rc, 1) << again.output;
  EXPECT_THAT(again.output, HasSubstr("already holds a training run (checkpoint.h5); pass --resume to "
                                      "continue it or --overwrite to start again"));
  const auto none = mechlab::testing::run_cli("train " + cfg + " --out " + temp_path("no_run") +
                                              " --resume --no-progress");
  EXPECT_EQ(none.rc, 1) << none.output;
  EXPECT_THAT(none.output, HasSubstr("(start the run without --resume)"));
}

// `mechlab train --resume` on a finished run reports it complete with the
// evaluation it ended with (it used to print "test accuracy 0.0000 (0 predictions)").
TEST(TrainerTest, ResumingAFinishedRunReportsItsLastEvaluation) {
  const std::string cfg = write_config("finished", {});
  const std::string dir = temp_path("finished_run");
  const auto first = mechlab::testing::run_cli("train " + cfg + " --out " + dir +
                                               " --overwrite --no-progress");
  ASSERT_EQ(first.rc, 0) << first.output;
  ASSERT_THAT(first.output, HasSubstr("small: 8 steps; test loss"));
  const auto again = mechlab::testing::run_cli("train " + cfg + " --out " + dir +
                                               " --resume --no-progress");
  ASSERT_EQ(again.rc, 0) << again.output;
  EXPECT_THAT(again.output, HasSubstr("small: 8 steps (already complete, nothing to resume)"));
  EXPECT_THAT(again.output, ::testing::Not(HasSubstr("(0 predictions)")));
  ASSERT_FALSE(summary_of(first.output).empty()) << first.output;
  EXPECT_EQ(summary_of(again.output), summary_of(first.output));

  // The library says the same, with the evaluation bit for bit.
  Trainer t(TrainConfig::load(cfg), TrainerOptions().out_dir(dir).resume(true).progress(false));
  const TrainResult r = t.run();
  EXPECT_TRUE(r.already_complete);
  EXPECT_EQ(r.steps, 8);
  const EvalResult want = t.evaluate(t.data().test);  // eval_examples 0: the whole split
  EXPECT_EQ(r.test.loss, want.loss);
  EXPECT_EQ(r.test.scored, want.scored);
  EXPECT_GT(r.test.scored, 0);
}

// A run that ended at stop_at_accuracy is finished too: resuming it must not
// train past the stop. (Chance level is 1/16, so 0.01 stops at the first
// evaluation, step 2.)
TEST(TrainerTest, ResumingARunStoppedAtItsAccuracyTakesNoStep) {
  nlohmann::json j = small_config();
  j["stop_at_accuracy"] = 0.01;
  const std::string dir = temp_path("stopped_run");
  TrainResult first;
  {
    Trainer t(TrainConfig::from_json(j), TrainerOptions().out_dir(dir).overwrite(true).progress(false));
    first = t.run();
    ASSERT_TRUE(first.stopped_early);
    ASSERT_EQ(first.steps, 2);
  }
  Trainer again(TrainConfig::from_json(j), TrainerOptions().out_dir(dir).resume(true).progress(false));
  const TrainResult r = again.run();
  EXPECT_TRUE(r.already_complete);
  EXPECT_TRUE(r.stopped_early);
  EXPECT_EQ(r.steps, 2);
  EXPECT_EQ(again.steps_done(), 2);
  EXPECT_EQ(r.test.accuracy, first.test.accuracy);
  EXPECT_EQ(again.log().rows().size(), 1u);
}

// Training on CUDA follows the CPU run (skipped without a GPU; scripts/gpu/run.sh
// requires it). Float32 on both; cuBLAS sums in another order, so the losses
// agree to 1e-4 relative over a few steps, not bit for bit.
TEST(TrainerTest, CudaTrainingFollowsTheCpuRun) {
  if (!mechlab::testing::have_cuda_or_skip()) GTEST_SKIP() << "no CUDA device";
  const TrainConfig cfg = TrainConfig::from_json(small_config());
  Trainer cpu(cfg, TrainerOptions().progress(false));
  Trainer gpu(cfg, TrainerOptions().device(at::Device(at::kCUDA)).progress(false));
  for (int i = 0; i < 6; ++i) {
    const double a = cpu.step(), b = gpu.step();
    EXPECT_NEAR(b, a, 1e-4 * std::abs(a)) << "step " << i;
  }
  const EvalResult ec = cpu.evaluate(cpu.data().test), eg = gpu.evaluate(gpu.data().test);
  EXPECT_NEAR(eg.loss, ec.loss, 1e-4 * ec.loss);
}

// --------------------------------------------------------------- recipe
// The induction recipe (apps/models/induction.json), shortened: fewer
// sequences and steps, stopping at 96% test accuracy. It must still reach the recipe's bar (>= 95% top-1 on
// the repeated half) and grow a previous-token head in layer 0 and an
// induction head in layer 1.
TEST(InductionRecipeTest, ShortRunLearnsInductionWithTheExpectedHeads) {
  TrainConfig cfg = TrainConfig::load(std::string(MECHLAB_TEST_DATA) +
                                      "/../../apps/models/induction.json");
  cfg.data["options"]["n"] = 3000;
  cfg.steps = 1000;
  cfg.warmup_steps = 50;
  cfg.eval_every = 50;
  cfg.eval_examples = 300;
  cfg.stop_at_accuracy = 0.96;
  Trainer trainer(cfg, TrainerOptions().progress(false));
  const TrainResult r = trainer.run();
  EXPECT_GE(r.test.accuracy, 0.95);

  hooks::HookedTransformer model(trainer.model());
  at::Tensor tokens = trainer.data().test.tokens.narrow(0, 0, 50);
  // Heads of a young circuit still park much attention on BOS; score the rest.
  const auto opt = analysis::HeadDetectorOptions().exclude_bos(true);
  at::Tensor prev = analysis::detect_head(model, tokens, analysis::HeadType::previous_token, opt);
  at::Tensor induction = analysis::detect_head(model, tokens, analysis::HeadType::induction, opt);
  EXPECT_GT(prev[0].max().item<double>(), 0.3) << prev;
  EXPECT_GT(induction[1].max().item<double>(), 0.3) << induction;
  // The best previous-token head is in layer 0, the best induction head in layer 1.
  EXPECT_EQ(prev.argmax().item<int64_t>() / prev.size(1), 0) << prev;
  EXPECT_EQ(induction.argmax().item<int64_t>() / induction.size(1), 1) << induction;
}

}  // namespace
}  // namespace mechlab::core::train
