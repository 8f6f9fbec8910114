#include "probes/probe_data.h"

#include "core/util/error.h"

namespace mechlab::probes {
namespace {

// A hook's rows [N, width] -> probes [P, N, D] (P = 1, or heads when split).
void append_probes(ProbeFeatures& out, std::vector<at::Tensor>& parts, const std::string& hook,
                   const at::Tensor& rows, const std::vector<int64_t>& token_shape, const FeatureOptions& o) {
  const int64_t N = rows.size(0);
  if (!o.split_heads()) {
    parts.push_back(rows.reshape({1, N, -1}));
    out.names.push_back(hook);
    return;
  }
  MECHLAB_CHECK(token_shape.size() == 2, "hook '", hook, "' has per-token shape [",
                token_shape.size() == 1 ? std::to_string(token_shape[0]) : std::string("..."),
                "], no head axis, so `split_heads` cannot split it; probe it in a run without `split_heads`");
  const int64_t H = token_shape[0];
  parts.push_back(rows.reshape({N, H, token_shape[1]}).permute({1, 0, 2}));  // [H, N, d_head]
  for (int64_t h = 0; h < H; ++h) out.names.push_back(hook + " head " + std::to_string(h));
}

// `sources[i]` names parts[i] (a hook or a position: one part may hold
// several probes, one per head, so out.names does not index the parts).
ProbeFeatures stack(ProbeFeatures out, const std::vector<at::Tensor>& parts, const std::vector<std::string>& sources) {
  MECHLAB_CHECK(!parts.empty(), "probe features: no hooks given");
  for (size_t i = 1; i < parts.size(); ++i) {
    MECHLAB_CHECK(parts[i].size(2) == parts[0].size(2), "hook '", sources[i], "' has width ",
                  parts[i].size(2), " but '", sources[0], "' has ", parts[0].size(2),
                  "; a sweep's probes share one width (fit hooks of different widths separately)");
  }
  out.x = at::cat(parts, 0).contiguous();
  return out;
}

void check_dtype(const FeatureOptions& o) {
  MECHLAB_CHECK(o.dtype() == at::kFloat || o.dtype() == at::kDouble,
                "probe features: `dtype` must be float32 or float64, got ", o.dtype());
}

}  // namespace

ProbeFeatures features_from_store(const core::ActivationStore& store, const std::vector<std::string>& hooks,
                                  int64_t start, int64_t count, const FeatureOptions& o) {
  check_dtype(o);
  if (count < 0) count = store.num_rows() - start;
  MECHLAB_CHECK(start >= 0 && count >= 1 && start + count <= store.num_rows(), "probe features: rows [", start,
                ", ", start + count, ") are outside the ", store.num_rows(), " committed rows of ", store.path());
  ProbeFeatures out;
  std::vector<at::Tensor> parts;
  for (const std::string& hook : hooks) {
    at::Tensor rows = store.rows(hook, start, count).to(o.dtype());  // [count, width]
    store.check_finite(hook, start, rows);
    append_probes(out, parts, hook, rows, store.header().hook_shapes.at(hook), o);
  }
  return stack(std::move(out), parts, hooks);
}

ProbeFeatures features_from_cache(const hooks::ActivationCache& cache, const std::vector<std::string>& hooks,
                                  const at::Tensor& row_mask, const FeatureOptions& o) {
  check_dtype(o);
  ProbeFeatures out;
  std::vector<at::Tensor> parts;
  for (const std::string& hook : hooks) {
    MECHLAB_CHECK(cache.contains(hook), "probe features: the cache has no hook '", hook,
                  "'; cache it (run_with_cache's names filter)");
    const at::Tensor& a = cache[hook];  // [batch, pos, ...]
    MECHLAB_CHECK(a.dim() >= 3, "probe features: '", hook, "' has shape ", a.sizes(),
                  "; probes read per-token hooks [batch, pos, ...]");
    std::vector<int64_t> token_shape(a.sizes().begin() + 2, a.sizes().end());
    at::Tensor flat = a.reshape({a.size(0) * a.size(1), -1});  // [batch * pos, width]
    if (row_mask.defined()) {
      MECHLAB_CHECK(row_mask.dim() == 2 && row_mask.size(0) == a.size(0) && row_mask.size(1) == a.size(1),
                    "probe features: `row_mask` ", row_mask.sizes(), " does not match '", hook, "' [batch, pos] = [",
                    a.size(0), ", ", a.size(1), "]");
      at::Tensor idx = row_mask.reshape({-1}).to(a.device()).nonzero().squeeze(1);
      flat = flat.index_select(0, idx);
    }
    append_probes(out, parts, hook, flat.to(o.dtype()), token_shape, o);
  }
  return stack(std::move(out), parts, hooks);
}

ProbeFeatures features_per_position(const hooks::ActivationCache& cache, const std::string& hook,
                                    const FeatureOptions& o) {
  check_dtype(o);
  MECHLAB_CHECK(cache.contains(hook), "probe features: the cache has no hook '", hook,
                "'; cache it (run_with_cache's names filter)");
  const at::Tensor& a = cache[hook];  // [batch, pos, ...]
  MECHLAB_CHECK(a.dim() >= 3, "probe features: '", hook, "' has shape ", a.sizes(),
                "; probes read per-token hooks [batch, pos, ...]");
  std::vector<int64_t> token_shape(a.sizes().begin() + 2, a.sizes().end());
  ProbeFeatures out;
  std::vector<at::Tensor> parts;
  std::vector<std::string> sources;
  for (int64_t p = 0; p < a.size(1); ++p) {
    ProbeFeatures one;
    std::vector<at::Tensor> one_parts;
    append_probes(one, one_parts, hook + " pos " + std::to_string(p),
                  a.select(1, p).reshape({a.size(0), -1}).to(o.dtype()), token_shape, o);
    for (auto& t : one_parts) {
      parts.push_back(t);
      sources.push_back(hook + " pos " + std::to_string(p));
    }
    for (auto& n : one.names) out.names.push_back(n);
  }
  return stack(std::move(out), parts, sources);
}

at::Tensor sequence_labels_to_rows(const at::Tensor& row_source, const at::Tensor& sequence_labels) {
  MECHLAB_CHECK(row_source.dim() == 2 && row_source.size(1) == 2, "sequence_labels_to_rows: `row_source` must be "
                "[rows, 2] (example, position), got ", row_source.sizes());
  MECHLAB_CHECK(sequence_labels.dim() == 1, "sequence_labels_to_rows: give one label per example, got ",
                sequence_labels.sizes());
  at::Tensor ex = row_source.select(1, 0).to(at::kLong);
  if (ex.numel() > 0) {
    const int64_t hi = ex.max().item<int64_t>();
    MECHLAB_CHECK(ex.min().item<int64_t>() >= 0 && hi < sequence_labels.size(0), "sequence_labels_to_rows: row of "
                  "example ", hi, " but only ", sequence_labels.size(0), " labels; give one label per example");
  }
  return sequence_labels.index_select(0, ex.to(sequence_labels.device()));
}

at::Tensor rows_at_position(const at::Tensor& row_source, int64_t position) {
  MECHLAB_CHECK(row_source.dim() == 2 && row_source.size(1) == 2, "rows_at_position: `row_source` must be "
                "[rows, 2] (example, position), got ", row_source.sizes());
  at::Tensor ex = row_source.select(1, 0).to(at::kLong), pos = row_source.select(1, 1).to(at::kLong);
  if (position >= 0) return (pos == position).nonzero().squeeze(1);
  // An example's rows are one run: its last row is followed by another
  // example's (rows are in example order); the row k from the end is
  // last - (k - 1), if that is still in the run.
  const int64_t N = ex.size(0);
  if (N == 0) return at::empty({0}, at::kLong);
  at::Tensor is_last = at::ones({N}, at::kBool);
  if (N > 1) is_last.narrow(0, 0, N - 1).copy_(ex.narrow(0, 1, N - 1) != ex.narrow(0, 0, N - 1));
  const at::Tensor last = is_last.nonzero().squeeze(1);                                      // [examples]
  const at::Tensor first = at::cat({at::zeros({1}, at::kLong), last.narrow(0, 0, last.size(0) - 1) + 1});
  const at::Tensor target = last + (position + 1);                                           // position < 0
  return target.masked_select(target.ge(first));
}

}  // namespace mechlab::probes
