// The one translation unit that sees c10d and Gloo (process_group.h says why).
// LibTorch's libtorch_cpu exports ProcessGroupGloo and TCPStore, but its
// headers declare them only under USE_C10D_GLOO, and it ships no Gloo
// headers: Debian's libgloo-dev provides them (scripts/setup.sh installs it).
#define USE_C10D_GLOO 1

#include "core/dist/process_group.h"

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <c10/util/Exception.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <limits>

namespace mechlab::core::dist {
namespace {

// One line of at most ~240 characters from an exception's message: c10d's
// messages carry a C++ backtrace and the source location.
std::string short_reason(const std::exception& e) {
  std::string s;
  if (const auto* c = dynamic_cast<const c10::Error*>(&e)) {
    s = c->what_without_backtrace();
  } else {
    s = e.what();
  }
  const size_t nl = s.find('\n');
  if (nl != std::string::npos) s = s.substr(0, nl);
  // Drop the " (Triggered internally at ...)" tail and source paths in brackets.
  const size_t trig = s.find(" (Triggered internally");
  if (trig != std::string::npos) s = s.substr(0, trig);
  // Gloo prefixes "[/path/to/pair.cc:538] ": the source location, not the reason.
  for (size_t open = s.find('['); open != std::string::npos; open = s.find('[', open)) {
    const size_t close = s.find(']', open);
    if (close == std::string::npos) break;
    const std::string inner = s.substr(open + 1, close - open - 1);
    if (inner.find(".cc:") != std::string::npos || inner.find(".cpp:") != std::string::npos) {
      s.erase(open, close + 1 - open);
    } else {
      open = close;
    }
  }
  const size_t start = s.find_first_not_of(" \t");
  s = start == std::string::npos ? std::string() : s.substr(start);
  if (s.size() > 240) s = s.substr(0, 237) + "...";
  return s.empty() ? "no reason given" : s;
}

// A whole number in [lo, hi] from environment variable `name`, refused
// naming the variable and its value otherwise.
int64_t parse_int(const char* name, const char* value, int64_t lo, int64_t hi) {
  const std::string v = value;
  char* end = nullptr;
  errno = 0;
  const long long x = std::strtoll(v.c_str(), &end, 10);
  MECHLAB_CHECK(!v.empty() && end == v.c_str() + v.size() && errno == 0,
                "environment variable ", name, "=\"", v, "\" is not a whole number; set it to one (or unset it)");
  MECHLAB_CHECK(x >= lo && x <= hi, "environment variable ", name, "=", x, " is out of range: it must be in [", lo,
                ", ", hi, "]");
  return x;
}

std::chrono::milliseconds to_ms(double seconds) {
  return std::chrono::milliseconds(static_cast<int64_t>(std::llround(seconds * 1000.0)));
}

}  // namespace

std::string first_slurm_host(const std::string& nodelist) {
  // The first comma outside brackets ends the first entry.
  std::string first;
  int depth = 0;
  for (char c : nodelist) {
    if (c == '[') ++depth;
    if (c == ']') --depth;
    if (c == ',' && depth == 0) break;
    first += c;
  }
  // Each [003-005,007] group becomes its first number, zero padding kept.
  std::string host;
  for (size_t i = 0; i < first.size();) {
    if (first[i] != '[') {
      host += first[i++];
      continue;
    }
    const size_t close = first.find(']', i);
    MECHLAB_CHECK(close != std::string::npos, "environment variable SLURM_JOB_NODELIST=\"", nodelist,
                  "\" has an unclosed '['; export MASTER_ADDR instead");
    const std::string inner = first.substr(i + 1, close - i - 1);
    host += inner.substr(0, inner.find_first_of(",-"));
    i = close + 1;
  }
  return host;
}

DistEnv dist_env_from(const std::function<const char*(const char*)>& get) {
  static const std::pair<const char*, const char*> kPairs[] = {{"RANK", "WORLD_SIZE"},
                                                               {"SLURM_PROCID", "SLURM_NTASKS"},
                                                               {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"},
                                                               {"PMI_RANK", "PMI_SIZE"}};
  DistEnv env;
  for (const auto& [rank_var, size_var] : kPairs) {
    const char* r = get(rank_var);
    const char* w = get(size_var);
    if (r == nullptr && w == nullptr) continue;
    MECHLAB_CHECK(r != nullptr, "environment variable ", size_var, " is set but ", rank_var,
                  " is not; the launcher must set both (or neither)");
    MECHLAB_CHECK(w != nullptr, "environment variable ", rank_var, " is set but ", size_var,
                  " is not; the launcher must set both (or neither)");
    env.world_size = parse_int(size_var, w, 1, 1 << 20);
    env.rank = parse_int(rank_var, r, 0, std::numeric_limits<int32_t>::max());
    MECHLAB_CHECK(env.rank < env.world_size, "environment variable ", rank_var, "=", env.rank,
                  " is out of range: it must be below ", size_var, "=", env.world_size);
    env.source = str_cat(rank_var, "/", size_var);
    break;
  }
  if (env.world_size == 1) return env;
  const char* addr = get("MASTER_ADDR");
  if (addr != nullptr && *addr != '\0') {
    env.master_addr = addr;
  } else if (const char* nodes = get("SLURM_JOB_NODELIST"); nodes != nullptr && *nodes != '\0') {
    env.master_addr = first_slurm_host(nodes);
  }
  MECHLAB_CHECK(!env.master_addr.empty(), "data-parallel run (", env.source, ": world size ", env.world_size,
                ") without a rendezvous address: environment variable MASTER_ADDR is not set; export it (the host of "
                "rank 0) and MASTER_PORT on every rank");
  if (const char* port = get("MASTER_PORT"); port != nullptr) {
    env.port = static_cast<int>(parse_int("MASTER_PORT", port, 1, 65535));
  }
  return env;
}

DistEnv dist_env() {
  return dist_env_from([](const char* name) { return std::getenv(name); });
}

double dist_timeout_from_env(double fallback) {
  const char* v = std::getenv("MECHLAB_DIST_TIMEOUT");
  if (v == nullptr) return fallback;
  const std::string s = v;
  char* end = nullptr;
  const double x = std::strtod(s.c_str(), &end);
  MECHLAB_CHECK(!s.empty() && end == s.c_str() + s.size() && std::isfinite(x) && x > 0,
                "environment variable MECHLAB_DIST_TIMEOUT=\"", s,
                "\" is not a positive number of seconds; set it to one (or unset it)");
  return x;
}

struct ProcessGroup::Impl {
  c10::intrusive_ptr<c10d::TCPStore> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo;
};

ProcessGroup::ProcessGroup(std::unique_ptr<Impl> impl, int64_t rank, int64_t world_size, double timeout)
    : impl_(std::move(impl)), rank_(rank), world_size_(world_size), timeout_seconds_(timeout) {}

ProcessGroup::~ProcessGroup() = default;

std::shared_ptr<ProcessGroup> ProcessGroup::connect(const DistEnv& env, const GroupOptions& options) {
  MECHLAB_CHECK(env.world_size >= 1 && env.rank >= 0 && env.rank < env.world_size, "process group: rank ", env.rank,
                " is not in [0, world size ", env.world_size, ")");
  MECHLAB_CHECK(options.timeout_seconds() > 0 && std::isfinite(options.timeout_seconds()),
                "process group: `GroupOptions::timeout_seconds` must be positive, got ", options.timeout_seconds());
  MECHLAB_CHECK(!env.master_addr.empty(), "process group: no rendezvous address (MASTER_ADDR)");
  const auto timeout = to_ms(options.timeout_seconds());
  auto impl = std::make_unique<Impl>();
  try {
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(env.port);
    so.isServer = env.rank == 0;
    so.numWorkers = static_cast<size_t>(env.world_size);
    so.waitWorkers = true;
    so.timeout = timeout;
    impl->store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname != nullptr && *ifname != '\0') {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
    } else if (env.master_addr == "127.0.0.1" || env.master_addr == "localhost") {
      // Every rank on this host: bind the loopback (this host's name may
      // not resolve, e.g. in a container).
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    } else {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    impl->gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(impl->store, static_cast<int>(env.rank),
                                                             static_cast<int>(env.world_size), opts);
  } catch (const std::exception& e) {
    throw Error(str_cat("data-parallel training: rank ", env.rank, " of ", env.world_size,
                        " could not join the others at ", env.master_addr, ":", env.port, " within ",
                        options.timeout_seconds(), " s (", short_reason(e),
                        "); start every rank with the same MASTER_ADDR and MASTER_PORT, a free port on rank 0's host"));
  }
  return std::shared_ptr<ProcessGroup>(
      new ProcessGroup(std::move(impl), env.rank, env.world_size, options.timeout_seconds()));
}

namespace {

void check_cpu(const at::Tensor& t) {
  MECHLAB_CHECK(t.defined() && t.device().is_cpu(),
                "data-parallel training on CUDA (NCCL) is not built into mechlab yet; train on the CPU (Gloo)");
  MECHLAB_ASSERT(t.is_contiguous());
}

template <typename Fn>
void run_collective(Fn&& fn) {
  try {
    fn()->wait();
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw CommError(short_reason(e));
  }
}

}  // namespace

void ProcessGroup::allreduce_sum(at::Tensor& t) {
  check_cpu(t);
  std::vector<at::Tensor> ts{t};
  run_collective([&] { return impl_->gloo->allreduce(ts); });
}

void ProcessGroup::allreduce_max(at::Tensor& t) {
  check_cpu(t);
  std::vector<at::Tensor> ts{t};
  c10d::AllreduceOptions o;
  o.reduceOp = c10d::ReduceOp::MAX;
  run_collective([&] { return impl_->gloo->allreduce(ts, o); });
}

void ProcessGroup::broadcast(at::Tensor& t, int64_t root) {
  check_cpu(t);
  std::vector<at::Tensor> ts{t};
  c10d::BroadcastOptions o;
  o.rootRank = root;
  run_collective([&] { return impl_->gloo->broadcast(ts, o); });
}

void ProcessGroup::barrier() {
  run_collective([&] { return impl_->gloo->barrier(); });
}

}  // namespace mechlab::core::dist
