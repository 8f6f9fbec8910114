#include "core/store/activation_store.h"

#include "core/util/error.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>

namespace mechlab::core {

std::string fnv1a_hex(const void* data, size_t bytes, uint64_t seed) {
  uint64_t h = seed;
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < bytes; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ULL;
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

std::string fnv1a_hex(const std::string& text) { return fnv1a_hex(text.data(), text.size()); }

int64_t StoreHeader::width(const std::string& hook) const {
  auto it = hook_shapes.find(hook);
  MECHLAB_CHECK(it != hook_shapes.end(), "the store has no hook '", hook, "'");
  int64_t d = 1;
  for (int64_t s : it->second) d *= s;
  return d;
}

namespace {

at::ScalarType parse_store_dtype(const std::string& where, const std::string& name) {
  if (name == "float32") return at::kFloat;
  if (name == "bfloat16") return at::kBFloat16;
  if (name == "float16") return at::kHalf;
  throw Error(str_cat(where, ": attribute dtype is '", name,
                      "'; activation stores hold float32, bfloat16 or float16"));
}

}  // namespace

StoreHeader read_store_header(const H5File& file) {
  const std::string& path = file.filename();
  const std::string where = "activation store '" + path + "'";
  MECHLAB_CHECK(file.has_attr("", "mechlab_format"), "'", path,
                "' is not a mechlab file (it has no 'mechlab_format' attribute)");
  const std::string format = file.read_attr_string("", "mechlab_format");
  MECHLAB_CHECK(format == kActivationsFormat, "'", path, "' is a mechlab '", format,
                "' file, not an activation store (make one with `mechlab cache`)");
  MECHLAB_CHECK(file.has_attr("", "mechlab_version"), where, " has no mechlab_version attribute");
  const int64_t version = file.read_attr_int("", "mechlab_version");
  MECHLAB_CHECK(version >= 1 && version <= kActivationsVersion, where, " is version ", version,
                " but this mechlab reads versions 1 to ", kActivationsVersion,
                "; update mechlab or recompute the store");
  for (const char* key : {"model", "config_hash", "hooks", "hook_shapes", "dtype", "rows_total",
                          "chunk_rows", "rows_committed", "complete", "job"}) {
    MECHLAB_CHECK(file.has_attr("", key), where, " lacks the root attribute '", key,
                  "'; the file is damaged or was not written by mechlab cache");
  }
  StoreHeader h;
  h.model = file.read_attr_string("", "model");
  h.config_hash = file.read_attr_string("", "config_hash");
  h.dtype = parse_store_dtype(where, file.read_attr_string("", "dtype"));
  h.rows_total = file.read_attr_int("", "rows_total");
  h.chunk_rows = file.read_attr_int("", "chunk_rows");
  h.rows_committed = file.read_attr_int("", "rows_committed");
  h.complete = file.read_attr_int("", "complete") != 0;
  h.job = file.read_attr_string("", "job");
  try {
    const auto hooks = nlohmann::json::parse(file.read_attr_string("", "hooks"));
    const auto shapes = nlohmann::json::parse(file.read_attr_string("", "hook_shapes"));
    h.hooks = hooks.get<std::vector<std::string>>();
    for (const auto& name : h.hooks) {
      MECHLAB_CHECK(shapes.contains(name), where, ": hook_shapes has no entry for '", name, "'");
      h.hook_shapes[name] = shapes.at(name).get<std::vector<int64_t>>();
    }
  } catch (const nlohmann::json::exception& e) {
    throw Error(str_cat(where, ": the hooks/hook_shapes attributes are not valid JSON lists (",
                        e.what(), ")"));
  }
  MECHLAB_CHECK(!h.hooks.empty(), where, " holds no hooks");
  MECHLAB_CHECK(h.rows_total >= 0 && h.chunk_rows > 0, where, ": rows_total ", h.rows_total,
                " and chunk_rows ", h.chunk_rows, " must be >= 0 and > 0");
  MECHLAB_CHECK(h.rows_committed >= 0 && h.rows_committed <= h.rows_total, where,
                ": rows_committed = ", h.rows_committed, " is outside [0, rows_total = ",
                h.rows_total, "]; the file is damaged");

  auto expect = [&](const std::string& ds, at::ScalarType dtype, std::vector<int64_t> shape) {
    MECHLAB_CHECK(file.exists(ds), where, " lacks the dataset /", ds);
    const at::ScalarType got = file.dtype(ds);
    MECHLAB_CHECK(got == dtype, where, ": /", ds, " is ", dtype_name(got), " but the store's dtype is ",
                  dtype_name(dtype), "; the file is damaged or was edited by hand");
    const auto s = file.shape(ds);
    MECHLAB_CHECK(s == shape, where, ": /", ds, " has shape ", c10::IntArrayRef(s), ", expected ",
                  c10::IntArrayRef(shape), " (rows_total = ", h.rows_total,
                  "); the row counts do not match");
  };
  for (const auto& name : h.hooks) expect("acts/" + name, h.dtype, {h.rows_total, h.width(name)});
  expect("token_ids", at::kInt, {h.rows_total});
  expect("row_source", at::kInt, {h.rows_total, 2});
  return h;
}

ActivationStore::ActivationStore(std::string path, H5File file, StoreHeader header)
    : path_(std::move(path)),
      file_(std::make_unique<H5File>(std::move(file))),
      header_(std::move(header)) {}

ActivationStore ActivationStore::open(const std::string& path) {
  H5File file = H5File::open_read(path);
  StoreHeader header = read_store_header(file);
  return ActivationStore(path, std::move(file), std::move(header));
}

void ActivationStore::require_hook(const std::string& hook) const {
  if (std::find(header_.hooks.begin(), header_.hooks.end(), hook) != header_.hooks.end()) return;
  std::string have;
  for (const auto& h : header_.hooks) have += (have.empty() ? "" : ", ") + h;
  throw Error(str_cat("activation store '", path_, "' has no hook '", hook, "'; it holds: ", have));
}

void ActivationStore::require_range(int64_t start, int64_t count) const {
  MECHLAB_CHECK(start >= 0 && count >= 0 && start + count <= num_rows(), "rows [", start, ", ",
                start + count, ") are outside activation store '", path_, "', which has ",
                num_rows(), " committed rows",
                header_.complete ? "" : " (it is unfinished: resume the job that writes it)");
}

at::Tensor ActivationStore::rows(const std::string& hook, int64_t start, int64_t count) const {
  require_hook(hook);
  require_range(start, count);
  return file_->read_rows("acts/" + hook, start, count);
}

at::Tensor ActivationStore::token_ids(int64_t start, int64_t count) const {
  require_range(start, count);
  return file_->read_rows("token_ids", start, count);
}

at::Tensor ActivationStore::row_source(int64_t start, int64_t count) const {
  require_range(start, count);
  return file_->read_rows("row_source", start, count);
}

void ActivationStore::check_finite(const std::string& hook, int64_t start,
                                   const at::Tensor& acts) const {
  at::Tensor bad_rows = (~acts.isfinite()).any(-1);  // [count]
  if (!bad_rows.any().item<bool>()) return;
  const int64_t i = bad_rows.nonzero()[0][0].item<int64_t>();
  const int64_t row = start + i;
  at::Tensor src = row_source(row, 1)[0];
  const double value = acts[i].masked_select(~acts[i].isfinite())[0].item<double>();
  throw Error(str_cat("activation store '", path_, "': hook '", hook, "' has a non-finite value (",
                      value, ") at row ", row, " (example ", src[0].item<int64_t>(), ", position ",
                      src[1].item<int64_t>(),
                      "); the model produced NaN/Inf there or the file is corrupt. "
                      "Check the model in float32, then recompute the store"));
}

void ActivationStore::check_all_finite() const {
  const int64_t step = std::max<int64_t>(header_.chunk_rows, 1);
  for (const auto& hook : header_.hooks) {
    for (int64_t start = 0; start < num_rows(); start += step) {
      const int64_t n = std::min(step, num_rows() - start);
      check_finite(hook, start, rows(hook, start, n));
    }
  }
}

}  // namespace mechlab::core
