// The scikit-learn fixtures of tests/data/probes/probes.h5
// (scripts/fixtures/make_probe_fixtures.py): one group per probing problem.
#pragma once

#include "core/formats/hdf5_file.h"

#include <ATen/ATen.h>

#include <string>

namespace mechlab::testing {

struct ProbeFixture {
  at::Tensor x_train, x_test;  // [P, n, D] float64
  at::Tensor y_train, y_test;  // [n] int64 (classes) or float64 (targets)
  at::Tensor coef;             // [P, D, O] sklearn's
  at::Tensor intercept;        // [P, O]
  at::Tensor test_pred;        // [P, n_test]
  at::Tensor test_score;       // [P, n_test] (binary and regression)
  at::Tensor test_accuracy, test_f1, test_auroc, test_r2;  // [P] where the group has them
  core::H5File* file = nullptr;
};

inline core::H5File& probe_fixture_file() {
  static core::H5File f = core::H5File::open_read(std::string(MECHLAB_TEST_DATA) + "/probes/probes.h5");
  return f;
}

inline ProbeFixture probe_fixture(const std::string& group) {
  core::H5File& f = probe_fixture_file();
  const std::string g = "/" + group + "/";
  ProbeFixture p;
  const int64_t n_train = f.read_attr_int("/" + group, "n_train");
  at::Tensor x = f.read_tensor(g + "x"), y = f.read_tensor(g + "y");
  const int64_t n = x.size(1);
  p.x_train = x.narrow(1, 0, n_train).contiguous();
  p.x_test = x.narrow(1, n_train, n - n_train).contiguous();
  p.y_train = y.narrow(0, 0, n_train).contiguous();
  p.y_test = y.narrow(0, n_train, n - n_train).contiguous();
  p.coef = f.read_tensor(g + "coef");
  p.intercept = f.read_tensor(g + "intercept");
  p.test_pred = f.read_tensor(g + "test_pred");
  auto opt = [&](const char* name) { return f.exists(g + name) ? f.read_tensor(g + name) : at::Tensor(); };
  p.test_score = opt("test_score");
  p.test_accuracy = opt("test_accuracy");
  p.test_f1 = opt("test_f1");
  p.test_auroc = opt("test_auroc");
  p.test_r2 = opt("test_r2");
  p.file = &f;
  return p;
}

/// Cosine similarity of two coefficient tensors, flattened.
inline double cosine(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor u = a.to(at::kDouble).flatten(), v = b.to(at::kDouble).flatten();
  return (u.dot(v) / (u.norm() * v.norm())).item<double>();
}

}  // namespace mechlab::testing
