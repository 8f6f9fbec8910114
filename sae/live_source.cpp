#include "sae/live_source.h"

#include "core/hf/model_loader.h"
#include "core/util/error.h"
#include "core/util/rng.h"
#include "hooks/activation_capture.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <numeric>
#include <optional>
#include <vector>

namespace mechlab::sae {
namespace {

// The layer after which nothing at `hook` changes (mechlab cache stops
// there too); nullopt = run the whole model.
std::optional<int> stop_after(const core::ModelConfig& cfg, const std::string& hook) {
  if (hook.rfind("blocks.", 0) != 0) return std::nullopt;
  const int layer = std::stoi(hook.substr(7));
  if (layer + 1 >= cfg.n_layers) return std::nullopt;
  return layer + 1;
}

class LiveSource : public BatchSource {
 public:
  LiveSource(std::shared_ptr<hooks::HookedTransformer> model, core::Dataset ds, const LiveSourceOptions& o,
             std::string where)
      : model_(std::move(model)), ds_(std::move(ds)), opt_(o), where_(std::move(where)) {
    MECHLAB_CHECK(model_ != nullptr, "live SAE training data: no model");
    ds_.validate(where_);
    ds_.check_vocab(model_->cfg().d_vocab, where_);
    MECHLAB_CHECK(opt_.batch_size() >= 1, "live SAE training data: batch_size must be >= 1, got ", opt_.batch_size());
    MECHLAB_CHECK(opt_.prompts_per_forward() >= 1,
                  "SAE training config: \"data.prompts_per_forward\" must be >= 1, got ", opt_.prompts_per_forward());
    MECHLAB_CHECK(opt_.buffer_rows() >= 0, "SAE training config: \"data.buffer_rows\" must be >= 0, got ",
                  opt_.buffer_rows());
    // As the store source: the buffer holds at least one batch.
    buffer_rows_ = std::max(opt_.buffer_rows(), opt_.batch_size());
    const std::vector<std::string> names = hooks::resolve_store_hooks(*model_, {opt_.hook()});
    MECHLAB_CHECK(names.size() == 1 && names[0] == opt_.hook(), "live SAE training data: \"", opt_.hook(),
                  "\" is not one hook point of the model; set data.hook to one per-token hook (no pattern), "
                  "e.g. blocks.0.hook_resid_post");
    tokens_ = ds_.prompts();  // int32 [N, T]
    mask_ = ds_.attention_mask;  // uint8 [N, T] or undefined
    const int64_t N = tokens_.size(0), T = tokens_.size(1);
    MECHLAB_CHECK(N >= 1, "'", where_, "' has no examples; live SAE training needs prompts");
    n_batches_ = (N + opt_.prompts_per_forward() - 1) / opt_.prompts_per_forward();
    // Rows an epoch can serve (real tokens, less position 0 when excluded).
    at::Tensor keep = mask_.defined() ? mask_.to(at::kBool) : at::ones({N, T}, at::kBool);  // [N, T]
    if (opt_.exclude_first_position()) keep.select(1, 0).fill_(false);
    const int64_t rows = keep.sum().item<int64_t>();
    MECHLAB_CHECK(rows >= opt_.batch_size(), "'", where_, "' gives ", rows, " rows at ", opt_.hook(),
                  ", fewer than one batch (batch_size ", opt_.batch_size(), "); lower batch_size or use more prompts");
    const at::Tensor probe = forward_rows(0, /*exclude_first=*/false);  // [rows of batch 0, d]
    d_in_ = probe.size(1);
    capacity_ = buffer_rows_ + opt_.prompts_per_forward() * T;
  }

  int64_t d_in() const override { return d_in_; }

  at::Tensor batch(int64_t step, int64_t batch_size, at::Generator&) override {
    MECHLAB_CHECK(batch_size == opt_.batch_size(), "internal: the live source's batch size changed");
    if (!begun_ || step < next_step_) {  // (re)start: a resume replays the order up to `step`
      epoch_ = 0;
      started_ = false;
      next_step_ = 0;
      begun_ = true;
      if (!buf_.defined()) buf_ = at::empty({capacity_, d_in_}, at::kFloat);
    }
    at::Tensor x;
    while (next_step_ <= step) {
      x = next_batch();
      ++next_step_;
    }
    return x;
  }

  at::Tensor eval_rows(int64_t n) override {
    // The first n rows in dataset order, position 0 included (the store
    // source's first rows), computed once for the largest n asked.
    if (!first_rows_.defined() || first_rows_.size(0) < n) {
      std::vector<at::Tensor> parts;
      int64_t have = 0;
      for (int64_t b = 0; b < n_batches_ && have < n; ++b) {
        parts.push_back(forward_rows(b, /*exclude_first=*/false));
        have += parts.back().size(0);
      }
      first_rows_ = at::cat(parts, 0);
    }
    return first_rows_.slice(0, 0, std::min(n, first_rows_.size(0)));
  }
  at::Tensor init_rows(int64_t n) override { return eval_rows(n); }

 private:
  // Rows [k, d] float32 of model batch b at the hook, in dataset order: the
  // real tokens (and not position 0 when exclude_first).
  at::Tensor forward_rows(int64_t b, bool exclude_first) {
    at::NoGradGuard no_grad;  // the trainer runs with gradients on
    const int64_t N = tokens_.size(0), T = tokens_.size(1);
    const int64_t e0 = b * opt_.prompts_per_forward(), e1 = std::min(N, e0 + opt_.prompts_per_forward());
    const at::Device device = model_->model().device();
    hooks::RunOptions ro;
    ro.stop_at_layer(stop_after(model_->cfg(), opt_.hook()));
    if (mask_.defined()) ro.attention_mask(mask_.slice(0, e0, e1).to(device));
    const hooks::NamesFilter only(std::vector<std::string>{opt_.hook()});
    const hooks::ActivationCache cache =
        model_->run_with_cache(tokens_.slice(0, e0, e1).to(device, at::kLong), only, ro).second;
    at::Tensor a = cache[opt_.hook()];        // [b, T, ...]
    a = a.reshape({a.size(0) * a.size(1), -1});  // [b * T, d]; per-head hooks flattened head-major
    at::Tensor keep = mask_.defined() ? mask_.slice(0, e0, e1).to(at::kBool).clone()
                                      : at::ones({e1 - e0, T}, at::kBool);  // [b, T]
    if (exclude_first) keep.select(1, 0).fill_(false);
    at::Tensor rows = a.index({keep.reshape({-1}).to(a.device())}).to(at::kCPU, at::kFloat);  // [k, d]
    const at::Tensor bad = at::logical_not(at::isfinite(rows)).any(1);  // [k]
    if (bad.any().item<bool>()) {
      const at::Tensor where = keep.nonzero();  // [k, 2]: (example - e0, position)
      const int64_t r = bad.nonzero()[0][0].item<int64_t>();
      throw Error(str_cat("the model's activations at ", opt_.hook(), " hold NaN or Inf at example ",
                          e0 + where[r][0].item<int64_t>(), ", position ", where[r][1].item<int64_t>(), " of '",
                          where_, "'; check the model and the prompts"));
    }
    return rows.contiguous();
  }

  // ShuffledBatches's epoch, fill, mix and take, over model batches.
  void start_epoch() {
    rng_ = core::Rng(opt_.seed() + static_cast<uint64_t>(epoch_));
    order_.resize(static_cast<size_t>(n_batches_));
    std::iota(order_.begin(), order_.end(), 0);
    rng_.shuffle(order_);
    next_ = 0;
    fill_ = 0;
    started_ = true;
  }

  bool fill_buffer() {
    bool read_any = false;
    while (fill_ < buffer_rows_ && next_ < order_.size()) {
      const at::Tensor rows = forward_rows(order_[next_++], opt_.exclude_first_position());  // [k, d]
      buf_.narrow(0, fill_, rows.size(0)).copy_(rows);
      fill_ += rows.size(0);
      read_any = true;
    }
    return read_any;
  }

  std::optional<at::Tensor> next() {
    if (!started_) start_epoch();
    const int64_t low_water = std::max(buffer_rows_ / 2, opt_.batch_size());
    if (fill_ < low_water && fill_buffer()) {
      std::vector<int64_t> perm(static_cast<size_t>(fill_));
      std::iota(perm.begin(), perm.end(), 0);
      rng_.shuffle(perm);
      const at::Tensor p = at::tensor(perm, at::kLong);
      buf_.narrow(0, 0, fill_).copy_(buf_.narrow(0, 0, fill_).index_select(0, p));
    }
    const bool last = next_ >= order_.size();
    if (fill_ == 0 || (fill_ < opt_.batch_size() && last)) {  // drop_last, as the store source
      started_ = false;
      ++epoch_;
      return std::nullopt;
    }
    const int64_t n = std::min(fill_, opt_.batch_size()), from = fill_ - n;
    at::Tensor x = buf_.narrow(0, from, n).clone();  // [n, d]: the tail of a permuted buffer
    fill_ = from;
    return x;
  }

  at::Tensor next_batch() {
    for (int attempt = 0; attempt < 2; ++attempt) {
      if (auto b = next()) return *b;
    }
    throw Error(str_cat("'", where_, "' yields no full batch of ", opt_.batch_size(), " rows at ", opt_.hook(),
                        "; lower batch_size"));
  }

  std::shared_ptr<hooks::HookedTransformer> model_;
  core::Dataset ds_;
  LiveSourceOptions opt_;
  std::string where_;
  at::Tensor tokens_, mask_;
  int64_t n_batches_ = 0, d_in_ = 0, buffer_rows_ = 0, capacity_ = 0;
  at::Tensor first_rows_;  // [rows, d]: eval / init rows
  // The mixing buffer: the first fill_ rows are live.
  at::Tensor buf_;  // [capacity, d] float32
  int64_t fill_ = 0;
  int64_t epoch_ = 0;
  core::Rng rng_{0};
  std::vector<int64_t> order_;  // model batches in this epoch's order
  size_t next_ = 0;
  bool started_ = false, begun_ = false;
  int64_t next_step_ = 0;
};

}  // namespace

std::unique_ptr<BatchSource> live_source(std::shared_ptr<hooks::HookedTransformer> model, core::Dataset dataset,
                                         const LiveSourceOptions& options, const std::string& dataset_name) {
  return std::make_unique<LiveSource>(std::move(model), std::move(dataset), options, dataset_name);
}

std::unique_ptr<BatchSource> live_source(const std::string& model_path, const std::string& dataset_path,
                                         const LiveSourceOptions& options, at::Device device) {
  core::Dataset ds = core::load_dataset(dataset_path);
  core::Transformer base = core::load_model(model_path, core::LoadOptions().dtype(at::kFloat));
  base.to(device);  // the forwards run there; the rows come back to the CPU's mixing buffer
  auto model = std::make_shared<hooks::HookedTransformer>(std::move(base));
  return live_source(std::move(model), std::move(ds), options, dataset_path);
}

}  // namespace mechlab::sae
