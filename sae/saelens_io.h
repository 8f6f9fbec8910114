// SAELens interop: SAELens 6.x's folder layout, cfg.json + sae_weights.safetensors
// (what SAE.save_model / save_inference_model write and SAE.load_from_disk reads).
//
// cfg.json keys read: architecture ("standard" = relu, "topk", "jumprelu",
// "gated"), d_in, d_sae, dtype (weights are converted to float32),
// apply_b_dec_to_input (default true), normalize_activations (none or
// constant_norm_rescale), reshape_activations (none, or hook_z: sae.h), k and
// rescale_acts_by_decoder_norm (topk), metadata.hook_name (or a top-level
// hook_name). Tensors: W_enc [d_in, d_sae], b_enc [d_sae] (not gated),
// W_dec [d_sae, d_in], b_dec [d_in]; threshold [d_sae] (jumprelu; or
// log_threshold, as older SAELens files have); b_gate, r_mag, b_mag [d_sae]
// (gated); scaling_factor (older files) only when all ones. Anything else is
// refused, naming the key or tensor. A config without a sae_lens_version of
// 6 or more is read as SAELens 6 reads a pre-6 one (hook_point,
// activation_fn_str, activation_fn_kwargs.k for topk, "standard" by default).
//
// Export writes the keys SAELens's loader requires (saelens_required_keys())
// and the inference keys above. A BatchTopK SAE is written as SAELens
// saves one for inference: a JumpReLU whose threshold is topk_threshold in
// every latent, the decoder norms folded into the encoder when it rescales
// by them.
#pragma once

#include "sae/sae.h"

#include <memory>
#include <string>
#include <vector>

namespace mechlab::sae {

/// The SAE in folder `dir`; one-line errors name the file and the key or
/// tensor (missing, mis-shaped, NaN, unknown architecture).
std::shared_ptr<Sae> import_saelens(const std::string& dir);

struct ExportOptions {
  /// Replace an existing folder (only one that holds a cfg.json).
  MECHLAB_OPTION(ExportOptions, bool, overwrite, false)
};

/// Writes `sae` to folder `dir` (staged in a new "<dir>.tmp.XXXXXX", then
/// renamed: a reader never sees half a folder). With `overwrite` an existing
/// `dir` is replaced only when is_exported_folder(dir).
void export_saelens(const Sae& sae, const std::string& dir, const ExportOptions& opts = {});

/// True when `dir` is a folder holding cfg.json and nothing but cfg.json and
/// sae_weights.safetensors (plain files): what export_saelens writes, so
/// replacing it deletes nothing else.
bool is_exported_folder(const std::string& dir);
/// Removes `dir` when it is_exported_folder; a missing `dir` is fine; any
/// other folder is refused (one line), left intact.
void remove_exported_folder(const std::string& dir);

/// The cfg.json keys SAELens 6.x's SAE.load_from_disk needs: architecture,
/// d_in, d_sae, dtype, metadata.sae_lens_version (>= 6, else it converts the
/// file as a pre-6 one).
const std::vector<std::string>& saelens_required_keys();

}  // namespace mechlab::sae
