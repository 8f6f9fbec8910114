// Data-parallel process groups: where this process sits in a multi-process
// job (read from the launcher's environment) and the few collectives data-
// parallel training needs (all-reduce, broadcast), over LibTorch's c10d
// (Gloo on the CPU). Only mechlab types appear here: c10d and Gloo stay
// inside process_group.cpp.
//
// Environment (the first pair present wins):
//   RANK / WORLD_SIZE                       torchrun
//   SLURM_PROCID / SLURM_NTASKS             srun
//   OMPI_COMM_WORLD_RANK / OMPI_COMM_WORLD_SIZE   Open MPI's mpirun
//   PMI_RANK / PMI_SIZE                     MPICH / Intel MPI (Hydra)
// World size 1 (or none of them set) is a single process: no group at all.
// The rendezvous is MASTER_ADDR:MASTER_PORT (a TCPStore served by rank 0);
// under Slurm without MASTER_ADDR, the first host of SLURM_JOB_NODELIST.
// MASTER_PORT defaults to 29500 (torchrun's). GLOO_SOCKET_IFNAME picks the
// network interface Gloo binds (default: the address of this host's name).
//
// Failure: every collective and the rendezvous wait at most the group's
// timeout; a dead peer (connection closed) or a hung one (timeout) throws
// CommError, never hangs.
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
};

/// Reads DistEnv from `get` (a getenv: nullptr = unset). Refuses, naming the
/// variable and its value, a malformed or out-of-range number, a rank
/// without a world size (or the reverse), and world size > 1 without a
/// rendezvous address.
DistEnv dist_env_from(const std::function<const char*(const char*)>& get);
/// dist_env_from(std::getenv).
DistEnv dist_env();

/// The first host of a Slurm node list ("gpu[003-005,007],cpu1" -> "gpu003").
std::string first_slurm_host(const std::string& nodelist);

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

  /// In place: every rank ends with the element-wise sum (max) over ranks.
  /// `t` must be a contiguous CPU tensor (Gloo); CUDA tensors are refused.
  void allreduce_sum(at::Tensor& t);
  void allreduce_max(at::Tensor& t);
  /// In place: every rank ends with rank `root`'s `t`.
  void broadcast(at::Tensor& t, int64_t root = 0);
  /// Returns once every rank has called it.
  void barrier();

 private:
  struct Impl;
  ProcessGroup(std::unique_ptr<Impl> impl, int64_t rank, int64_t world_size, double timeout);
  std::unique_ptr<Impl> impl_;
  int64_t rank_ = 0, world_size_ = 1;
  double timeout_seconds_ = 0;
};

}  // namespace mechlab::core::dist
