// Tests for core/train/train_loop.h with a model that is not a transformer:
// least squares y ~ X w + b. References are independent of the loop: the
// closed-form least-squares solution (at::linalg_lstsq), the analytic first
// AdamW step, and an uninterrupted run for exact resume.
#include "core/formats/hdf5_file.h"
#include "core/train/train_loop.h"
#include "core/train/trainable.h"
#include "tests/test_util.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <filesystem>
#include <limits>

namespace mechlab::core::train {
namespace {

using ::testing::ContainsRegex;
using ::testing::HasSubstr;
using mechlab::testing::error_of;

std::string temp_dir(const std::string& name) {
  const std::string dir = mechlab::testing::temp_path("train_loop_test", name);
  std::filesystem::create_directories(dir);
  return dir;
}

// Least squares on seeded data: n rows, d features, y = X w_true + 1.5 + noise.
// batch 0 is full-batch; otherwise each step draws `batch` rows (with
// replacement) from the loop's generator, so exact resume needs its state.
class LeastSquares : public Trainable {
 public:
  LeastSquares(int64_t n, int64_t d, int64_t batch) : n_(n), d_(d), batch_(batch) {
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(1234);
    X_ = at::randn({n, d}, gen);                                      // [n, d]
    const at::Tensor w_true = at::randn({d}, gen);                    // [d]
    y_ = X_.matmul(w_true) + 1.5 + 0.1 * at::randn({n}, gen);         // [n]
    X_test_ = at::randn({n / 4, d}, gen);                             // [n/4, d]
    y_test_ = X_test_.matmul(w_true) + 1.5;                           // [n/4]
    w_ = at::zeros({d}).requires_grad_(true);
    b_ = at::zeros({1}).requires_grad_(true);
  }

  std::vector<at::Tensor> parameters() override { return {w_, b_}; }
  std::vector<std::string> parameter_names() const override { return {"w", "b"}; }
  at::Tensor loss(int64_t /*step*/, at::Generator& rng) override {
    if (batch_ == 0) return mse(X_, y_);
    const at::Tensor rows = at::randint(n_, {batch_}, rng, at::kLong);  // [batch]
    return mse(X_.index_select(0, rows), y_.index_select(0, rows));
  }
  Evaluation evaluate() override {
    at::NoGradGuard no_grad;
    Evaluation e;
    e.test.loss = mse(X_test_, y_test_).item<double>();
    e.train.loss = mse(X_, y_).item<double>();
    return e;
  }
  nlohmann::json config() const override {
    return {{"model", "least_squares"}, {"n", n_}, {"d", d_}, {"batch", batch_}};
  }
  void save_state(const std::string& path,
                  const std::function<void(H5File&)>& write_loop_state) const override {
    H5File::write_atomically(path, [&](H5File& f) {
      f.write_tensor("w", w_.detach());
      f.write_tensor("b", b_.detach());
      write_loop_state(f);
    });
  }
  void load_state(const std::string& path) override {
    H5File f = H5File::open_read(path);
    at::NoGradGuard no_grad;
    w_.copy_(f.read_tensor("w"));
    b_.copy_(f.read_tensor("b"));
  }

  at::Tensor X() const { return X_; }
  at::Tensor y() const { return y_; }
  at::Tensor w() const { return w_.detach(); }
  at::Tensor b() const { return b_.detach(); }

 private:
  at::Tensor mse(const at::Tensor& X, const at::Tensor& y) const {
    return (X.matmul(w_) + b_ - y).pow(2).mean();  // scalar
  }
  int64_t n_, d_, batch_;
  at::Tensor X_, y_, X_test_, y_test_, w_, b_;
};

// loss = <c, p>: the gradient is c at every step.
class Linear : public Trainable {
 public:
  explicit Linear(at::Tensor p0, at::Tensor c) : p_(p0.clone().requires_grad_(true)), c_(c) {}
  std::vector<at::Tensor> parameters() override { return {p_}; }
  std::vector<std::string> parameter_names() const override { return {"p"}; }
  at::Tensor loss(int64_t, at::Generator&) override { return (p_ * c_).sum(); }
  Evaluation evaluate() override { return {}; }
  nlohmann::json config() const override { return {{"model", "linear"}}; }
  void save_state(const std::string& path,
                  const std::function<void(H5File&)>& extra) const override {
    H5File::write_atomically(path, [&](H5File& f) {
      f.write_tensor("p", p_.detach());
      extra(f);
    });
  }
  void load_state(const std::string& path) override {
    at::NoGradGuard no_grad;
    p_.copy_(H5File::open_read(path).read_tensor("p"));
  }
  at::Tensor p() const { return p_.detach(); }

 private:
  at::Tensor p_, c_;
};

// After one AdamW step from zero moments, m_hat = g and v_hat = g^2, so
//   p1 = p0 * (1 - lr * wd) - lr * g / (|g| + eps),
// with lr the schedule's rate of step 0: peak / warmup_steps.
TEST(TrainLoopTest, FirstStepIsTheAnalyticAdamWUpdateAtTheWarmupRate) {
  const at::Tensor p0 = at::tensor({0.5f, -1.0f, 2.0f, 0.25f});
  const at::Tensor g = at::tensor({0.3f, -2.0f, 1e-3f, 0.0f});
  Linear model(p0, g);
  const double peak = 0.1, wd = 0.5, eps = 1e-8;
  TrainLoop loop(model, LoopOptions()
                            .steps(10)
                            .lr(peak)
                            .warmup_steps(4)
                            .grad_clip(0)
                            .adamw(AdamWOptions().weight_decay(wd).eps(eps))
                            .progress(false));
  EXPECT_EQ(loop.step(), (p0 * g).sum().item<double>());
  const double lr = peak / 4;
  const at::Tensor want = p0 * (1 - lr * wd) - lr * g / (g.abs() + eps);
  EXPECT_TRUE(at::allclose(model.p(), want, 1e-6, 1e-7)) << model.p() << want;
  EXPECT_TRUE(at::allclose(loop.optimizer().exp_avg()[0], 0.1 * g));
  EXPECT_TRUE(at::allclose(loop.optimizer().exp_avg_sq()[0], 0.001 * g * g));
}

// Full-batch least squares trained to the end of a cosine schedule lands on
// the closed-form solution of the normal equations.
TEST(TrainLoopTest, LeastSquaresConvergesToTheClosedFormSolution) {
  LeastSquares model(64, 4, /*batch=*/0);
  TrainLoop loop(model, LoopOptions()
                            .steps(1500)
                            .lr(0.05)
                            .warmup_steps(10)
                            .eval_every(500)
                            .grad_clip(0)
                            .adamw(AdamWOptions().weight_decay(0))
                            .progress(false));
  const LoopResult r = loop.run();
  EXPECT_EQ(r.steps, 1500);
  EXPECT_EQ(loop.log().rows().size(), 3u);  // steps 500, 1000, 1500
  // Reference: least squares on [X, 1] in float64.
  const at::Tensor A = at::cat({model.X(), at::ones({64, 1})}, 1).to(at::kDouble);  // [n, d+1]
  const at::Tensor sol = std::get<0>(at::linalg_lstsq(A, model.y().to(at::kDouble).unsqueeze(1)))
                             .squeeze(1);  // [d+1]
  EXPECT_TRUE(at::allclose(model.w().to(at::kDouble), sol.slice(0, 0, 4), 0, 1e-3))
      << model.w() << sol;
  EXPECT_NEAR(model.b().item<double>(), sol[4].item<double>(), 1e-3);
  const double min_mse = (A.matmul(sol) - model.y().to(at::kDouble)).pow(2).mean().item<double>();
  EXPECT_NEAR(r.eval.train.loss, min_mse, 1e-5);
}

LoopOptions resume_options(const std::string& dir) {
  return LoopOptions()
      .steps(12)
      .lr(0.1)
      .min_lr(0.01)
      .warmup_steps(3)
      .eval_every(4)
      .checkpoint_every(5)
      .grad_clip(0.5)
      .seed(99)
      .out_dir(dir)
      .progress(false);
}

// 12 steps straight == 6 steps, a new process-like restart, 6 more: the
// parameters, both AdamW moments, the step and the log agree bit for bit.
// The minibatches come from the loop's generator, so this needs its state
// restored (a freshly seeded generator would repeat the first 6 batches).
TEST(TrainLoopTest, ResumeIsBitIdenticalToAnUninterruptedRun) {
  LeastSquares straight(64, 4, /*batch=*/8);
  TrainLoop full(straight, resume_options(temp_dir("straight")).overwrite(true));
  full.run();

  const std::string dir = temp_dir("halves");
  {
    LeastSquares first_half(64, 4, 8);
    TrainLoop loop(first_half, resume_options(dir).overwrite(true));
    EXPECT_EQ(loop.run(/*max_steps=*/6).steps, 6);
  }
  LeastSquares second_half(64, 4, 8);
  TrainLoop resumed(second_half, resume_options(dir).resume(true));
  ASSERT_EQ(resumed.steps_done(), 6);
  EXPECT_EQ(resumed.log().rows().size(), 1u);  // step 4
  const LoopResult r = resumed.run();
  EXPECT_EQ(r.steps, 12);
  EXPECT_EQ(r.steps_this_session, 6);

  EXPECT_TRUE(at::equal(second_half.w(), straight.w())) << second_half.w() << straight.w();
  EXPECT_TRUE(at::equal(second_half.b(), straight.b()));
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_TRUE(at::equal(resumed.optimizer().exp_avg()[i], full.optimizer().exp_avg()[i])) << i;
    EXPECT_TRUE(at::equal(resumed.optimizer().exp_avg_sq()[i], full.optimizer().exp_avg_sq()[i]))
        << i;
  }
  EXPECT_EQ(resumed.optimizer().steps_taken(), 12);
  ASSERT_EQ(resumed.log().rows().size(), full.log().rows().size());
  for (size_t i = 0; i < full.log().rows().size(); ++i) {
    const LogRow &a = full.log().rows()[i], &b = resumed.log().rows()[i];
    EXPECT_EQ(a.step, b.step);
    EXPECT_EQ(a.train_loss, b.train_loss) << "row " << i;  // running mean across the restart
    EXPECT_EQ(a.test_loss, b.test_loss) << "row " << i;
    EXPECT_EQ(a.grad_norm, b.grad_norm) << "row " << i;
  }
}

TEST(TrainLoopTest, ResumeRefusesAnotherConfigOrOtherHyperparameters) {
  const std::string dir = temp_dir("refuse");
  {
    LeastSquares model(64, 4, 8);
    TrainLoop(model, resume_options(dir).overwrite(true)).run(3);
  }
  LeastSquares other_model(64, 4, /*batch=*/16);
  EXPECT_THAT(error_of([&] { TrainLoop(other_model, resume_options(dir).resume(true)); }),
              HasSubstr("another config (\"batch\" is 8 there, 16 here)"));
  LeastSquares same_model(64, 4, 8);
  EXPECT_THAT(error_of([&] { TrainLoop(same_model, resume_options(dir).lr(0.2).resume(true)); }),
              HasSubstr("another config (\"lr\" is 0.1 there, 0.2 here)"));
  EXPECT_THAT(error_of([&] { TrainLoop(same_model, resume_options(dir)); }),
              HasSubstr("pass `resume` to continue it or `overwrite` to start again"));
  // Where-and-how options (name, progress, ...) may change between sessions.
  TrainLoop ok(same_model, resume_options(dir).name("renamed").resume(true));
  EXPECT_EQ(ok.steps_done(), 3);
}

// lr 1e10 with weight decay 1 multiplies the weights by about -1e10 per step
// until the loss overflows float32. The loop must stop at that step with an
// error, before touching the weights, and leave the last checkpoint (finite)
// on disk.
TEST(TrainLoopTest, DivergenceStopsAtTheFirstNonFiniteLossKeepingTheLastCheckpoint) {
  const std::string dir = temp_dir("diverge");
  LeastSquares model(64, 4, 0);
  {
    at::NoGradGuard no_grad;
    model.parameters()[0].fill_(0.5);
  }
  TrainLoop loop(model, LoopOptions()
                            .steps(50)
                            .lr(1e10)
                            .grad_clip(0)
                            .adamw(AdamWOptions().weight_decay(1.0))
                            .eval_every(1000)
                            .checkpoint_every(1)
                            .out_dir(dir)
                            .overwrite(true)
                            .progress(false));
  const std::string msg = error_of([&] { loop.run(); });
  EXPECT_THAT(msg, ContainsRegex("loss became (NaN|Inf) at step [0-9]+ of 50 "
                                 "\\(learning rate too high\\?\\)"));
  const int64_t stopped = loop.steps_done();  // steps completed before the bad one
  ASSERT_GE(stopped, 1);
  ASSERT_LT(stopped, 50);
  EXPECT_THAT(msg, HasSubstr("at step " + std::to_string(stopped + 1) + " of 50"));
  EXPECT_THAT(msg, HasSubstr("the checkpoint of step " + std::to_string(stopped)));
  // The weights are those of the last finite step, and so is the checkpoint.
  EXPECT_TRUE(at::isfinite(model.w()).all().item<bool>()) << model.w();
  H5File f = H5File::open_read(dir + "/checkpoint.h5");
  EXPECT_EQ(f.read_attr_int("train", "step"), stopped);
  EXPECT_TRUE(at::equal(f.read_tensor("w"), model.w()));
  EXPECT_FALSE(std::filesystem::exists(dir + "/checkpoint.h5.tmp"));
}

// sqrt(p) at p = 0: the loss is 0, its gradient 1 / (2 sqrt(0)) = Inf. The
// loop stops before clipping would scale the gradients by Inf * 0 = NaN.
class SqrtAtZero : public Linear {
 public:
  SqrtAtZero() : Linear(at::zeros({3}), at::ones({3})) {}
  at::Tensor loss(int64_t, at::Generator&) override { return at::sqrt(parameters()[0]).sum(); }
};

TEST(TrainLoopTest, NonFiniteGradientNormStopsBeforeTheUpdate) {
  SqrtAtZero model;
  TrainLoop loop(model, LoopOptions().steps(4).grad_clip(1.0).progress(false));
  EXPECT_THAT(error_of([&] { loop.step(); }),
              HasSubstr("gradient norm became Inf at step 1 of 4 (learning rate too high?); "
                        "no checkpoint was written"));
  EXPECT_EQ(loop.steps_done(), 0);
  EXPECT_TRUE(at::equal(model.p(), at::zeros({3})));
  EXPECT_TRUE(at::equal(loop.optimizer().exp_avg()[0], at::zeros({3})));
}

// A non-finite parameter with a still-finite loss (here: set by hand) is
// never written into a checkpoint.
TEST(TrainLoopTest, CheckpointRefusesNonFiniteParameters) {
  const std::string dir = temp_dir("nan_param");
  LeastSquares model(64, 4, 0);
  TrainLoop loop(model, LoopOptions().steps(5).out_dir(dir).overwrite(true).progress(false));
  loop.save_checkpoint(dir + "/checkpoint.h5");
  {
    at::NoGradGuard no_grad;
    model.parameters()[1].fill_(std::numeric_limits<float>::quiet_NaN());
  }
  EXPECT_THAT(error_of([&] { loop.save_checkpoint(dir + "/checkpoint.h5"); }),
              HasSubstr("parameter 'b' became NaN or Inf by step 0 of 5 (learning rate too high?)"));
  EXPECT_TRUE(at::isfinite(H5File::open_read(dir + "/checkpoint.h5").read_tensor("b")).all().item<bool>());
}

// Resuming a finished run takes no step and reports the evaluation the
// checkpoint kept (not an empty one).
TEST(TrainLoopTest, ResumingAFinishedRunReportsItsLastEvaluation) {
  const std::string dir = temp_dir("finished");
  LoopResult done;
  {
    LeastSquares model(64, 4, 8);
    done = TrainLoop(model, resume_options(dir).overwrite(true)).run();
    ASSERT_EQ(done.steps, 12);
    ASSERT_GT(done.eval.test.loss, 0);
  }
  LeastSquares model(64, 4, 8);
  TrainLoop again(model, resume_options(dir).resume(true));
  const LoopResult r = again.run();
  EXPECT_TRUE(r.already_complete);
  EXPECT_EQ(r.steps, 12);
  EXPECT_EQ(r.steps_this_session, 0);
  EXPECT_EQ(r.eval.test.loss, done.eval.test.loss);
  EXPECT_EQ(r.eval.train.loss, done.eval.train.loss);
  EXPECT_EQ(again.log().rows().size(), 3u);  // steps 4, 8, 12: no row added

  // A checkpoint without the evaluation of its step (as written before the
  // loop stored it) re-evaluates the same weights: the same numbers again.
  {
    H5File f = H5File::open_readwrite(dir + "/checkpoint.h5");
    f.write_attr("train", "eval_step", int64_t{-1});
  }
  LeastSquares model2(64, 4, 8);
  const LoopResult old = TrainLoop(model2, resume_options(dir).resume(true)).run();
  EXPECT_TRUE(old.already_complete);
  EXPECT_EQ(old.eval.test.loss, done.eval.test.loss);
}

TEST(TrainLoopTest, RefusesBadOptionsNamingThem) {
  LeastSquares model(64, 4, 0);
  EXPECT_THAT(error_of([&] { TrainLoop(model, LoopOptions().steps(0)); }),
              HasSubstr("steps must be positive"));
  EXPECT_THAT(error_of([&] { TrainLoop(model, LoopOptions().eval_every(0)); }),
              HasSubstr("eval_every must be positive"));
  EXPECT_THAT(error_of([&] { TrainLoop(model, LoopOptions().resume(true)); }),
              HasSubstr("resume needs an output folder"));
}

}  // namespace
}  // namespace mechlab::core::train
