// SAE training on the model-agnostic training loop (core/train/train_loop.h):
// SaeTrainable is a Trainable over a BatchSource (an activation store read
// through shuffled batches, a model run live on a dataset (sae/live_source.h),
// rows in memory, or the toy-superposition generator), and SaeTrainer runs it
// with SAELens 6.x's training semantics:
//
//   step s (0-based), batch x [batch, d_in] from the source:
//     loss = mse_loss + c(s) / c * (l1_loss | l0_loss) + auxiliary terms
//          (Sae::training_forward with the SAE's coefficients c; the
//          sparsity term scaled by the coefficient warmup, SAELens's
//          CoefficientScheduler: c(s) = c * min(1, s / coefficient_warmup_steps))
//     dead mask = latents that fired in none of the last dead_feature_window
//          steps (SAELens's n_forward_passes_since_fired > window), passed
//          to AuxK (TopK, BatchTopK) and JumpReLU's pre-activation loss
//     Adam (AdamW, weight_decay 0), gradient norm clipped at 1, lr with
//          linear warmup then cosine decay to min_lr (min_lr = lr: constant,
//          SAELens's default)
//   before step 0 (a fresh run): W_dec rows uniform (kaiming_uniform) scaled
//     to norm decoder_init_norm (SAELens's 0.1 heuristic), W_enc = W_dec^T,
//     b_enc = 0, and b_dec the geometric median of b_dec_init_rows rows
//     (Weiszfeld, as SAELens <= 5's compute_geometric_median), their mean, or 0.
//   decoder_unit_norm: W_dec rows set to norm 1 before every step and the
//     gradient's component along each row removed (SAELens 5's
//     normalize_sae_decoder).
//
// Exact resume: the batch of step s depends only on the loop's generator
// (toy), on s (in-memory rows: epoch permutations seeded by seed + epoch), or
// on the order of ShuffledBatches (a store; a resume replays the first s
// batches' reads, which costs a pass over them), or on the live source's
// order (a resume replays the model forwards of the first s batches). The dead-latent counters and
// BatchTopK's threshold are stored beside the parameters, so a resumed run
// computes what an uninterrupted one would, bit for bit.
//
// Data parallel (SaeTrainerOptions::process_group, world size W > 1):
// batch_size stays the global batch and must divide by W; rank r trains on
// rows [r B/W, (r+1) B/W) of it. The toy source and rows in memory draw the
// whole global batch on every rank (the same as one process's) and keep the
// rank's slice; a store is read in W disjoint parts (ShuffleOptions::part),
// each rank through its own ShuffledBatches (seed + rank, B/W rows), so the
// global batch is not one process's. The latents' firing of a step is
// all-reduced (max) before the dead-latent counters move, so they agree on
// every rank. BatchTopK is refused (its top k x batch spans the whole batch
// and its threshold follows it). On CUDA each rank trains on its own GPU
// (device "cuda" means cuda:LOCAL_RANK: core::dist::data_parallel_device)
// and the collectives are NCCL's; on the CPU, Gloo's. Rank 0 alone writes
// files, logs and draws the progress bar.
//
// Device (SaeTrainConfig::device): the SAE, its dead-latent counters and the
// evaluation rows live there; batches are read on the CPU and moved. The
// checkpoint holds CPU tensors and its identity leaves the device out, so a
// run resumes on another device (the same run, not bit for bit).
//
// Files in out_dir: checkpoint.h5 (the SAE under /sae, the trainer's
// counters under /sae_trainer, the loop's state under /train), train_log.csv
// and .svg (the loop's, labelled for an SAE: training loss, evaluation MSE,
// explained variance, and MMCS on a toy source), sae_log.csv (per evaluation: tokens, L0, MSE, FVU,
// explained variance, dead fraction, MMCS) and its chart sae_log.svg, and at
// the end sae/ (an SAELens
// folder, sae/saelens_io.h) and config.json.
//
// Example:
//   auto cfg = SaeTrainConfig::from_json(nlohmann::json::parse(R"({"sae": {"architecture": "topk",
//       "d_in": 256, "d_sae": 1024, "k": 8}, "data": {"toy": {}}, "steps": 1000})"));
//   SaeTrainer trainer(cfg, SaeTrainerOptions().out_dir("runs/toy"));
//   SaeTrainResult r = trainer.run();        // r.eval.mmcs
#pragma once

#include "core/train/train_loop.h"
#include "core/train/trainable.h"
#include "core/util/options.h"
#include "sae/sae.h"
#include "sae/toy_superposition.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace mechlab::sae {

// ------------------------------------------------------------------ helpers

struct GeometricMedianOptions {
  /// Distances are clamped below at eps (a point on the median).
  MECHLAB_OPTION(GeometricMedianOptions, double, eps, 1e-6)
  MECHLAB_OPTION(GeometricMedianOptions, int64_t, max_iter, 100)
  /// Stop when the objective improves by at most ftol x its value.
  MECHLAB_OPTION(GeometricMedianOptions, double, ftol, 1e-20)
};

/// The point minimising the sum of Euclidean distances to the rows of
/// `points` [n, d] (Weiszfeld's iteration from the mean: each step the
/// mean weighted by 1 / max(eps, distance)). Returns [d] in points' dtype,
/// computed in float64.
at::Tensor geometric_median(const at::Tensor& points, const GeometricMedianOptions& options = {});

/// SAELens's coefficient warmup: the coefficient of step `step` (0-based),
/// final_value * min(1, step / warmup_steps); warmup_steps 0 = final_value.
double warmed_up_coefficient(double final_value, int64_t warmup_steps, int64_t step);

// ------------------------------------------------------------------ sources

/// Where training rows come from. Batches are float32 [batch, d_in].
class BatchSource {
 public:
  virtual ~BatchSource() = default;
  virtual int64_t d_in() const = 0;
  /// The batch of step `step`; called for steps 0, 1, 2, ... in order (a
  /// store source replays to reach another step). `rng` is the loop's.
  virtual at::Tensor batch(int64_t step, int64_t batch_size, at::Generator& rng) = 0;
  /// A fixed evaluation batch of up to n rows (the same every call).
  virtual at::Tensor eval_rows(int64_t n) = 0;
  /// Rows for the b_dec initialisation (the same every call).
  virtual at::Tensor init_rows(int64_t n) = 0;
  /// The ground-truth feature directions [F, d_in], or undefined.
  virtual at::Tensor ground_truth() const { return {}; }
  /// True when the source reads only this rank's part of the data (a store
  /// in parts): batch() then gets the rank's batch size, not the global one.
  virtual bool reads_own_part() const { return false; }
  /// What the rows are, for a resume's check that the data is the same
  /// (an activation store: its model's config hash, dataset fingerprint,
  /// rows and dtype); null when the config's data entry says it all.
  virtual nlohmann::json content_identity() const { return nullptr; }
};

/// The toy generator: batches drawn with the loop's generator; evaluation and
/// initialisation rows from generators seeded by the toy's seed + 1 and + 2.
std::unique_ptr<BatchSource> toy_source(const ToyOptions& options);
/// Rows in memory [n, d_in] (refused, naming the row, when one is not
/// finite): epoch e visits them in a permutation seeded by seed + e; the
/// evaluation and initialisation rows are the first rows.
std::unique_ptr<BatchSource> tensor_source(at::Tensor rows, uint64_t seed);
/// Hook `hook` of the activation store at `path`, through ShuffledBatches
/// (seeded, mixing buffer of buffer_rows, NaN/Inf refused naming the row);
/// evaluation and initialisation rows are the store's first rows. With
/// parts > 1 it reads only part `part` of the store (seeded seed + part) in
/// batches of batch_size rows: one rank's share of a data-parallel run.
std::unique_ptr<BatchSource> store_source(const std::string& path, const std::string& hook,
                                          uint64_t seed, int64_t batch_size, int64_t buffer_rows,
                                          bool exclude_first_position, int64_t part = 0, int64_t parts = 1);

// ------------------------------------------------------------------ config

/// `mechlab sae train CONFIG`: JSON keys are the option names; "sae" holds
/// SaeConfig's keys (sae_config.h), "data" is {"toy": {ToyOptions keys}},
/// {"store": PATH, "hook": NAME, "buffer_rows": N, "exclude_first_position": B}
/// or, live from a model (sae/live_source.h), {"model": PATH, "dataset": PATH,
/// "hook": NAME, "buffer_rows": N, "exclude_first_position": B,
/// "prompts_per_forward": P}. The SAE's hook_name defaults to data.hook, and an
/// SAE trained at a hook named "..hook_z" is a hook_z SAE (reshape_activations).
struct SaeTrainConfig {
  MECHLAB_OPTION(SaeTrainConfig, std::string, name, "sae")
  MECHLAB_OPTION(SaeTrainConfig, SaeConfig, sae, SaeConfig())
  MECHLAB_OPTION(SaeTrainConfig, nlohmann::json, data, nlohmann::json::object())
  MECHLAB_OPTION(SaeTrainConfig, int64_t, steps, 1000)
  MECHLAB_OPTION(SaeTrainConfig, int64_t, batch_size, 4096)
  MECHLAB_OPTION(SaeTrainConfig, double, lr, 3e-4)
  /// Floor of the cosine decay; unset = lr (a constant rate after warmup).
  MECHLAB_OPTION(SaeTrainConfig, std::optional<double>, min_lr, std::nullopt)
  MECHLAB_OPTION(SaeTrainConfig, int64_t, lr_warmup_steps, 0)
  MECHLAB_OPTION(SaeTrainConfig, double, beta1, 0.9)
  MECHLAB_OPTION(SaeTrainConfig, double, beta2, 0.999)
  MECHLAB_OPTION(SaeTrainConfig, double, grad_clip, 1.0)
  /// Steps over which the L1 / L0 coefficient rises linearly from 0.
  MECHLAB_OPTION(SaeTrainConfig, int64_t, coefficient_warmup_steps, 0)
  /// A latent is dead after this many steps without firing.
  MECHLAB_OPTION(SaeTrainConfig, int64_t, dead_feature_window, 1000)
  /// What acts on dead latents: "auxk" (the dead mask goes to the SAE's
  /// losses: TopK/BatchTopK's AuxK, JumpReLU's pre-activation loss; the
  /// others have no such term), "resample" (Bricken et al. 2023's
  /// resampling every resample_every steps, see SaeTrainable; no dead mask)
  /// or "none" (no dead mask, no resampling).
  MECHLAB_OPTION(SaeTrainConfig, std::string, dead_latent_strategy, "auxk")
  /// Steps between resamplings ("resample"): before steps s, 2s, 3s, ...
  MECHLAB_OPTION(SaeTrainConfig, int64_t, resample_every, 25000)
  /// "zeros" (SAELens 6), "mean" or "geometric_median".
  MECHLAB_OPTION(SaeTrainConfig, std::string, b_dec_init, "zeros")
  MECHLAB_OPTION(SaeTrainConfig, int64_t, b_dec_init_rows, 4096)
  /// Initial decoder row norm; unset = kaiming_uniform as drawn.
  MECHLAB_OPTION(SaeTrainConfig, std::optional<double>, decoder_init_norm, 0.1)
  MECHLAB_OPTION(SaeTrainConfig, bool, decoder_unit_norm, false)
  MECHLAB_OPTION(SaeTrainConfig, int64_t, eval_every, 100)
  MECHLAB_OPTION(SaeTrainConfig, int64_t, eval_rows, 4096)
  MECHLAB_OPTION(SaeTrainConfig, int64_t, checkpoint_every, 1000)
  /// Stop once the evaluation's MMCS (toy source) reaches this; 0 = never.
  MECHLAB_OPTION(SaeTrainConfig, double, stop_at_mmcs, 0.0)
  MECHLAB_OPTION(SaeTrainConfig, uint64_t, seed, 0)
  /// Where the SAE trains (SAELens's `device`): "cpu", "cuda" or "cuda:N".
  /// Batches are read on the CPU and moved there each step; the weights are
  /// initialised on the CPU (the same seed gives the same start anywhere) and
  /// checkpoints hold CPU tensors, so a run resumes on any device: the device
  /// is not part of the identity a resume checks (SaeTrainable::config()).
  MECHLAB_OPTION(SaeTrainConfig, std::string, device, "cpu")

  /// Reads every key above, refusing unknown keys (naming the nearest) and
  /// wrong types, one line naming the key.
  static SaeTrainConfig from_json(const nlohmann::json& j);
  /// A JSON file, as from_json (the CLI also reads YAML).
  static SaeTrainConfig load(const std::string& path);
  nlohmann::json to_json() const;
  /// Refuses values no run can have (steps, sizes, windows, b_dec_init, the SAE's config).
  void validate() const;
};

/// The device a config's `device` names; refuses (one line) anything but
/// cpu, cuda and cuda:N, and CUDA where no CUDA GPU (or no GPU N) is visible.
at::Device training_device(const std::string& device);

/// The source a config names; a store is read in `parts` parts (part
/// `part`, batch_size / parts rows per batch).
std::unique_ptr<BatchSource> make_source(const SaeTrainConfig& cfg, int64_t part = 0, int64_t parts = 1);

// ------------------------------------------------------------------ trainable

/// One evaluation's figures.
struct SaeEval {
  int64_t step = 0;
  int64_t tokens = 0;  ///< rows trained on so far
  double l0 = 0, mse = 0, fvu = 0, explained_variance = 0;
  double dead_fraction = 0;  ///< latents silent for more than dead_feature_window steps
  double mmcs = -1;          ///< against the ground truth; -1 without one
};

/// The progress bar's status text for an evaluation: "L0 31.2  FVU 0.0812
/// dead 0.4%" (and "  MMCS 0.991" with a ground truth); "" before the first
/// evaluation (step 0 of a fresh run).
std::string progress_status(const SaeEval& e);

class SaeTrainable : public core::train::Trainable {
 public:
  /// A freshly initialised SAE (seeded by cfg.seed) over `source`; refuses
  /// a source whose rows are not d_in wide.
  SaeTrainable(SaeTrainConfig cfg, std::unique_ptr<BatchSource> source);

  std::vector<at::Tensor> parameters() override;
  std::vector<std::string> parameter_names() const override;
  at::Tensor loss(int64_t step, at::Generator& rng) override;
  core::train::Evaluation evaluate() override;
  /// The run's identity for resume: the config without `device` (a run may
  /// continue on another device; see SaeTrainConfig::device), data defaults
  /// filled in, and a store named by its content_identity(), not its path.
  nlohmann::json config() const override;
  void save_state(const std::string& path,
                  const std::function<void(core::H5File&)>& write_loop_state) const override;
  void load_state(const std::string& path) override;

  Sae& sae() { return *sae_; }
  const Sae& sae() const { return *sae_; }
  const SaeTrainConfig& train_config() const { return cfg_; }
  /// Where the SAE and each batch live (the config's device).
  at::Device device() const { return device_; }
  BatchSource& source() { return *source_; }
  /// Steps since each latent last fired: int64 [d_sae].
  const at::Tensor& steps_since_fired() const { return since_fired_; }
  /// The figures of the latest evaluation, and one row per scheduled one.
  const SaeEval& last_eval() const { return last_eval_; }
  const std::vector<SaeEval>& eval_log() const { return eval_log_; }
  /// sae_log.csv's text, and sae_log.svg's (L0, FVU and dead fraction,
  /// MMCS with a ground truth, against the step).
  std::string eval_log_csv() const;
  std::string eval_log_svg() const;
  /// Called after each step's forward pass with the rows it trained on.
  std::function<void(int64_t rows)> on_step;
  /// Called after each evaluation with its figures (the progress line).
  std::function<void(const SaeEval&)> on_eval;
  /// Where evaluations write sae_log.csv, and .svg beside it ("" = nowhere).
  std::string log_path;
  /// Train data parallel over `group` (null = one process): refuses a
  /// batch_size that does not divide by the world size, BatchTopK and
  /// resampling; on CUDA tells the group its device (ProcessGroup::set_device:
  /// NCCL starts there; two ranks on one GPU are refused). Every rank calls it.
  void set_process_group(std::shared_ptr<core::dist::ProcessGroup> group);

  /// Resampling of dead latents (dead_latent_strategy "resample"; Bricken et
  /// al. 2023, "Towards Monosemanticity", neuron resampling), run by loss()
  /// before the forward pass of steps resample_every, 2 resample_every, ...:
  /// each latent dead by dead_feature_window gets an input row j of the
  /// step's batch x [batch, d_in], drawn (with replacement) with probability
  /// proportional to the square of its reconstruction loss ||x_j - sae(x_j)||^2,
  /// from `rng` (the loop's); with v = x_j - b_dec (b_dec only when it is
  /// subtracted from the input) its W_dec row becomes v / |v|, its W_enc
  /// column v / |v| * 0.2 * (the mean norm of the alive latents' W_enc
  /// columns), its b_enc 0, its dead-latent counter 0, and its Adam moments
  /// (W_dec row, W_enc column, b_enc entry) are zeroed through
  /// reset_optimizer_rows. Returns the latents resampled.
  at::Tensor resample_dead_latents(const at::Tensor& x, at::Generator& rng);
  /// Zeroes the optimiser's moments of parameter `name` at `index` along
  /// `dim` (SaeTrainer sets it to its loop's AdamW; unset = no optimiser).
  std::function<void(const std::string& name, int64_t dim, const at::Tensor& index)> reset_optimizer_rows;

 private:
  void init_weights();
  void hook_decoder();

  SaeTrainConfig cfg_;
  at::Device device_ = at::kCPU;
  std::unique_ptr<BatchSource> source_;
  std::shared_ptr<Sae> sae_;
  at::Tensor since_fired_;  // int64 [d_sae], on device_
  at::Tensor eval_x_;       // [eval rows, d_in], on device_
  std::shared_ptr<core::dist::ProcessGroup> group_;
  int64_t steps_done_ = 0;
  SaeEval last_eval_;
  std::vector<SaeEval> eval_log_;
};

// ------------------------------------------------------------------ trainer

struct SaeTrainerOptions {
  /// Where checkpoint.h5, the logs and sae/ go; "" writes nothing.
  MECHLAB_OPTION(SaeTrainerOptions, std::string, out_dir, "")
  MECHLAB_OPTION(SaeTrainerOptions, bool, resume, false)
  MECHLAB_OPTION(SaeTrainerOptions, bool, overwrite, false)
  /// A progress bar on stderr: tokens/s, and the latest evaluation's L0, FVU
  /// and dead fraction (progress_status), updated at each evaluation.
  MECHLAB_OPTION(SaeTrainerOptions, bool, progress, true)
  /// Data-parallel training over this group (see the top of this file);
  /// null = one process.
  MECHLAB_OPTION(SaeTrainerOptions, std::shared_ptr<core::dist::ProcessGroup>, process_group, nullptr)
};

struct SaeTrainResult {
  int64_t steps = 0;
  int64_t steps_this_session = 0;
  bool stopped_early = false;     ///< reached stop_at_mmcs
  bool already_complete = false;  ///< a resumed run that had finished
  SaeEval eval;                   ///< at the last step
  double seconds = 0;             ///< this session's training time
};

class SaeTrainer {
 public:
  /// Builds the source and SAE, or with options.resume restores both from
  /// out_dir/checkpoint.h5 (same config).
  explicit SaeTrainer(SaeTrainConfig cfg, SaeTrainerOptions options = {});
  /// As above over a given source (rows in memory, a custom generator).
  SaeTrainer(SaeTrainConfig cfg, std::unique_ptr<BatchSource> source, SaeTrainerOptions options = {});

  /// Trains until `steps`, stop_at_mmcs or max_steps more steps (-1 = no
  /// limit); writes the checkpoint, logs, sae/ and config.json at the end.
  /// A bad batch (NaN in the store) stops it with an error naming the row
  /// and the checkpoint that is kept.
  SaeTrainResult run(int64_t max_steps = -1);

  Sae& sae() { return trainable_->sae(); }
  SaeTrainable& trainable() { return *trainable_; }
  const core::train::TrainLoop& loop() const { return *loop_; }

 private:
  SaeTrainerOptions options_;
  std::unique_ptr<SaeTrainable> trainable_;
  std::unique_ptr<core::train::TrainLoop> loop_;
};

}  // namespace mechlab::sae
