// Job arrays: which jobs of a job file one process runs. Shard I of N runs
// the jobs whose index in the file (0-based, counting jobs, not the runs of a
// τ sweep, so a sweep's runs share one shard and its attribution) is
// ≡ I mod N. The shard comes from the caller (`mechlab discover --shard I/N`)
// or, when not given, from a Slurm job array's environment:
//   SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT, and when set
//   SLURM_ARRAY_TASK_MIN / SLURM_ARRAY_TASK_STEP (so --array=1-4 or
//   --array=0-6:2 number their tasks 0..COUNT-1 too).
// Every refusal is one line naming the value and saying what to write.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

namespace mechlab::jobs {

struct Shard {
  int64_t index = 0;  ///< I, 0 to count-1
  int64_t count = 1;  ///< N >= 1
  /// Whether job number `job_index` (0-based, file order) belongs to this shard.
  bool owns(int64_t job_index) const { return job_index % count == index; }
};

/// "I/N" -> Shard; refuses malformed text, N < 1 and I >= N. `what` names
/// the value in messages (e.g. "shard").
Shard parse_shard(const std::string& text, const std::string& what = "shard");

/// The shard of a Slurm array task, read through `env` (a getenv; nullptr =
/// unset): nullopt when SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT are
/// both unset; refuses one without the other, non-numbers, and a task id
/// that is not task 0..COUNT-1 of an evenly spaced array.
std::optional<Shard> shard_from_slurm(const std::function<const char*(const char*)>& env);

/// `mechlab discover` is one process per task. Refuses, through `env`, a
/// process that is one of several started together for one step (srun -n
/// N: SLURM_STEP_NUM_TASKS > 1; torchrun or mpirun: WORLD_SIZE > 1): each
/// would run the same jobs into the same folders.
void refuse_parallel_launch(const std::function<const char*(const char*)>& env);

}  // namespace mechlab::jobs
