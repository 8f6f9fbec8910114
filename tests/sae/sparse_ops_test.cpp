// The TopK SAE's sparse training path (sae/sparse_ops.h, TopKSae's
// sparse_training): the autograd functions against the dense ATen
// formulas they replace (float64, tight), and whole training steps against
// the dense path (every loss term, latents, reconstruction, every gradient)
// with and without the decoder-norm rescale, b_dec applied to the input and
// dead latents (AuxK). The SAELens differential test (sae_saelens_test.cpp)
// runs the sparse path too, since it is the default.
#include "sae/registry.h"
#include "sae/sparse_ops.h"
#include "sae/topk_sae.h"
#include "tests/hooks/fixture_compare.h"
#include "tests/test_util.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/autograd.h>
#include <gtest/gtest.h>

namespace mechlab::sae {
namespace {

using mechlab::testing::close;
using mechlab::testing::kF32Tol;

at::Generator gen_of(uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

/// [n, k] distinct latents per row.
at::Tensor distinct_indices(int64_t n, int64_t k, int64_t d_sae, at::Generator& gen) {
  at::Tensor idx = at::empty({n, k}, at::kLong);
  for (int64_t r = 0; r < n; ++r) idx[r] = at::randperm(d_sae, gen, at::kLong).slice(0, 0, k);
  return idx;
}

TEST(SparseOps, EncoderValuesGradientsEqualTheDenseGather) {
  at::Generator gen = gen_of(1);
  const int64_t n = 9, d_in = 13, d_sae = 40, k = 5;
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor x = at::randn({n, d_in}, gen, f64).requires_grad_(true);
  const at::Tensor W = at::randn({d_in, d_sae}, gen, f64).requires_grad_(true);
  const at::Tensor b = at::randn({d_sae}, gen, f64).requires_grad_(true);
  const at::Tensor idx = distinct_indices(n, k, d_sae, gen);
  const at::Tensor upstream = at::randn({n, k}, gen, f64);  // dL/dvalues

  // Dense: the full pre-activations with autograd, then the gather.
  const at::Tensor dense = (at::matmul(x, W) + b).gather(1, idx);
  const auto dense_grads = torch::autograd::grad({dense}, {x, W, b}, {upstream});
  at::Tensor h;
  {
    at::NoGradGuard no_grad;
    h = at::matmul(x, W) + b;
  }
  const at::Tensor sparse = sparse_encoder_values(x, W, b, h, idx);
  EXPECT_TRUE(at::equal(sparse, dense.detach()));  // the same numbers, read from h
  const auto sparse_grads = torch::autograd::grad({sparse}, {x, W, b}, {upstream});
  const char* names[] = {"sae_in", "W_enc", "b_enc"};
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(at::allclose(sparse_grads[i], dense_grads[i], 1e-12, 1e-12)) << names[i];
    EXPECT_GT(dense_grads[i].abs().max().item<double>(), 0) << names[i];
  }
}

TEST(SparseOps, ScaledEncoderValuesGradientsEqualTheDenseGather) {
  // TopK's decoder-norm rescale: hidden_pre scaled per latent, the scale
  // differentiable too.
  at::Generator gen = gen_of(3);
  const int64_t n = 7, d_in = 10, d_sae = 30, k = 4;
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor x = at::randn({n, d_in}, gen, f64).requires_grad_(true);
  const at::Tensor W = at::randn({d_in, d_sae}, gen, f64).requires_grad_(true);
  const at::Tensor b = at::randn({d_sae}, gen, f64).requires_grad_(true);
  const at::Tensor scale = (at::rand({d_sae}, gen, f64) + 0.5).requires_grad_(true);
  const at::Tensor idx = distinct_indices(n, k, d_sae, gen);
  const at::Tensor upstream = at::randn({n, k}, gen, f64);
  const at::Tensor dense = ((at::matmul(x, W) + b) * scale).gather(1, idx);
  const auto dense_grads = torch::autograd::grad({dense}, {x, W, b, scale}, {upstream});
  at::Tensor h;
  {
    at::NoGradGuard no_grad;
    h = (at::matmul(x, W) + b) * scale;
  }
  const at::Tensor sparse = sparse_encoder_values(x, W, b, h, idx, scale);
  EXPECT_TRUE(at::equal(sparse, dense.detach()));
  const auto sparse_grads = torch::autograd::grad({sparse}, {x, W, b, scale}, {upstream});
  const char* names[] = {"sae_in", "W_enc", "b_enc", "scale"};
  for (int i = 0; i < 4; ++i) {
    EXPECT_TRUE(at::allclose(sparse_grads[i], dense_grads[i], 1e-12, 1e-12)) << names[i];
    EXPECT_GT(dense_grads[i].abs().max().item<double>(), 0) << names[i];
  }
}

TEST(SparseOps, DecoderGradientsEqualTheDenseMatmul) {
  at::Generator gen = gen_of(2);
  const int64_t n = 11, d_in = 17, d_sae = 50, k = 6;
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor v = at::randn({n, k}, gen, f64).requires_grad_(true);
  const at::Tensor W = at::randn({d_sae, d_in}, gen, f64).requires_grad_(true);
  const at::Tensor idx = distinct_indices(n, k, d_sae, gen);
  const at::Tensor upstream = at::randn({n, d_in}, gen, f64);

  const at::Tensor dense = at::matmul(at::zeros({n, d_sae}, f64).scatter(1, idx, v), W);  // [n, d_in]
  const auto dense_grads = torch::autograd::grad({dense}, {v, W}, {upstream});
  const at::Tensor sparse = sparse_decode(v, idx, W);
  EXPECT_TRUE(at::allclose(sparse, dense.detach(), 1e-12, 1e-12));
  const auto sparse_grads = torch::autograd::grad({sparse}, {v, W}, {upstream});
  EXPECT_TRUE(at::allclose(sparse_grads[0], dense_grads[0], 1e-12, 1e-12)) << "values";
  EXPECT_TRUE(at::allclose(sparse_grads[1], dense_grads[1], 1e-12, 1e-12)) << "W_dec";
  // Only the rows some entry names get a gradient.
  const at::Tensor touched = at::zeros({d_sae}, at::kBool).index_fill(0, idx.flatten(), true);
  EXPECT_EQ(sparse_grads[1].abs().sum(1).gt(0).equal(touched), true);
}

struct Variant {
  const char* name;
  bool rescale;
  bool b_dec_in;
  bool dead;
};

class SparseTraining : public ::testing::TestWithParam<Variant> {};

/// A TopK SAE with random weights (biases included) in both paths.
std::shared_ptr<Sae> random_topk(const Variant& v, uint64_t seed) {
  SaeConfig cfg;
  cfg.architecture("topk").d_in(24).d_sae(96).k(6).rescale_acts_by_decoder_norm(v.rescale)
      .apply_b_dec_to_input(v.b_dec_in).aux_loss_coefficient(0.5);
  auto sae = make_sae(cfg);
  at::Generator gen = gen_of(seed);
  at::NoGradGuard no_grad;
  for (const auto& [name, p] : sae->named_parameters()) {
    p.copy_(at::randn(p.sizes(), gen, p.options()) * (name[0] == 'W' ? 0.3 : 0.1));
  }
  return sae;
}

TEST_P(SparseTraining, StepEqualsTheDensePath) {
  const Variant v = GetParam();
  at::Generator gen = gen_of(7);
  const at::Tensor x = at::randn({40, 24}, gen, at::TensorOptions().dtype(at::kFloat));  // [batch, d_in]
  // A third of the latents dead: AuxK takes k_aux = d_in / 2 = 12 of them.
  const at::Tensor dead = v.dead ? at::arange(96).remainder(3).eq(0) : at::Tensor();
  std::vector<TrainStep> steps;
  std::vector<std::shared_ptr<Sae>> saes;
  for (const bool sparse : {false, true}) {
    auto sae = random_topk(v, 3);
    dynamic_cast<TopKSae&>(*sae).sparse_training(sparse);
    sae->requires_grad(true);
    steps.push_back(sae->training_forward(x, dead));
    steps.back().loss.backward();
    saes.push_back(sae);
  }
  const TrainStep& dense = steps[0];
  const TrainStep& sparse = steps[1];
  // The sparse path ran: its hidden_pre carries no gradient.
  EXPECT_TRUE(dense.hidden_pre.requires_grad());
  EXPECT_FALSE(sparse.hidden_pre.requires_grad());
  ASSERT_EQ(sparse.losses.size(), dense.losses.size());
  for (size_t i = 0; i < dense.losses.size(); ++i) {
    EXPECT_EQ(sparse.losses[i].first, dense.losses[i].first);
    EXPECT_TRUE(close(sparse.losses[i].second, dense.losses[i].second, kF32Tol, dense.losses[i].first));
  }
  if (v.dead) {
    EXPECT_GT(dense.losses.back().second.item<double>(), 0) << "AuxK must act";
  }
  EXPECT_TRUE(at::equal(sparse.hidden_pre, dense.hidden_pre.detach()));
  EXPECT_TRUE(at::equal(sparse.feature_acts.detach(), dense.feature_acts.detach()));
  EXPECT_TRUE(close(sparse.sae_out, dense.sae_out, kF32Tol, "sae_out"));
  for (const auto& [name, p] : saes[0]->named_parameters()) {
    const at::Tensor& g_sparse = saes[1]->param(name).grad();
    ASSERT_TRUE(g_sparse.defined()) << name;
    EXPECT_GT(p.grad().abs().max().item<double>(), 0) << name << ": a zero gradient tests nothing";
    EXPECT_TRUE(close(g_sparse, p.grad(), kF32Tol, std::string(v.name) + " grad " + name));
  }
}

INSTANTIATE_TEST_SUITE_P(TopK, SparseTraining,
                         ::testing::Values(Variant{"plain", false, true, false}, Variant{"rescale", true, true, false},
                                           Variant{"no_b_dec_in", false, false, false},
                                           Variant{"auxk", false, true, true}, Variant{"auxk_rescale", true, true, true}),
                         [](const ::testing::TestParamInfo<Variant>& i) { return std::string(i.param.name); });

TEST(SparseTrainingSwitch, DefaultIsSparseAndBatchTopKStaysDense) {
  SaeConfig cfg;
  cfg.architecture("topk").d_in(8).d_sae(16).k(2);
  auto topk = make_sae(cfg);
  EXPECT_TRUE(dynamic_cast<TopKSae&>(*topk).sparse_training());
  topk->requires_grad(true);
  EXPECT_FALSE(topk->training_forward(at::randn({4, 8})).hidden_pre.requires_grad());
  cfg.architecture("batchtopk");
  auto batch = make_sae(cfg);
  batch->requires_grad(true);
  EXPECT_TRUE(batch->training_forward(at::randn({4, 8})).hidden_pre.requires_grad());
}

}  // namespace
}  // namespace mechlab::sae
