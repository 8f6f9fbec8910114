#include "apps/jobs/shard.h"

#include "core/util/error.h"

#include <regex>

namespace mechlab::jobs {

namespace {

// A whole non-negative decimal number of at most 9 digits, or nullopt.
std::optional<int64_t> whole_number(const std::string& text) {
  if (!std::regex_match(text, std::regex("[0-9]{1,9}"))) return std::nullopt;
  return std::stoll(text);
}

}  // namespace

Shard parse_shard(const std::string& text, const std::string& what) {
  std::smatch m;
  MECHLAB_CHECK(std::regex_match(text, m, std::regex("([0-9]{1,9})/([0-9]{1,9})")), what, " '", text,
                "' is not I/N; write e.g. 0/4 for the first of 4 shards");
  Shard s;
  s.index = std::stoll(m[1]);
  s.count = std::stoll(m[2]);
  MECHLAB_CHECK(s.count >= 1, what, " '", text, "': N must be at least 1");
  MECHLAB_CHECK(s.index < s.count, what, " '", text, "': I must be 0 to ", s.count - 1,
                " (shards are numbered from 0)");
  return s;
}

std::optional<Shard> shard_from_slurm(const std::function<const char*(const char*)>& env) {
  auto get = [&](const char* name) -> std::optional<std::string> {
    const char* v = env(name);
    if (v == nullptr) return std::nullopt;
    return std::string(v);
  };
  const auto id_text = get("SLURM_ARRAY_TASK_ID");
  const auto count_text = get("SLURM_ARRAY_TASK_COUNT");
  if (!id_text && !count_text) return std::nullopt;
  MECHLAB_CHECK(id_text && count_text, "SLURM_ARRAY_TASK_", id_text ? "ID" : "COUNT",
                " is set but SLURM_ARRAY_TASK_", id_text ? "COUNT" : "ID",
                " is not; unset both, or give the shard explicitly");
  auto number = [&](const char* name, const std::string& text) {
    const auto n = whole_number(text);
    MECHLAB_CHECK(n.has_value(), name, "='", text, "' is not a whole number; give the shard explicitly");
    return *n;
  };
  const int64_t id = number("SLURM_ARRAY_TASK_ID", *id_text);
  const int64_t count = number("SLURM_ARRAY_TASK_COUNT", *count_text);
  MECHLAB_CHECK(count >= 1, "SLURM_ARRAY_TASK_COUNT=", count, " is not at least 1; give the shard explicitly");
  // --array=1-4 numbers its tasks 1..4 and --array=0-6:2 as 0,2,4,6: the
  // shard is the task's place in the array, (ID - MIN) / STEP.
  const auto min_text = get("SLURM_ARRAY_TASK_MIN");
  const auto step_text = get("SLURM_ARRAY_TASK_STEP");
  const int64_t min = min_text ? number("SLURM_ARRAY_TASK_MIN", *min_text) : 0;
  const int64_t step = step_text ? number("SLURM_ARRAY_TASK_STEP", *step_text) : 1;
  MECHLAB_CHECK(step >= 1, "SLURM_ARRAY_TASK_STEP=", step, " is not at least 1; give the shard explicitly");
  const int64_t offset = id - min;
  MECHLAB_CHECK(offset >= 0 && offset % step == 0 && offset / step < count, "SLURM_ARRAY_TASK_ID=", id,
                " is not one of the ", count, " tasks ", min, ", ", min + step, ", ... of an evenly spaced array",
                " (SLURM_ARRAY_TASK_MIN=", min, ", SLURM_ARRAY_TASK_STEP=", step,
                "); submit with --array=0-", count - 1, " or give the shard explicitly");
  Shard s;
  s.index = offset / step;
  s.count = count;
  return s;
}

void refuse_parallel_launch(const std::function<const char*(const char*)>& env) {
  for (const char* name : {"SLURM_STEP_NUM_TASKS", "WORLD_SIZE"}) {
    const char* v = env(name);
    const std::optional<int64_t> n = v == nullptr ? std::nullopt : whole_number(v);
    MECHLAB_CHECK(!n || *n <= 1, "this process is one of ", *n, " started together (", name, "=", *n,
                  "): each would run the same jobs into the same folders; start mechlab discover once per task "
                  "(srun -n 1; several tasks: sbatch --array or --shard I/N)");
  }
}

}  // namespace mechlab::jobs
