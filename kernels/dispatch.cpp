#include "kernels/dispatch.h"

namespace mechlab::kernels {

const std::vector<FamilyInfo>& kernel_families() {
  // One line per family. tests/kernels/ fails for a family here without
  // test cases; a KernelFamily not listed here cannot be built.
  static const std::vector<FamilyInfo> families = {
      {"edge_patch", "kernels/edge_patch.h",
       "out[b,p,r,:] = base[b,p,r,:] - sum_s mask[r,s] * delta[b,p,s,:] (patching edges by masks)"},
      {"sae_topk", "kernels/sae_topk.h",
       "indices[n,:] = the k largest entries of x[n,:], largest first (the TopK SAE's selection)"},
      {"sparse_decode", "kernels/sparse_decoder.h",
       "out[n,:] = sum_j values[n,j] * weight[indices[n,j],:] (a TopK SAE's decoder, k rows per row)"},
      {"sparse_decode_grad_values", "kernels/sparse_decoder.h",
       "grad_values[n,j] = grad_out[n,:] . weight[indices[n,j],:] (the sparse decoder's value gradient)"},
      {"sparse_weight_grad", "kernels/sparse_decoder.h",
       "G[c,:] = sum over indices[n,j] = c of coef[n,j] * rows[n,:] (weight gradients of the touched rows only)"},
  };
  return families;
}

const FamilyInfo& kernel_family_info(const std::string& name) {
  for (const auto& f : kernel_families()) {
    if (f.name == name) return f;
  }
  throw Error(str_cat("kernel family '", name,
                      "' is not listed in kernel_families() (kernels/dispatch.cpp); add it there"));
}

}  // namespace mechlab::kernels
