// mechlab bench sae: training throughput of a TopK SAE (Gao et al. 2024) on
// cached activations, in tokens/s: the sparse training path (sae/sparse_ops.h,
// the default) against the dense one, whole steps as a training loop runs
// them (training_forward with the dead-latent mask, the firing counts,
// backward, gradient clipping at 1, AdamW from core/train/adamw.h with no
// weight decay, i.e. Adam, as SAELens's trainer does). Rows:
//   sparse step / dense step   the two paths, same SAE, same batches
//   encoder GEMM               sae_in @ W_enc alone, preallocated: the one
//                              dense product the sparse step cannot avoid
//   fma-peak floor             (CPU) derived: the sparse step's FLOPs (the
//                              encoder GEMM plus 2 * batch * k * d_in per
//                              sparse product: decoder, its two gradients,
//                              the encoder's weight and input gradients) at
//                              this CPU's measured peak FMA rate
//   SAELens rows               with --saelens-json, measured by
//                              scripts/bench/sae_vs_saelens.sh in the same run
// and the peak memory after each path (RSS on the CPU, the caching
// allocator's peak on a GPU).
//
// --world-size N (CPU, Gloo; CUDA/NCCL is not timed here: it needs one GPU
// per process and a launcher): data-parallel scaling of the sparse step. The
// command measures one process on the global batch, then starts N-1 copies
// of itself (RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT set, no launcher
// needed) and, as rank 0, times the same global batch split N ways: each
// rank's B/N rows, the firing counts all-reduced (max) and the gradients
// all-reduced (one buffer, sum / N) before clipping and Adam, as
// `mechlab sae train` does under a launcher. Prints tokens/s per process and
// in total, and the scaling efficiency total_N / (N x total_1).
#include "apps/bench/bench_util.h"
#include "apps/bench/cpu_peak.h"
#include "apps/cli/commands.h"
#include "core/dist/process_group.h"
#include "core/train/adamw.h"
#include "core/util/error.h"
#include "sae/registry.h"
#include "sae/topk_sae.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#ifdef MECHLAB_HAVE_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include <arpa/inet.h>
#include <netinet/in.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

extern char** environ;

namespace mechlab::cli {
namespace {

struct SaeBenchArgs {
  int64_t d_in = 768, d_sae = 24576, batch = 4096, batches = 4;
  int k = 32, steps = 5, warmup = 1;
  double lr = 4e-4;
  uint64_t seed = 0;
  std::string device = "cpu", activations, saelens_json, cases = "sparse,dense", architecture = "topk";
  bool tf32 = false;
  bool rescale = true;  // SAELens's TopKTrainingSAEConfig default
  int64_t world_size = 1;
  double dist_timeout = 120;
};

/// [n, d_in] float32 from a raw little-endian float32 file (rows of d_in).
at::Tensor read_activations(const std::string& path, int64_t d_in) {
  std::error_code ec;
  const auto bytes = static_cast<int64_t>(std::filesystem::file_size(path, ec));
  MECHLAB_CHECK(!ec, "cannot read --activations '", path, "': ", ec.message());
  const int64_t row = d_in * static_cast<int64_t>(sizeof(float));
  MECHLAB_CHECK(bytes > 0 && bytes % row == 0, "--activations '", path, "' holds ", bytes,
                " bytes, not a whole number of float32 rows of d_in = ", d_in, " (", row,
                " bytes each); write it as rows of --d-in float32 values");
  at::Tensor x = at::empty({bytes / row, d_in}, at::kFloat);  // [n, d_in]
  std::ifstream in(path, std::ios::binary);
  in.read(static_cast<char*>(x.data_ptr()), bytes);
  MECHLAB_CHECK(in.good() && in.gcount() == bytes, "cannot read --activations '", path, "' whole");
  return x;
}

int64_t device_peak_bytes(const at::Device& device) {
#ifdef MECHLAB_HAVE_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    return stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak;
  }
#endif
  (void)device;
  return bench::peak_rss_bytes();
}

void reset_device_peak(const at::Device& device) {
#ifdef MECHLAB_HAVE_CUDA
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(device.index());
#endif
  (void)device;
}

void run_bench_sae(const SaeBenchArgs& a) {
  const at::Device device = parse_device(a.device);
  MECHLAB_CHECK(a.k <= a.d_sae, "--k ", a.k, " must be at most --d-sae ", a.d_sae);
  MECHLAB_CHECK(a.architecture == "topk" || a.architecture == "batchtopk", "--architecture must be topk or batchtopk, got \"",
                a.architecture, "\"");
  if (a.tf32) at::globalContext().setAllowTF32CuBLAS(true);

  // The cached activations: a file from the driver, or seeded Gaussians.
  at::Tensor data;  // [n, d_in]
  std::string source;
  if (!a.activations.empty()) {
    data = read_activations(a.activations, a.d_in);
    source = a.activations;
  } else {
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(a.seed);
    data = at::randn({a.batch * a.batches, a.d_in}, gen, at::TensorOptions().dtype(at::kFloat));
    source = str_cat("seeded Gaussian, seed ", a.seed);
  }
  MECHLAB_CHECK(data.size(0) >= a.batch, "--activations holds ", data.size(0), " rows, fewer than one --batch of ",
                a.batch);
  const int64_t n_batches = data.size(0) / a.batch;
  data = data.slice(0, 0, n_batches * a.batch).to(device).view({n_batches, a.batch, a.d_in});

  sae::SaeConfig cfg;
  cfg.architecture(a.architecture).d_in(a.d_in).d_sae(a.d_sae).k(a.k).rescale_acts_by_decoder_norm(a.rescale);
  const double tokens = static_cast<double>(a.batch);
  std::vector<bench::Row> rows;
  std::vector<std::string> memory, phases;

  for (const std::string which : {"sparse", "dense"}) {
    if (a.cases.find(which) == std::string::npos) continue;
    reset_device_peak(device);
    auto sae = sae::make_sae(cfg);
    {
      // SAELens's TopK initialisation is not the point here; any weights of
      // the right scale give the same work.
      at::NoGradGuard no_grad;
      at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(a.seed + 1);
      sae->param("W_dec").copy_(at::randn({a.d_sae, a.d_in}, gen, at::TensorOptions().dtype(at::kFloat)) /
                                std::sqrt(static_cast<double>(a.d_in)));
      sae->param("W_enc").copy_(sae->param("W_dec").t());
    }
    for (auto& [name, p] : sae->named_parameters()) p.set_data(p.to(device));
    dynamic_cast<sae::TopKSae&>(*sae).sparse_training(which == std::string("sparse"));
    sae->requires_grad(true);
    std::vector<at::Tensor> params;
    for (const auto& [name, p] : sae->named_parameters()) params.push_back(p);
    core::train::AdamW opt(params, core::train::AdamWOptions().weight_decay(0.0));
    // SAELens's trainer: a latent is dead after dead_feature_window steps
    // without firing; over a benchmark's few steps none is.
    at::Tensor since_fired = at::zeros({a.d_sae}, at::TensorOptions().device(device));
    int64_t step_no = 0;
    // Each phase's time too (synchronised on a GPU), to see where a step goes.
    std::vector<double> t_fwd, t_bwd, t_opt;
    using clock = std::chrono::steady_clock;
    const auto lap = [&](clock::time_point& t0) {
      if (device.is_cuda()) bench::time_ms([] {}, 0, 1, device);  // a device sync
      const clock::time_point t1 = clock::now();
      const double ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
      t0 = t1;
      return ms;
    };
    const auto step = [&] {
      clock::time_point t0 = clock::now();
      const at::Tensor x = data[step_no++ % n_batches];  // [batch, d_in]
      const at::Tensor dead = since_fired > 1000;         // [d_sae]
      sae::TrainStep out = sae->training_forward(x, dead);
      {
        at::NoGradGuard no_grad;
        const at::Tensor fired = (out.feature_acts > 0).any(0);  // [d_sae]
        since_fired.add_(1).masked_fill_(fired, 0);
      }
      t_fwd.push_back(lap(t0));
      out.loss.backward();
      t_bwd.push_back(lap(t0));
      core::train::clip_grad_norm(params, 1.0);
      opt.step(a.lr);
      opt.zero_grad();
      t_opt.push_back(lap(t0));
    };
    const bench::Stats ms = bench::time_ms(step, a.warmup, a.steps, device);
    const auto timed = [&](const std::vector<double>& v) {
      return bench::summarize(std::vector<double>(v.end() - a.steps, v.end())).median;
    };
    phases.push_back(str_cat(which, ": forward ", static_cast<int64_t>(timed(t_fwd)), " ms, backward ",
                             static_cast<int64_t>(timed(t_bwd)), " ms, clip + Adam ",
                             static_cast<int64_t>(timed(t_opt)), " ms"));
    const bool sparse = which == std::string("sparse");
    rows.push_back({str_cat("mechlab ", which, " step"), ms,
                    sparse ? (a.architecture == "batchtopk" ? "dense encoder GEMM, batch top k, entry list per row"
                                                            : "dense encoder GEMM, sparse decoder and gradients")
                           : "every product dense (ATen)"});
    memory.push_back(str_cat(which, " ", human_bytes(device_peak_bytes(device))));
  }

  // The encoder GEMM alone, on preallocated buffers.
  {
    at::Tensor W = at::randn({a.d_in, a.d_sae}, at::TensorOptions().device(device));
    at::Tensor h = at::empty({a.batch, a.d_sae}, at::TensorOptions().device(device));
    const at::Tensor x = data[0];
    const bench::Stats ms = bench::time_ms([&] { at::mm_out(h, x, W); }, 1, std::max(3, a.steps), device);
    rows.push_back({"encoder GEMM alone", ms, "sae_in @ W_enc, the one dense product"});
  }
  const double gemm_flops = 2.0 * static_cast<double>(a.batch) * a.d_in * a.d_sae;
  const double sparse_flops = 5 * 2.0 * static_cast<double>(a.batch) * a.k * a.d_in;
  if (device.is_cpu()) {
    const bench::CpuPeak peak = bench::measure_cpu_fp32_peak(at::get_num_threads());
    if (peak.gflops > 0) {
      char gflop[32];
      std::snprintf(gflop, sizeof gflop, "%.3g", (gemm_flops + sparse_flops) / 1e9);
      rows.push_back({"fma-peak floor", bench::Stats{0, (gemm_flops + sparse_flops) / peak.gflops / 1e6},
                      str_cat("derived: ", gflop, " GFLOP at the measured peak ", static_cast<int>(peak.gflops),
                              " GFLOP/s (", peak.isa, ", ", peak.threads, " threads)")});
    }
  }

  std::string baseline = rows.size() > 1 && a.cases.find("dense") != std::string::npos ? "mechlab dense step"
                                                                                        : rows.front().name;
  std::string saelens_memory;
  if (!a.saelens_json.empty()) {
    std::ifstream in(a.saelens_json);
    MECHLAB_CHECK(in.good(), "cannot open --saelens-json '", a.saelens_json, "'");
    try {
      nlohmann::json j;
      in >> j;
      baseline = j.at("baseline").get<std::string>();
      for (const auto& r : j.at("rows")) {
        MECHLAB_CHECK(r.contains("runs") && r.contains("q1") && r.contains("q3"), "--saelens-json '",
                      a.saelens_json, "': row '", r.value("name", "?"),
                      "' has no \"runs\", \"q1\" and \"q3\": give each median with its run count and quartiles");
        bench::Stats s;
        s.median = r.at("ms").get<double>();
        s.q1 = r.at("q1").get<double>();
        s.q3 = r.at("q3").get<double>();
        s.n = r.at("runs").get<int64_t>();
        MECHLAB_CHECK(s.n >= 1, "--saelens-json '", a.saelens_json, "': row '", r.at("name").get<std::string>(),
                      "' has runs ", s.n, "; it must be at least 1");
        rows.push_back({r.at("name").get<std::string>(), s, r.value("note", "")});
        if (r.contains("peak_bytes")) {
          saelens_memory += str_cat(", ", r.at("name").get<std::string>(), " ",
                                    human_bytes(r.at("peak_bytes").get<int64_t>()));
        }
      }
    } catch (const nlohmann::json::exception& e) {
      throw Error(str_cat("--saelens-json '", a.saelens_json, "': ", e.what()));
    }
  }

  std::printf("activations: %s, %lld batches of %lld x %lld\n", source.c_str(), static_cast<long long>(n_batches),
              static_cast<long long>(a.batch), static_cast<long long>(a.d_in));
  bench::print_table(str_cat("mechlab bench sae: ", a.architecture == "batchtopk" ? "BatchTopK" : "TopK", " d_in ", a.d_in, ", d_sae ", a.d_sae, ", k ", a.k, ", batch ",
                             a.batch, a.rescale ? ", decoder-norm rescale" : "", ", float32", a.tf32 ? " (TF32 GEMMs)" : "", ", Adam, ", a.device, ", ",
                             at::get_num_threads(), " threads"),
                     rows, baseline, tokens, "tokens");
  for (const auto& p : phases) std::printf("phases (medians), %s\n", p.c_str());
  std::string mem;
  for (const auto& m : memory) mem += (mem.empty() ? "" : ", ") + m;
  std::printf("peak memory (%s, after each path in turn): %s%s\n",
              device.is_cuda() ? "CUDA allocator" : "process RSS, cumulative", mem.c_str(), saelens_memory.c_str());
  for (const auto& r : rows) {
    if (r.name == "mechlab sparse step") std::printf("sae_sparse_tokens_per_s %.1f\n", tokens / (r.ms.median / 1e3));
  }
}

// ------------------------------------------------------------ --world-size

// Median ms of the sparse step of rank `rank` of `world` on its B/world rows
// of each batch (`data` [batches, B, d_in]), all-reducing over `group` when
// world > 1.
bench::Stats time_data_parallel_steps(const SaeBenchArgs& a, const at::Tensor& data, int64_t rank, int64_t world,
                                      core::dist::ProcessGroup* group) {
  sae::SaeConfig cfg;
  cfg.architecture("topk").d_in(a.d_in).d_sae(a.d_sae).k(a.k).rescale_acts_by_decoder_norm(a.rescale);
  auto sae = sae::make_sae(cfg);
  {
    at::NoGradGuard no_grad;
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(a.seed + 1);
    sae->param("W_dec").copy_(at::randn({a.d_sae, a.d_in}, gen, at::TensorOptions().dtype(at::kFloat)) /
                              std::sqrt(static_cast<double>(a.d_in)));
    sae->param("W_enc").copy_(sae->param("W_dec").t());
  }
  sae->requires_grad(true);
  std::vector<at::Tensor> params;
  for (const auto& [name, p] : sae->named_parameters()) params.push_back(p);
  core::train::AdamW opt(params, core::train::AdamWOptions().weight_decay(0.0));
  at::Tensor since_fired = at::zeros({a.d_sae});  // [d_sae]
  const int64_t n_batches = data.size(0), local = a.batch / world;
  int64_t step_no = 0;
  const auto step = [&] {
    const at::Tensor x = data[step_no++ % n_batches].slice(0, rank * local, (rank + 1) * local);  // [B/world, d_in]
    sae::TrainStep out = sae->training_forward(x, since_fired > 1000);
    {
      at::NoGradGuard no_grad;
      at::Tensor fired = (out.feature_acts > 0).any(0).to(at::kFloat);  // [d_sae]
      if (group) group->allreduce_max(fired);
      since_fired.add_(1).masked_fill_(fired.gt(0), 0);
    }
    out.loss.backward();
    if (group) {
      at::NoGradGuard no_grad;
      std::vector<at::Tensor> flat;
      for (const at::Tensor& p : params) flat.push_back(p.grad().defined() ? p.grad().reshape({-1}) : at::zeros({p.numel()}));
      at::Tensor buf = at::cat(flat);  // [all parameters]
      group->allreduce_sum(buf);
      buf.div_(static_cast<double>(world));
      int64_t offset = 0;
      for (at::Tensor& p : params) {
        p.mutable_grad() = buf.slice(0, offset, offset + p.numel()).view(p.sizes());
        offset += p.numel();
      }
    }
    core::train::clip_grad_norm(params, 1.0);
    opt.step(a.lr);
    opt.zero_grad();
  };
  return bench::time_ms(step, a.warmup, a.steps, at::Device(at::kCPU));
}

int free_loopback_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  const bool ok = fd >= 0 && ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0;
  if (fd >= 0) ::close(fd);
  MECHLAB_CHECK(ok, "bench sae --world-size: found no free loopback port for the rendezvous");
  return ntohs(addr.sin_port);
}

void run_bench_sae_world(const SaeBenchArgs& a) {
  MECHLAB_CHECK(parse_device(a.device).is_cpu(),
                "bench sae --world-size times the CPU (Gloo) only; data-parallel training on CUDA (NCCL) runs "
                "under a launcher (docs/SCALING.md): time it with `mechlab sae train` there");
  MECHLAB_CHECK(a.architecture == "topk", "--world-size times TopK only (data-parallel training refuses BatchTopK)");
  MECHLAB_CHECK(a.batch % a.world_size == 0, "--batch ", a.batch, " must divide by --world-size ", a.world_size);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(a.seed);
  const at::Tensor data = at::randn({a.batches, a.batch, a.d_in}, gen, at::TensorOptions().dtype(at::kFloat));
  const core::dist::DistEnv env = core::dist::dist_env();
  if (env.world_size > 1) {  // a copy started below: one rank, silent
    auto group = core::dist::ProcessGroup::connect(env, core::dist::GroupOptions().timeout_seconds(a.dist_timeout));
    time_data_parallel_steps(a, data, env.rank, env.world_size, group.get());
    return;
  }
  const bench::Stats one = time_data_parallel_steps(a, data, 0, 1, nullptr);
  // The other ranks: this binary again, with the launcher's variables.
  const int port = free_loopback_port();
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  std::vector<pid_t> children;
  for (int64_t r = 1; r < a.world_size; ++r) {
    std::vector<std::string> args = {self, "bench", "sae", "--d-in", std::to_string(a.d_in), "--d-sae",
                                     std::to_string(a.d_sae), "--k", std::to_string(a.k), "--batch",
                                     std::to_string(a.batch), "--batches", std::to_string(a.batches), "--steps",
                                     std::to_string(a.steps), "--warmup", std::to_string(a.warmup), "--seed",
                                     std::to_string(a.seed), "--lr", str_cat(a.lr), "--rescale-acts-by-decoder-norm",
                                     a.rescale ? "true" : "false", "--world-size", std::to_string(a.world_size),
                                     "--dist-timeout", str_cat(a.dist_timeout), "--threads",
                                     std::to_string(at::get_num_threads())};
    std::vector<std::string> envs = {"RANK=" + std::to_string(r), "WORLD_SIZE=" + std::to_string(a.world_size),
                                     "MASTER_ADDR=127.0.0.1", "MASTER_PORT=" + std::to_string(port)};
    for (char** e = environ; *e != nullptr; ++e) {
      const std::string v = *e;
      bool ours = false;
      for (const char* k : {"RANK=", "WORLD_SIZE=", "MASTER_ADDR=", "MASTER_PORT="}) ours = ours || v.rfind(k, 0) == 0;
      if (!ours) envs.push_back(v);
    }
    std::vector<char*> argv, envp;
    for (auto& s : args) argv.push_back(s.data());
    argv.push_back(nullptr);
    for (auto& s : envs) envp.push_back(s.data());
    envp.push_back(nullptr);
    pid_t pid = -1;
    MECHLAB_CHECK(::posix_spawn(&pid, self.c_str(), nullptr, nullptr, argv.data(), envp.data()) == 0,
                  "bench sae --world-size: cannot start rank ", r, " ('", self, "')");
    children.push_back(pid);
  }
  core::dist::DistEnv env0;
  env0.world_size = a.world_size;
  env0.master_addr = "127.0.0.1";
  env0.port = port;
  bench::Stats many;
  std::string failure;
  try {
    auto group = core::dist::ProcessGroup::connect(env0, core::dist::GroupOptions().timeout_seconds(a.dist_timeout));
    many = time_data_parallel_steps(a, data, 0, a.world_size, group.get());
  } catch (const Error& e) {
    failure = e.what();
  }
  for (pid_t pid : children) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    if (failure.empty() && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
      failure = "a rank started by bench sae --world-size failed";
    }
  }
  MECHLAB_CHECK(failure.empty(), failure);
  const auto w = static_cast<double>(a.world_size);
  const double B = static_cast<double>(a.batch);
  const double total1 = B / (one.median / 1e3), totalN = B / (many.median / 1e3), perN = totalN / w;
  std::printf("mechlab bench sae --world-size %lld: TopK d_in %lld, d_sae %lld, k %lld, global batch %lld, float32, "
              "Adam, CPU (Gloo), %d threads per process, %lld timed steps (median)\n",
              static_cast<long long>(a.world_size), static_cast<long long>(a.d_in), static_cast<long long>(a.d_sae),
              static_cast<long long>(a.k), static_cast<long long>(a.batch), at::get_num_threads(),
              static_cast<long long>(a.steps));
  std::printf("%-28s %10s %16s %16s\n", "", "step ms", "tokens/s/process", "tokens/s total");
  std::printf("%-28s %10.1f %16.0f %16.0f\n", "1 process, B rows", one.median, total1, total1);
  std::printf("%-28s %10.1f %16.0f %16.0f\n", str_cat(a.world_size, " processes, B/", a.world_size, " rows each").c_str(),
              many.median, perN, totalN);
  std::printf("scaling efficiency total_%lld / (%lld x total_1) = %.3f; per process: %.3f of one process's rate "
              "(ideal %.3f)\n",
              static_cast<long long>(a.world_size), static_cast<long long>(a.world_size), totalN / (w * total1),
              perN / total1, 1.0);
  std::printf("sae_dp_scaling_efficiency %.4f\n", totalN / (w * total1));
}

}  // namespace

void add_bench_sae(CLI::App& bench) {
  auto* cmd = bench.add_subcommand(
      "sae",
      "TopK (or BatchTopK, --architecture) SAE training throughput (tokens/s): the sparse training path vs the dense one, the encoder GEMM "
      "alone and the FMA-peak floor; with --saelens-json, SAELens's figures from "
      "scripts/bench/sae_vs_saelens.sh. The last line, 'sae_sparse_tokens_per_s N', is the sparse step's rate.");
  auto a = std::make_shared<SaeBenchArgs>();
  cmd->add_option("--d-in", a->d_in, "Input width")->capture_default_str()->check(positive());
  cmd->add_option("--d-sae", a->d_sae, "Latents")->capture_default_str()->check(positive());
  cmd->add_option("--k", a->k, "Latents kept per row")->capture_default_str()->check(positive());
  cmd->add_option("--batch", a->batch, "Rows per step")->capture_default_str()->check(positive());
  cmd->add_option("--batches", a->batches, "Distinct batches of generated activations (no --activations)")
      ->capture_default_str()
      ->check(positive());
  cmd->add_option("--steps", a->steps, "Timed steps per path")->capture_default_str()->check(positive());
  cmd->add_option("--warmup", a->warmup, "Untimed steps first")->capture_default_str()->check(non_negative());
  cmd->add_option("--lr", a->lr, "Adam learning rate")->capture_default_str();
  cmd->add_option("--seed", a->seed, "Seed of the weights and generated activations")->capture_default_str();
  cmd->add_option("--device", a->device, "cpu, cuda, cuda:N or auto")->capture_default_str();
  cmd->add_option("--activations", a->activations,
                  "Cached activations: a raw little-endian float32 file of rows of --d-in values (the driver "
                  "writes one and gives SAELens the same)");
  cmd->add_option("--saelens-json", a->saelens_json,
                  "Timings measured by the driver on the same config and data: {\"baseline\": NAME, \"rows\": "
                  "[{\"name\", \"ms\" (median), \"q1\", \"q3\", \"runs\", \"note\", \"peak_bytes\"}]}; ratios "
                  "are then against NAME");
  cmd->add_option("--cases", a->cases, "Which paths to time: sparse, dense or both")->capture_default_str();
  cmd->add_option("--architecture", a->architecture,
                  "topk, or batchtopk (the top k x batch of the whole batch, a varying number per row)")
      ->capture_default_str();
  cmd->add_option("--rescale-acts-by-decoder-norm", a->rescale,
                  "Select and decode as if the decoder rows had unit norm (SAELens's TopK training default)")
      ->capture_default_str();
  cmd->add_flag("--tf32", a->tf32, "Let cuBLAS run float32 GEMMs in TF32 (CUDA)");
  cmd->add_option("--world-size", a->world_size,
                  "Data-parallel scaling (CPU, Gloo): one process on --batch rows, then this many processes "
                  "(this command starts the others) on --batch/N rows each with the all-reduce; prints "
                  "tokens/s per process and in total and the scaling efficiency. Use --threads 1 on a small machine. "
                  "CPU only: with --device cuda it is refused (it would need one GPU per process; NCCL training "
                  "runs under a launcher, docs/SCALING.md)")
      ->capture_default_str()
      ->check(positive());
  cmd->add_option("--dist-timeout", a->dist_timeout, "--world-size: seconds a rank waits for the others")
      ->capture_default_str();
  cmd->callback([a] { a->world_size > 1 ? run_bench_sae_world(*a) : run_bench_sae(*a); });
}

}  // namespace mechlab::cli
