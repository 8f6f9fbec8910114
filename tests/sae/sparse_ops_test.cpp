// The TopK SAE's sparse training path (sae/sparse_ops.h, TopKSae's
// sparse_training): the autograd functions against the dense ATen
// formulas they replace (float64, tight), and whole training steps against
// the dense path (every loss term, latents, reconstruction, every gradient)
// with and without the decoder-norm rescale, b_dec applied to the input and
// dead latents (AuxK). The SAELens differential test (sae_saelens_test.cpp)
// runs the sparse path too, since it is the default. BatchTopK's sparse
// path (an entry list with a varying number of latents per row) likewise:
// the list ops against the dense formulas in float64, whole steps against
// the dense path in float64 and float32, and on a GPU against the CPU.
#include "sae/registry.h"
#include "sae/sparse_ops.h"
#include "sae/topk_sae.h"
#include "tests/hooks/fixture_compare.h"
#include "tests/test_util.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/autograd.h>
#include <gmock/gmock.h>
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

TEST(SparseTrainingSwitch, DefaultIsSparseForTopKAndBatchTopK) {
  for (const char* arch : {"topk", "batchtopk"}) {
    SaeConfig cfg;
    cfg.architecture(arch).d_in(8).d_sae(16).k(2);
    auto sae = make_sae(cfg);
    EXPECT_TRUE(dynamic_cast<TopKSae&>(*sae).sparse_training()) << arch;
    sae->requires_grad(true);
    EXPECT_FALSE(sae->training_forward(at::randn({4, 8})).hidden_pre.requires_grad()) << arch;
    dynamic_cast<TopKSae&>(*sae).sparse_training(false);
    EXPECT_TRUE(sae->training_forward(at::randn({4, 8})).hidden_pre.requires_grad()) << arch;
  }
}

// ---------------------------------------------------------------- BatchTopK: rows of varying length

// Float64 against the dense formulas: the sums differ only in order, so
// the differences are a few ulps of the summands; 1e-12 of the scale
// normwise and per entry (plus 1e-12 of the entry) leaves a wide margin
// and still fails on any wrong term (a missing entry moves a result by
// the entry's size, ~0.1 of the scale here).
constexpr testing::Tolerance kF64Tol{1e-12, 1e-12, 1e-12};

/// Flat indices (row * d_sae + latent) of an [n, d_sae] matrix, row r
/// keeping each latent with probability r / (n - 1): row 0 keeps none, the
/// last keeps all, so every row has its own count.
at::Tensor varying_entries(int64_t n, int64_t d_sae, at::Generator& gen) {
  const at::Tensor p = at::arange(n, at::kDouble).div(n - 1).unsqueeze(1).expand({n, d_sae});  // [n, d_sae]
  const at::Tensor keep = at::rand({n, d_sae}, gen, at::kDouble).lt(p);
  return keep.reshape({-1}).nonzero().reshape({-1});  // [nnz] increasing
}

TEST(SparseRowsOps, EntryListIsSortedByRowWithOffsets) {
  // Shuffled entries of a 3 x 5 matrix: rows 0 (latents 4, 1), 1 (none), 2 (latents 0, 2, 3).
  const at::Tensor flat = at::tensor({13, 4, 10, 1, 12}, at::kLong);
  const SparseRows e = sparse_rows(flat, 3, 5);
  EXPECT_TRUE(at::equal(e.flat, at::tensor({1, 4, 10, 12, 13}, at::kLong)));
  EXPECT_TRUE(at::equal(e.rows, at::tensor({0, 0, 2, 2, 2}, at::kLong)));
  EXPECT_TRUE(at::equal(e.latents, at::tensor({1, 4, 0, 2, 3}, at::kLong)));
  EXPECT_TRUE(at::equal(e.offsets, at::tensor({0, 2, 2, 5}, at::kLong)));
  EXPECT_THAT(mechlab::testing::error_of([&] { sparse_rows(at::tensor({15}, at::kLong), 3, 5); }),
              ::testing::HasSubstr("sparse_rows: an entry lies outside [0, 15)"));
}

TEST(SparseRowsOps, EncoderValuesAndDecoderEqualTheDenseFormulasInFloat64) {
  at::Generator gen = gen_of(11);
  const int64_t n = 9, d_in = 13, d_sae = 40;
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor flat = varying_entries(n, d_sae, gen);
  const SparseRows e = sparse_rows(flat, n, d_sae);
  const at::Tensor counts = e.offsets.slice(0, 1) - e.offsets.slice(0, 0, n);  // [n]
  ASSERT_EQ(counts[0].item<int64_t>(), 0);
  ASSERT_EQ(counts[n - 1].item<int64_t>(), d_sae);
  const int64_t nnz = flat.size(0);

  for (const bool scaled : {false, true}) {
    const at::Tensor x = at::randn({n, d_in}, gen, f64).requires_grad_(true);
    const at::Tensor W = at::randn({d_in, d_sae}, gen, f64).requires_grad_(true);
    const at::Tensor b = at::randn({d_sae}, gen, f64).requires_grad_(true);
    const at::Tensor scale = (at::rand({d_sae}, gen, f64) + 0.5).requires_grad_(true);
    const at::Tensor upstream = at::randn({nnz}, gen, f64);  // dL/dvalues
    at::Tensor pre = at::matmul(x, W) + b;
    if (scaled) pre = pre * scale;
    const at::Tensor dense = pre.reshape({-1}).index_select(0, flat);  // [nnz]
    std::vector<at::Tensor> inputs{x, W, b};
    if (scaled) inputs.push_back(scale);
    const auto dense_grads = torch::autograd::grad({dense}, inputs, {upstream});
    at::Tensor h;
    {
      at::NoGradGuard no_grad;
      h = at::matmul(x, W) + b;
      if (scaled) h = h * scale;
    }
    const at::Tensor sparse = sparse_rows_encoder_values(x, W, b, h, e, scaled ? scale : at::Tensor());
    EXPECT_TRUE(at::equal(sparse, dense.detach()));  // read from h, the same numbers
    const auto sparse_grads = torch::autograd::grad({sparse}, inputs, {upstream});
    const char* names[] = {"sae_in", "W_enc", "b_enc", "scale"};
    for (size_t i = 0; i < inputs.size(); ++i) {
      EXPECT_GT(dense_grads[i].abs().max().item<double>(), 0) << names[i];
      EXPECT_TRUE(close(sparse_grads[i], dense_grads[i], kF64Tol, names[i])) << (scaled ? "scaled" : "plain");
    }
    // Row 0 has no entry: its input gets no gradient.
    EXPECT_EQ(sparse_grads[0][0].abs().max().item<double>(), 0);
  }

  // The decoder: per row, its entries' values times their W_dec rows.
  const at::Tensor v = at::randn({nnz}, gen, f64).requires_grad_(true);
  const at::Tensor W_dec = at::randn({d_sae, d_in}, gen, f64).requires_grad_(true);
  const at::Tensor upstream = at::randn({n, d_in}, gen, f64);
  const at::Tensor dense = at::matmul(at::zeros({n * d_sae}, f64).scatter(0, flat, v).view({n, d_sae}), W_dec);
  const auto dense_grads = torch::autograd::grad({dense}, {v, W_dec}, {upstream});
  const at::Tensor sparse = sparse_rows_decode(v, e, W_dec);
  EXPECT_TRUE(close(sparse, dense.detach(), kF64Tol, "recons"));
  EXPECT_EQ(sparse[0].abs().max().item<double>(), 0);  // row 0: nothing kept
  const auto sparse_grads = torch::autograd::grad({sparse}, {v, W_dec}, {upstream});
  EXPECT_TRUE(close(sparse_grads[0], dense_grads[0], kF64Tol, "values"));
  EXPECT_TRUE(close(sparse_grads[1], dense_grads[1], kF64Tol, "W_dec"));
}

struct BatchVariant {
  const char* name;
  bool rescale;
  bool b_dec_in;
  bool dead;
  bool f64;
};

class BatchTopKSparseTraining : public ::testing::TestWithParam<BatchVariant> {};

// A whole training step of a BatchTopK SAE, sparse against dense: every
// loss term, the latents, the reconstruction, every gradient and the moved
// threshold. Float64 to kF64Tol, float32 to kF32Tol.
TEST_P(BatchTopKSparseTraining, StepEqualsTheDensePath) {
  const BatchVariant v = GetParam();
  const at::ScalarType dtype = v.f64 ? at::kDouble : at::kFloat;
  const testing::Tolerance tol = v.f64 ? kF64Tol : kF32Tol;
  at::Generator gen = gen_of(17);
  const at::Tensor x = at::randn({40, 24}, gen, at::TensorOptions().dtype(dtype));  // [batch, d_in]
  const at::Tensor dead = v.dead ? at::arange(96).remainder(3).eq(0) : at::Tensor();
  std::vector<TrainStep> steps;
  std::vector<std::shared_ptr<Sae>> saes;
  for (const bool sparse : {false, true}) {
    SaeConfig cfg;
    cfg.architecture("batchtopk").d_in(24).d_sae(96).k(6).rescale_acts_by_decoder_norm(v.rescale)
        .apply_b_dec_to_input(v.b_dec_in).aux_loss_coefficient(0.5).topk_threshold(0.25);
    auto sae = make_sae(cfg);
    {
      at::Generator w = gen_of(3);
      at::NoGradGuard no_grad;
      for (const auto& [name, p] : sae->named_parameters()) {
        p.copy_(at::randn(p.sizes(), w, p.options()) * (name[0] == 'W' ? 0.3 : 0.1));
      }
    }
    sae->to(at::kCPU, dtype);
    dynamic_cast<TopKSae&>(*sae).sparse_training(sparse);
    sae->requires_grad(true);
    steps.push_back(sae->training_forward(x, dead));
    steps.back().loss.backward();
    saes.push_back(sae);
  }
  const TrainStep& dense = steps[0];
  const TrainStep& sparse = steps[1];
  EXPECT_TRUE(dense.hidden_pre.requires_grad());
  EXPECT_FALSE(sparse.hidden_pre.requires_grad());  // the sparse path ran
  // Rows keep different numbers of latents (the point of the entry list), k on average.
  const at::Tensor per_row = dense.feature_acts.detach().ne(0).sum(1);  // [batch]
  EXPECT_LT(per_row.min().item<int64_t>(), per_row.max().item<int64_t>());
  EXPECT_EQ(dense.feature_acts.detach().ne(0).sum().item<int64_t>(), sparse.feature_acts.detach().ne(0).sum().item<int64_t>());
  ASSERT_EQ(sparse.losses.size(), dense.losses.size());
  for (size_t i = 0; i < dense.losses.size(); ++i) {
    EXPECT_EQ(sparse.losses[i].first, dense.losses[i].first);
    EXPECT_TRUE(close(sparse.losses[i].second, dense.losses[i].second, tol, dense.losses[i].first));
  }
  if (v.dead) {
    EXPECT_GT(dense.losses.back().second.item<double>(), 0) << "AuxK must act";
  }
  EXPECT_TRUE(at::equal(sparse.hidden_pre, dense.hidden_pre.detach()));
  EXPECT_TRUE(at::equal(sparse.feature_acts.detach(), dense.feature_acts.detach()));
  EXPECT_TRUE(close(sparse.sae_out, dense.sae_out, tol, "sae_out"));
  for (const auto& [name, p] : saes[0]->named_parameters()) {
    const at::Tensor& g_sparse = saes[1]->param(name).grad();
    ASSERT_TRUE(g_sparse.defined()) << name;
    EXPECT_GT(p.grad().abs().max().item<double>(), 0) << name << ": a zero gradient tests nothing";
    EXPECT_TRUE(close(g_sparse, p.grad(), tol, std::string(v.name) + " grad " + name));
  }
  // The inference threshold moved by the same smallest kept activation.
  EXPECT_NE(saes[0]->cfg().topk_threshold(), 0.25);
  EXPECT_EQ(saes[1]->cfg().topk_threshold(), saes[0]->cfg().topk_threshold());
}

INSTANTIATE_TEST_SUITE_P(
    BatchTopK, BatchTopKSparseTraining,
    ::testing::Values(BatchVariant{"plain", false, true, false, true}, BatchVariant{"rescale", true, true, false, true},
                      BatchVariant{"no_b_dec_in", false, false, false, true},
                      BatchVariant{"auxk", false, true, true, true}, BatchVariant{"auxk_rescale", true, true, true, true},
                      BatchVariant{"f32_plain", false, true, false, false},
                      BatchVariant{"f32_auxk_rescale", true, true, true, false}),
    [](const ::testing::TestParamInfo<BatchVariant>& i) { return std::string(i.param.name); });

// On a GPU the entry list goes through ATen's gathers (no CPU loop): the
// same numbers as on the CPU, to float32 tolerance.
TEST(SparseRowsOps, OnCudaEqualTheCpu) {
  if (!mechlab::testing::have_cuda_or_skip()) GTEST_SKIP() << "no CUDA device";
  at::Generator gen = gen_of(12);
  const int64_t n = 33, d_in = 20, d_sae = 70;
  const at::Tensor flat = varying_entries(n, d_sae, gen);
  const at::Tensor x = at::randn({n, d_in}, gen, at::kFloat), W = at::randn({d_in, d_sae}, gen, at::kFloat);
  const at::Tensor b = at::randn({d_sae}, gen, at::kFloat), W_dec = at::randn({d_sae, d_in}, gen, at::kFloat);
  const at::Tensor up = at::randn({n, d_in}, gen, at::kFloat);
  std::vector<std::vector<at::Tensor>> results;
  for (const at::Device dev : {at::Device(at::kCPU), at::Device(at::kCUDA, 0)}) {
    std::vector<at::Tensor> in{x.to(dev).requires_grad_(true), W.to(dev).requires_grad_(true),
                               b.to(dev).requires_grad_(true), W_dec.to(dev).requires_grad_(true)};
    at::Tensor h;
    {
      at::NoGradGuard no_grad;
      h = at::matmul(in[0], in[1]) + in[2];
    }
    const SparseRows e = sparse_rows(flat.to(dev), n, d_sae);
    const at::Tensor out = sparse_rows_decode(at::relu(sparse_rows_encoder_values(in[0], in[1], in[2], h, e)), e, in[3]);
    std::vector<at::Tensor> r{out.detach()};
    for (const at::Tensor& g : torch::autograd::grad({out}, in, {up.to(dev)})) r.push_back(g);
    results.push_back(r);
  }
  const char* names[] = {"recons", "sae_in", "W_enc", "b_enc", "W_dec"};
  for (size_t i = 0; i < results[0].size(); ++i) EXPECT_TRUE(close(results[1][i], results[0][i], kF32Tol, names[i]));
}

// When every row keeps k latents, listed in increasing order, the entry list
// is the [n, k] layout read row-major, and both paths sum each output in
// entry order (kernels/sparse_cpu.h): the list ops and TopK's [n, k] ops
// give the same bits, forward and every gradient (float32, where a sum in
// another order would round differently; float64 too). The encoder's input
// gradient takes the column-wise decode (W_enc.t()), its weight gradient the
// transposed write-out, b_enc's the [L, 1] one.
TEST(SparseRowsOps, ListAndNkLayoutsSumInTheSameOrderToTheBit) {
  at::Generator gen = gen_of(21);
  const int64_t n = 37, d_in = 29, d_sae = 90, k = 7;
  for (const at::ScalarType dtype : {at::kFloat, at::kDouble}) {
    const auto opts = at::TensorOptions().dtype(dtype);
    // [n, k]: k distinct latents per row, increasing; many rows share each latent.
    const at::Tensor idx = std::get<0>(at::sort(distinct_indices(n, k, d_sae, gen), 1));
    const at::Tensor flat = (at::arange(n, at::kLong).unsqueeze(1) * d_sae + idx).reshape({-1});  // [n k]
    const SparseRows e = sparse_rows(flat, n, d_sae);
    ASSERT_TRUE(at::equal(e.latents, idx.reshape({-1})));
    const at::Tensor x = at::randn({n, d_in}, gen, opts), W = at::randn({d_in, d_sae}, gen, opts);
    const at::Tensor b = at::randn({d_sae}, gen, opts), W_dec = at::randn({d_sae, d_in}, gen, opts);
    const at::Tensor up = at::randn({n, d_in}, gen, opts);  // dL/drecons
    at::Tensor h;
    {
      at::NoGradGuard no_grad;
      h = at::matmul(x, W) + b;
    }
    std::vector<std::vector<at::Tensor>> results;
    for (const bool list : {false, true}) {
      std::vector<at::Tensor> in{x.clone().requires_grad_(true), W.clone().requires_grad_(true),
                                 b.clone().requires_grad_(true), W_dec.clone().requires_grad_(true)};
      const at::Tensor out =
          list ? sparse_rows_decode(at::relu(sparse_rows_encoder_values(in[0], in[1], in[2], h, e)), e, in[3])
               : sparse_decode(at::relu(sparse_encoder_values(in[0], in[1], in[2], h, idx)), idx, in[3]);
      std::vector<at::Tensor> r{out.detach()};
      for (const at::Tensor& g : torch::autograd::grad({out}, in, {up})) r.push_back(g);
      results.push_back(r);
    }
    const char* names[] = {"recons", "sae_in", "W_enc", "b_enc", "W_dec"};
    for (size_t i = 0; i < results[0].size(); ++i) {
      EXPECT_GT(results[0][i].abs().max().item<double>(), 0) << names[i] << ": a zero result tests nothing";
      EXPECT_TRUE(at::equal(results[1][i], results[0][i])) << names[i] << " " << dtype;
    }
  }
}

// Row offsets that do not rise from 0 to the number of entries would send
// the CPU loops outside the entries: refused. (A list spoiled in place after
// the forward is autograd's to refuse: the saved offsets' version moved.)
TEST(SparseRowsOps, OffsetsOutsideTheEntriesAreRefused) {
  const SparseRows good = sparse_rows(at::tensor({13, 4, 10, 1, 12}, at::kLong), 3, 5);  // offsets 0, 2, 2, 5
  const at::Tensor W_dec = at::randn({5, 4}, at::kDouble);
  const at::Tensor v = at::randn({5}, at::kDouble);
  SparseRows e = good;
  e.offsets = at::tensor({0, 2, 2, 6}, at::kLong);
  EXPECT_EQ(mechlab::testing::error_of([&] { sparse_rows_decode(v, e, W_dec); }),
            "sparse rows: the 3 rows' entries run from 0 to 6; the row offsets must run from 0 to the 5 entries");
  e.offsets = at::tensor({0, 7, 2, 5}, at::kLong);
  EXPECT_EQ(mechlab::testing::error_of([&] { sparse_rows_decode(v, e, W_dec); }),
            "sparse rows: row 1 starts at entry 7 and ends at 2; the row offsets must not decrease");
  EXPECT_EQ(sparse_rows_decode(v, good, W_dec).size(0), 3);  // the list sparse_rows built passes
}

// Other dtypes take the ATen path (gathers and index_add_ in chunks), on the
// CPU too. With small integers every product and partial sum (below 256 in
// magnitude here) is exact in bfloat16, so the list ops in bfloat16 must
// equal the dense formulas in float64 exactly: a wrong or missing term, or
// rows and latents exchanged, moves a result by at least 1.
TEST(SparseRowsOps, AtenPathEqualsTheDenseFormulasExactlyOnSmallIntegers) {
  at::Generator gen = gen_of(23);
  const int64_t n = 9, d_in = 5, d_sae = 12;
  const at::Tensor flat = varying_entries(n, d_sae, gen);  // row 0 keeps none, row n - 1 all
  const SparseRows e = sparse_rows(flat, n, d_sae);
  const int64_t nnz = flat.size(0);
  const auto ints = [&](at::IntArrayRef shape) {  // in [-3, 3], float64
    return at::randint(-3, 4, shape, gen, at::TensorOptions().dtype(at::kDouble));
  };
  const at::Tensor x = ints({n, d_in}), W = ints({d_in, d_sae}), b = ints({d_sae});
  const at::Tensor v = ints({nnz}), W_dec = ints({d_sae, d_in});
  const at::Tensor up_values = ints({nnz}), up_recons = ints({n, d_in});
  const auto bf16 = [](const at::Tensor& t) { return t.to(at::kBFloat16).requires_grad_(true); };

  // The encoder's values: gradients to sae_in (the decode with W_enc.t()),
  // W_enc (the transposed weight gradient) and b_enc.
  std::vector<at::Tensor> dense_in{x.clone().requires_grad_(true), W.clone().requires_grad_(true),
                                   b.clone().requires_grad_(true)};
  const at::Tensor dense_values =
      (at::matmul(dense_in[0], dense_in[1]) + dense_in[2]).reshape({-1}).index_select(0, flat);
  const auto dense_enc = torch::autograd::grad({dense_values}, dense_in, {up_values});
  std::vector<at::Tensor> in{bf16(x), bf16(W), bf16(b)};
  at::Tensor h;
  {
    at::NoGradGuard no_grad;
    h = at::matmul(in[0], in[1]) + in[2];
  }
  const at::Tensor values = sparse_rows_encoder_values(in[0], in[1], in[2], h, e);
  const auto enc = torch::autograd::grad({values}, in, {up_values.to(at::kBFloat16)});
  const char* enc_names[] = {"sae_in", "W_enc", "b_enc"};
  for (int i = 0; i < 3; ++i) {
    EXPECT_GT(dense_enc[i].abs().max().item<double>(), 0) << enc_names[i];
    EXPECT_TRUE(at::equal(enc[i].to(at::kDouble), dense_enc[i])) << enc_names[i];
  }

  // The decoder: forward, and gradients to values and W_dec.
  const at::Tensor dv = v.clone().requires_grad_(true), dW = W_dec.clone().requires_grad_(true);
  const at::Tensor dense = at::matmul(at::zeros({n * d_sae}, at::kDouble).scatter(0, flat, dv).view({n, d_sae}), dW);
  const auto dense_dec = torch::autograd::grad({dense}, {dv, dW}, {up_recons});
  const at::Tensor sv = bf16(v), sW = bf16(W_dec);
  const at::Tensor recons = sparse_rows_decode(sv, e, sW);
  EXPECT_TRUE(at::equal(recons.detach().to(at::kDouble), dense.detach())) << "recons";
  const auto dec = torch::autograd::grad({recons}, {sv, sW}, {up_recons.to(at::kBFloat16)});
  EXPECT_TRUE(at::equal(dec[0].to(at::kDouble), dense_dec[0])) << "values";
  EXPECT_TRUE(at::equal(dec[1].to(at::kDouble), dense_dec[1])) << "W_dec";
}

}  // namespace
}  // namespace mechlab::sae

namespace mechlab::sae {
namespace {

// top_entries picks at::topk's set: on distinct values the same positions,
// and with heavy ties (values on a coarse grid) the same multiset of values;
// at sizes below its sampling cut (at::topk itself), above it, and with a
// skewed vector whose sample misses the large values (the full search).
TEST(TopEntries, PicksTheSetOfAtTopk) {
  auto expect_same = [](const at::Tensor& x, int64_t keep, bool distinct, const std::string& what) {
    const at::Tensor got = top_entries(x, keep);
    const at::Tensor want = std::get<1>(at::topk(x, keep));
    ASSERT_EQ(got.numel(), keep) << what;
    const at::Tensor sorted = std::get<0>(at::sort(got));
    EXPECT_FALSE(keep > 1 && sorted.slice(0, 1).eq(sorted.slice(0, 0, keep - 1)).any().item<bool>())
        << what << ": positions repeat";
    EXPECT_TRUE(at::equal(std::get<0>(at::sort(x.index_select(0, got))), std::get<0>(at::sort(x.index_select(0, want)))))
        << what;
    if (distinct) {
      EXPECT_TRUE(at::equal(sorted, std::get<0>(at::sort(want)))) << what;
    }
  };
  at::manual_seed(3);
  expect_same(at::randn({1000}), 17, true, "small");
  const at::Tensor big = at::randn({4096 * 300});  // above the cut: sampled
  for (int64_t keep : {1, 64, 4096 * 32, 4096 * 37}) expect_same(big, keep, true, "keep " + std::to_string(keep));
  expect_same(at::round(at::randn({4096 * 300}) * 4) / 4, 4096 * 32, false, "ties");
  at::Tensor skew = at::zeros({4096 * 300});
  skew.narrow(0, 0, 5000).copy_(at::rand({5000}) + 1);  // 5000 large values the sample rarely meets
  expect_same(skew, 4000, false, "skewed");
  expect_same(big, 0, true, "none");
  EXPECT_EQ(mechlab::testing::error_of([&] { top_entries(big, big.numel() + 1); }),
            "top_entries needs a vector and 0 <= keep <= its 1228800 entries; got keep 1228801 of a tensor of shape "
            "[1228800]");
}

}  // namespace
}  // namespace mechlab::sae
