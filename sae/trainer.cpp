#include "sae/trainer.h"

#include "core/dist/process_group.h"
#include "core/formats/hdf5_file.h"
#include "core/formats/text_file.h"
#include "core/log/log.h"
#include "core/plot/line_chart.h"
#include "core/store/activation_store.h"
#include "core/store/shuffled_batches.h"
#include "core/util/error.h"
#include "core/util/interrupt.h"
#include "core/util/progress.h"
#include "sae/live_source.h"
#include "sae/metrics.h"
#include "sae/registry.h"
#include "sae/saelens_io.h"

#include <ATen/CPUGeneratorImpl.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace mechlab::sae {
namespace {

using nlohmann::json;

constexpr const char* kSaeGroup = "sae";
constexpr const char* kStateGroup = "sae_trainer";

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

at::Generator seeded(uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

// The first row of x [n, d] with a NaN or Inf, or -1.
int64_t first_non_finite_row(const at::Tensor& x) {
  at::Tensor bad = at::logical_not(at::isfinite(x)).any(1);  // [n]
  if (!bad.any().item<bool>()) return -1;
  return bad.nonzero()[0][0].item<int64_t>();
}

// ---------------------------------------------------------------- sources

class ToySource : public BatchSource {
 public:
  explicit ToySource(const ToyOptions& o) : toy_(o) {}
  int64_t d_in() const override { return toy_.options().d(); }
  at::Tensor batch(int64_t, int64_t batch_size, at::Generator& rng) override {
    return toy_.sample(batch_size, rng);
  }
  at::Tensor eval_rows(int64_t n) override {
    at::Generator g = seeded(toy_.options().seed() + 1);
    return toy_.sample(n, g);
  }
  at::Tensor init_rows(int64_t n) override {
    at::Generator g = seeded(toy_.options().seed() + 2);
    return toy_.sample(n, g);
  }
  at::Tensor ground_truth() const override { return toy_.features(); }

 private:
  ToySuperposition toy_;
};

class TensorSource : public BatchSource {
 public:
  TensorSource(at::Tensor rows, uint64_t seed) : rows_(rows.to(at::kFloat).contiguous()), seed_(seed) {
    MECHLAB_CHECK(rows_.dim() == 2 && rows_.size(0) >= 1,
                  "training rows must be a non-empty [n, d_in] matrix, got ", rows_.sizes());
    const int64_t bad = first_non_finite_row(rows_);
    MECHLAB_CHECK(bad < 0, "training row ", bad, " holds NaN or Inf; clean the activations before training");
  }
  int64_t d_in() const override { return rows_.size(1); }
  at::Tensor batch(int64_t step, int64_t batch_size, at::Generator&) override {
    // Rows [step * b, (step + 1) * b) of the concatenated epoch permutations.
    const int64_t n = rows_.size(0);
    std::vector<at::Tensor> parts;
    int64_t start = step * batch_size, need = batch_size;
    while (need > 0) {
      const int64_t epoch = start / n, offset = start % n, take = std::min(need, n - offset);
      if (epoch != perm_epoch_) {
        at::Generator g = seeded(seed_ + static_cast<uint64_t>(epoch));
        perm_ = at::randperm(n, g, at::kLong);
        perm_epoch_ = epoch;
      }
      parts.push_back(rows_.index_select(0, perm_.slice(0, offset, offset + take)));
      start += take;
      need -= take;
    }
    return parts.size() == 1 ? parts[0] : at::cat(parts, 0);
  }
  at::Tensor eval_rows(int64_t n) override { return rows_.slice(0, 0, std::min(n, rows_.size(0))); }
  at::Tensor init_rows(int64_t n) override { return eval_rows(n); }

 private:
  at::Tensor rows_;  // [n, d_in]
  uint64_t seed_;
  at::Tensor perm_;
  int64_t perm_epoch_ = -1;
};

class StoreSource : public BatchSource {
 public:
  StoreSource(const std::string& path, std::string hook, uint64_t seed, int64_t batch_size,
              int64_t buffer_rows, bool exclude_first, int64_t part, int64_t parts)
      : store_(core::ActivationStore::open(path)), hook_(std::move(hook)), parts_(parts) {
    bool known = false;
    for (const std::string& h : store_.hooks()) known = known || h == hook_;
    std::string names;
    for (const std::string& h : store_.hooks()) names += (names.empty() ? "" : ", ") + h;
    MECHLAB_CHECK(known, "activation store '", path, "' has no hook '", hook_, "' (it has ", names,
                  "); set data.hook to one of them");
    MECHLAB_CHECK(store_.num_rows() >= batch_size, "activation store '", path, "' holds ",
                  store_.num_rows(), " rows, fewer than one batch (batch_size ", batch_size,
                  "); lower batch_size or cache more tokens");
    options_ = core::ShuffleOptions()
                   .batch_size(batch_size)
                   .seed(seed + static_cast<uint64_t>(part))
                   .part(part)
                   .parts(parts)
                   .buffer_rows(std::max(buffer_rows, batch_size))
                   .exclude_first_position(exclude_first)
                   .drop_last(true)
                   .check_finite(true);
  }
  int64_t d_in() const override { return store_.header().width(hook_); }
  at::Tensor batch(int64_t step, int64_t batch_size, at::Generator&) override {
    MECHLAB_CHECK(batch_size == options_.batch_size(), "internal: store batch size changed");
    if (!batches_ || step < next_step_) {  // (re)start: a resume replays the order up to `step`
      batches_.emplace(store_, std::vector<std::string>{hook_}, options_);
      next_step_ = 0;
    }
    at::Tensor x;
    while (next_step_ <= step) {
      x = next_batch();
      ++next_step_;
    }
    return x.to(at::kFloat);
  }
  at::Tensor eval_rows(int64_t n) override {
    const int64_t count = std::min(n, store_.num_rows());
    at::Tensor x = store_.rows(hook_, 0, count);
    store_.check_finite(hook_, 0, x);
    return x.to(at::kFloat);
  }
  at::Tensor init_rows(int64_t n) override { return eval_rows(n); }
  bool reads_own_part() const override { return parts_ > 1; }
  json content_identity() const override {
    const core::StoreHeader& h = store_.header();
    const json job = json::parse(h.job, nullptr, /*allow_exceptions=*/false);
    std::string fingerprint;
    if (job.is_object() && job.contains("dataset_fingerprint") && job["dataset_fingerprint"].is_string()) {
      fingerprint = job["dataset_fingerprint"].get<std::string>();
    }
    return {{"config_hash", h.config_hash},
            {"dataset_fingerprint", fingerprint},
            {"rows", store_.num_rows()},
            {"dtype", std::string(c10::toString(h.dtype))}};
  }

 private:
  at::Tensor next_batch() {
    for (int attempt = 0; attempt < 2; ++attempt) {
      if (auto b = batches_->next()) return b->acts.at(hook_);
    }
    throw Error(str_cat("activation store '", store_.path(), "' yields no full batch of ",
                        options_.batch_size(), " rows (too few rows left after exclusions); lower batch_size"));
  }

  core::ActivationStore store_;
  std::string hook_;
  core::ShuffleOptions options_;
  std::optional<core::ShuffledBatches> batches_;
  int64_t next_step_ = 0;
  int64_t parts_ = 1;
};

// ---------------------------------------------------------------- config JSON

template <typename T>
T get_as(const json& j, const std::string& key, const std::string& where) {
  const json& v = j.at(key);
  bool ok = false;
  if constexpr (std::is_same_v<T, bool>) {
    ok = v.is_boolean();
  } else if constexpr (std::is_same_v<T, std::string>) {
    ok = v.is_string();
  } else if constexpr (std::is_integral_v<T>) {
    ok = v.is_number_integer() || (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>());
    if constexpr (std::is_unsigned_v<T>) ok = ok && v.get<double>() >= 0;
  } else {
    ok = v.is_number();
  }
  MECHLAB_CHECK(ok, "SAE training config: \"", where, key, "\" must be ",
                std::is_same_v<T, bool>          ? "true or false"
                : std::is_same_v<T, std::string> ? "a string"
                : std::is_unsigned_v<T>          ? "a whole number >= 0"
                : std::is_integral_v<T>          ? "a whole number"
                                                 : "a number",
                ", got ", v.dump());
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    return static_cast<T>(v.get<double>());
  } else {
    return v.get<T>();
  }
}

void refuse_unknown(const json& j, const std::vector<std::string>& known, const std::string& where) {
  MECHLAB_CHECK(j.is_object(), "SAE training config: \"", where.empty() ? "(top level)" : where,
                "\" must be an object, got ", j.dump());
  for (const auto& item : j.items()) {
    bool ok = false;
    for (const std::string& k : known) ok = ok || k == item.key();
    std::string list;
    for (const std::string& k : known) list += (list.empty() ? "" : ", ") + k;
    MECHLAB_CHECK(ok, "SAE training config: unknown key \"", where, item.key(), "\" (known: ", list, ")");
  }
}

const std::vector<std::string>& sae_keys() {
  static const std::vector<std::string> k = {
      "architecture", "d_in", "d_sae", "apply_b_dec_to_input", "normalize_activations", "hook_name",
      "reshape_activations", "k",
      "rescale_acts_by_decoder_norm", "topk_threshold", "topk_threshold_lr", "aux_loss_coefficient",
      "l1_coefficient", "lp_norm", "l0_coefficient", "jumprelu_bandwidth", "jumprelu_ste_to_input",
      "jumprelu_sparsity_loss_mode", "jumprelu_tanh_scale", "target_l0", "pre_act_loss_coefficient"};
  return k;
}

SaeConfig sae_config_from_json(const json& j) {
  refuse_unknown(j, sae_keys(), "sae.");
  SaeConfig c;
  const std::string w = "sae.";
  if (j.contains("architecture")) c.architecture(get_as<std::string>(j, "architecture", w));
  if (j.contains("d_in")) c.d_in(get_as<int64_t>(j, "d_in", w));
  if (j.contains("d_sae")) c.d_sae(get_as<int64_t>(j, "d_sae", w));
  if (j.contains("apply_b_dec_to_input")) c.apply_b_dec_to_input(get_as<bool>(j, "apply_b_dec_to_input", w));
  if (j.contains("normalize_activations"))
    c.normalize_activations(get_as<std::string>(j, "normalize_activations", w));
  if (j.contains("hook_name")) c.hook_name(get_as<std::string>(j, "hook_name", w));
  if (j.contains("reshape_activations")) c.reshape_activations(get_as<std::string>(j, "reshape_activations", w));
  if (j.contains("k")) c.k(get_as<double>(j, "k", w));
  if (j.contains("rescale_acts_by_decoder_norm"))
    c.rescale_acts_by_decoder_norm(get_as<bool>(j, "rescale_acts_by_decoder_norm", w));
  if (j.contains("topk_threshold")) c.topk_threshold(get_as<double>(j, "topk_threshold", w));
  if (j.contains("topk_threshold_lr")) c.topk_threshold_lr(get_as<double>(j, "topk_threshold_lr", w));
  if (j.contains("aux_loss_coefficient")) c.aux_loss_coefficient(get_as<double>(j, "aux_loss_coefficient", w));
  if (j.contains("l1_coefficient")) c.l1_coefficient(get_as<double>(j, "l1_coefficient", w));
  if (j.contains("lp_norm")) c.lp_norm(get_as<double>(j, "lp_norm", w));
  if (j.contains("l0_coefficient")) c.l0_coefficient(get_as<double>(j, "l0_coefficient", w));
  if (j.contains("jumprelu_bandwidth")) c.jumprelu_bandwidth(get_as<double>(j, "jumprelu_bandwidth", w));
  if (j.contains("jumprelu_ste_to_input")) c.jumprelu_ste_to_input(get_as<bool>(j, "jumprelu_ste_to_input", w));
  if (j.contains("jumprelu_sparsity_loss_mode"))
    c.jumprelu_sparsity_loss_mode(get_as<std::string>(j, "jumprelu_sparsity_loss_mode", w));
  if (j.contains("jumprelu_tanh_scale")) c.jumprelu_tanh_scale(get_as<double>(j, "jumprelu_tanh_scale", w));
  if (j.contains("target_l0") && !j["target_l0"].is_null()) c.target_l0(get_as<double>(j, "target_l0", w));
  if (j.contains("pre_act_loss_coefficient") && !j["pre_act_loss_coefficient"].is_null())
    c.pre_act_loss_coefficient(get_as<double>(j, "pre_act_loss_coefficient", w));
  return c;
}

json sae_config_to_json(const SaeConfig& c) {
  return {{"architecture", c.architecture()},
          {"d_in", c.d_in()},
          {"d_sae", c.d_sae()},
          {"apply_b_dec_to_input", c.apply_b_dec_to_input()},
          {"normalize_activations", c.normalize_activations()},
          {"hook_name", c.hook_name()},
          {"reshape_activations", c.reshape_activations()},
          {"k", c.k()},
          {"rescale_acts_by_decoder_norm", c.rescale_acts_by_decoder_norm()},
          {"topk_threshold_lr", c.topk_threshold_lr()},
          {"aux_loss_coefficient", c.aux_loss_coefficient()},
          {"l1_coefficient", c.l1_coefficient()},
          {"lp_norm", c.lp_norm()},
          {"l0_coefficient", c.l0_coefficient()},
          {"jumprelu_bandwidth", c.jumprelu_bandwidth()},
          {"jumprelu_ste_to_input", c.jumprelu_ste_to_input()},
          {"jumprelu_sparsity_loss_mode", c.jumprelu_sparsity_loss_mode()},
          {"jumprelu_tanh_scale", c.jumprelu_tanh_scale()},
          {"target_l0", c.target_l0() ? json(*c.target_l0()) : json()},
          {"pre_act_loss_coefficient", c.pre_act_loss_coefficient() ? json(*c.pre_act_loss_coefficient()) : json()}};
}

// ToyOptions from data.toy.
ToyOptions toy_from_json(const json& j) {
  refuse_unknown(j, {"n_features", "d", "p_active", "max_magnitude", "seed"}, "data.toy.");
  ToyOptions o;
  const std::string w = "data.toy.";
  if (j.contains("n_features")) o.n_features(get_as<int64_t>(j, "n_features", w));
  if (j.contains("d")) o.d(get_as<int64_t>(j, "d", w));
  if (j.contains("p_active")) o.p_active(get_as<double>(j, "p_active", w));
  if (j.contains("max_magnitude")) o.max_magnitude(get_as<double>(j, "max_magnitude", w));
  if (j.contains("seed")) o.seed(get_as<uint64_t>(j, "seed", w));
  return o;
}

void check_data(const json& data) {
  const int forms = data.is_object() ? static_cast<int>(data.contains("toy")) + static_cast<int>(data.contains("store")) +
                                           static_cast<int>(data.contains("model"))
                                     : 0;
  MECHLAB_CHECK(forms == 1,
                "SAE training config: \"data\" must be {\"toy\": {...}}, {\"store\": PATH, \"hook\": NAME} or "
                "{\"model\": PATH, \"dataset\": PATH, \"hook\": NAME}, got ",
                data.dump());
  if (data.contains("toy")) {
    refuse_unknown(data, {"toy"}, "data.");
    toy_from_json(data["toy"]);
    return;
  }
  const bool live = data.contains("model");
  if (live) {
    refuse_unknown(data, {"model", "dataset", "hook", "buffer_rows", "exclude_first_position", "prompts_per_forward"},
                   "data.");
    get_as<std::string>(data, "model", "data.");
    MECHLAB_CHECK(data.contains("dataset"),
                  "SAE training config: \"data.dataset\" is missing: name the dataset whose prompts the model runs on");
    get_as<std::string>(data, "dataset", "data.");
    if (data.contains("prompts_per_forward")) get_as<int64_t>(data, "prompts_per_forward", "data.");
  } else {
    refuse_unknown(data, {"store", "hook", "buffer_rows", "exclude_first_position"}, "data.");
    get_as<std::string>(data, "store", "data.");
  }
  MECHLAB_CHECK(data.contains("hook"), "SAE training config: \"data.hook\" is missing: name the ",
                live ? "model's" : "store's", " hook to train on");
  get_as<std::string>(data, "hook", "data.");
  if (data.contains("buffer_rows")) get_as<int64_t>(data, "buffer_rows", "data.");
  if (data.contains("exclude_first_position")) get_as<bool>(data, "exclude_first_position", "data.");
}

}  // namespace

// ------------------------------------------------------------------ helpers

at::Tensor geometric_median(const at::Tensor& points, const GeometricMedianOptions& options) {
  MECHLAB_CHECK(points.dim() == 2 && points.size(0) >= 1,
                "geometric median: points must be a non-empty [n, d] matrix, got ", points.sizes());
  at::NoGradGuard no_grad;
  const at::Tensor p = points.detach().to(at::kDouble);  // [n, d]
  auto weighted_mean = [&](const at::Tensor& w) {        // w [n]
    return (p * (w / w.sum()).unsqueeze(1)).sum(0);      // [d]
  };
  auto objective = [&](const at::Tensor& m) { return (p - m).norm(2, {1}).sum().item<double>(); };
  at::Tensor median = p.mean(0);  // Weiszfeld starts from the mean
  double value = objective(median);
  for (int64_t i = 0; i < options.max_iter(); ++i) {
    // Each point weighted by 1 / its distance: the fixed point of this map
    // is where the distance-weighted sum of unit vectors vanishes.
    const at::Tensor w = 1.0 / (p - median).norm(2, {1}).clamp_min(options.eps());  // [n]
    median = weighted_mean(w);
    const double previous = value;
    value = objective(median);
    if (std::abs(previous - value) <= options.ftol() * value) break;
  }
  return median.to(points.scalar_type());
}

double warmed_up_coefficient(double final_value, int64_t warmup_steps, int64_t step) {
  if (warmup_steps <= 0 || step >= warmup_steps) return final_value;
  return final_value * static_cast<double>(step) / static_cast<double>(warmup_steps);
}

std::unique_ptr<BatchSource> toy_source(const ToyOptions& options) {
  return std::make_unique<ToySource>(options);
}

std::unique_ptr<BatchSource> tensor_source(at::Tensor rows, uint64_t seed) {
  return std::make_unique<TensorSource>(std::move(rows), seed);
}

std::unique_ptr<BatchSource> store_source(const std::string& path, const std::string& hook, uint64_t seed,
                                          int64_t batch_size, int64_t buffer_rows, bool exclude_first_position,
                                          int64_t part, int64_t parts) {
  return std::make_unique<StoreSource>(path, hook, seed, batch_size, buffer_rows, exclude_first_position, part,
                                       parts);
}

// ------------------------------------------------------------------ config

namespace {
const std::vector<std::string>& top_keys() {
  static const std::vector<std::string> k = {
      "name", "sae", "data", "steps", "batch_size", "lr", "min_lr", "lr_warmup_steps", "beta1", "beta2",
      "grad_clip", "coefficient_warmup_steps", "dead_feature_window", "dead_latent_strategy", "resample_every",
      "b_dec_init", "b_dec_init_rows",
      "decoder_init_norm", "decoder_unit_norm", "eval_every", "eval_rows", "checkpoint_every",
      "stop_at_mmcs", "seed", "device"};
  return k;
}
}  // namespace

SaeTrainConfig SaeTrainConfig::from_json(const json& j) {
  refuse_unknown(j, top_keys(), "");
  SaeTrainConfig c;
  const std::string w;
  if (j.contains("name")) c.name(get_as<std::string>(j, "name", w));
  MECHLAB_CHECK(j.contains("sae"), "SAE training config: \"sae\" is missing: give the SAE's architecture, d_in and d_sae");
  c.sae(sae_config_from_json(j["sae"]));
  MECHLAB_CHECK(j.contains("data"), "SAE training config: \"data\" is missing: give {\"toy\": {}}, {\"store\": PATH, "
                                    "\"hook\": NAME} or {\"model\": PATH, \"dataset\": PATH, \"hook\": NAME}");
  check_data(j["data"]);
  c.data(j["data"]);
  if (j.contains("steps")) c.steps(get_as<int64_t>(j, "steps", w));
  if (j.contains("batch_size")) c.batch_size(get_as<int64_t>(j, "batch_size", w));
  if (j.contains("lr")) c.lr(get_as<double>(j, "lr", w));
  if (j.contains("min_lr") && !j["min_lr"].is_null()) c.min_lr(get_as<double>(j, "min_lr", w));
  if (j.contains("lr_warmup_steps")) c.lr_warmup_steps(get_as<int64_t>(j, "lr_warmup_steps", w));
  if (j.contains("beta1")) c.beta1(get_as<double>(j, "beta1", w));
  if (j.contains("beta2")) c.beta2(get_as<double>(j, "beta2", w));
  if (j.contains("grad_clip")) c.grad_clip(get_as<double>(j, "grad_clip", w));
  if (j.contains("coefficient_warmup_steps"))
    c.coefficient_warmup_steps(get_as<int64_t>(j, "coefficient_warmup_steps", w));
  if (j.contains("dead_feature_window")) c.dead_feature_window(get_as<int64_t>(j, "dead_feature_window", w));
  if (j.contains("dead_latent_strategy")) c.dead_latent_strategy(get_as<std::string>(j, "dead_latent_strategy", w));
  if (j.contains("resample_every")) c.resample_every(get_as<int64_t>(j, "resample_every", w));
  if (j.contains("b_dec_init")) c.b_dec_init(get_as<std::string>(j, "b_dec_init", w));
  if (j.contains("b_dec_init_rows")) c.b_dec_init_rows(get_as<int64_t>(j, "b_dec_init_rows", w));
  if (j.contains("decoder_init_norm")) {
    c.decoder_init_norm(j["decoder_init_norm"].is_null() ? std::nullopt
                                                         : std::optional<double>(get_as<double>(j, "decoder_init_norm", w)));
  }
  if (j.contains("decoder_unit_norm")) c.decoder_unit_norm(get_as<bool>(j, "decoder_unit_norm", w));
  if (j.contains("eval_every")) c.eval_every(get_as<int64_t>(j, "eval_every", w));
  if (j.contains("eval_rows")) c.eval_rows(get_as<int64_t>(j, "eval_rows", w));
  if (j.contains("checkpoint_every")) c.checkpoint_every(get_as<int64_t>(j, "checkpoint_every", w));
  if (j.contains("stop_at_mmcs")) c.stop_at_mmcs(get_as<double>(j, "stop_at_mmcs", w));
  if (j.contains("seed")) c.seed(get_as<uint64_t>(j, "seed", w));
  if (j.contains("device")) c.device(get_as<std::string>(j, "device", w));
  return c;
}

SaeTrainConfig SaeTrainConfig::load(const std::string& path) {
  std::ifstream in(path);
  MECHLAB_CHECK(in.good(), "SAE training config '", path, "': cannot read it (no such file?)");
  std::stringstream ss;
  ss << in.rdbuf();
  json j;
  try {
    j = json::parse(ss.str());
  } catch (const json::parse_error& e) {
    throw Error(str_cat("SAE training config '", path, "' is not valid JSON: ", e.what()));
  }
  return from_json(j);
}

json SaeTrainConfig::to_json() const {
  return {{"name", name_},
          {"sae", sae_config_to_json(sae_)},
          {"data", data_},
          {"steps", steps_},
          {"batch_size", batch_size_},
          {"lr", lr_},
          {"min_lr", min_lr_ ? json(*min_lr_) : json()},
          {"lr_warmup_steps", lr_warmup_steps_},
          {"beta1", beta1_},
          {"beta2", beta2_},
          {"grad_clip", grad_clip_},
          {"coefficient_warmup_steps", coefficient_warmup_steps_},
          {"dead_feature_window", dead_feature_window_},
          {"dead_latent_strategy", dead_latent_strategy_},
          {"resample_every", resample_every_},
          {"b_dec_init", b_dec_init_},
          {"b_dec_init_rows", b_dec_init_rows_},
          {"decoder_init_norm", decoder_init_norm_ ? json(*decoder_init_norm_) : json()},
          {"decoder_unit_norm", decoder_unit_norm_},
          {"eval_every", eval_every_},
          {"eval_rows", eval_rows_},
          {"checkpoint_every", checkpoint_every_},
          {"stop_at_mmcs", stop_at_mmcs_},
          {"seed", seed_},
          {"device", device_}};
}

void SaeTrainConfig::validate() const {
  check_data(data());
  // d_in 0 means "the data's width", filled in once the source is open; the
  // rest of the SAE's config is checked now, before any file is touched.
  SaeConfig s = sae();
  if (s.d_in() == 0) s.d_in(1);
  ::mechlab::sae::validate(s);
  // The SAE is exported with hook_name as the hook it reads: one that is not
  // the hook its rows came from would splice it where it was never trained.
  if (data().contains("hook") && data()["hook"].is_string() && !sae().hook_name().empty()) {
    const std::string hook = data()["hook"].get<std::string>();
    MECHLAB_CHECK(sae().hook_name() == hook, "SAE training config: \"sae.hook_name\" is \"", sae().hook_name(),
                  "\" but the SAE trains on data.hook \"", hook,
                  "\"; drop sae.hook_name (it defaults to data.hook) or set it to the same hook");
  }
  // The loss coefficients: a NaN would otherwise surface mid-run as "loss
  // became NaN" (or, for topk_threshold_lr, as an exported SAE with a NaN
  // threshold that import refuses), and a negative one rewards density.
  auto check_coefficient = [](const char* key, double v, bool zero_ok) {
    MECHLAB_CHECK(std::isfinite(v) && (zero_ok ? v >= 0 : v > 0), "SAE training config: \"sae.", key,
                  "\" must be a finite number ", zero_ok ? ">= 0" : "> 0", ", got ", v);
  };
  check_coefficient("l1_coefficient", sae().l1_coefficient(), true);
  check_coefficient("l0_coefficient", sae().l0_coefficient(), true);
  check_coefficient("aux_loss_coefficient", sae().aux_loss_coefficient(), true);
  check_coefficient("lp_norm", sae().lp_norm(), false);
  check_coefficient("jumprelu_bandwidth", sae().jumprelu_bandwidth(), false);
  check_coefficient("jumprelu_tanh_scale", sae().jumprelu_tanh_scale(), false);
  if (sae().pre_act_loss_coefficient()) {
    check_coefficient("pre_act_loss_coefficient", *sae().pre_act_loss_coefficient(), true);
  }
  // An exponential moving average's weight: outside [0, 1] it diverges.
  MECHLAB_CHECK(std::isfinite(sae().topk_threshold_lr()) && sae().topk_threshold_lr() >= 0 &&
                    sae().topk_threshold_lr() <= 1,
                "SAE training config: \"sae.topk_threshold_lr\" must be in [0, 1], got ", sae().topk_threshold_lr());
  if (data().contains("buffer_rows")) {
    const int64_t rows = get_as<int64_t>(data(), "buffer_rows", "data.");
    MECHLAB_CHECK(rows >= 1, "SAE training config: \"data.buffer_rows\" must be >= 1, got ", rows);
  }
  // The loop's and AdamW's own checks, repeated here so that they refuse
  // before the output folder is created.
  MECHLAB_CHECK(std::isfinite(lr()) && lr() > 0, "SAE training config: \"lr\" must be positive, got ", lr());
  MECHLAB_CHECK(!min_lr() || (*min_lr() >= 0 && *min_lr() <= lr()),
                "SAE training config: \"min_lr\" must be in [0, lr] or null, got ", min_lr().value_or(0.0));
  MECHLAB_CHECK(lr_warmup_steps() >= 0, "SAE training config: \"lr_warmup_steps\" must be >= 0, got ",
                lr_warmup_steps());
  MECHLAB_CHECK(beta1() >= 0 && beta1() < 1, "SAE training config: \"beta1\" must be in [0, 1), got ", beta1());
  MECHLAB_CHECK(beta2() >= 0 && beta2() < 1, "SAE training config: \"beta2\" must be in [0, 1), got ", beta2());
  MECHLAB_CHECK(grad_clip() >= 0, "SAE training config: \"grad_clip\" must be >= 0 (0 = no clipping), got ",
                grad_clip());
  MECHLAB_CHECK(eval_every() >= 1, "SAE training config: \"eval_every\" must be >= 1, got ", eval_every());
  MECHLAB_CHECK(checkpoint_every() >= 1, "SAE training config: \"checkpoint_every\" must be >= 1, got ",
                checkpoint_every());
  MECHLAB_CHECK(steps() >= 1, "SAE training config: \"steps\" must be >= 1, got ", steps());
  MECHLAB_CHECK(batch_size() >= 1, "SAE training config: \"batch_size\" must be >= 1, got ", batch_size());
  MECHLAB_CHECK(dead_feature_window() >= 1, "SAE training config: \"dead_feature_window\" must be >= 1, got ",
                dead_feature_window());
  MECHLAB_CHECK(dead_latent_strategy() == "auxk" || dead_latent_strategy() == "resample" ||
                    dead_latent_strategy() == "none",
                "SAE training config: \"dead_latent_strategy\" must be auxk, resample or none, got \"",
                dead_latent_strategy(), "\"");
  MECHLAB_CHECK(resample_every() >= 1, "SAE training config: \"resample_every\" must be >= 1, got ", resample_every());
  if (dead_latent_strategy() == "resample") {
    const std::string& a = sae().architecture();
    MECHLAB_CHECK(a == "relu" || a == "topk" || a == "batchtopk" || a == "jumprelu",
                  "SAE training config: \"dead_latent_strategy\" resample needs an encoder bias b_enc (relu, topk, "
                  "batchtopk, jumprelu), not a ", a, " SAE; use auxk or none");
    MECHLAB_CHECK(sae().normalize_activations() == "none",
                  "SAE training config: \"dead_latent_strategy\" resample takes raw inputs, not normalize_activations ",
                  sae().normalize_activations(), "; use none");
  }
  MECHLAB_CHECK(coefficient_warmup_steps() >= 0,
                "SAE training config: \"coefficient_warmup_steps\" must be >= 0, got ", coefficient_warmup_steps());
  MECHLAB_CHECK(b_dec_init() == "zeros" || b_dec_init() == "mean" || b_dec_init() == "geometric_median",
                "SAE training config: \"b_dec_init\" must be zeros, mean or geometric_median, got \"", b_dec_init(),
                "\"");
  MECHLAB_CHECK(b_dec_init_rows() >= 1, "SAE training config: \"b_dec_init_rows\" must be >= 1, got ",
                b_dec_init_rows());
  MECHLAB_CHECK(!decoder_init_norm() || *decoder_init_norm() > 0,
                "SAE training config: \"decoder_init_norm\" must be positive or null, got ", *decoder_init_norm());
  MECHLAB_CHECK(eval_rows() >= 1, "SAE training config: \"eval_rows\" must be >= 1, got ", eval_rows());
  MECHLAB_CHECK(stop_at_mmcs() >= 0 && stop_at_mmcs() <= 1,
                "SAE training config: \"stop_at_mmcs\" must be in [0, 1] (0 = never stop early), got ", stop_at_mmcs());
  MECHLAB_CHECK(stop_at_mmcs() == 0 || data().contains("toy"),
                "SAE training config: \"stop_at_mmcs\" needs a ground truth: only a toy source (data.toy) has one");
  training_device(device());
}

at::Device training_device(const std::string& device) {
  const bool known = device == "cpu" || device == "cuda" || device.rfind("cuda:", 0) == 0;
  at::Device d(at::kCPU);
  bool parsed = known;
  if (known) {
    try {
      d = at::Device(device);
    } catch (const std::exception&) {
      parsed = false;
    }
  }
  MECHLAB_CHECK(parsed, "SAE training config: \"device\" must be cpu, cuda or cuda:N, got \"", device, "\"");
  if (d.is_cuda()) {
    MECHLAB_CHECK(at::hasCUDA(), "SAE training config: \"device\" is \"", device,
                  "\" but no CUDA GPU is available here; set device to cpu");
    const auto n = static_cast<int64_t>(at::getNumGPUs());
    MECHLAB_CHECK(!d.has_index() || d.index() < n, "SAE training config: \"device\" is \"", device,
                  "\" but this machine has ", n, " CUDA GPU", n == 1 ? "" : "s", " (cuda:0 to cuda:", n - 1,
                  "); name one of them, or cpu");
  }
  return d;
}

std::unique_ptr<BatchSource> make_source(const SaeTrainConfig& cfg, int64_t part, int64_t parts) {
  const json& d = cfg.data();
  if (d.contains("toy")) return toy_source(toy_from_json(d["toy"]));
  if (d.contains("model")) {
    // A live source has no parts: every rank would run the model on the
    // whole global batch. Data-parallel training reads a cached store.
    MECHLAB_CHECK(parts == 1, "SAE training from live model activations (data.model) runs in one process; for ",
                  parts, " data-parallel processes cache the activations first (mechlab cache) and train on the store");
    return live_source(d["model"].get<std::string>(), d["dataset"].get<std::string>(),
                       LiveSourceOptions()
                           .hook(d["hook"].get<std::string>())
                           .seed(cfg.seed())
                           .batch_size(cfg.batch_size())
                           .buffer_rows(d.value("buffer_rows", int64_t{1} << 16))
                           .exclude_first_position(d.value("exclude_first_position", false))
                           .prompts_per_forward(d.value("prompts_per_forward", int64_t{8})),
                       training_device(cfg.device()));  // the model runs where the SAE trains
  }
  return store_source(d["store"].get<std::string>(), d["hook"].get<std::string>(), cfg.seed(),
                      cfg.batch_size() / parts, d.value("buffer_rows", int64_t{1} << 16),
                      d.value("exclude_first_position", false), part, parts);
}

// ------------------------------------------------------------------ trainable

SaeTrainable::SaeTrainable(SaeTrainConfig cfg, std::unique_ptr<BatchSource> source)
    : cfg_(std::move(cfg)), source_(std::move(source)) {
  MECHLAB_CHECK(source_ != nullptr, "SAE training: no data source");
  cfg_.validate();
  MECHLAB_CHECK(source_->d_in() == cfg_.sae().d_in(), "the SAE's d_in is ", cfg_.sae().d_in(),
                " but the training data's rows are ", source_->d_in(), " wide; set sae.d_in to ",
                source_->d_in(), " (or 0, which takes the data's width)");
  device_ = training_device(cfg_.device());
  sae_ = make_sae(cfg_.sae());
  init_weights();  // on the CPU: the same seed starts the same SAE on any device
  sae_->to(device_, at::kFloat);  // keeps requires_grad; before the gradient hook, which is per tensor
  hook_decoder();
  since_fired_ = at::zeros({cfg_.sae().d_sae()}, at::TensorOptions().dtype(at::kLong).device(device_));
  eval_x_ = source_->eval_rows(cfg_.eval_rows()).to(device_);
}

nlohmann::json SaeTrainable::config() const {
  json j = cfg_.to_json();
  j.erase("device");  // not part of the run's identity: a checkpoint resumes on any device
  // The data as what it is, not how it was written: defaults filled in (so
  // that spelling out a default is no change), and a store by its content
  // (model, dataset, rows, dtype) rather than its path, so that a moved
  // store resumes and a store recached at the same path does not.
  json& d = j["data"];
  if (d.contains("toy")) {
    const ToyOptions t = toy_from_json(d["toy"]);
    d["toy"] = {{"n_features", t.n_features()}, {"d", t.d()}, {"p_active", t.p_active()},
                {"max_magnitude", t.max_magnitude()}, {"seed", t.seed()}};
  } else {
    d["buffer_rows"] = d.value("buffer_rows", int64_t{1} << 16);
    d["exclude_first_position"] = d.value("exclude_first_position", false);
    if (d.contains("model")) d["prompts_per_forward"] = d.value("prompts_per_forward", int64_t{8});
  }
  if (d.contains("store")) {
    d.erase("store");
    d["store_content"] = source_->content_identity();
  }
  return j;
}

void SaeTrainable::init_weights() {
  at::NoGradGuard no_grad;
  const int64_t d_in = cfg_.sae().d_in();
  at::Generator gen = seeded(cfg_.seed());
  // SAELens: W_dec kaiming_uniform_ (bound sqrt(6 / fan_in), fan_in = d_in),
  // rows scaled to decoder_init_norm, W_enc = W_dec^T; biases zero.
  const double bound = std::sqrt(6.0 / static_cast<double>(d_in));
  at::Tensor w_dec = at::rand({cfg_.sae().d_sae(), d_in}, gen, at::kFloat) * (2 * bound) - bound;  // [d_sae, d_in]
  if (cfg_.decoder_init_norm()) {
    w_dec = w_dec / w_dec.norm(2, {1}, true) * *cfg_.decoder_init_norm();
  }
  for (auto& [name, p] : sae_->named_parameters()) {
    at::Tensor t = p;  // the SAE's own tensor
    if (name == "W_dec") {
      t.copy_(w_dec);
    } else if (name == "W_enc") {
      t.copy_(w_dec.t());
    } else if (name == "threshold") {
      t.fill_(0.01);  // SAELens's jumprelu_init_threshold
    } else {
      t.zero_();
    }
  }
  if (cfg_.b_dec_init() != "zeros") {
    at::Tensor rows = source_->init_rows(cfg_.b_dec_init_rows());  // [n, d_in]
    const int64_t bad = first_non_finite_row(rows);
    MECHLAB_CHECK(bad < 0, "b_dec initialisation: row ", bad, " of the data holds NaN or Inf");
    at::Tensor b = cfg_.b_dec_init() == "mean" ? rows.mean(0) : geometric_median(rows);
    sae_->param("b_dec").copy_(b);
  }
  if (cfg_.decoder_unit_norm()) sae_->set_decoder_norm_to_unit_norm();
  sae_->requires_grad(true);
}

void SaeTrainable::hook_decoder() {
  if (!cfg_.decoder_unit_norm()) return;
  // The gradient's component along each (unit) decoder row is removed as
  // autograd produces it, so clipping and Adam see the projected gradient.
  // The hook holds a detached alias (same storage, no autograd meta), so the
  // parameter does not own a reference to itself.
  at::Tensor w = sae_->param("W_dec");
  w.register_hook([unit = w.detach()](const at::Tensor& g) {  // g, unit [d_sae, d_in]
    return g - (g * unit).sum(-1, true) * unit;
  });
}

std::vector<at::Tensor> SaeTrainable::parameters() {
  std::vector<at::Tensor> out;
  for (const auto& np : sae_->named_parameters()) out.push_back(np.second);
  return out;
}

std::vector<std::string> SaeTrainable::parameter_names() const {
  std::vector<std::string> out;
  for (const auto& np : sae_->named_parameters()) out.push_back(np.first);
  return out;
}

void SaeTrainable::set_process_group(std::shared_ptr<core::dist::ProcessGroup> group) {
  if (group && group->world_size() > 1) {
    const int64_t w = group->world_size();
    MECHLAB_CHECK(cfg_.batch_size() % w == 0, "SAE training config: \"batch_size\" ", cfg_.batch_size(),
                  " (the global batch) must divide by the world size ", w, " (each process trains on an equal part)");
    MECHLAB_CHECK(cfg_.dead_latent_strategy() != "resample",
                  "data-parallel SAE training refuses dead_latent_strategy resample (each rank would resample from its "
                  "own rows); use auxk or none, or train in one process");
    MECHLAB_CHECK(cfg_.sae().architecture() != "batchtopk",
                  "data-parallel training refuses a batchtopk SAE: it keeps the top k x batch activations of the "
                  "whole batch and moves its threshold by them, which no rank sees; train it in one process");
  }
  // CUDA: this rank's GPU becomes current, no two ranks may share one, and
  // NCCL starts there, before any collective (every rank constructs its
  // trainer, so every rank gets here). CPU: nothing (Gloo).
  if (group) group->set_device(device_);
  group_ = std::move(group);
}

at::Tensor SaeTrainable::loss(int64_t step, at::Generator& rng) {
  // Data parallel: this rank's slice [r B/W, (r+1) B/W) of the global batch.
  const int64_t w = group_ ? group_->world_size() : 1, r = group_ ? group_->rank() : 0, local = cfg_.batch_size() / w;
  at::Tensor x = source_->batch(step, source_->reads_own_part() ? local : cfg_.batch_size(), rng);  // [batch, d_in]
  if (w > 1 && !source_->reads_own_part()) x = x.slice(0, r * local, (r + 1) * local);  // [local, d_in]
  const int64_t bad = first_non_finite_row(x);
  MECHLAB_CHECK(bad < 0, "the training batch of step ", step + 1, " holds NaN or Inf in its row ", bad,
                "; clean the activations");
  if (x.device() != device_) x = x.to(device_);  // sources give CPU rows
  if (cfg_.decoder_unit_norm()) {
    at::NoGradGuard no_grad;
    sae_->set_decoder_norm_to_unit_norm();
  }
  const std::string& strategy = cfg_.dead_latent_strategy();
  if (strategy == "resample" && step > 0 && step % cfg_.resample_every() == 0) resample_dead_latents(x, rng);
  // [d_sae] bool: the latents AuxK (JumpReLU's pre-activation loss) acts on; none without "auxk".
  const at::Tensor dead = strategy == "auxk" ? since_fired_.gt(cfg_.dead_feature_window()) : at::Tensor();
  TrainStep out = sae_->training_forward(x, dead);
  // Coefficient warmup: the sparsity term was computed with the final
  // coefficient; scale it to this step's.
  const double c_final = cfg_.sae().architecture() == "jumprelu" ? cfg_.sae().l0_coefficient()
                                                                 : cfg_.sae().l1_coefficient();
  const double c_now = warmed_up_coefficient(c_final, cfg_.coefficient_warmup_steps(), step);
  at::Tensor total = out.losses[0].second;  // mse_loss
  for (size_t i = 1; i < out.losses.size(); ++i) {
    const auto& [name, term] = out.losses[i];
    const bool sparsity = name == "l1_loss" || name == "l0_loss";
    total = sparsity && c_now != c_final ? total + term * (c_final == 0 ? 0.0 : c_now / c_final) : total + term;
  }
  {
    at::NoGradGuard no_grad;
    at::Tensor fired = out.feature_acts.detach().ne(0).any(0);  // [d_sae]
    if (w > 1) {  // fired anywhere in the global batch
      at::Tensor any = fired.to(at::kFloat);
      group_->allreduce_max(any);
      fired = any.gt(0);
    }
    since_fired_.add_(1).masked_fill_(fired, 0);
  }
  steps_done_ = step + 1;
  if (on_step) on_step(x.size(0) * w);
  return total;
}

at::Tensor SaeTrainable::resample_dead_latents(const at::Tensor& x_in, at::Generator& rng) {
  at::NoGradGuard no_grad;
  const at::Tensor x = x_in.to(device_);                                                  // [batch, d_in]
  const at::Tensor dead_mask = since_fired_.gt(cfg_.dead_feature_window());               // [d_sae]
  const at::Tensor dead = dead_mask.nonzero().reshape({-1});                              // [n_dead]
  const int64_t n_dead = dead.numel();
  if (n_dead == 0) return dead.cpu();
  // Each input's chance: the square of its reconstruction loss (Bricken et
  // al.); a batch the SAE reconstructs exactly gives every row the same.
  at::Tensor loss = (sae_->reconstruct(x) - x).pow(2).sum(-1).to(at::kCPU, at::kDouble);  // [batch]
  at::Tensor weight = loss.pow(2);
  if (!(weight.sum().item<double>() > 0)) weight = at::ones_like(weight);
  const at::Tensor pick = at::multinomial(weight, n_dead, /*replacement=*/true, rng).to(device_);  // [n_dead]
  at::Tensor& W_enc = sae_->param("W_enc");  // [d_in, d_sae]
  at::Tensor& W_dec = sae_->param("W_dec");  // [d_sae, d_in]
  at::Tensor& b_enc = sae_->param("b_enc");  // [d_sae]
  at::Tensor v = x.index_select(0, pick).to(W_dec.scalar_type());  // [n_dead, d_in]
  if (cfg_.sae().apply_b_dec_to_input()) v = v - sae_->param("b_dec");
  const at::Tensor unit = v / v.norm(2, {1}, true).clamp_min(1e-12);  // [n_dead, d_in]
  const at::Tensor alive = dead_mask.logical_not();
  const double alive_norm = alive.any().item<bool>()
                                ? W_enc.norm(2, {0}).masked_select(alive).mean().item<double>()
                                : 1.0;  // none alive: unit encoder rows scaled by 0.2
  W_dec.index_copy_(0, dead, unit);
  W_enc.index_copy_(1, dead, (unit * (0.2 * alive_norm)).t());
  b_enc.index_fill_(0, dead, 0.0);
  since_fired_.index_fill_(0, dead, 0);
  if (reset_optimizer_rows) {
    reset_optimizer_rows("W_enc", 1, dead);
    reset_optimizer_rows("b_enc", 0, dead);
    reset_optimizer_rows("W_dec", 0, dead);
  }
  if (!group_ || group_->rank() == 0) {
    log::info(str_cat("step ", steps_done_, ": resampled ", n_dead, " dead latents of ", cfg_.sae().d_sae()));
  }
  return dead.cpu();
}

core::train::Evaluation SaeTrainable::evaluate() {
  at::NoGradGuard no_grad;
  at::Tensor acts = sae_->encode(eval_x_);  // [n, d_sae]
  at::Tensor out = sae_->reconstruct(eval_x_);
  const ReconstructionMetrics m = reconstruction_metrics(eval_x_, out, acts);
  SaeEval e;
  e.step = steps_done_;
  e.tokens = steps_done_ * cfg_.batch_size();
  e.l0 = m.l0;
  e.mse = m.mse;
  e.fvu = m.fvu;
  e.explained_variance = m.explained_variance;
  e.dead_fraction = since_fired_.gt(cfg_.dead_feature_window()).to(at::kDouble).mean().item<double>();
  const at::Tensor truth = source_->ground_truth();
  if (truth.defined()) e.mmcs = mean_max_cosine_similarity(truth, sae_->param("W_dec"));
  last_eval_ = e;
  // One row per scheduled evaluation (an evaluation for a session's report
  // at another step adds none, as the loop's log).
  if (steps_done_ % cfg_.eval_every() == 0 || steps_done_ == cfg_.steps() ||
      (truth.defined() && cfg_.stop_at_mmcs() > 0 && e.mmcs >= cfg_.stop_at_mmcs())) {
    if (!eval_log_.empty() && eval_log_.back().step == e.step) eval_log_.pop_back();
    eval_log_.push_back(e);
    if (!log_path.empty()) {
      core::write_text_file(log_path, eval_log_csv());
      const std::string svg = log_path.substr(0, log_path.size() - 4) + ".svg";  // sae_log.csv -> .svg
      core::write_text_file(svg, eval_log_svg());
    }
  }
  if (on_eval) on_eval(e);
  if (!group_ || group_->rank() == 0) {  // rank 0 logs for all
    log::info(str_cat("step ", e.step, ": L0 ", e.l0, ", FVU ", e.fvu, ", dead fraction ", e.dead_fraction,
                      e.mmcs >= 0 ? str_cat(", MMCS ", e.mmcs) : std::string()));
  }
  core::train::Evaluation r;
  // The second accuracy: MMCS against the ground truth, else the fraction
  // of latents alive (both in [0, 1], on one panel with explained variance).
  r.test = {e.mse, truth.defined() ? e.mmcs : 1.0 - e.dead_fraction, 0};
  r.train = {e.mse, e.explained_variance, 0};
  return r;
}

std::string progress_status(const SaeEval& e) {
  if (e.step == 0) return "";
  char buf[160];
  std::snprintf(buf, sizeof buf, "L0 %.1f  FVU %.4f  dead %.1f%%", e.l0, e.fvu, 100.0 * e.dead_fraction);
  std::string s = buf;
  if (e.mmcs >= 0) {
    std::snprintf(buf, sizeof buf, "  MMCS %.3f", e.mmcs);
    s += buf;
  }
  return s;
}

std::string SaeTrainable::eval_log_csv() const {
  std::ostringstream os;
  os.precision(9);
  os << "step,tokens,l0,mse,fvu,explained_variance,dead_fraction,mmcs\n";
  for (const SaeEval& e : eval_log_) {
    os << e.step << ',' << e.tokens << ',' << e.l0 << ',' << e.mse << ',' << e.fvu << ',' << e.explained_variance
       << ',' << e.dead_fraction << ',';
    if (e.mmcs >= 0) os << e.mmcs;
    os << '\n';
  }
  return os.str();
}

std::string SaeTrainable::eval_log_svg() const {
  namespace plot = core::plot;
  std::vector<double> step, l0, fvu, dead, mmcs;
  for (const SaeEval& e : eval_log_) {
    step.push_back(static_cast<double>(e.step));
    l0.push_back(e.l0);
    fvu.push_back(e.fvu);
    dead.push_back(e.dead_fraction);
    mmcs.push_back(e.mmcs);
  }
  std::vector<plot::Panel> panels = {
      {"L0", true, {{"L0", step, l0}}, std::nullopt},
      {"fraction", false, {{"FVU", step, fvu}, {"dead fraction", step, dead}}, std::nullopt}};
  if (source_->ground_truth().defined()) {
    panels.push_back({"MMCS", false, {{"MMCS", step, mmcs}}, std::nullopt});
  }
  return plot::line_chart_svg(cfg_.name(), "step", panels);
}

void SaeTrainable::save_state(const std::string& path,
                              const std::function<void(core::H5File&)>& write_loop_state) const {
  core::H5File::write_atomically(path, [&](core::H5File& f) {
    f.ensure_group(kSaeGroup);
    f.write_attr(kSaeGroup, "config", sae_config_to_json(sae_->cfg()).dump());
    // CPU tensors (write_tensor copies them there): the file does not say
    // where the run trained, so it resumes on any device.
    for (const auto& [name, p] : sae_->named_parameters()) {
      f.write_tensor(str_cat(kSaeGroup, "/", name), p.detach().cpu());
    }
    f.ensure_group(kStateGroup);
    f.write_tensor(str_cat(kStateGroup, "/steps_since_fired"), since_fired_.cpu());  // device-independent
    // BatchTopK's threshold moves during training (an EMA kept in the config).
    f.write_attr(kStateGroup, "topk_threshold", sae_->cfg().topk_threshold());
    const int64_t n = static_cast<int64_t>(eval_log_.size());
    at::Tensor log = at::zeros({n, 8}, at::kDouble);  // the columns of sae_log.csv
    for (int64_t i = 0; i < n; ++i) {
      const SaeEval& e = eval_log_[static_cast<size_t>(i)];
      const double row[8] = {static_cast<double>(e.step), static_cast<double>(e.tokens), e.l0, e.mse, e.fvu,
                             e.explained_variance, e.dead_fraction, e.mmcs};
      for (int c = 0; c < 8; ++c) log[i][c] = row[c];
    }
    f.write_tensor(str_cat(kStateGroup, "/eval_log"), log);
    write_loop_state(f);
  });
}

void SaeTrainable::load_state(const std::string& path) {
  core::H5File f = core::H5File::open_read(path);
  MECHLAB_CHECK(f.is_group(kSaeGroup) && f.is_group(kStateGroup), "'", path,
                "' is not an SAE training checkpoint (no /sae and /sae_trainer); start a new run");
  SaeConfig c = cfg_.sae();
  c.topk_threshold(f.read_attr_double(kStateGroup, "topk_threshold"));
  sae_ = make_sae(c);
  {
    at::NoGradGuard no_grad;
    for (auto& [name, p] : sae_->named_parameters()) {
      const std::string ds = str_cat(kSaeGroup, "/", name);
      MECHLAB_CHECK(f.exists(ds), "'", path, "' lacks the SAE parameter /", ds, " (damaged; start again with `overwrite`)");
      at::Tensor t = f.read_tensor(ds);
      MECHLAB_CHECK(t.sizes() == p.sizes(), "'", path, "': /", ds, " is ", t.sizes(), ", the SAE wants ", p.sizes());
      at::Tensor dst = p;
      dst.copy_(t);
    }
  }
  sae_->to(device_, at::kFloat);  // the file holds CPU tensors whichever device wrote them
  sae_->requires_grad(true);
  hook_decoder();
  since_fired_ = f.read_tensor(str_cat(kStateGroup, "/steps_since_fired")).to(device_, at::kLong);
  steps_done_ = f.read_attr_int("train", "step");
  eval_log_.clear();
  const at::Tensor log = f.read_tensor(str_cat(kStateGroup, "/eval_log"));  // [rows, 8]
  for (int64_t i = 0; i < log.size(0); ++i) {
    SaeEval e;
    e.step = static_cast<int64_t>(log[i][0].item<double>());
    if (e.step > steps_done_) break;
    e.tokens = static_cast<int64_t>(log[i][1].item<double>());
    e.l0 = log[i][2].item<double>();
    e.mse = log[i][3].item<double>();
    e.fvu = log[i][4].item<double>();
    e.explained_variance = log[i][5].item<double>();
    e.dead_fraction = log[i][6].item<double>();
    e.mmcs = log[i][7].item<double>();
    eval_log_.push_back(e);
  }
  if (!eval_log_.empty()) last_eval_ = eval_log_.back();
}

// ------------------------------------------------------------------ trainer

namespace {

// train_log.{csv,svg} as SaeTrainable::evaluate fills them: the training
// loss includes the sparsity penalty, the test loss is the evaluation
// batch's MSE alone (separate panels), "train accuracy" is explained variance
// and "test accuracy" MMCS against the ground truth (toy) or the fraction of
// latents alive (evaluate()).
core::train::LogLabels sae_log_labels(const SaeTrainConfig& cfg) {
  const bool toy = cfg.data().contains("toy");
  core::train::LogLabels l;
  l.train_loss = "train_loss_total";
  l.train_accuracy = "eval_explained_variance";
  l.test_loss = "eval_mse";
  l.test_accuracy = toy ? "eval_mmcs" : "eval_alive_fraction";
  l.train_loss_series = "training loss (MSE + sparsity + aux)";
  l.loss_panel = "training loss";
  l.test_loss_series = "evaluation MSE";
  l.test_loss_panel = "evaluation MSE";
  l.split_losses = true;
  l.train_accuracy_series = "explained variance";
  l.test_accuracy_series = toy ? "MMCS (ground truth)" : "alive latents (fraction)";
  l.accuracy_panel = toy ? "explained variance, MMCS" : "explained variance, alive latents";
  return l;
}

core::train::LoopOptions loop_options(const SaeTrainConfig& cfg, const SaeTrainerOptions& o) {
  return core::train::LoopOptions()
      .steps(cfg.steps())
      .lr(cfg.lr())
      .min_lr(cfg.min_lr().value_or(cfg.lr()))
      .warmup_steps(cfg.lr_warmup_steps())
      .adamw(core::train::AdamWOptions().beta1(cfg.beta1()).beta2(cfg.beta2()).weight_decay(0.0))
      .grad_clip(cfg.grad_clip())
      .eval_every(cfg.eval_every())
      .checkpoint_every(cfg.checkpoint_every())
      .stop_at_accuracy(cfg.stop_at_mmcs())
      .seed(cfg.seed())
      .name(cfg.name())
      .out_dir(o.out_dir())
      .resume(o.resume())
      .overwrite(o.overwrite())
      .process_group(o.process_group())
      .progress(false)  // the SAE trainer draws its own bar, in tokens
      .log_labels(sae_log_labels(cfg));
}

// The data's width, and the data's hook as the SAE's hook_name when the
// config gives none; an SAE trained on hook_z rows (flattened head-major, as
// the store keeps them) is a hook_z SAE, so that it splices back at hook_z.
SaeTrainConfig with_data_width(SaeTrainConfig cfg, const BatchSource& source) {
  if (cfg.sae().d_in() == 0) cfg.sae().d_in(source.d_in());
  const json& d = cfg.data();
  if (cfg.sae().hook_name().empty() && d.contains("hook") && d["hook"].is_string()) {
    cfg.sae().hook_name(d["hook"].get<std::string>());
  }
  const std::string& hook = cfg.sae().hook_name();
  const std::string z = "hook_z";
  if (hook.size() >= z.size() && hook.compare(hook.size() - z.size(), z.size(), z) == 0) {
    cfg.sae().reshape_activations("hook_z");
  }
  return cfg;
}

// True when `path` holds an SAE training config (what a run writes as
// config.json), not another program's config.json (a model folder's).
bool is_run_config(const std::string& path) {
  std::ifstream in(path);
  if (!in.good()) return false;
  const json j = json::parse(in, nullptr, /*allow_exceptions=*/false);
  return j.is_object() && j.contains("sae") && j["sae"].is_object() && j.contains("data") && j.contains("steps");
}

// Refuses, before any work, an out_dir that is a file, or (a fresh run) one
// holding an earlier run's files without `overwrite`: a run's config.json
// and sae/ are written only at its end, so stale ones would sit beside the
// new run's checkpoint and logs (and a job file counts out/sae as done).
// With `overwrite`, files mechlab did not write are still refused.
void check_out_dir(const SaeTrainerOptions& o) {
  namespace fs = std::filesystem;
  if (o.out_dir().empty()) return;
  const fs::path dir(o.out_dir());
  std::error_code ec;
  if (!fs::exists(dir, ec)) return;
  MECHLAB_CHECK(fs::is_directory(dir, ec), "SAE training: out_dir '", o.out_dir(),
                "' is a file, not a folder; name a folder (new or an earlier run's)");
  if (o.resume()) return;  // the loop checks the checkpoint
  std::string held;
  for (const char* name : {"checkpoint.h5", "config.json", "sae"}) {
    if (fs::exists(fs::symlink_status(dir / name, ec))) held += (held.empty() ? "" : ", ") + std::string(name);
  }
  MECHLAB_CHECK(held.empty() || o.overwrite(), "'", o.out_dir(), "' already holds a training run (", held,
                "); pass `resume` to continue it or `overwrite` to start again");
  if (held.empty()) return;
  const fs::path config = dir / "config.json";
  MECHLAB_CHECK(!fs::exists(fs::symlink_status(config, ec)) || is_run_config(config.string()), "'", config.string(),
                "' is not an SAE training config mechlab wrote; `overwrite` replaces only a run's own files: "
                "move it away or choose another out_dir");
  const fs::path sae = dir / "sae";
  MECHLAB_CHECK(!fs::exists(fs::symlink_status(sae, ec)) || is_exported_folder(sae.string()), "'", sae.string(),
                "' holds files besides an SAELens export (cfg.json, sae_weights.safetensors); `overwrite` replaces "
                "only a run's own files: move it away or choose another out_dir");
}

// `overwrite`: removes the earlier run's outputs (check_out_dir allowed
// them) before training, so an interrupted new run leaves none of them.
void remove_earlier_run(const SaeTrainerOptions& o) {
  namespace fs = std::filesystem;
  if (o.out_dir().empty() || o.resume() || !o.overwrite()) return;
  const fs::path dir(o.out_dir());
  std::error_code ec;
  remove_exported_folder((dir / "sae").string());
  for (const char* name : {"checkpoint.h5", "config.json", "train_log.csv", "train_log.svg", "sae_log.csv",
                           "sae_log.svg"}) {
    const fs::path p = dir / name;
    if (!fs::exists(fs::symlink_status(p, ec)) || !fs::is_regular_file(fs::symlink_status(p, ec))) continue;
    MECHLAB_CHECK(fs::remove(p, ec), "cannot remove '", p.string(), "' of the earlier run: ", ec.message());
  }
}

}  // namespace

SaeTrainer::SaeTrainer(SaeTrainConfig cfg, SaeTrainerOptions options)
    : SaeTrainer(cfg, [&] {
        check_out_dir(options);
        cfg.validate();
        const auto& g = options.process_group();
        return g ? make_source(cfg, g->rank(), g->world_size()) : make_source(cfg);
      }(), options) {}  // a copy: the lambda reads `options`, and argument order is unspecified

SaeTrainer::SaeTrainer(SaeTrainConfig cfg, std::unique_ptr<BatchSource> source, SaeTrainerOptions options)
    : options_(std::move(options)) {
  MECHLAB_CHECK(source != nullptr, "SAE training: no data source");
  check_out_dir(options_);
  cfg = with_data_width(std::move(cfg), *source);
  if (const auto& g = options_.process_group()) {
    // Data parallel on "cuda": this rank's GPU, cuda:LOCAL_RANK, before the
    // SAE is placed (config.json then records it; the run's identity leaves
    // the device out, so ranks and resumes still agree).
    const at::Device requested = training_device(cfg.device());
    if (requested.is_cuda()) {
      cfg.device(core::dist::data_parallel_device(requested, g->env(), static_cast<int64_t>(at::getNumGPUs())).str());
    }
  }
  trainable_ = std::make_unique<SaeTrainable>(cfg, std::move(source));
  trainable_->set_process_group(options_.process_group());
  const bool rank0 = !options_.process_group() || options_.process_group()->rank() == 0;
  if (rank0) remove_earlier_run(options_);
  if (!options_.out_dir().empty() && rank0) {
    trainable_->log_path = (std::filesystem::path(options_.out_dir()) / "sae_log.csv").string();
  }
  loop_ = std::make_unique<core::train::TrainLoop>(*trainable_, loop_options(cfg, options_));
  // Resampling zeroes the Adam moments of the latents it reinitialises; the
  // moments are the loop's (its current optimiser: a resume makes a new
  // one), in the order of the trainable's parameters.
  trainable_->reset_optimizer_rows = [loop = loop_.get(), trainable = trainable_.get()](
                                         const std::string& name, int64_t dim, const at::Tensor& index) {
    const std::vector<std::string> names = trainable->parameter_names();
    for (size_t i = 0; i < names.size(); ++i) {
      if (names[i] != name) continue;
      // The optimiser's own tensors (handles), zeroed in place.
      for (const at::Tensor& moment : {loop->optimizer().exp_avg()[i], loop->optimizer().exp_avg_sq()[i]}) {
        moment.index_fill_(dim, index.to(moment.device()), 0.0);
      }
    }
  };
}

SaeTrainResult SaeTrainer::run(int64_t max_steps) {
  const SaeTrainConfig& cfg = trainable_->train_config();
  std::optional<core::ProgressBar> bar;
  const int64_t done = loop_->steps_done();
  const bool rank0 = !options_.process_group() || options_.process_group()->rank() == 0;
  if (options_.progress() && done < cfg.steps() && rank0) {
    bar.emplace("sae train " + cfg.name(), cfg.steps() * cfg.batch_size(), "tokens", done * cfg.batch_size());
    trainable_->on_step = [&bar](int64_t rows) { bar->advance(rows); };
    trainable_->on_eval = [&bar](const SaeEval& e) { bar->set_status(progress_status(e)); };
    bar->set_status(progress_status(trainable_->last_eval()));  // a resumed run's kept evaluation
  }
  const double t0 = now_seconds();
  core::train::LoopResult r;
  try {
    r = loop_->run(max_steps);
  } catch (const Interrupted&) {
    trainable_->on_step = nullptr;
    trainable_->on_eval = nullptr;
    throw;
  } catch (const Error& e) {
    trainable_->on_step = nullptr;
    trainable_->on_eval = nullptr;
    if (bar) bar->finish();
    const std::string path = loop_->checkpoint_path();
    std::string kept = "no checkpoint was written";
    std::error_code ec;
    if (!path.empty() && std::filesystem::exists(path, ec)) {
      const core::H5File f = core::H5File::open_read(path);
      if (f.has_attr("train", "step")) {
        kept = str_cat("the checkpoint of step ", f.read_attr_int("train", "step"), " ('", path, "') is kept");
      }
    }
    const std::string what = e.what();
    // The loop's own stops (a non-finite loss) already say what is kept.
    if (what.find(" is kept") != std::string::npos || what.find("no checkpoint was written") != std::string::npos) {
      throw;
    }
    throw Error(str_cat(what, "; training stopped, ", kept));
  }
  trainable_->on_step = nullptr;
  trainable_->on_eval = nullptr;
  if (bar) bar->finish();
  SaeTrainResult out;
  out.seconds = now_seconds() - t0;
  out.steps = r.steps;
  out.steps_this_session = r.steps_this_session;
  out.stopped_early = r.stopped_early;
  out.already_complete = r.already_complete;
  out.eval = trainable_->last_eval();
  if (out.eval.step != r.steps) {  // a resumed, finished run: its kept evaluation
    trainable_->evaluate();
    out.eval = trainable_->last_eval();
  }
  if (!options_.out_dir().empty() && rank0 && (r.steps >= cfg.steps() || r.stopped_early)) {
    const std::filesystem::path dir(options_.out_dir());
    // sae/ last: a job file's sae_train step counts the run done once it exists.
    core::write_text_file((dir / "config.json").string(), cfg.to_json().dump(2) + "\n");
    export_saelens(trainable_->sae(), (dir / "sae").string(), ExportOptions().overwrite(true));
  }
  return out;
}

}  // namespace mechlab::sae
