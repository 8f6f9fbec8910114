// The one translation unit that sees c10d, Gloo and NCCL (process_group.h
// says why). LibTorch's libtorch_cpu exports ProcessGroupGloo and TCPStore,
// but its headers declare them only under USE_C10D_GLOO, and it ships no
// Gloo headers: Debian's libgloo-dev provides them (scripts/setup.sh
// installs it). ProcessGroupNCCL lives in libtorch_cuda and is declared
// under USE_C10D_NCCL (Torch's CMake target torch_cuda already sets it on
// every target of a CUDA build); its header includes <nccl.h>, which the
// PyTorch wheel ships beside torch/ (site-packages/nvidia/nccl/include), not
// in Torch's include folder. CMakeLists.txt finds it and gives this file
// alone that folder and MECHLAB_HAVE_NCCL, so no other file needs nccl.h.
#define USE_C10D_GLOO 1
#if defined(MECHLAB_HAVE_NCCL) && !defined(USE_C10D_NCCL)
#define USE_C10D_NCCL 1
#endif

#include "core/dist/process_group.h"

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef MECHLAB_HAVE_NCCL
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <c10/util/Exception.h>

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>

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
  // Rank, world size and local rank (the rank's index on its node) as each
  // launcher names them. The local rank is the same launcher's: torchrun
  // inside an srun step sets LOCAL_RANK per process while SLURM_LOCALID is
  // the srun task's.
  struct Launcher {
    const char* rank_var;
    const char* size_var;
    const char* local_var;
  };
  static const Launcher kLaunchers[] = {{"RANK", "WORLD_SIZE", "LOCAL_RANK"},
                                        {"SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"},
                                        {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"},
                                        {"PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"}};
  DistEnv env;
  for (const auto& [rank_var, size_var, local_var] : kLaunchers) {
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
    env.local_rank_source = local_var;
    if (const char* l = get(local_var); l != nullptr) {
      env.local_rank = parse_int(local_var, l, 0, std::numeric_limits<int32_t>::max());
      MECHLAB_CHECK(env.local_rank < env.world_size, "environment variable ", local_var, "=", env.local_rank,
                    " is out of range: it must be below ", size_var, "=", env.world_size);
    } else {
      env.local_rank = env.world_size > 1 ? -1 : 0;  // unknown: "cuda" is then refused, not guessed
    }
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

at::Device data_parallel_device(const at::Device& requested, const DistEnv& env, int64_t gpu_count) {
  if (!requested.is_cuda() || requested.has_index()) return requested;
  const std::string var = env.local_rank_source.empty() ? "LOCAL_RANK" : env.local_rank_source;
  MECHLAB_CHECK(env.local_rank >= 0, "data-parallel rank ", env.rank, " of ", env.world_size,
                " on device cuda: the launcher did not say which GPU is this process's (environment variable ", var,
                " is not set); set it to the process's index on its node (torchrun and srun set it), or name the GPU "
                "(device cuda:N)");
  MECHLAB_CHECK(env.local_rank < gpu_count, "data-parallel rank ", env.rank, " of ", env.world_size,
                " is process ", env.local_rank, " on its node (", var, "=", env.local_rank, ") but this node shows ",
                gpu_count, " CUDA GPU", gpu_count == 1 ? "" : "s", "; device cuda means cuda:", var,
                " and NCCL needs one GPU per process: start at most ", gpu_count,
                " processes per node (where the launcher gives each process its own GPU, e.g. srun "
                "--gpus-per-task=1, set device to cuda:0)");
  return {at::kCUDA, static_cast<at::DeviceIndex>(env.local_rank)};
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
#ifdef MECHLAB_HAVE_NCCL
  c10::intrusive_ptr<c10d::ProcessGroupNCCL> nccl;  // started by set_device
#endif
  std::optional<at::Device> cuda;  // this rank's GPU, once NCCL runs on it
  std::chrono::milliseconds timeout{0};

  // The backend for `t`: Gloo for CPU tensors, NCCL for CUDA ones (started
  // on the first, with every rank: all ranks run the same collectives in the
  // same order, so they reach this point together).
  c10d::Backend& backend_for(ProcessGroup& group, const at::Tensor& t) {
    MECHLAB_CHECK(t.defined(), "process group: a collective got an undefined tensor");
    MECHLAB_ASSERT(t.is_contiguous());
    if (t.device().is_cpu()) return *gloo;
    MECHLAB_CHECK(t.device().is_cuda(), "data-parallel collectives take CPU (Gloo) or CUDA (NCCL) tensors, got one on ",
                  t.device(), "; move it to the CPU");
    if (!cuda) group.set_device(t.device());
    MECHLAB_CHECK(cuda && *cuda == t.device(), "data-parallel training uses one GPU per process: rank ", group.rank(),
                  "'s is ", cuda ? cuda->str() : std::string("none"), " but a collective got a tensor on ", t.device(),
                  "; move it there");
#ifdef MECHLAB_HAVE_NCCL
    return *nccl;
#else
    MECHLAB_ASSERT(false);  // set_device refuses CUDA without NCCL
    return *gloo;
#endif
  }
};

ProcessGroup::ProcessGroup(std::unique_ptr<Impl> impl, const DistEnv& env, double timeout)
    : impl_(std::move(impl)), env_(env), rank_(env.rank), world_size_(env.world_size), timeout_seconds_(timeout) {}

ProcessGroup::~ProcessGroup() {
#ifdef MECHLAB_HAVE_NCCL
  // Every collective was waited for, so nothing of ours is in flight: abort
  // (ncclCommAbort) ends the communicators at once, where a graceful
  // shutdown could wait on a peer that is gone.
  if (impl_ && impl_->nccl) {
    try {
      impl_->nccl->abort();
    } catch (const std::exception&) {  // nothing to tell: the group is being discarded
    }
  }
#endif
}

bool ProcessGroup::nccl_built() {
#ifdef MECHLAB_HAVE_NCCL
  return true;
#else
  return false;
#endif
}

std::shared_ptr<ProcessGroup> ProcessGroup::connect(const DistEnv& env, const GroupOptions& options) {
  MECHLAB_CHECK(env.world_size >= 1 && env.rank >= 0 && env.rank < env.world_size, "process group: rank ", env.rank,
                " is not in [0, world size ", env.world_size, ")");
  MECHLAB_CHECK(options.timeout_seconds() > 0 && std::isfinite(options.timeout_seconds()),
                "process group: `GroupOptions::timeout_seconds` must be positive, got ", options.timeout_seconds());
  MECHLAB_CHECK(!env.master_addr.empty(), "process group: no rendezvous address (MASTER_ADDR)");
  const auto timeout = to_ms(options.timeout_seconds());
  auto impl = std::make_unique<Impl>();
  impl->timeout = timeout;
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
  return std::shared_ptr<ProcessGroup>(new ProcessGroup(std::move(impl), env, options.timeout_seconds()));
}

void ProcessGroup::set_device(const at::Device& requested) {
  if (requested.is_cpu()) return;
  MECHLAB_CHECK(requested.is_cuda(), "data-parallel training runs on the CPU (Gloo) or on CUDA GPUs (NCCL), not on ",
                requested, "; set device to cpu or cuda");
  MECHLAB_CHECK(nccl_built(), "data-parallel training on ", requested,
                " needs NCCL, and this mechlab was built without it (no CUDA toolkit, a LibTorch without CUDA, or no "
                "nccl.h found: docs/ARCHITECTURE.md, Build); train on the CPU (device cpu, Gloo) or rebuild with CUDA");
  const int64_t gpus = at::hasCUDA() ? static_cast<int64_t>(at::getNumGPUs()) : 0;
  MECHLAB_CHECK(gpus > 0, "data-parallel training on ", requested, ": no CUDA GPU is visible to rank ", rank_, " of ",
                world_size_, "; check CUDA_VISIBLE_DEVICES and the launcher's GPU options, or train on the CPU "
                "(device cpu)");
  const at::Device device = data_parallel_device(requested, env_, gpus);
  MECHLAB_CHECK(device.index() < gpus, "data-parallel rank ", rank_, " of ", world_size_, " was given ", device,
                " but sees ", gpus, " CUDA GPU", gpus == 1 ? "" : "s", " (cuda:0 to cuda:", gpus - 1,
                "); name one of them, or set device to cuda (cuda:LOCAL_RANK)");
  if (impl_->cuda) {
    MECHLAB_CHECK(*impl_->cuda == device, "data-parallel training uses one GPU per process: rank ", rank_,
                  " already runs NCCL on ", *impl_->cuda, " and cannot also use ", device);
    return;
  }
#ifdef MECHLAB_HAVE_NCCL
  c10::cuda::set_device(device.index());
  // Two ranks on one GPU: NCCL refuses them at its first collective with a
  // message that names neither host nor setting. Each rank counts itself
  // under its (host, PCI bus id) key, the key NCCL compares too; after a
  // barrier a count above 1 is a shared GPU, seen by every rank sharing it.
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0) std::snprintf(host, sizeof host, "unknown-host");
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(device.index());
  char bus[32];
  std::snprintf(bus, sizeof bus, "%04x:%02x:%02x.0", static_cast<unsigned>(prop->pciDomainID),
                static_cast<unsigned>(prop->pciBusID), static_cast<unsigned>(prop->pciDeviceID));
  const std::string key = str_cat("mechlab/gpu/", host, "/", bus);
  int64_t sharing = 0;
  try {
    impl_->store->add(key, 1);
    impl_->gloo->barrier()->wait();
    sharing = impl_->store->add(key, 0);
  } catch (const std::exception& e) {
    throw CommError(short_reason(e));
  }
  MECHLAB_CHECK(sharing == 1, "data-parallel training: ", sharing, " ranks on host ", host, " use one GPU (", device,
                ", PCI ", bus, "), rank ", rank_, " of ", world_size_,
                " among them; NCCL needs one GPU per process: set device to cuda (each rank takes cuda:LOCAL_RANK) "
                "or give each process its own GPU (CUDA_VISIBLE_DEVICES, srun --gpus-per-task=1)");
  // Blocking wait: each collective's wait() polls until done or the timeout
  // and throws in this thread (after aborting the communicator), and c10d
  // starts no watchdog thread. Without it the watchdog notices the timeout
  // and, by default (TORCH_NCCL_ASYNC_ERROR_HANDLING=3), takes the process
  // down with SIGABRT and a page of log: no "lost contact" line, no exit 1.
  // The constructor reads the variable; a user's own setting is kept.
  MECHLAB_CHECK(::setenv("TORCH_NCCL_BLOCKING_WAIT", "1", /*overwrite=*/0) == 0,
                "cannot set environment variable TORCH_NCCL_BLOCKING_WAIT (", std::strerror(errno), ")");
  auto opts = c10d::ProcessGroupNCCL::Options::create();
  opts->timeout = impl_->timeout;  // each collective's limit, as Gloo's
  try {
    // Its own key space in the store Gloo also uses.
    impl_->nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(
        c10::make_intrusive<c10d::PrefixStore>("nccl", impl_->store), static_cast<int>(rank_),
        static_cast<int>(world_size_), opts);
  } catch (const std::exception& e) {
    throw Error(str_cat("data-parallel training: rank ", rank_, " of ", world_size_, " could not start NCCL on ",
                        device, " (", short_reason(e), ")"));
  }
  impl_->cuda = device;
#endif
}

namespace {

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
  c10d::Backend& backend = impl_->backend_for(*this, t);
  std::vector<at::Tensor> ts{t};
  run_collective([&] { return backend.allreduce(ts); });
}

void ProcessGroup::allreduce_max(at::Tensor& t) {
  c10d::Backend& backend = impl_->backend_for(*this, t);
  std::vector<at::Tensor> ts{t};
  c10d::AllreduceOptions o;
  o.reduceOp = c10d::ReduceOp::MAX;
  run_collective([&] { return backend.allreduce(ts, o); });
}

void ProcessGroup::broadcast(at::Tensor& t, int64_t root) {
  c10d::Backend& backend = impl_->backend_for(*this, t);
  std::vector<at::Tensor> ts{t};
  c10d::BroadcastOptions o;
  o.rootRank = root;
  run_collective([&] { return backend.broadcast(ts, o); });
}

void ProcessGroup::barrier() {
  run_collective([&] { return impl_->gloo->barrier(); });
}

}  // namespace mechlab::core::dist
