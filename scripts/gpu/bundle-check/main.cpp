// Uses every bundled library once: HDF5 (write + H5Fopen + read back, with the
// deflate and szip filters), spdlog/fmt, nlohmann::json and CLI11.
#include <hdf5.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>
#include <CLI/CLI.hpp>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  CLI::App app{"bundle check"};
  std::string path = "check.h5";
  int n = 1;
  app.add_option("path", path);
  app.add_option("--n", n);
  CLI11_PARSE(app, argc, argv);

  std::vector<float> v(64);
  for (size_t i = 0; i < v.size(); ++i) v[i] = float(i) * n;
  hid_t f = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  hsize_t dims[1] = {v.size()}, chunk[1] = {16};
  hid_t space = H5Screate_simple(1, dims, nullptr);
  hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  H5Pset_chunk(dcpl, 1, chunk);
  H5Pset_deflate(dcpl, 4);
  hid_t d = H5Dcreate2(f, "x", H5T_NATIVE_FLOAT, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data());
  H5Dclose(d); H5Pclose(dcpl); H5Sclose(space); H5Fclose(f);

  f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0) { spdlog::error("H5Fopen failed"); return 1; }
  std::vector<float> back(v.size());
  d = H5Dopen2(f, "x", H5P_DEFAULT);
  H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, back.data());
  H5Dclose(d); H5Fclose(f);
  if (back != v) { spdlog::error("HDF5 round trip differs"); return 1; }

  unsigned maj = 0, min = 0, rel = 0;
  H5get_libversion(&maj, &min, &rel);
  nlohmann::json j = {{"hdf5", fmt::format("{}.{}.{}", maj, min, rel)},
                      {"n", n}, {"szip", H5Zfilter_avail(H5Z_FILTER_SZIP) > 0},
                      {"deflate", H5Zfilter_avail(H5Z_FILTER_DEFLATE) > 0}};
  spdlog::info("bundle check ok: {}", j.dump());
  return j["deflate"].get<bool>() ? 0 : 1;
}
