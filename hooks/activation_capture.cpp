#include "hooks/activation_capture.h"

#include "core/store/activation_store.h"
#include "core/util/error.h"
#include "core/util/interrupt.h"
#include "core/log/log.h"
#include "core/util/progress.h"
#include "core/store/activation_writer.h"

#include <c10/core/Event.h>
#include <c10/core/Stream.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>
#include <thread>

namespace mechlab::hooks {
namespace {

// One batch on its way to the disk.
struct Pending {
  int64_t row0 = 0;
  std::map<std::string, at::Tensor> acts;  // hook -> [rows, d] on the host, store dtype
  at::Tensor token_ids;                    // int32 [rows]
  at::Tensor row_source;                   // int32 [rows, 2]
  std::shared_ptr<c10::Event> ready;       // set when the copies run on a side stream
};

// A bounded queue between the forward loop and the writer thread.
class PendingQueue {
 public:
  explicit PendingQueue(size_t capacity) : capacity_(capacity) {}
  void push(Pending p) {
    std::unique_lock<std::mutex> lock(m_);
    not_full_.wait(lock, [&] { return q_.size() < capacity_ || failed_; });
    if (failed_) return;  // the writer stopped; the caller rethrows its error
    q_.push_back(std::move(p));
    not_empty_.notify_one();
  }
  std::optional<Pending> pop() {
    std::unique_lock<std::mutex> lock(m_);
    not_empty_.wait(lock, [&] { return !q_.empty() || closed_; });
    if (q_.empty()) return std::nullopt;
    Pending p = std::move(q_.front());
    q_.pop_front();
    not_full_.notify_one();
    return p;
  }
  void close() {
    std::lock_guard<std::mutex> lock(m_);
    closed_ = true;
    not_empty_.notify_all();
  }
  void fail(std::exception_ptr e) {
    std::lock_guard<std::mutex> lock(m_);
    failed_ = true;
    error_ = std::move(e);
    not_full_.notify_all();
  }
  void rethrow_if_failed() {
    std::lock_guard<std::mutex> lock(m_);
    if (error_) std::rethrow_exception(error_);
  }

 private:
  size_t capacity_;
  std::mutex m_;
  std::condition_variable not_full_, not_empty_;
  std::deque<Pending> q_;
  bool closed_ = false, failed_ = false;
  std::exception_ptr error_;
};

// Refuses a batch holding NaN/Inf, naming the hook, example and position.
void require_finite(const Pending& p, const std::string& dataset) {
  for (const auto& [name, acts] : p.acts) {
    at::Tensor bad = (~acts.isfinite()).any(-1);  // [rows]
    if (!bad.any().item<bool>()) continue;
    const int64_t i = bad.nonzero()[0][0].item<int64_t>();
    throw Error(str_cat("hook '", name, "' produced NaN/Inf on example ",
                        p.row_source[i][0].item<int64_t>(), ", position ",
                        p.row_source[i][1].item<int64_t>(), " of '", dataset, "' (store row ",
                        p.row0 + i, "); nothing past the last commit was written. "
                        "Check the model in float32 (bf16/f16 can overflow) and the dataset"));
  }
}

// The first layer that no selected hook needs, or nullopt if the hooks need
// the final norm (or anything after the blocks).
std::optional<int> stop_layer(const core::ModelConfig& cfg, const std::vector<std::string>& hooks) {
  int last = -1;
  for (const auto& h : hooks) {
    if (h == "hook_embed" || h == "hook_pos_embed") continue;
    if (h.rfind("blocks.", 0) != 0) return std::nullopt;
    last = std::max(last, std::stoi(h.substr(7)));
  }
  if (last + 1 >= cfg.n_layers) return std::nullopt;
  return last + 1;
}

}  // namespace

namespace {

// `names`: every hook point there is; `dims_of`: a point's axes.
template <class DimsOf>
std::vector<std::string> resolve(const core::ModelConfig& cfg, const std::vector<std::string>& names,
                                 const DimsOf& dims_of, const std::vector<std::string>& patterns) {
  MECHLAB_CHECK(!patterns.empty(), "give at least one hook name or glob to cache "
                                   "(e.g. 'blocks.*.hook_resid_post')");
  std::vector<std::string> out;
  for (const auto& p : patterns) {
    const bool glob = p.find_first_of("*?") != std::string::npos;
    const NamesFilter filter = glob ? NamesFilter::glob(p) : NamesFilter(std::vector<std::string>{p});
    for (const auto& name : filter.select(cfg, names)) {
      // A store holds one row per token: the point's axes must start [batch, pos].
      const std::vector<core::Dim> dims = dims_of(name);
      if (dims.size() < 2 || dims[0] != core::Dim::batch || dims[1] != core::Dim::pos) {
        if (glob) continue;  // a glob like 'blocks.0.attn.*' means the per-token ones
        throw Error(str_cat("cannot store '", name, "': it is ", core::shape_string(cfg, dims),
                            ", not one row per token ([batch, pos, ...]). For attention scores "
                            "and patterns store blocks.L.attn.hook_z or blocks.L.attn.hook_result "
                            "instead, or cache them in memory with run_with_cache"));
      }
      if (std::find(out.begin(), out.end(), name) == out.end()) out.push_back(name);
    }
  }
  MECHLAB_CHECK(!out.empty(), "the hook patterns select only attention patterns/scores, which an "
                              "activation store cannot hold");
  return out;
}

}  // namespace

std::vector<std::string> resolve_store_hooks(const core::ModelConfig& cfg,
                                             const std::vector<std::string>& patterns) {
  std::vector<std::string> names;
  for (const auto& s : core::all_sites(cfg)) names.push_back(s.name());
  auto dims_of = [&](const std::string& name) {
    core::HookSite site;
    MECHLAB_ASSERT(core::parse_site(name, cfg.n_layers, &site));
    return core::site_info(site.kind).dims;
  };
  return resolve(cfg, names, dims_of, patterns);
}

std::vector<std::string> resolve_store_hooks(const HookedTransformer& model,
                                             const std::vector<std::string>& patterns) {
  const HookRegistry& registry = model.hooks();
  auto dims_of = [&](const std::string& name) { return registry.hook_dims(name); };
  return resolve(model.cfg(), model.hook_names(), dims_of, patterns);
}

std::pair<int64_t, int64_t> shard_examples(int64_t examples, int64_t batch_size, int64_t index,
                                           int64_t count) {
  MECHLAB_CHECK(count >= 1 && index >= 0 && index < count, "shard ", index, " of ", count,
                " does not exist; shards are numbered 0 to count - 1 (`CacheOptions::shard_index`, "
                "`CacheOptions::shard_count`)");
  const int64_t batches = (examples + batch_size - 1) / batch_size;
  MECHLAB_CHECK(count <= batches, "cannot split ", examples, " examples in batches of ", batch_size,
                " (", batches, " batches) into ", count, " shards: a shard holds whole batches; "
                "use at most ", batches,
                " shards (`CacheOptions::shard_count`) or a smaller `CacheOptions::batch_size`");
  const int64_t b0 = batches * index / count, b1 = batches * (index + 1) / count;
  return {b0 * batch_size, std::min(examples, b1 * batch_size)};
}

std::string dataset_fingerprint(const core::Dataset& dataset) {
  const at::Tensor t = dataset.prompts().contiguous();  // int32 [N, T]
  std::string fp = core::fnv1a_hex(t.data_ptr(), t.numel() * t.element_size());
  if (dataset.attention_mask.defined()) {
    const at::Tensor m = dataset.attention_mask.contiguous();  // uint8 [N, T]
    fp += core::fnv1a_hex(m.data_ptr(), m.numel());
  }
  return fp;
}

CacheResult cache_activations(HookedTransformer& model, const core::Dataset& dataset,
                              const std::string& out, const CacheOptions& opt) {
  const auto t_start = std::chrono::steady_clock::now();
  const core::ModelConfig& cfg = model.cfg();
  const std::string ds_name = opt.dataset_path().empty() ? std::string("dataset") : opt.dataset_path();
  dataset.validate(ds_name);
  dataset.check_vocab(cfg.d_vocab, ds_name);
  MECHLAB_CHECK(opt.batch_size() > 0, "the batch size (`CacheOptions::batch_size`) must be positive, got ",
                opt.batch_size());
  MECHLAB_CHECK(opt.chunk_rows() > 0, "the rows per chunk (`CacheOptions::chunk_rows`) must be positive, got ",
                opt.chunk_rows());

  const std::vector<std::string> hooks = resolve_store_hooks(model, opt.hooks());
  const at::Tensor tokens = dataset.prompts();  // int32 [N, T]
  const at::Tensor mask = dataset.attention_mask;  // uint8 [N, T] or undefined
  const int64_t N_all = tokens.size(0), T = tokens.size(1);
  MECHLAB_CHECK(N_all > 0, "'", ds_name, "' has no examples");
  // This store's examples: [E0, N) of the dataset (all of it unless sharded).
  const auto [E0, N] = shard_examples(N_all, opt.batch_size(), opt.shard_index(), opt.shard_count());

  // Rows per example (its real tokens) and where each example's rows start.
  // offset[e]: the store row of example e's first real token (0 up to E0).
  std::vector<int64_t> offset(static_cast<size_t>(N) + 1, 0);
  {
    at::Tensor counts = mask.defined() ? mask.to(at::kLong).sum(1) : at::full({N_all}, T, at::kLong);
    auto c = counts.accessor<int64_t, 1>();
    for (int64_t i = E0; i < N; ++i) offset[i + 1] = offset[i] + c[i];
    for (int64_t i = 0; i <= E0; ++i) offset[i] = 0;
  }

  at::InferenceMode inference;
  const at::Device device = model.model().device();
  const std::optional<int> stop = stop_layer(cfg, hooks);
  auto forward = [&](int64_t e0, int64_t e1) {
    RunOptions ro;
    ro.stop_at_layer(stop);
    if (mask.defined()) ro.attention_mask(mask.slice(0, e0, e1).to(device));
    return model.run_with_cache(tokens.slice(0, e0, e1).to(device, at::kLong),
                                NamesFilter(hooks), ro).second;
  };

  // Per-token shapes from one example.
  core::StoreHeader header;
  {
    ActivationCache probe = forward(0, 1);
    for (const auto& h : hooks) {
      const auto sizes = probe[h].sizes();
      header.hook_shapes[h] = std::vector<int64_t>(sizes.begin() + 2, sizes.end());
    }
  }
  header.model = opt.model_id().empty() ? cfg.name : opt.model_id();
  header.config_hash = core::fnv1a_hex(cfg.to_json_string());
  header.hooks = hooks;
  header.dtype = opt.dtype();
  header.rows_total = offset.back();
  header.chunk_rows = opt.chunk_rows();
  {
    nlohmann::json job{{"dataset", ds_name},
                       {"dataset_fingerprint", dataset_fingerprint(dataset)},
                       {"examples", N_all},
                       {"seq_len", T},
                       {"batch_size", opt.batch_size()}};
    if (opt.shard_count() > 1) {  // unsharded jobs stay as they were, so old stores resume
      job["shard"] = {opt.shard_index(), opt.shard_count()};
      job["examples_range"] = {E0, N};
    }
    header.job = job.dump();
  }
  core::StoreSpec spec{header, opt.gzip_level()};
  core::ActivationStoreWriter writer =
      core::ActivationStoreWriter::open(out, spec, opt.resume(), opt.overwrite());

  CacheResult result;
  result.rows_total = header.rows_total;
  result.hooks = hooks;
  const int64_t committed = writer.rows_committed();
  if (writer.complete()) {
    log::info(str_cat("'", out, "' is already complete (", committed, " rows)"));
    return result;
  }

  // Batches are fixed by batch_size (batch b = examples [b*B, (b+1)*B)), so a
  // resumed run recomputes exactly what an uninterrupted one computed; a
  // shard starts at a batch boundary E0.
  const int64_t B = opt.batch_size();
  int64_t first_batch = E0 / B;
  while (first_batch * B < N && offset[std::min(N, (first_batch + 1) * B)] <= committed) {
    ++first_batch;
  }

  PendingQueue queue(2);
  std::thread writer_thread([&] {
    at::InferenceMode thread_inference;  // thread-local: the staged tensors are inference tensors
    try {
      while (auto p = queue.pop()) {
        if (p->ready) p->ready->synchronize();
        require_finite(*p, ds_name);
        writer.append(p->row0, p->acts, p->token_ids, p->row_source);
      }
    } catch (...) {
      queue.fail(std::current_exception());
    }
  });

  const bool async_copy = device.type() != at::kCPU;
  std::optional<c10::impl::VirtualGuardImpl> guard_impl;
  std::optional<c10::Stream> side;
  if (async_copy) {
    guard_impl.emplace(device.type());
    side = guard_impl->getStreamFromGlobalPool(device, /*isHighPriority=*/false);
  }

  std::optional<core::ProgressBar> bar;
  if (opt.progress()) bar.emplace("cache", header.rows_total, "tokens", offset[first_batch * B]);
  bool interrupted = false;
  int64_t rows_reached = offset[std::min(N, first_batch * B)];
  try {
    for (int64_t b = first_batch; b * B < N; ++b) {
      // Between batches: what the writer has committed is a valid prefix of
      // the store, and a resumed run recomputes the rest.
      if (core::interrupt_requested()) {
        interrupted = true;
        break;
      }
      const int64_t e0 = b * B, e1 = std::min(N, e0 + B);
      ActivationCache cache = forward(e0, e1);

      Pending p;
      p.row0 = offset[e0];
      at::Tensor keep;  // bool [rows of the batch * T], on the host
      if (mask.defined()) keep = mask.slice(0, e0, e1).reshape({-1}).to(at::kBool);
      at::Tensor ex = at::arange(e0, e1, at::kInt).unsqueeze(1).expand({e1 - e0, T});
      at::Tensor pos = at::arange(T, at::kInt).unsqueeze(0).expand({e1 - e0, T});
      at::Tensor src = at::stack({ex.reshape({-1}), pos.reshape({-1})}, 1);  // [b*T, 2]
      at::Tensor ids = tokens.slice(0, e0, e1).reshape({-1});
      p.row_source = keep.defined() ? src.index({keep}) : src.contiguous();
      p.token_ids = (keep.defined() ? ids.index({keep}) : ids).to(at::kInt).contiguous();

      at::Tensor keep_dev = keep.defined() ? keep.to(device) : at::Tensor();
      std::map<std::string, at::Tensor> on_device;
      for (const auto& h : hooks) {
        at::Tensor a = cache[h];
        a = a.reshape({a.size(0) * a.size(1), -1});  // [b*T, d]
        if (keep_dev.defined()) a = a.index({keep_dev});
        on_device[h] = a.to(opt.dtype()).contiguous();
      }
      if (async_copy) {
        // The side stream waits for this batch's compute, copies to pinned
        // memory, and the writer thread waits on its event, not the GPU.
        c10::Event computed(device.type());
        computed.record(guard_impl->getStream(device));
        side->wait(computed);
        c10::StreamGuard on_side(*side);
        for (auto& [h, a] : on_device) {
          at::Tensor host = at::empty(a.sizes(), a.options().device(at::kCPU).pinned_memory(true));
          host.copy_(a, /*non_blocking=*/true);
          a.record_stream(*side);
          p.acts[h] = host;
        }
        p.ready = std::make_shared<c10::Event>(device.type());
        p.ready->record(*side);
      } else {
        p.acts = std::move(on_device);
      }
      const int64_t rows = offset[e1] - offset[e0];
      queue.push(std::move(p));
      queue.rethrow_if_failed();
      rows_reached = offset[e1];
      if (bar) bar->advance(rows);
    }
  } catch (...) {
    queue.close();
    writer_thread.join();
    throw;
  }
  queue.close();
  writer_thread.join();
  queue.rethrow_if_failed();
  if (interrupted) {
    if (bar) bar->finish();
    throw Interrupted(str_cat("interrupted at row ", rows_reached, " of ",
                              header.rows_total, "; the store '", out, "' keeps ",
                              writer.rows_committed(),
                              " committed rows and can be resumed"));
  }
  writer.finish();
  if (bar) bar->finish();
  result.rows_written = header.rows_total - committed;
  result.bytes_written = writer.bytes_written();
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  return result;
}

}  // namespace mechlab::hooks
