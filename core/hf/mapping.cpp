#include "core/hf/mapping.h"

#include "core/hf/hf_tensors.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace mechlab::core::hf {

namespace {

// Copies a strided view element by element (innermost dimension as a memcpy
// run when it is contiguous). T: an integer type of the element's size.
template <typename T>
void strided_copy(const at::Tensor& src, at::Tensor& out) {
  const int64_t dims = src.dim();
  const auto sizes = src.sizes();
  const auto strides = src.strides();
  const T* in = static_cast<const T*>(src.data_ptr());
  T* dst = static_cast<T*>(out.data_ptr());
  const int64_t inner = sizes[dims - 1], inner_stride = strides[dims - 1];
  std::vector<int64_t> index(dims, 0);
  const int64_t rows = src.numel() / inner;
  for (int64_t r = 0; r < rows; ++r) {
    int64_t offset = 0;
    for (int64_t d = 0; d < dims - 1; ++d) offset += index[d] * strides[d];
    if (inner_stride == 1) {
      std::memcpy(dst, in + offset, inner * sizeof(T));
    } else {
      for (int64_t i = 0; i < inner; ++i) dst[i] = in[offset + i * inner_stride];
    }
    dst += inner;
    for (int64_t d = dims - 2; d >= 0; --d) {  // next row index, odometer style
      if (++index[d] < sizes[d]) break;
      index[d] = 0;
    }
  }
}

}  // namespace

at::Tensor materialise(const at::Tensor& view) {
  if (view.is_contiguous()) return view;
  if (view.numel() == 0 || view.numel() >= kSerialCopyElements || view.dim() == 0) {
    return view.contiguous();
  }
  at::Tensor out = at::empty(view.sizes(), view.options());
  switch (view.element_size()) {
    case 2: strided_copy<uint16_t>(view, out); break;
    case 4: strided_copy<uint32_t>(view, out); break;
    case 8: strided_copy<uint64_t>(view, out); break;
    default: return view.contiguous();
  }
  return out;
}

at::Tensor linear_to_heads(const at::Tensor& w, int64_t n, int64_t d_head) {
  return materialise(w.view({n, d_head, w.size(1)}).transpose(1, 2));
}

at::Tensor out_proj_to_heads(const at::Tensor& w, int64_t n, int64_t d_head) {
  return materialise(w.view({w.size(0), n, d_head}).permute({1, 2, 0}));
}

at::Tensor bias_to_heads(const at::Tensor& b, int64_t n, int64_t d_head) {
  return b.view({n, d_head});
}

at::Tensor transposed(const at::Tensor& w) { return materialise(w.t()); }

at::Tensor zeros(at::IntArrayRef shape, at::ScalarType dtype) {
  at::Tensor z = at::empty(shape, at::TensorOptions(dtype));
  std::memset(z.data_ptr(), 0, z.numel() * z.element_size());  // 0.0 in every float format
  return z;
}

Activation activation_from(const HfConfig& config, const std::string& key,
                           const std::string& fallback) {
  const std::string name = config.get_string(key, fallback);
  // gelu_fast is the same tanh approximation as gelu_new, written differently.
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast") {
    return Activation::gelu_new;
  }
  if (name == "gelu") return Activation::gelu;
  if (name == "relu") return Activation::relu;
  if (name == "silu" || name == "swish") return Activation::silu;
  config.fail(key, "is \"" + name + "\", which mechlab does not implement (supported: gelu_new, "
                   "gelu_pytorch_tanh, gelu_fast, gelu, relu, silu, swish)");
}

std::optional<RopeScaling> read_rope_scaling(const HfConfig& config) {
  if (!config.has("rope_scaling")) return std::nullopt;
  const nlohmann::json& s = config.json().at("rope_scaling");
  if (!s.is_object()) config.fail("rope_scaling", "must be an object, got " + describe_json(s));
  // Older transformers wrote "type"; newer ones write "rope_type" (and, on
  // re-saving an old config, both).
  auto type_it = s.find("rope_type");
  const auto old_it = s.find("type");
  if (type_it == s.end()) type_it = old_it;
  if (old_it != s.end() && *old_it != *type_it) {
    config.fail("rope_scaling", "has \"rope_type\" " + describe_json(*type_it) +
                                    " and \"type\" " + describe_json(*old_it) +
                                    ", which disagree");
  }
  if (type_it == s.end() || !type_it->is_string()) {
    config.fail("rope_scaling", "has no \"rope_type\" (or \"type\") string: " + describe_json(s));
  }
  const std::string type = type_it->get<std::string>();
  if (type == "default") return std::nullopt;
  RopeScaling r;
  if (type == "linear") {
    r.kind = RopeScalingKind::linear;
  } else if (type == "llama3") {
    r.kind = RopeScalingKind::llama3;
  } else {
    config.fail("rope_scaling", "has rope_type \"" + type + "\", which mechlab does not "
                                "implement (supported: default, linear, llama3)");
  }
  auto number = [&](const char* key) {
    const auto it = s.find(key);
    if (it == s.end() || it->is_null()) {
      config.fail("rope_scaling", "of type \"" + type + "\" needs \"" + key + "\"");
    }
    if (!it->is_number()) {
      config.fail("rope_scaling", std::string("\"") + key + "\" must be a number, got " +
                                      describe_json(*it));
    }
    return it->get<double>();
  };
  // Other keys (transformers' own extras) are ignored, as transformers does.
  r.factor = number("factor");
  if (r.kind == RopeScalingKind::llama3) {
    r.low_freq_factor = number("low_freq_factor");
    r.high_freq_factor = number("high_freq_factor");
    const double ctx = number("original_max_position_embeddings");
    if (ctx != std::floor(ctx) || std::abs(ctx) > std::numeric_limits<int>::max()) {
      config.fail("rope_scaling", "\"original_max_position_embeddings\" must be an integer, got " +
                                      describe_json(s.at("original_max_position_embeddings")));
    }
    r.original_max_position_embeddings = static_cast<int>(ctx);
  }
  const std::string problem = r.problem();
  if (!problem.empty()) config.fail("rope_scaling", "of type \"" + type + "\": " + problem);
  return r;
}

std::string detect_prefix(const HfTensors& tensors, const std::string& prefix,
                          const std::string& probe) {
  return tensors.has(prefix + probe) ? prefix : "";
}

std::string folder_name(const std::string& folder) {
  std::string f = folder;
  while (f.size() > 1 && f.back() == '/') f.pop_back();
  const size_t slash = f.find_last_of('/');
  return slash == std::string::npos ? f : f.substr(slash + 1);
}

}  // namespace mechlab::core::hf
