#include "core/model/model_config.h"

#include "core/util/error.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <functional>
#include <iomanip>
#include <limits>

#include <unistd.h>

namespace mechlab::core {
namespace {

template <typename Enum, size_t N>
Enum parse_enum(const nlohmann::json& j, const char* key, const std::array<Enum, N>& values) {
  MECHLAB_CHECK(j.is_string(), "config: \"", key, "\" must be a string");
  const auto text = j.get<std::string>();
  std::string options;
  for (Enum e : values) {
    if (text == to_string(e)) return e;
    options += std::string(options.empty() ? "" : ", ") + to_string(e);
  }
  throw Error(str_cat("config: \"", key, "\" is \"", text, "\"; expected one of: ", options));
}

constexpr std::array<Positional, 3> kPositionals{Positional::learned, Positional::rotary,
                                                 Positional::none};
constexpr std::array<NormKind, 5> kNorms{NormKind::layernorm, NormKind::rmsnorm,
                                          NormKind::none, NormKind::layernorm_pre,
                                          NormKind::rmsnorm_pre};
constexpr std::array<Activation, 4> kActs{Activation::gelu_new, Activation::gelu,
                                          Activation::relu, Activation::silu};
constexpr std::array<MlpKind, 3> kMlps{MlpKind::standard, MlpKind::gated, MlpKind::none};
constexpr std::array<RopeScalingKind, 2> kRopeScalings{RopeScalingKind::linear,
                                                       RopeScalingKind::llama3};
constexpr std::array<ProcessingStep, 4> kSteps{
    ProcessingStep::fold_ln, ProcessingStep::center_writing_weights,
    ProcessingStep::center_unembed, ProcessingStep::fold_value_biases};

template <typename T>
void read_number(const nlohmann::json& j, const char* key, T& out) {
  if (!j.contains(key)) return;
  const auto& v = j.at(key);
  MECHLAB_CHECK(v.is_number(), "config: \"", key, "\" must be a number, got ", v.dump());
  if constexpr (std::is_integral_v<T>) {
    // Range-check before narrowing: nlohmann's get<int> wraps modulo 2^32
    // (4294967297 would load as 1) and a float outside int's range is UB.
    const double d = v.get<double>();
    MECHLAB_CHECK(v.is_number_integer() || std::floor(d) == d, "config: \"", key,
                  "\" must be a whole number, got ", v.dump());
    constexpr auto lo = std::numeric_limits<T>::min();
    constexpr auto hi = std::numeric_limits<T>::max();
    const bool too_big = v.is_number_unsigned() ? v.get<uint64_t>() > uint64_t(hi)
                         : v.is_number_integer() ? v.get<int64_t>() > int64_t(hi)
                                                 : d > double(hi);
    const bool too_small = v.is_number_unsigned() ? false
                           : v.is_number_integer() ? v.get<int64_t>() < int64_t(lo)
                                                   : d < double(lo);
    MECHLAB_CHECK(!too_big, "config: \"", key, "\" must be at most ", hi, ", got ", v.dump());
    // Every integer key is a size or a count (>= 0): say so, not -2^31.
    MECHLAB_CHECK(!too_small, "config: \"", key, "\" must be >= 0, got ", v.dump());
    out = v.is_number_integer() ? static_cast<T>(v.get<int64_t>()) : static_cast<T>(d);
  } else {
    out = v.get<T>();
  }
}

void read_bool(const nlohmann::json& j, const char* key, bool& out) {
  if (!j.contains(key)) return;
  MECHLAB_CHECK(j.at(key).is_boolean(), "config: \"", key, "\" must be true or false");
  out = j.at(key).get<bool>();
}

nlohmann::json rope_scaling_to_json(const RopeScaling& s) {
  nlohmann::json j;
  j["kind"] = to_string(s.kind);
  j["factor"] = s.factor;
  if (s.kind == RopeScalingKind::llama3) {
    j["low_freq_factor"] = s.low_freq_factor;
    j["high_freq_factor"] = s.high_freq_factor;
    j["original_max_position_embeddings"] = s.original_max_position_embeddings;
  }
  return j;
}

RopeScaling rope_scaling_from_json(const nlohmann::json& j) {
  MECHLAB_CHECK(j.is_object(), "config: \"rope_scaling\" must be an object, got ", j.dump());
  MECHLAB_CHECK(j.contains("kind") && j.contains("factor"),
                "config: \"rope_scaling\" needs \"kind\" and \"factor\", got ", j.dump());
  RopeScaling s;
  s.kind = parse_enum(j["kind"], "rope_scaling.kind", kRopeScalings);
  std::vector<const char*> keys{"kind", "factor"};
  if (s.kind == RopeScalingKind::llama3) {
    for (const char* k : {"low_freq_factor", "high_freq_factor",
                          "original_max_position_embeddings"}) {
      MECHLAB_CHECK(j.contains(k), "config: llama3 \"rope_scaling\" needs \"", k, "\"");
      keys.push_back(k);
    }
  }
  for (const auto& item : j.items()) {
    bool known = false;
    for (const char* k : keys) known = known || item.key() == k;
    MECHLAB_CHECK(known, "config: \"rope_scaling\" of kind ", to_string(s.kind),
                  " has an unknown key \"", item.key(), "\"");
  }
  read_number(j, "factor", s.factor);
  read_number(j, "low_freq_factor", s.low_freq_factor);
  read_number(j, "high_freq_factor", s.high_freq_factor);
  read_number(j, "original_max_position_embeddings", s.original_max_position_embeddings);
  return s;
}

// The parameter count in N: int64_t for the exact count of a validated
// config, double for the overflow-free estimate that validate() checks first
// (each size may be up to 2^31 - 1, so products overflow int64).
template <typename N>
N count_parameters(const ModelConfig& c) {
  const N dm = c.d_model, dh = c.d_head, H = c.n_heads, K = c.kv_heads(), d_mlp = c.d_mlp,
          d_vocab = c.d_vocab, n_ctx = c.n_ctx;
  N n = d_vocab * dm;  // W_E
  if (c.positional == Positional::learned) n += n_ctx * dm;
  // The _pre norms have no parameters (they were folded into the readers).
  const N norm_params = c.norm == NormKind::layernorm ? 2 * dm : c.norm == NormKind::rmsnorm ? dm : N(0);
  N per_layer = norm_params;                      // ln1
  per_layer += H * dm * dh + H * dh;                    // W_Q, b_Q
  per_layer += 2 * (K * dm * dh + K * dh);              // W_K, b_K, W_V, b_V
  per_layer += H * dh * dm + dm;                        // W_O, b_O
  if (c.has_mlp()) {
    per_layer += norm_params;                           // ln2
    per_layer += dm * d_mlp + d_mlp + d_mlp * dm + dm;  // W_in, b_in, W_out, b_out
    if (c.mlp == MlpKind::gated) per_layer += dm * d_mlp;          // W_gate
  }
  n += per_layer * N(c.n_layers);
  if (c.final_norm) n += norm_params;
  if (!c.tied_embeddings) n += dm * d_vocab;
  n += d_vocab;  // b_U
  return n;
}

// Refuses a config whose parameters alone would not fit in this machine's
// memory, before anything is allocated (an absurd size in a config file
// would otherwise end in std::bad_alloc or the OOM killer). Counted at
// 2 bytes a parameter, the smallest dtype mechlab holds weights in.
void check_fits_in_memory(const ModelConfig& c) {
  const double params = count_parameters<double>(c);
  const double bytes = 2 * params;
  const long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page_size <= 0) return;  // unknown: let the allocator decide
  const double memory = double(pages) * double(page_size);
  // "340" or "2.4e+12": llround of an absurd count would overflow.
  auto approx = [](double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, v < 1e6 ? "%.0f" : "%.2g", std::ceil(v));
    return std::string(buf);
  };
  MECHLAB_CHECK(bytes <= memory, "config: the model needs about ", approx(bytes / 1e9),
                " GB for its ", approx(params), " parameters even in bfloat16, more than this "
                "machine's ", approx(memory / 1e9), " GB of memory; check n_layers, d_model, "
                "d_mlp, d_vocab, n_heads and d_head");
}

}  // namespace

const char* to_string(RopeScalingKind k) {
  switch (k) {
    case RopeScalingKind::linear: return "linear";
    case RopeScalingKind::llama3: return "llama3";
  }
  return "?";
}

const char* to_string(Positional p) {
  switch (p) {
    case Positional::learned: return "learned";
    case Positional::rotary: return "rotary";
    case Positional::none: return "none";
  }
  return "?";
}
const char* to_string(NormKind n) {
  switch (n) {
    case NormKind::layernorm: return "layernorm";
    case NormKind::rmsnorm: return "rmsnorm";
    case NormKind::layernorm_pre: return "layernorm_pre";
    case NormKind::rmsnorm_pre: return "rmsnorm_pre";
    case NormKind::none: return "none";
  }
  return "?";
}
const char* to_string(Activation a) {
  switch (a) {
    case Activation::gelu_new: return "gelu_new";
    case Activation::gelu: return "gelu";
    case Activation::relu: return "relu";
    case Activation::silu: return "silu";
  }
  return "?";
}
const char* to_string(MlpKind m) {
  switch (m) {
    case MlpKind::standard: return "standard";
    case MlpKind::gated: return "gated";
    case MlpKind::none: return "none";
  }
  return "?";
}

const char* to_string(ProcessingStep s) {
  switch (s) {
    case ProcessingStep::fold_ln: return "fold_ln";
    case ProcessingStep::center_writing_weights: return "center_writing_weights";
    case ProcessingStep::center_unembed: return "center_unembed";
    case ProcessingStep::fold_value_biases: return "fold_value_biases";
  }
  return "?";
}

ProcessingStep parse_processing_step(const std::string& name, const std::string& what) {
  std::string options;
  for (ProcessingStep s : kSteps) {
    if (name == to_string(s)) return s;
    options += std::string(options.empty() ? "" : ", ") + to_string(s);
  }
  throw Error(str_cat(what, ": unknown weight-processing step \"", name,
                      "\"; expected one of: ", options));
}

bool ModelConfig::was_processed(ProcessingStep step) const {
  for (ProcessingStep s : processed) {
    if (s == step) return true;
  }
  return false;
}

std::string ModelConfig::describe_n_ctx() const {
  std::string text = "n_ctx = " + std::to_string(n_ctx);
  if (sliding_window > 0 && sliding_window == n_ctx) {
    text += ", its sliding-window size (mechlab runs a sliding-window model only on "
            "sequences that fit in the window, where windowed attention is exactly full "
            "causal attention)";
  }
  return text;
}

double ModelConfig::scale() const {
  return attn_scale ? *attn_scale : std::sqrt(static_cast<double>(d_head));
}

std::string RopeScaling::problem() const {
  if (!(factor > 0 && std::isfinite(factor))) {
    return str_cat("factor must be positive, got ", factor);
  }
  if (kind != RopeScalingKind::llama3) return "";
  if (!(low_freq_factor > 0)) {
    return str_cat("low_freq_factor must be positive, got ", low_freq_factor);
  }
  // The blend divides by high_freq_factor - low_freq_factor.
  if (!(high_freq_factor > low_freq_factor && std::isfinite(high_freq_factor))) {
    return str_cat("high_freq_factor (", high_freq_factor, ") must be greater than "
                   "low_freq_factor (", low_freq_factor, ")");
  }
  if (original_max_position_embeddings <= 0) {
    return str_cat("original_max_position_embeddings must be positive, got ",
                   original_max_position_embeddings);
  }
  return "";
}

void ModelConfig::validate() const {
  auto positive = [](int v, const char* key) {
    MECHLAB_CHECK(v > 0, "config: \"", key, "\" must be > 0, got ", v);
  };
  positive(n_layers, "n_layers");
  positive(d_model, "d_model");
  positive(n_heads, "n_heads");
  positive(d_head, "d_head");
  positive(d_vocab, "d_vocab");
  positive(n_ctx, "n_ctx");
  MECHLAB_CHECK(sliding_window >= 0, "config: \"sliding_window\" must be >= 0 (0 means none), got ",
                sliding_window);
  MECHLAB_CHECK(sliding_window == 0 || n_ctx <= sliding_window, "config: n_ctx (", n_ctx,
                ") must not exceed sliding_window (", sliding_window,
                "): mechlab runs a sliding-window model only on sequences that fit in the window");
  MECHLAB_CHECK(n_kv_heads >= 0, "config: \"n_kv_heads\" must be >= 0 (0 means n_heads)");
  MECHLAB_CHECK(n_heads % kv_heads() == 0, "config: n_heads (", n_heads,
                ") must be a multiple of n_kv_heads (", kv_heads(), ")");
  if (has_mlp()) positive(d_mlp, "d_mlp");
  // rotary_dims() would silently take d_head for a negative value.
  MECHLAB_CHECK(rotary_dim >= 0, "config: \"rotary_dim\" must be >= 0 (0 means d_head), got ",
                rotary_dim);
  if (positional == Positional::rotary) {
    MECHLAB_CHECK(rotary_dims() <= d_head && rotary_dims() % 2 == 0, "config: rotary_dim (",
                  rotary_dims(), ") must be even and at most d_head (", d_head, ")");
    MECHLAB_CHECK(std::isfinite(rotary_base) && rotary_base > 0,
                  "config: \"rotary_base\" must be finite and > 0, got ", rotary_base);
  }
  if (rope_scaling) {
    MECHLAB_CHECK(positional == Positional::rotary, "config: rope_scaling needs rotary positions "
                  "(positional is \"", to_string(positional), "\")");
    const std::string problem = rope_scaling->problem();
    MECHLAB_CHECK(problem.empty(), "config: rope_scaling ", problem);
  }
  // eps is added to a variance of order 1: 0 divides by zero on a constant
  // vector, and above 1 it dominates (a typo such as 1e5 for 1e-5).
  MECHLAB_CHECK(std::isfinite(norm_eps) && norm_eps > 0, "config: \"norm_eps\" must be > 0, got ",
                norm_eps);
  MECHLAB_CHECK(norm_eps <= 1, "config: \"norm_eps\" must be at most 1, got ", norm_eps,
                " (typical values are 1e-5 or 1e-6)");
  // Inf would make every attention score 0: uniform attention, no error.
  MECHLAB_CHECK(!attn_scale || (std::isfinite(*attn_scale) && *attn_scale > 0),
                "config: \"attn_scale\" must be finite and > 0, got ", attn_scale.value_or(0));
  MECHLAB_CHECK(!(parallel_attn_mlp && !has_mlp()),
                "config: parallel_attn_mlp needs an MLP (mlp is \"none\")");
  check_fits_in_memory(*this);
  for (size_t i = 0; i < processed.size(); ++i) {
    for (size_t k = 0; k < i; ++k) {
      MECHLAB_CHECK(processed[k] != processed[i], "config: \"processed\" lists \"",
                    to_string(processed[i]), "\" twice");
    }
  }
  MECHLAB_CHECK(!was_processed(ProcessingStep::fold_ln) || norm == NormKind::layernorm_pre ||
                    norm == NormKind::rmsnorm_pre,
                "config: \"processed\" lists fold_ln but norm is \"", to_string(norm),
                "\"; folded norms are layernorm_pre or rmsnorm_pre");
}

std::string ModelConfig::hash() const {
  // FNV-1a over the canonical JSON; stable across runs and platforms.
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : to_json_string()) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  std::ostringstream os;
  os << std::hex << std::setw(16) << std::setfill('0') << h;
  return os.str();
}

int64_t ModelConfig::parameter_count() const { return count_parameters<int64_t>(*this); }

nlohmann::json ModelConfig::to_json() const {
  nlohmann::json j;
  j["name"] = name;
  j["n_layers"] = n_layers;
  j["d_model"] = d_model;
  j["n_heads"] = n_heads;
  j["n_kv_heads"] = n_kv_heads;
  j["d_head"] = d_head;
  j["d_mlp"] = d_mlp;
  j["d_vocab"] = d_vocab;
  j["n_ctx"] = n_ctx;
  // Only when set, so models without a window keep their config hash.
  if (sliding_window > 0) j["sliding_window"] = sliding_window;
  j["positional"] = to_string(positional);
  j["rotary_dim"] = rotary_dim;
  j["rotary_base"] = rotary_base;
  // Only when set, so plain-RoPE models keep their config hash.
  if (rope_scaling) j["rope_scaling"] = rope_scaling_to_json(*rope_scaling);
  j["norm"] = to_string(norm);
  j["norm_eps"] = norm_eps;
  j["final_norm"] = final_norm;
  j["act"] = to_string(act);
  j["mlp"] = to_string(mlp);
  j["parallel_attn_mlp"] = parallel_attn_mlp;
  j["tied_embeddings"] = tied_embeddings;
  if (attn_scale) j["attn_scale"] = *attn_scale;
  // Only when non-empty, so unprocessed models keep their config hash.
  if (!processed.empty()) {
    auto& steps = j["processed"] = nlohmann::json::array();
    for (ProcessingStep s : processed) steps.push_back(to_string(s));
  }
  return j;
}

ModelConfig ModelConfig::from_json(const nlohmann::json& j) {
  MECHLAB_CHECK(j.is_object(), "config must be a JSON object, got ", j.type_name());
  static const char* kKnown[] = {"name", "n_layers", "d_model", "n_heads", "n_kv_heads",
                                 "d_head", "d_mlp", "d_vocab", "n_ctx", "sliding_window", "positional",
                                 "rotary_dim", "rotary_base", "rope_scaling", "norm", "norm_eps", "final_norm",
                                 "act", "mlp", "parallel_attn_mlp", "tied_embeddings",
                                 "attn_scale", "processed"};
  for (const auto& item : j.items()) {
    bool known = false;
    for (const char* k : kKnown) known = known || item.key() == k;
    MECHLAB_CHECK(known, "config: unknown key \"", item.key(),
                  "\" (a typo? see docs/ARCHITECTURE.md for the keys)");
  }
  for (const char* required : {"n_layers", "d_model", "n_heads", "d_head", "d_vocab", "n_ctx"}) {
    MECHLAB_CHECK(j.contains(required), "config: missing required key \"", required, "\"");
  }
  ModelConfig c;
  if (j.contains("name")) {
    MECHLAB_CHECK(j["name"].is_string(), "config: \"name\" must be a string");
    c.name = j["name"].get<std::string>();
  }
  read_number(j, "n_layers", c.n_layers);
  read_number(j, "d_model", c.d_model);
  read_number(j, "n_heads", c.n_heads);
  read_number(j, "n_kv_heads", c.n_kv_heads);
  read_number(j, "d_head", c.d_head);
  read_number(j, "d_mlp", c.d_mlp);
  read_number(j, "d_vocab", c.d_vocab);
  read_number(j, "n_ctx", c.n_ctx);
  read_number(j, "sliding_window", c.sliding_window);
  if (j.contains("positional")) c.positional = parse_enum(j["positional"], "positional", kPositionals);
  read_number(j, "rotary_dim", c.rotary_dim);
  read_number(j, "rotary_base", c.rotary_base);
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
    c.rope_scaling = rope_scaling_from_json(j["rope_scaling"]);
  }
  if (j.contains("norm")) c.norm = parse_enum(j["norm"], "norm", kNorms);
  read_number(j, "norm_eps", c.norm_eps);
  read_bool(j, "final_norm", c.final_norm);
  if (j.contains("act")) c.act = parse_enum(j["act"], "act", kActs);
  if (j.contains("mlp")) c.mlp = parse_enum(j["mlp"], "mlp", kMlps);
  read_bool(j, "parallel_attn_mlp", c.parallel_attn_mlp);
  read_bool(j, "tied_embeddings", c.tied_embeddings);
  if (j.contains("attn_scale") && !j["attn_scale"].is_null()) {
    double s = 0;
    read_number(j, "attn_scale", s);
    c.attn_scale = s;
  }
  if (j.contains("processed")) {
    const auto& steps = j["processed"];
    MECHLAB_CHECK(steps.is_array(), "config: \"processed\" must be a list of step names, got ",
                  steps.dump());
    for (const auto& s : steps) {
      MECHLAB_CHECK(s.is_string(), "config: \"processed\" entries must be strings, got ",
                    s.dump());
      c.processed.push_back(parse_processing_step(s.get<std::string>(), "config: \"processed\""));
    }
  }
  if (c.norm == NormKind::none) c.final_norm = false;
  c.validate();
  return c;
}

std::string ModelConfig::to_json_string(int indent) const { return to_json().dump(indent); }

ModelConfig ModelConfig::from_json_string(const std::string& text) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {  // parse errors, and 1e999 (out_of_range)
    throw Error(str_cat("config is not valid JSON: ", e.what()));
  }
  return from_json(j);
}

}  // namespace mechlab::core
