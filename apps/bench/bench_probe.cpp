// mechlab bench probe: a probe sweep over every layer at once — binary
// logistic, 10-class logistic and ridge probes on synthetic activations
// [layers, tokens, d_model] with labels planted along known directions
// (strength growing with depth), trained on the first rows and scored on the
// rest. scripts/bench/probe_vs_sklearn.sh runs this with --write-data and
// fits the same probes with scikit-learn on the same data, same machine.
#include "apps/bench/bench_util.h"
#include "apps/cli/commands.h"
#include "core/formats/hdf5_file.h"
#include "core/formats/output_file.h"
#include "probes/batched_solvers.h"
#include "probes/linear_probe.h"
#include "probes/metrics.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#include <cstdio>

namespace mechlab::cli {
namespace {

struct ProbeBenchData {
  at::Tensor x;        // [layers, tokens, d_model] float32
  at::Tensor binary;   // [tokens] int64 in {0, 1}
  at::Tensor classes;  // [tokens] int64 in [0, num_classes)
  at::Tensor target;   // [tokens] float32
};

// Layer l carries every label with strength s_l = 0.15 + 1.35 l / (L - 1):
// x = noise + s_l ((2 y_b - 1) u + 1.5 M[y_c] + g v), target = g + 0.5 noise,
// u, v, M's rows random unit vectors. Bayes accuracy of the binary probe is
// about Phi(s_l): from near chance at layer 0 to 0.93 at the last layer.
ProbeBenchData make_data(int64_t layers, int64_t tokens, int64_t d, int64_t num_classes, uint64_t seed) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto f32 = at::TensorOptions().dtype(at::kFloat);
  auto i64 = at::TensorOptions().dtype(at::kLong);
  auto unit = [&](int64_t rows) {
    at::Tensor m = at::randn({rows, d}, gen, f32);
    return m / m.norm(2, {1}, true);
  };
  ProbeBenchData data;
  data.binary = at::randint(2, {tokens}, gen, i64);
  data.classes = at::randint(num_classes, {tokens}, gen, i64);
  at::Tensor g = at::randn({tokens}, gen, f32);
  data.target = g + 0.5 * at::randn({tokens}, gen, f32);
  at::Tensor u = unit(1)[0], v = unit(1)[0], means = unit(num_classes);
  // The planted part without the strength: [tokens, d].
  at::Tensor planted = (2 * data.binary - 1).to(at::kFloat).unsqueeze(1) * u +
                       1.5 * means.index_select(0, data.classes) + g.unsqueeze(1) * v;
  data.x = at::empty({layers, tokens, d}, f32);
  for (int64_t l = 0; l < layers; ++l) {
    const double s = 0.15 + (layers > 1 ? 1.35 * static_cast<double>(l) / static_cast<double>(layers - 1) : 0.85);
    data.x[l].normal_(0, 1, gen).add_(planted, s);
  }
  return data;
}

}  // namespace

void add_bench_probe(CLI::App& bench) {
  auto* cmd = bench.add_subcommand(
      "probe",
      "Probe sweep speed: binary logistic, multinomial logistic and ridge probes on every layer at once "
      "(one batched L-BFGS / closed form per sweep), on synthetic activations with planted labels. "
      "The last line, 'probe_json {...}', is what scripts/bench/probe_vs_sklearn.sh compares.");
  struct Args {
    int64_t tokens = 100000, d_model = 768, layers = 12, classes = 10;
    double train_fraction = 0.8, C = 1.0, alpha = 1.0;
    int max_iter = 100, repeats = 1;
    int64_t block_rows = 0;
    double tol = 1e-4;
    bool no_standardize = false, overwrite = false, compare_aten = false;
    uint64_t seed = 0;
    std::string device = "cpu", write_data;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--tokens", a->tokens, "Rows (tokens), train and test together")->capture_default_str()
      ->check(positive());
  cmd->add_option("--d-model", a->d_model, "Features per row")->capture_default_str()->check(positive());
  cmd->add_option("--layers", a->layers, "Probes per sweep (one per layer)")->capture_default_str()
      ->check(positive());
  cmd->add_option("--classes", a->classes, "Classes of the multinomial probe")->capture_default_str()
      ->check(CLI::Range(3, 1000));
  cmd->add_option("--train-fraction", a->train_fraction, "Share of the rows trained on (the first ones); "
                  "the rest is the test split")->capture_default_str()->check(CLI::Range(0.01, 0.99));
  cmd->add_option("--C", a->C, "Inverse L2 strength of the logistic probes (scikit-learn's C)")
      ->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--alpha", a->alpha, "Ridge strength (scikit-learn's alpha)")->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--max-iter", a->max_iter, "L-BFGS iterations at most (scikit-learn's max_iter)")
      ->capture_default_str()->check(positive());
  cmd->add_option("--tol", a->tol, "L-BFGS stop at max |gradient| <= tol (scikit-learn's tol)")
      ->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_flag("--no-standardize", a->no_standardize, "Fit on raw features (default: standardised, "
                "as StandardScaler)");
  cmd->add_option("--block-rows", a->block_rows, "Rows per block of an objective evaluation on ATen's path "
                  "(0: all rows in one block); a value > 0 turns the fused CPU kernels off")
      ->capture_default_str()->check(non_negative());
  cmd->add_flag("--compare-aten", a->compare_aten, "Also fit each sweep with ATen's products instead of the "
                "fused CPU kernels (ProbeOptions::fused false) and print the time ratios and whether the fits agree");
  cmd->add_option("--repeats", a->repeats, "Timed fits per sweep (the median is reported)")
      ->capture_default_str()->check(positive());
  cmd->add_option("--seed", a->seed, "Seed of the synthetic data")->capture_default_str();
  cmd->add_option("--device", a->device, "cpu, cuda, cuda:N or auto")->capture_default_str();
  cmd->add_option("--write-data", a->write_data, "Also write the data (HDF5: x [layers, tokens, d_model], "
                  "binary, classes, target, n_train) for scikit-learn");
  cmd->add_flag("--overwrite", a->overwrite, "Replace the --write-data file if it exists");
  cmd->callback([a] {
    const at::Device device = parse_device(a->device);
    if (!a->write_data.empty()) core::require_replaceable(a->write_data, "probe-bench", a->overwrite, "--overwrite");
    ProbeBenchData data = make_data(a->layers, a->tokens, a->d_model, a->classes, a->seed);
    const int64_t n_train = static_cast<int64_t>(a->train_fraction * static_cast<double>(a->tokens));
    MECHLAB_CHECK(n_train >= 2 && n_train < a->tokens, "--train-fraction ", a->train_fraction, " of ", a->tokens,
                  " tokens leaves no train or no test rows; give more --tokens");
    if (!a->write_data.empty()) {
      core::H5File::write_atomically(a->write_data, [&](core::H5File& f) {
        f.write_attr("/", "mechlab_format", "probe-bench");
        f.write_attr("/", "n_train", n_train);
        f.write_tensor("/x", data.x);
        f.write_tensor("/binary", data.binary);
        f.write_tensor("/classes", data.classes);
        f.write_tensor("/target", data.target);
      });
    }
    at::Tensor x = data.x.to(device);
    const int64_t n_test = a->tokens - n_train;
    at::Tensor xtr = x.narrow(1, 0, n_train), xte = x.narrow(1, n_train, n_test);
    auto train = [&](const at::Tensor& y) { return y.narrow(0, 0, n_train).to(device); };
    auto test = [&](const at::Tensor& y) { return y.narrow(0, n_train, n_test).to(device); };
    const probes::ProbeOptions opts = probes::ProbeOptions()
                                          .C(a->C)
                                          .alpha(a->alpha)
                                          .max_iter(a->max_iter)
                                          .tol(a->tol)
                                          .standardize(!a->no_standardize)
                                          .block_rows(a->block_rows)
                                          .fused(a->block_rows == 0);

    probes::LinearProbes bin, multi, ridge;
    const bench::Stats ms_bin = bench::time_ms([&] { bin = probes::fit_logistic(xtr, train(data.binary), opts); },
                                               0, a->repeats, device);
    const bench::Stats ms_multi = bench::time_ms(
        [&] { multi = probes::fit_logistic(xtr, train(data.classes), opts); }, 0, a->repeats, device);
    const bench::Stats ms_ridge = bench::time_ms([&] { ridge = probes::fit_linear(xtr, train(data.target), opts); },
                                                 0, a->repeats, device);

    // The same sweeps through ATen's products (the path before the fused
    // kernels), timed in the same run: the ratios are what to compare.
    probes::LinearProbes bin_aten, multi_aten, ridge_aten;
    bench::Stats ms_bin_aten, ms_multi_aten, ms_ridge_aten;
    if (a->compare_aten) {
      probes::ProbeOptions aten = opts;
      aten.fused(false);
      ms_bin_aten = bench::time_ms([&] { bin_aten = probes::fit_logistic(xtr, train(data.binary), aten); }, 0,
                                   a->repeats, device);
      ms_multi_aten = bench::time_ms([&] { multi_aten = probes::fit_logistic(xtr, train(data.classes), aten); }, 0,
                                     a->repeats, device);
      ms_ridge_aten = bench::time_ms([&] { ridge_aten = probes::fit_linear(xtr, train(data.target), aten); }, 0,
                                     a->repeats, device);
    }

    at::Tensor acc_bin = probes::accuracy(bin.predict(xte), test(data.binary));
    at::Tensor acc_multi = probes::accuracy(multi.predict(xte), test(data.classes));
    at::Tensor r2_ridge = probes::r2(ridge.predict(xte), test(data.target));
    auto list = [](const at::Tensor& t) {
      at::Tensor c = t.to(at::kDouble).cpu().contiguous();
      return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
    };
    auto ilist = [](const at::Tensor& t) {
      at::Tensor c = t.to(at::kLong).cpu().contiguous();
      return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
    };
    auto reasons = [](const at::Tensor& t) {
      const at::Tensor c = t.to(at::kLong).cpu().contiguous();
      std::vector<std::string> out;
      for (int64_t i = 0; i < c.numel(); ++i) {
        out.push_back(probes::to_string(static_cast<probes::StopReason>(c.data_ptr<int64_t>()[i])));
      }
      return out;
    };
    auto fit_json = [&](const bench::Stats& ms, const at::Tensor& acc, const probes::LinearProbes& p) {
      return nlohmann::json{{"seconds", ms.median / 1e3}, {"test_accuracy", list(acc)},
                            {"iterations", ilist(p.iterations)}, {"converged", ilist(p.converged)},
                            {"stop_reason", reasons(p.stop_reason)}};
    };
    const std::string shape = std::to_string(a->layers) + " layers x " + std::to_string(a->tokens) +
                              " tokens x " + std::to_string(a->d_model) + ", " + std::to_string(n_train) + " train";
    auto its = [](const probes::LinearProbes& p) {
      return "L-BFGS, max iterations " + std::to_string(p.iterations.max().item<int64_t>());
    };
    const std::string multi_name = std::to_string(a->classes) + "-class logistic sweep";
    std::vector<bench::Row> table = {{"binary logistic sweep", ms_bin, its(bin)},
                                     {multi_name, ms_multi, its(multi)},
                                     {"ridge sweep", ms_ridge, "closed form"}};
    if (a->compare_aten) {
      table.push_back({"binary logistic sweep, ATen", ms_bin_aten, its(bin_aten)});
      table.push_back({std::to_string(a->classes) + "-class sweep, ATen", ms_multi_aten, its(multi_aten)});
      table.push_back({"ridge sweep, ATen", ms_ridge_aten, "closed form"});
    }
    bench::print_table("mechlab bench probe: " + shape + " (" + a->device + ", " +
                           std::to_string(at::get_num_threads()) + " threads, fused kernels " +
                           (opts.fused() ? probes::fused_kernel_isa() : std::string("off")) + ")",
                       table, "binary logistic sweep", static_cast<double>(a->layers), "probes");
    nlohmann::json aten_json;
    if (a->compare_aten) {
      // Same fit: the same iterations and stop reasons per probe, and the
      // largest difference of the test predictions' agreement.
      auto same = [](const probes::LinearProbes& x, const probes::LinearProbes& y) {
        return at::equal(x.iterations, y.iterations) && at::equal(x.stop_reason, y.stop_reason);
      };
      auto agree = [&](const probes::LinearProbes& x, const probes::LinearProbes& y) {
        return (x.predict(xte) == y.predict(xte)).to(at::kDouble).mean(1).min().item<double>();
      };
      const double r_bin = ms_bin.median / ms_bin_aten.median, r_multi = ms_multi.median / ms_multi_aten.median,
                   r_ridge = ms_ridge.median / ms_ridge_aten.median;
      const double r_all = (ms_bin.median + ms_multi.median + ms_ridge.median) /
                           (ms_bin_aten.median + ms_multi_aten.median + ms_ridge_aten.median);
      std::printf("\nfused kernels / ATen path (time ratio): binary %.3f, %lld-class %.3f, ridge %.3f, all %.3f\n",
                  r_bin, static_cast<long long>(a->classes), r_multi, r_ridge, r_all);
      const double ridge_diff =
          (ridge.predict(xte) - ridge_aten.predict(xte)).abs().max().item<double>();
      std::printf("same iterations and stop reasons: binary %s, %lld-class %s; test predictions agreeing: "
                  "binary %.6f, %lld-class %.6f (worst probe); ridge max |difference| %.3g\n",
                  same(bin, bin_aten) ? "yes" : "no", static_cast<long long>(a->classes),
                  same(multi, multi_aten) ? "yes" : "no", agree(bin, bin_aten), static_cast<long long>(a->classes),
                  agree(multi, multi_aten), ridge_diff);
      aten_json = {{"binary_seconds", ms_bin_aten.median / 1e3}, {"multinomial_seconds", ms_multi_aten.median / 1e3},
                   {"ridge_seconds", ms_ridge_aten.median / 1e3}, {"ratio_all", r_all},
                   {"same_iterations", same(bin, bin_aten) && same(multi, multi_aten)}};
    }
    nlohmann::json j = {
        {"layers", a->layers},
        {"tokens", a->tokens},
        {"d_model", a->d_model},
        {"n_train", n_train},
        {"threads", at::get_num_threads()},
        {"device", a->device},
        {"block_rows", a->block_rows},
        {"binary", fit_json(ms_bin, acc_bin, bin)},
        {"multinomial", fit_json(ms_multi, acc_multi, multi)},
        {"ridge", {{"seconds", ms_ridge.median / 1e3}, {"test_r2", list(r2_ridge)}}},
    };
    if (a->compare_aten) j["aten"] = aten_json;
    std::printf("probe_json %s\n", j.dump().c_str());
  });
}

}  // namespace mechlab::cli
