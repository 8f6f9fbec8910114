#include "core/hf/mapping.h"

#include "core/hf/hf_tensors.h"

#include <cstring>
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

void refuse_rope_scaling(const HfConfig& config) {
  if (!config.has("rope_scaling")) return;
  const nlohmann::json& s = config.json().at("rope_scaling");
  if (s.is_object()) {
    const auto type = s.find("rope_type") != s.end() ? s.find("rope_type") : s.find("type");
    if (type != s.end() && *type == "default") return;
  }
  config.fail("rope_scaling", "is " + describe_json(s) +
                                  "; mechlab implements plain rotary embeddings only (no "
                                  "linear/dynamic/yarn/llama3 scaling)");
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
