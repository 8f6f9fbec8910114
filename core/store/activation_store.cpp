#include "core/store/activation_store.h"

#include "core/store/store_set.h"
#include "core/util/error.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>

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

ActivationStore::ActivationStore(ActivationStore&&) noexcept = default;
ActivationStore& ActivationStore::operator=(ActivationStore&&) noexcept = default;
ActivationStore::~ActivationStore() = default;

ActivationStore ActivationStore::open(const std::string& path) {
  // A JSON file is a store set's manifest (read_store_set says what is wrong
  // with one that is not); an HDF5 file starts with its signature.
  bool json = false;
  {
    std::ifstream in(path, std::ios::binary);
    json = in && in.peek() == '{';
  }
  if (json) return open_set(path);
  H5File file = H5File::open_read(path);
  StoreHeader header = read_store_header(file);
  ActivationStore s;
  s.path_ = path;
  s.header_ = header;
  s.parts_.push_back(Part{path, std::make_unique<H5File>(std::move(file)), std::move(header), 0});
  return s;
}

ActivationStore ActivationStore::open_set(const std::string& manifest) {
  const std::vector<StoreSetShard> shards = read_store_set(manifest);
  ActivationStore s;
  s.path_ = manifest;
  int64_t rows = 0;
  for (size_t i = 0; i < shards.size(); ++i) {
    const std::string path = resolve_shard_path(manifest, shards[i].path);
    const std::string where = str_cat("store set '", manifest, "': shard ", i, " '", path, "'");
    std::error_code ec;
    MECHLAB_CHECK(std::filesystem::exists(path, ec), where,
                  " is missing; recompute that shard (resume its job), or restore the file");
    std::unique_ptr<H5File> file;
    StoreHeader h;
    try {
      file = std::make_unique<H5File>(H5File::open_read(path));
      h = read_store_header(*file);
    } catch (const Error& e) {
      throw Error(str_cat(where, " cannot be read (", e.what(), "); recompute that shard"));
    }
    MECHLAB_CHECK(h.complete, where, " is unfinished (", h.rows_committed, " of ", h.rows_total,
                  " rows); resume the job that writes it");
    MECHLAB_CHECK(h.rows_committed == shards[i].rows, where, " holds ", h.rows_committed,
                  " rows but the manifest lists ", shards[i].rows,
                  "; the shard was truncated or rewritten: recompute it and make the set again");
    if (i > 0) require_same_kind(s.parts_.front().header, s.parts_.front().path, h, path);
    s.parts_.push_back(Part{path, std::move(file), h, rows});
    rows += h.rows_committed;
  }
  StoreHeader& sh = s.header_;
  sh = s.parts_.front().header;
  sh.rows_total = sh.rows_committed = rows;
  sh.complete = true;
  for (const Part& p : s.parts_) sh.chunk_rows = std::max(sh.chunk_rows, p.header.chunk_rows);
  // The dataset the rows come from, as a single store's job says it (a store
  // inspector decodes tokens with it); the per-shard ranges are the shards'.
  auto job = nlohmann::json::parse(sh.job, nullptr, false);
  if (job.is_object()) {
    job.erase("shard");
    job.erase("examples_range");
    job["shards"] = s.parts_.size();
    sh.job = job.dump();
  }
  return s;
}

std::vector<std::string> ActivationStore::shard_paths() const {
  std::vector<std::string> out;
  for (const Part& p : parts_) out.push_back(p.path);
  return out;
}

std::vector<std::pair<int64_t, int64_t>> ActivationStore::chunks() const {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (const Part& p : parts_) {
    const int64_t cr = p.header.chunk_rows, n = p.header.rows_committed;
    for (int64_t r = 0; r < n; r += cr) out.emplace_back(p.first_row + r, std::min(cr, n - r));
  }
  return out;
}

at::Tensor ActivationStore::read(const std::string& ds, int64_t start, int64_t count) const {
  std::vector<at::Tensor> pieces;
  for (const Part& p : parts_) {
    const int64_t lo = std::max(start, p.first_row);
    const int64_t hi = std::min(start + count, p.first_row + p.header.rows_committed);
    if (hi > lo) pieces.push_back(p.file->read_rows(ds, lo - p.first_row, hi - lo));
  }
  if (pieces.empty()) return parts_.front().file->read_rows(ds, 0, 0);  // [0, ...]
  return pieces.size() == 1 ? pieces.front() : at::cat(pieces, 0);
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
  return read("acts/" + hook, start, count);
}

at::Tensor ActivationStore::token_ids(int64_t start, int64_t count) const {
  require_range(start, count);
  return read("token_ids", start, count);
}

at::Tensor ActivationStore::row_source(int64_t start, int64_t count) const {
  require_range(start, count);
  return read("row_source", start, count);
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
