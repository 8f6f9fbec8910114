// The TopK SAE's kernels (kernels/sae_topk.h, kernels/sparse_decoder.h):
// float64 references written as the naive loops of the definitions, the
// harness cases (shapes, dtypes, weight layouts, repeated indices, ties) and
// the argument errors.
#include "tests/kernels/kernel_harness.h"

#include "tests/test_util.h"
#include "kernels/device_info.h"
#include "kernels/sae_topk.h"
#include "kernels/sparse_decoder.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <vector>

namespace mechlab::testing {
namespace {

using namespace mechlab::kernels;

at::Tensor cpu_double(const at::Tensor& t) { return t.to(at::kCPU).to(at::kDouble).contiguous(); }

// ---------------------------------------------------------------- references

/// The k largest values of each row, largest first.
at::Tensor topk_values_reference(const at::Tensor& x, int64_t k) {
  const at::Tensor xd = cpu_double(x);
  const int64_t n = xd.size(0), m = xd.size(1);
  at::Tensor out = at::empty({n, k}, at::kDouble);
  for (int64_t r = 0; r < n; ++r) {
    std::vector<double> row(xd.data_ptr<double>() + r * m, xd.data_ptr<double>() + (r + 1) * m);
    std::sort(row.begin(), row.end(), std::greater<double>());
    for (int64_t j = 0; j < k; ++j) out[r][j] = row[j];
  }
  return out;
}

/// out[n, :] = sum_j values[n, j] * weight[indices[n, j], :].
at::Tensor decode_reference(const at::Tensor& values, const at::Tensor& indices, const at::Tensor& weight) {
  const at::Tensor v = cpu_double(values), w = cpu_double(weight);
  const at::Tensor idx = indices.to(at::kCPU).contiguous();
  const int64_t n = v.size(0), k = v.size(1), d = w.size(1);
  at::Tensor out = at::zeros({n, d}, at::kDouble);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < k; ++j)
      for (int64_t c = 0; c < d; ++c)
        out.data_ptr<double>()[r * d + c] +=
            v.data_ptr<double>()[r * k + j] * w.data_ptr<double>()[idx.data_ptr<int64_t>()[r * k + j] * d + c];
  return out;
}

/// grad_values[n, j] = sum_c grad_out[n, c] * weight[indices[n, j], c].
at::Tensor grad_values_reference(const at::Tensor& grad_out, const at::Tensor& indices, const at::Tensor& weight) {
  const at::Tensor g = cpu_double(grad_out), w = cpu_double(weight);
  const at::Tensor idx = indices.to(at::kCPU).contiguous();
  const int64_t n = idx.size(0), k = idx.size(1), d = w.size(1);
  at::Tensor out = at::zeros({n, k}, at::kDouble);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < k; ++j) {
      double s = 0;
      for (int64_t c = 0; c < d; ++c)
        s += g.data_ptr<double>()[r * d + c] * w.data_ptr<double>()[idx.data_ptr<int64_t>()[r * k + j] * d + c];
      out.data_ptr<double>()[r * k + j] = s;
    }
  return out;
}

/// G[indices[n, j], :] += coef[n, j] * rows[n, :] over every (n, j).
at::Tensor weight_grad_reference(const at::Tensor& coef, const at::Tensor& indices, const at::Tensor& rows,
                                 int64_t n_latents, bool transposed) {
  const at::Tensor cf = cpu_double(coef), x = cpu_double(rows);
  const at::Tensor idx = indices.to(at::kCPU).contiguous();
  const int64_t n = cf.size(0), k = cf.size(1), d = x.size(1);
  at::Tensor g = at::zeros({n_latents, d}, at::kDouble);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < k; ++j)
      for (int64_t c = 0; c < d; ++c)
        g.data_ptr<double>()[idx.data_ptr<int64_t>()[r * k + j] * d + c] +=
            cf.data_ptr<double>()[r * k + j] * x.data_ptr<double>()[r * d + c];
  return transposed ? g.t().contiguous() : g;
}

// ---------------------------------------------------------------- inputs

at::Generator gen_of(const std::string& name) {
  return at::make_generator<at::CPUGeneratorImpl>(std::hash<std::string>{}(name));
}

/// Distinct values (a shuffled ramp, both signs) unless `ties`: then eight
/// levels, so the k-th value of a row is shared by several entries.
at::Tensor topk_input(int64_t n, int64_t m, bool ties, at::Generator& gen) {
  at::Tensor x = at::randperm(n * m, gen, at::kLong).to(at::kFloat).view({n, m});
  x = (x - static_cast<double>(n * m) / 2) / static_cast<double>(std::max<int64_t>(1, n * m));
  if (ties) x = at::floor(x * 8) / 8;
  return x;
}

enum class WLayout { rows, transposed, strided };

/// A [L, d] weight stored as rows, as the transpose of a contiguous [d, L]
/// (W_enc.t()), or every other column of a [L, 2d].
at::Tensor weight_input(int64_t L, int64_t d, WLayout layout, at::Generator& gen, at::ScalarType t,
                        at::Device dev) {
  const auto f = at::TensorOptions().dtype(at::kFloat);
  switch (layout) {
    case WLayout::rows: return at::randn({L, d}, gen, f).to(t).to(dev);
    case WLayout::transposed: return at::randn({d, L}, gen, f).to(t).to(dev).t();
    case WLayout::strided: return at::randn({L, 2 * d}, gen, f).to(t).to(dev).slice(1, 0, 2 * d, 2);
  }
  return {};
}

/// [n, k] indices in [0, L); `repeats`: some rows name one latent twice.
at::Tensor index_input(int64_t n, int64_t k, int64_t L, bool repeats, at::Generator& gen) {
  at::Tensor idx = at::randint(L, {n, k}, gen, at::TensorOptions().dtype(at::kLong));
  if (!repeats && k <= L) {
    for (int64_t r = 0; r < n; ++r) idx[r] = at::randperm(L, gen, at::kLong).slice(0, 0, k);
  }
  return idx;
}

struct Sizes {
  int64_t n, k, L, d;
};

KernelCase base_case(const std::string& family, const std::string& name, at::ScalarType t, bool perf_only) {
  KernelCase c;
  c.family = family;
  c.name = name + "_" + c10::toString(t);
  c.dtype = t;
  c.perf_only = perf_only;
  return c;
}

KernelCase topk_case(const std::string& name, int64_t n, int64_t m, int64_t k, at::ScalarType t, bool ties = false,
                     bool perf_only = false) {
  KernelCase c = base_case("sae_topk", name, t, perf_only);
  c.make_inputs = [=](at::Device dev) {
    at::Generator gen = gen_of(name);
    return Inputs{topk_input(n, m, ties, gen).to(t).to(dev)};
  };
  c.reference = [k](const Inputs& in) { return topk_values_reference(in[0], k); };
  // The output compared is the values the indices select, in the listed
  // order: largest first, so an index list in another order fails too.
  c.run = [k](const Inputs& in, const std::string& impl) {
    const at::Tensor idx = impl.empty() ? sae_topk(in[0], k) : sae_topk_family().run(impl, SaeTopkArgs{in[0], k});
    return in[0].gather(1, idx);
  };
  c.unsupported = [k](const Inputs& in, const std::string& impl) {
    return sae_topk_family().unsupported(impl, SaeTopkArgs{in[0], k});
  };
  c.chosen = [k](const Inputs& in) { return sae_topk_family().choose(SaeTopkArgs{in[0], k}).name; };
  c.impls = sae_topk_family().impl_names();
  c.bytes = std::max<int64_t>(1, n * m * static_cast<int64_t>(c10::elementSize(t)) + n * k * 8);
  return c;
}

KernelCase decode_case(const std::string& name, Sizes s, at::ScalarType t, WLayout layout = WLayout::rows,
                       bool repeats = false, bool perf_only = false) {
  KernelCase c = base_case("sparse_decode", name, t, perf_only);
  c.make_inputs = [=](at::Device dev) {
    at::Generator gen = gen_of(name);
    const at::Tensor v = at::randn({s.n, s.k}, gen, at::TensorOptions().dtype(at::kFloat)).to(t).to(dev);
    const at::Tensor idx = index_input(s.n, s.k, s.L, repeats, gen).to(dev);
    return Inputs{v, idx, weight_input(s.L, s.d, layout, gen, t, dev)};
  };
  c.reference = [](const Inputs& in) { return decode_reference(in[0], in[1], in[2]); };
  c.run = [](const Inputs& in, const std::string& impl) {
    return impl.empty() ? sparse_decode(in[0], in[1], in[2])
                        : sparse_decode_family().run(impl, SparseDecodeArgs{in[0], in[1], in[2]});
  };
  c.unsupported = [](const Inputs& in, const std::string& impl) {
    return sparse_decode_family().unsupported(impl, SparseDecodeArgs{in[0], in[1], in[2]});
  };
  c.chosen = [](const Inputs& in) { return sparse_decode_family().choose(SparseDecodeArgs{in[0], in[1], in[2]}).name; };
  c.impls = sparse_decode_family().impl_names();
  const int64_t e = static_cast<int64_t>(c10::elementSize(t));
  c.bytes = std::max<int64_t>(1, s.n * s.k * (e + 8 + s.d * e) + s.n * s.d * e);
  return c;
}

KernelCase grad_values_case(const std::string& name, Sizes s, at::ScalarType t, WLayout layout = WLayout::rows,
                            bool perf_only = false) {
  KernelCase c = base_case("sparse_decode_grad_values", name, t, perf_only);
  c.make_inputs = [=](at::Device dev) {
    at::Generator gen = gen_of(name);
    const at::Tensor g = at::randn({s.n, s.d}, gen, at::TensorOptions().dtype(at::kFloat)).to(t).to(dev);
    const at::Tensor idx = index_input(s.n, s.k, s.L, true, gen).to(dev);
    return Inputs{g, idx, weight_input(s.L, s.d, layout, gen, t, dev)};
  };
  using A = SparseDecodeGradValuesArgs;
  c.reference = [](const Inputs& in) { return grad_values_reference(in[0], in[1], in[2]); };
  c.run = [](const Inputs& in, const std::string& impl) {
    return impl.empty() ? sparse_decode_grad_values(in[0], in[1], in[2])
                        : sparse_decode_grad_values_family().run(impl, A{in[0], in[1], in[2]});
  };
  c.unsupported = [](const Inputs& in, const std::string& impl) {
    return sparse_decode_grad_values_family().unsupported(impl, A{in[0], in[1], in[2]});
  };
  c.chosen = [](const Inputs& in) { return sparse_decode_grad_values_family().choose(A{in[0], in[1], in[2]}).name; };
  c.impls = sparse_decode_grad_values_family().impl_names();
  const int64_t e = static_cast<int64_t>(c10::elementSize(t));
  c.bytes = std::max<int64_t>(1, s.n * s.k * (e + 8 + s.d * e) + s.n * s.d * e);
  return c;
}

SparseWeightGradArgs wg_args(const Inputs& in, int64_t L, bool transposed) {
  SparseWeightGradArgs a;
  a.coef = in[0];
  a.indices = in[1];
  a.rows = in[2];
  a.n_latents = L;
  a.transposed = transposed;
  return a;
}

KernelCase weight_grad_case(const std::string& name, Sizes s, at::ScalarType t, bool transposed,
                            bool repeats = true, bool perf_only = false) {
  KernelCase c = base_case("sparse_weight_grad", name + (transposed ? "_t" : ""), t, perf_only);
  c.make_inputs = [=](at::Device dev) {
    at::Generator gen = gen_of(name);
    const auto f = at::TensorOptions().dtype(at::kFloat);
    const at::Tensor cf = at::randn({s.n, s.k}, gen, f).to(t).to(dev);
    const at::Tensor idx = index_input(s.n, s.k, s.L, repeats, gen).to(dev);
    return Inputs{cf, idx, at::randn({s.n, s.d}, gen, f).to(t).to(dev)};
  };
  const int64_t L = s.L;
  c.reference = [=](const Inputs& in) { return weight_grad_reference(in[0], in[1], in[2], L, transposed); };
  c.run = [=](const Inputs& in, const std::string& impl) {
    return impl.empty() ? sparse_weight_grad(in[0], in[1], in[2], L, transposed)
                        : sparse_weight_grad_family().run(impl, wg_args(in, L, transposed));
  };
  c.unsupported = [=](const Inputs& in, const std::string& impl) {
    return sparse_weight_grad_family().unsupported(impl, wg_args(in, L, transposed));
  };
  c.chosen = [=](const Inputs& in) { return sparse_weight_grad_family().choose(wg_args(in, L, transposed)).name; };
  c.impls = sparse_weight_grad_family().impl_names();
  const int64_t e = static_cast<int64_t>(c10::elementSize(t));
  c.bytes = std::max<int64_t>(1, s.n * s.k * (e + 8) + s.n * s.d * e + s.L * s.d * e);
  return c;
}

std::vector<KernelCase> topk_cases() {
  std::vector<KernelCase> cases;
  for (const at::ScalarType t : {at::kFloat, at::kDouble}) {
    cases.push_back(topk_case("one_of_one", 1, 1, 1, t));
    cases.push_back(topk_case("k_zero", 3, 10, 0, t));
    cases.push_back(topk_case("k_is_m", 4, 9, 9, t));
    cases.push_back(topk_case("small", 5, 100, 8, t));
    cases.push_back(topk_case("odd_sizes", 17, 1000, 33, t));
    cases.push_back(topk_case("ties", 6, 300, 20, t, /*ties=*/true));
    cases.push_back(topk_case("wide", 3, 5000, 64, t));
  }
  cases.push_back(topk_case("sae_batch", 4096, 24576, 32, at::kFloat, false, /*perf_only=*/true));
  return cases;
}

std::vector<KernelCase> decode_cases() {
  std::vector<KernelCase> cases;
  for (const at::ScalarType t : {at::kFloat, at::kDouble}) {
    cases.push_back(decode_case("one_of_each", {1, 1, 1, 1}, t));
    cases.push_back(decode_case("small", {5, 3, 20, 16}, t));
    cases.push_back(decode_case("odd_sizes", {37, 9, 300, 129}, t));
    cases.push_back(decode_case("repeated_latents", {11, 7, 5, 33}, t, WLayout::rows, /*repeats=*/true));
    cases.push_back(decode_case("enc_transposed", {13, 8, 200, 70}, t, WLayout::transposed));
    cases.push_back(decode_case("strided", {9, 4, 50, 40}, t, WLayout::strided));
    cases.push_back(decode_case("k_zero", {4, 0, 10, 8}, t));
    cases.push_back(decode_case("no_rows", {0, 3, 10, 8}, t));
  }
  cases.push_back(decode_case("sae_batch", {4096, 32, 24576, 768}, at::kFloat, WLayout::rows, false, true));
  cases.push_back(decode_case("sae_batch_enc", {4096, 32, 24576, 768}, at::kFloat, WLayout::transposed, false, true));
  return cases;
}

std::vector<KernelCase> grad_values_cases() {
  std::vector<KernelCase> cases;
  for (const at::ScalarType t : {at::kFloat, at::kDouble}) {
    cases.push_back(grad_values_case("one_of_each", {1, 1, 1, 1}, t));
    cases.push_back(grad_values_case("odd_sizes", {37, 9, 300, 129}, t));
    cases.push_back(grad_values_case("long_rows", {3, 5, 40, 1000}, t));
    cases.push_back(grad_values_case("transposed", {13, 8, 200, 70}, t, WLayout::transposed));
    cases.push_back(grad_values_case("k_zero", {4, 0, 10, 8}, t));
  }
  cases.push_back(grad_values_case("sae_batch", {4096, 32, 24576, 768}, at::kFloat, WLayout::rows, true));
  return cases;
}

std::vector<KernelCase> weight_grad_cases() {
  std::vector<KernelCase> cases;
  for (const at::ScalarType t : {at::kFloat, at::kDouble}) {
    for (const bool tr : {false, true}) {
      cases.push_back(weight_grad_case("one_of_each", {1, 1, 1, 1}, t, tr));
      cases.push_back(weight_grad_case("odd_sizes", {37, 9, 300, 129}, t, tr));
      cases.push_back(weight_grad_case("crowded", {64, 6, 7, 45}, t, tr));  // every latent many times
      cases.push_back(weight_grad_case("untouched", {3, 2, 100, 33}, t, tr, /*repeats=*/false));
      cases.push_back(weight_grad_case("one_column", {20, 5, 50, 1}, t, tr));  // b_enc's gradient
      cases.push_back(weight_grad_case("no_rows", {0, 3, 10, 8}, t, tr));
    }
  }
  cases.push_back(weight_grad_case("sae_batch", {4096, 32, 24576, 768}, at::kFloat, false, false, true));
  cases.push_back(weight_grad_case("sae_batch", {4096, 32, 24576, 768}, at::kFloat, true, false, true));
  return cases;
}

[[maybe_unused]] const bool r1 = register_kernel_cases("sae_topk", topk_cases);
[[maybe_unused]] const bool r2 = register_kernel_cases("sparse_decode", decode_cases);
[[maybe_unused]] const bool r3 = register_kernel_cases("sparse_decode_grad_values", grad_values_cases);
[[maybe_unused]] const bool r4 = register_kernel_cases("sparse_weight_grad", weight_grad_cases);

// ---------------------------------------------------------------- the harness can fail

TEST(SaeSparseHarness, OneWrongLatentIsOverEveryTolerance) {
  // A kernel that decodes one entry through the wrong row must fail: move
  // one index of the odd_sizes case and compare references.
  at::Generator gen = gen_of("wrong_latent");
  const at::Tensor v = at::randn({37, 9}, gen, at::TensorOptions().dtype(at::kDouble));
  const at::Tensor idx = index_input(37, 9, 300, false, gen);
  const at::Tensor w = at::randn({300, 129}, gen, at::TensorOptions().dtype(at::kDouble));
  at::Tensor moved = idx.clone();
  moved[20][4] = (moved[20][4].item<int64_t>() + 1) % 300;
  const double err = nmse(decode_reference(v, moved, w), decode_reference(v, idx, w));
  EXPECT_GT(err, 1e-4);  // one term of 9 in one row of 37
  for (const at::ScalarType t : {at::kDouble, at::kFloat}) EXPECT_GT(err, 10 * nmse_tolerance(t)) << t;
  // And a top k that keeps the (k+1)-th value instead of the k-th.
  const at::Tensor x = topk_input(5, 100, false, gen).to(at::kDouble);
  const at::Tensor ref = topk_values_reference(x, 8);
  const at::Tensor wrong = topk_values_reference(x, 9).slice(1, 1, 9);  // drops the largest
  EXPECT_GT(nmse(wrong, ref), 10 * nmse_tolerance(at::kFloat));
}

TEST(SaeSparseHarness, ReferencesMatchHandExamples) {
  const at::Tensor w = at::tensor({1.0, 2.0, 10.0, 20.0, 100.0, 200.0}, at::kDouble).view({3, 2});
  const at::Tensor v = at::tensor({1.0, 0.5, -1.0, 2.0}, at::kDouble).view({2, 2});
  const at::Tensor idx = at::tensor({0, 2, 1, 1}, at::kLong).view({2, 2});
  // row 0: 1 * [1, 2] + 0.5 * [100, 200]; row 1: (-1 + 2) * [10, 20]
  const at::Tensor want = at::tensor({51.0, 102.0, 10.0, 20.0}, at::kDouble).view({2, 2});
  EXPECT_TRUE(at::equal(decode_reference(v, idx, w), want));
  EXPECT_TRUE(at::allclose(sparse_decode(v, idx, w), want));
  // grad_values: rows . [1, 1]
  const at::Tensor g = at::ones({2, 2}, at::kDouble);
  EXPECT_TRUE(at::equal(grad_values_reference(g, idx, w), at::tensor({3.0, 300.0, 30.0, 30.0}, at::kDouble).view({2, 2})));
  // weight grad: latent 1 gets (-1 + 2) * [1, 1]; latent 0 and 2 their rows' coefficients
  const at::Tensor wg = weight_grad_reference(v, idx, g, 3, false);
  EXPECT_TRUE(at::equal(wg, at::tensor({1.0, 1.0, 1.0, 1.0, 0.5, 0.5}, at::kDouble).view({3, 2})));
  EXPECT_TRUE(at::equal(sparse_weight_grad(v, idx, g, 3, true), wg.t()));
  const at::Tensor x = at::tensor({3.0, -1.0, 7.0, 0.0}, at::kDouble).view({1, 4});
  EXPECT_TRUE(at::equal(sae_topk(x, 2), at::tensor({2, 0}, at::kLong).view({1, 2})));
}

// ---------------------------------------------------------------- dispatch and errors

TEST(SaeSparseDispatch, CpuKernelsTakeCpuTensors) {
  const std::vector<std::string> expect = kernels::built_with_cuda() ? std::vector<std::string>{"cuda", "cpu", "aten"}
                                                                     : std::vector<std::string>{"cpu", "aten"};
  EXPECT_EQ(sae_topk_family().impl_names(), expect);
  EXPECT_EQ(sparse_decode_family().impl_names(), expect);
  EXPECT_EQ(sparse_decode_grad_values_family().impl_names(), expect);
  EXPECT_EQ(sparse_weight_grad_family().impl_names(), expect);
  const at::Tensor x = at::randn({2, 5});
  EXPECT_EQ(sae_topk_family().choose(SaeTopkArgs{x, 2}).name, "cpu");
}

TEST(SaeSparseDispatch, CpuTopkKeepsTheLowestIndicesOfTies) {
  const at::Tensor x = at::tensor({1.0f, 5.0f, 5.0f, 2.0f, 5.0f, 5.0f}).view({1, 6});
  EXPECT_TRUE(at::equal(sae_topk_family().run("cpu", SaeTopkArgs{x, 3}), at::tensor({1, 2, 4}, at::kLong).view({1, 3})));
}

TEST(SaeSparseErrors, NameTheArgumentAndTheFix) {
  const at::Tensor v = at::zeros({2, 3}), w = at::zeros({10, 4});
  const at::Tensor idx = at::zeros({2, 3}, at::kLong);
  EXPECT_EQ(error_of([&] { sparse_decode(v.flatten(), idx, w); }), "sparse_decode: values must be [n, k]; got [6]");
  EXPECT_EQ(error_of([&] { sparse_decode(v, idx.t(), w); }),
            "sparse_decode: indices [3, 2] must have values's shape [2, 3]");
  EXPECT_EQ(error_of([&] { sparse_decode(v, idx.to(at::kInt), w); }), "sparse_decode: indices must be int64; got Int");
  EXPECT_EQ(error_of([&] { sparse_decode(v.to(at::kHalf), idx, w.to(at::kHalf)); }),
            "sparse_decode: values must be float32 or float64; got Half");
  EXPECT_EQ(error_of([&] { sparse_decode(v, idx, w.to(at::kDouble)); }),
            "sparse_decode: weight is Double but values is Float; convert one so that both have the same dtype");
  EXPECT_EQ(error_of([&] { sparse_decode(v, idx + 10, w); }), "sparse_decode: indices must lie in [0, 10); found 10");
  EXPECT_EQ(error_of([&] { sparse_decode(v, idx - 1, w); }), "sparse_decode: indices must lie in [0, 10); found -1");
  EXPECT_EQ(error_of([&] { sparse_decode_grad_values(at::zeros({2, 5}), idx, w); }),
            "sparse_decode_grad_values: weight [10, 4] and grad_out [2, 5] must agree in d");
  EXPECT_EQ(error_of([&] { sparse_weight_grad(v, idx, at::zeros({3, 4}), 10, false); }),
            "sparse_weight_grad: rows [3, 4] must have one row per row of coef [2, 3]");
  EXPECT_EQ(error_of([&] { sparse_weight_grad(v, idx, at::zeros({2, 4}), 0, false); }),
            "sparse_weight_grad: indices must lie in [0, 0); found 0");
  EXPECT_EQ(error_of([&] { sae_topk(at::zeros({2, 5}), 6); }), "sae_topk: k must be in [0, m = 5]; got 6");
  EXPECT_EQ(error_of([&] { sae_topk(at::zeros({5}), 1); }), "sae_topk: x must be [n, m]; got [5]");
  EXPECT_EQ(error_of([&] { sae_topk(at::zeros({2, 5}, at::kInt), 1); }),
            "sae_topk: x must be float32 or float64; got Int");
}

}  // namespace
}  // namespace mechlab::testing
