// Data-parallel process groups: where this process sits in a multi-process
// job (read from the launcher's environment) and the few collectives data-
// parallel training needs (all-reduce, broadcast), over LibTorch's c10d:
// Gloo for CPU tensors, NCCL for CUDA tensors (where mechlab is built with
// CUDA against a LibTorch with NCCL). Only mechlab types appear here: c10d,
// Gloo and NCCL stay inside process_group.cpp.
//
// Environment (the first row present wins; the local rank is read from the
// same launcher's variable):
//   RANK / WORLD_SIZE, LOCAL_RANK                         torchrun
//   SLURM_PROCID / SLURM_NTASKS, SLURM_LOCALID            srun
//   OMPI_COMM_WORLD_RANK / OMPI_COMM_WORLD_SIZE,
//     OMPI_COMM_WORLD_LOCAL_RANK                          Open MPI's mpirun
//   PMI_RANK / PMI_SIZE, MPI_LOCALRANKID                  MPICH / Intel MPI (Hydra)
// World size 1 (or none of them set) is a single process: no group at all.
// The rendezvous is MASTER_ADDR:MASTER_PORT (a TCPStore served by rank 0);
// under Slurm without MASTER_ADDR, the first host of SLURM_JOB_NODELIST.
// MASTER_PORT defaults to 29500 (torchrun's). GLOO_SOCKET_IFNAME picks the
// network interface Gloo binds (default: the address of this host's name).
//
// Failure: every collective and the rendezvous wait at most the group's
// timeout; a dead peer (connection closed) or a hung one (timeout) throws
// CommError, never hangs. Under NCCL a dead peer is seen at the timeout
// (NCCL's kernels wait on the GPU; no connection closes): process_group.cpp
// runs NCCL in blocking-wait mode so that the timeout is an exception in the
// calling thread rather than c10d's watchdog aborting the process.
//
// Example:
//   const DistEnv env = dist_env();                     // from the environment
//   if (env.world_size > 1) {
//     auto group = ProcessGroup::connect(env, GroupOptions().timeout_seconds(60));
//     group->allreduce_sum(grads);                      // in place, every rank
//   }
#pragma once

#include "core/util/error.h"
#include "core/util/options.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace mechlab::core::dist {

/// Where this process sits in a data-parallel job.
struct DistEnv {
  int64_t rank = 0;
  int64_t world_size = 1;
  std::string master_addr;  ///< empty when world_size is 1
  int port = 29500;
  /// The variables rank and world size came from, e.g. "RANK/WORLD_SIZE"; "" = none set.
  std::string source;
  /// This process's index among the ranks on its node (which GPU "cuda"
  /// means: see data_parallel_device), from the launcher's variable
  /// (`local_rank_source`). -1 where a data-parallel launcher did not set
  /// it; 0 for one process.
  int64_t local_rank = 0;
  /// The launcher's local-rank variable, e.g. "LOCAL_RANK" (set or not); "" = no launcher.
  std::string local_rank_source;
};

/// Reads DistEnv from `get` (a getenv: nullptr = unset). Refuses, naming the
/// variable and its value, a malformed or out-of-range number (a local rank
/// must be below the world size), a rank without a world size (or the
/// reverse), and world size > 1 without a rendezvous address.
DistEnv dist_env_from(const std::function<const char*(const char*)>& get);
/// dist_env_from(std::getenv).
DistEnv dist_env();

/// The first host of a Slurm node list ("gpu[003-005,007],cpu1" -> "gpu003").
std::string first_slurm_host(const std::string& nodelist);

/// The device rank `env` of a data-parallel run trains on, given the config's
/// `requested` device and the GPUs this process sees (`gpu_count`, i.e.
/// at::getNumGPUs(); a parameter so that the refusals can be tested without
/// a GPU). cpu stays cpu. "cuda" (no index) is cuda:LOCAL_RANK, as torchrun
/// scripts do: refused in one line where the launcher gave no local rank, or
/// where local rank >= gpu_count (more processes on this node than GPUs: NCCL
/// refuses two ranks on one GPU). "cuda:N" is honoured as named, on every
/// rank: it is for launchers that give each process its own GPUs (srun
/// --gpus-per-task=1: each process sees one GPU, cuda:0); ranks that still
/// end up on one GPU are refused by ProcessGroup::set_device.
at::Device data_parallel_device(const at::Device& requested, const DistEnv& env, int64_t gpu_count);

/// The collective timeout from MECHLAB_DIST_TIMEOUT (seconds, > 0), else
/// `fallback`; a malformed value is refused naming the variable.
double dist_timeout_from_env(double fallback);

struct GroupOptions {
  /// Seconds the rendezvous and each collective may wait for the others.
  MECHLAB_OPTION(GroupOptions, double, timeout_seconds, 300.0)
};

/// A collective failed: a peer died (connection closed) or did not answer
/// within the timeout. `reason` is c10d's message, shortened to one line.
class CommError : public Error {
 public:
  explicit CommError(const std::string& reason)
      : Error("data-parallel collective failed: " + reason), reason_(reason) {}
  const std::string& reason() const { return reason_; }

 private:
  std::string reason_;
};

class ProcessGroup {
 public:
  /// Joins the group `env` describes (blocks until every rank has joined,
  /// at most the timeout). Throws CommError when the rendezvous fails.
  static std::shared_ptr<ProcessGroup> connect(const DistEnv& env, const GroupOptions& options = {});
  ~ProcessGroup();
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  int64_t rank() const { return rank_; }
  int64_t world_size() const { return world_size_; }
  double timeout_seconds() const { return timeout_seconds_; }
  /// The environment the group was joined with (local rank included).
  const DistEnv& env() const { return env_; }

  /// True where CUDA tensors can go through NCCL: mechlab was built with
  /// CUDA against a LibTorch with NCCL (whether a GPU is visible aside).
  static bool nccl_built();

  /// The device this rank trains on. For a CUDA device, with every rank (a
  /// collective): makes it this thread's current CUDA device, refuses in one
  /// line two ranks on one GPU (same host, same PCI bus id), and starts
  /// NCCL on it, so that such errors come before training. Without it,
  /// NCCL starts on the device of the first CUDA tensor a collective sees
  /// (CPU-only runs never start it). One GPU per rank: a CUDA tensor on
  /// another device is refused. CPU: nothing. Refused in one line where
  /// NCCL is not built or no GPU is visible.
  void set_device(const at::Device& device);

  /// In place: every rank ends with the element-wise sum (max) over ranks.
  /// `t` must be contiguous, on the CPU (Gloo) or on this rank's GPU (NCCL);
  /// every rank passes the same shape, dtype and kind of device.
  void allreduce_sum(at::Tensor& t);
  void allreduce_max(at::Tensor& t);
  /// In place: every rank ends with rank `root`'s `t`.
  void broadcast(at::Tensor& t, int64_t root = 0);
  /// Returns once every rank has called it.
  void barrier();

 private:
  struct Impl;
  ProcessGroup(std::unique_ptr<Impl> impl, const DistEnv& env, double timeout);
  std::unique_ptr<Impl> impl_;
  DistEnv env_;
  int64_t rank_ = 0, world_size_ = 1;
  double timeout_seconds_ = 0;
};

}  // namespace mechlab::core::dist
