// mechlab bench cache: what writing and reading activation stores costs,
// each against a baseline measured in the same run on the same machine.
//   cache job      hooks::cache_activations vs the same run_with_cache
//                  forwards writing nothing (~1: the disk hides behind compute)
//   writer         ActivationStoreWriter + fsync vs ::write of as many bytes
//                  + fsync (goal: >= 0.7 of the raw write rate)
//   shuffled read  one ShuffledBatches epoch vs reading the same rows in
//                  order, chunk by chunk, with ActivationStore::rows
// Model: GPT-2-small shape (12 layers, d_model 768), random weights; hooks
// blocks.*.hook_resid_post stored as bfloat16.
#include "apps/bench/bench_util.h"
#include "apps/cli/commands.h"
#include "core/store/activation_store.h"
#include "core/data/dataset.h"
#include "core/util/error.h"
#include "core/model/presets.h"
#include "core/util/progress.h"
#include "core/store/shuffled_batches.h"
#include "hooks/activation_capture.h"
#include "core/store/activation_writer.h"
#include "hooks/hooked_transformer.h"
#include "kernels/device_info.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <fcntl.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <system_error>
#include <utility>
#include <vector>

namespace mechlab::cli {
namespace {

constexpr double kMB = 1e6;  // rates in MB/s, as `mechlab cache` prints them
constexpr uint32_t kTmpfsMagic = 0x01021994;

// Removes the bench's files (and its folder, if it made it) however the run
// ends, so an interrupted bench leaves no gigabytes behind.
struct Scratch {
  std::filesystem::path dir;
  bool made_dir = false;
  ~Scratch() {
    std::error_code ec;
    for (const char* f : {"cache.h5", "cache.h5.tmp", "writer.h5", "writer.h5.tmp", "raw.bin"}) {
      std::filesystem::remove(dir / f, ec);
    }
    if (made_dir) std::filesystem::remove(dir, ec);  // only if empty
  }
  std::string file(const char* name) const { return (dir / name).string(); }
};

int open_or_throw(const std::string& path, int flags) {
  const int fd = ::open(path.c_str(), flags, 0644);
  MECHLAB_CHECK(fd >= 0, "cannot open '", path, "': ", std::strerror(errno));
  return fd;
}

void fsync_or_throw(int fd, const std::string& path) {
  MECHLAB_CHECK(::fsync(fd) == 0, "fsync of '", path, "' failed: ", std::strerror(errno));
}

// The baseline every store write is judged against: the same bytes written
// sequentially in 4 MiB blocks, then fsync, so both reach the disk.
void raw_write(const std::string& path, int64_t bytes, const std::vector<char>& block) {
  const int fd = open_or_throw(path, O_WRONLY | O_CREAT | O_TRUNC);
  for (int64_t done = 0; done < bytes;) {
    const size_t n = static_cast<size_t>(std::min<int64_t>(bytes - done, block.size()));
    const ssize_t w = ::write(fd, block.data(), n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      const int err = errno;
      ::close(fd);
      throw Error(str_cat("writing '", path, "' failed: ", std::strerror(err)));
    }
    done += w;
  }
  fsync_or_throw(fd, path);
  ::close(fd);
}

struct Line {
  std::string name;
  bench::Stats seconds;  // median, quartiles and runs
  std::string work;   // e.g. "2.05k tokens"
  std::string rate;   // e.g. "250 tokens/s"
  double mb_per_s;    // < 0: not applicable
  std::string note;
};

}  // namespace

void add_bench_cache(CLI::App& bench) {
  auto* cmd = bench.add_subcommand(
      "cache",
      "Cost of activation stores on a GPT-2-small-shaped model (12 x hook_resid_post, bf16):\n"
      "cache_activations vs forwards alone, ActivationStoreWriter vs raw sequential writes, "
      "ShuffledBatches vs sequential reads. Prints one table ending in the three ratios.");
  struct Args {
    std::string device = "cpu", dir;
    int64_t examples = 64, seq_len = 128, batch_size = 8, write_mb = 256;
    int repeats = 3;
    uint64_t seed = 0;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--device", a->device, "Where the model runs: cpu, cuda, cuda:N or auto")
      ->capture_default_str();
  cmd->add_option("--examples", a->examples,
                  "Random-token examples the cache job and the forward-only baseline run over "
                  "(the default, 8 batches, keeps the whole bench near a minute on 2 CPU "
                  "cores; raise it on a GPU)")
      ->capture_default_str()
      ->check(positive());
  cmd->add_option("--seq-len", a->seq_len, "Tokens per example (at most 1024, GPT-2's n_ctx)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  cmd->add_option("--batch-size", a->batch_size, "Examples per forward")
      ->capture_default_str()
      ->check(positive());
  cmd->add_option("--dir", a->dir,
                  "Folder for the temporary stores and files, deleted afterwards (default: "
                  "<temp dir>/mechlab-bench-cache). Put it on the disk you mean to cache to; "
                  "on tmpfs fsync reaches no disk");
  cmd->add_option("--write-mb", a->write_mb,
                  "MB (10^6 bytes) of synthetic rows for the writer-alone test, and so of the "
                  "raw-write baseline and the store the read tests read")
      ->capture_default_str()
      ->check(positive());
  cmd->add_option("--repeats", a->repeats,
                  "Timed runs of each case; the table gives their median, interquartile range and count")
      ->capture_default_str()
      ->check(positive());
  cmd->add_option("--seed", a->seed, "Seed of the random model, tokens and synthetic rows")
      ->capture_default_str()
      ->check(non_negative());
  cmd->callback([a] {
    // Every tensor here, the writer's staging and the reader's buffer
    // included, is made and used in one inference-mode scope.
    at::InferenceMode inference;
    const at::Device device = parse_device(a->device);
    const at::Device cpu(at::kCPU);

    Scratch scratch;
    scratch.dir = a->dir.empty() ? std::filesystem::temp_directory_path() / "mechlab-bench-cache"
                                 : std::filesystem::path(a->dir);
    scratch.made_dir = std::filesystem::create_directories(scratch.dir);
    bool tmpfs = false;
    if (struct statfs fs {}; ::statfs(scratch.dir.c_str(), &fs) == 0) {
      tmpfs = static_cast<uint32_t>(fs.f_type) == kTmpfsMagic;
    }

    core::Transformer base(core::preset("gpt2-small"), a->seed);
    base.to(device);
    hooks::HookedTransformer model(std::move(base));
    const core::ModelConfig& cfg = model.cfg();
    const std::vector<std::string> hook_names =
        hooks::resolve_store_hooks(cfg, {"blocks.*.hook_resid_post"});
    const int64_t n_hooks = static_cast<int64_t>(hook_names.size());
    const int64_t d = cfg.d_model;
    const int64_t act_bytes_per_row = n_hooks * d * 2;  // bf16
    const int64_t chunk_rows = 1024;

    std::printf("mechlab bench cache: %s, %d CPU threads; %s (%d layers, d_model %d, random "
                "weights, f32); %lld x blocks.*.hook_resid_post stored as bf16 (%s per token)\n"
                "files in %s%s\n%s\n",
                c10::str(device).c_str(), at::get_num_threads(), cfg.name.c_str(), cfg.n_layers,
                cfg.d_model, static_cast<long long>(n_hooks),
                human_bytes(act_bytes_per_row).c_str(), scratch.dir.c_str(),
                tmpfs ? " (tmpfs: fsync reaches no disk, write rates are memory rates)" : "",
                kernels::describe_gpus().c_str());

    std::vector<Line> lines;
    // Every case runs --repeats times; `after` (untimed) cleans up between
    // runs; `all`, when given, also collects each run's seconds.
    auto seconds = [&](const std::function<void()>& fn, const at::Device& where,
                       const std::function<void()>& after = [] {}, std::vector<double>* all = nullptr) {
      std::vector<double> s;
      for (int r = 0; r < a->repeats; ++r) {
        s.push_back(bench::time_ms(fn, /*warmup=*/0, /*repeats=*/1, where).median / 1e3);
        after();
      }
      if (all) all->insert(all->end(), s.begin(), s.end());
      return bench::summarize(s);
    };

    // --- 1. End to end: cache_activations vs the same forwards, nothing written.
    core::Dataset ds;
    ds.d_vocab = cfg.d_vocab;
    auto gen = at::make_generator<at::CPUGeneratorImpl>(a->seed + 1);
    ds.tokens = at::randint(cfg.d_vocab, {a->examples, a->seq_len}, gen,
                            at::TensorOptions(at::kLong)).to(at::kInt);
    const double tokens = static_cast<double>(a->examples * a->seq_len);
    const int64_t B = a->batch_size;
    auto forward_batch = [&](int64_t e0) {
      // As cache_activations runs them: all 12 hooks need every block, so no
      // stop_at_layer, and the tokens go to the device as int64.
      const int64_t e1 = std::min(a->examples, e0 + B);
      auto [logits, cache] = model.run_with_cache(ds.tokens.slice(0, e0, e1).to(device, at::kLong),
                                                  hooks::NamesFilter(hook_names));
      (void)logits;
      (void)cache;
    };
    // Untimed first batch: one-time allocator and kernel set-up would
    // otherwise land on whichever case runs first.
    forward_batch(0);
    const bench::Stats fwd = seconds([&] {
      for (int64_t e0 = 0; e0 < a->examples; e0 += B) forward_batch(e0);
    }, device);
    const double fwd_s = fwd.median;
    lines.push_back({"forward only (run_with_cache)", fwd, core::human_count(tokens) + " tokens",
                     core::human_count(tokens / fwd_s) + " tokens/s", -1,
                     "same forwards and hooks, nothing stored"});

    hooks::CacheResult job;
    const bench::Stats job_stats = seconds([&] {
      hooks::CacheOptions opt;
      opt.hooks({"blocks.*.hook_resid_post"})
          .dtype(at::kBFloat16)
          .batch_size(B)
          .chunk_rows(chunk_rows)
          .overwrite(true)
          .model_id("bench")
          .progress(false);
      job = hooks::cache_activations(model, ds, scratch.file("cache.h5"), opt);
    }, device, [&] { std::filesystem::remove(scratch.file("cache.h5")); });
    const double job_s = job_stats.median;
    lines.push_back({"cache_activations", job_stats, core::human_count(tokens) + " tokens",
                     core::human_count(tokens / job_s) + " tokens/s",
                     job.bytes_written / kMB / job_s,
                     "incl. its 1-example shape probe; no fsync (as the job does)"});

    // --- 2. Writer alone vs raw sequential writes of the same bytes.
    // Rows are sized so activations plus row metadata (int32 token id and
    // 2 x int32 source) come to --write-mb; bytes_written() counts the same.
    const int64_t bytes_per_row = act_bytes_per_row + 12;
    const int64_t rows =
        std::max<int64_t>(1, a->write_mb * static_cast<int64_t>(kMB) / bytes_per_row);
    const int64_t bytes = rows * bytes_per_row;
    // One chunk of random rows, appended over and over: generating 256 MB of
    // randoms would cost more than writing them and land in the timing.
    std::map<std::string, at::Tensor> block;
    for (const auto& h : hook_names) {
      block[h] = at::randn({chunk_rows, d}, gen, at::TensorOptions(at::kFloat)).to(at::kBFloat16);
    }
    const at::Tensor block_ids = at::randint(cfg.d_vocab, {chunk_rows}, gen,
                                             at::TensorOptions(at::kLong)).to(at::kInt);
    const at::Tensor block_src = at::zeros({chunk_rows, 2}, at::kInt);
    std::vector<char> raw_block(4 << 20);
    for (size_t i = 0; i < raw_block.size(); ++i) raw_block[i] = static_cast<char>(i * 131 + 7);

    std::vector<double> raw_all;  // both brackets' runs, seconds
    auto raw_run = [&] {
      return seconds([&] { raw_write(scratch.file("raw.bin"), bytes, raw_block); }, cpu,
                     [&] { std::filesystem::remove(scratch.file("raw.bin")); }, &raw_all);
    };
    const std::string mb_text = core::human_count(bytes / kMB) + " MB";
    // Raw, writer, raw again: the raw runs bracket the writer in time, so
    // page-cache and disk state changes during the run cancel out; the
    // baseline is the median of both brackets' runs pooled.
    const bench::Stats raw1 = raw_run();

    core::StoreHeader header;
    header.model = "bench";
    header.config_hash = core::fnv1a_hex(cfg.to_json_string());
    header.hooks = hook_names;
    for (const auto& h : hook_names) header.hook_shapes[h] = {d};
    header.dtype = at::kBFloat16;
    header.rows_total = rows;
    header.chunk_rows = chunk_rows;
    const std::string store_path = scratch.file("writer.h5");
    int64_t writer_bytes = 0;
    const bench::Stats writer = seconds([&] {
      auto w = core::ActivationStoreWriter::open(store_path, core::StoreSpec{header, 0},
                                                  /*resume=*/false, /*overwrite=*/true);
      for (int64_t r = 0; r < rows; r += chunk_rows) {
        const int64_t n = std::min(chunk_rows, rows - r);
        std::map<std::string, at::Tensor> acts;
        for (const auto& [h, t] : block) acts[h] = t.narrow(0, 0, n);
        w.append(r, acts, block_ids.narrow(0, 0, n), block_src.narrow(0, 0, n));
      }
      w.finish();  // closes the file
      writer_bytes = w.bytes_written();
      const int fd = open_or_throw(store_path, O_RDONLY);
      fsync_or_throw(fd, store_path);
      ::close(fd);
    }, cpu);
    MECHLAB_ASSERT(writer_bytes == bytes);
    const double writer_s = writer.median;

    const bench::Stats raw2 = raw_run();
    const bench::Stats raw = bench::summarize(raw_all);
    const double raw_s = raw.median;
    const std::vector<std::pair<std::string, bench::Stats>> raw_runs = {
        {"raw write, before", raw1}, {"raw write, after", raw2}, {"raw write, pooled", raw}};
    for (const auto& [name, s] : raw_runs) {
      lines.push_back({name, s, mb_text, "", bytes / kMB / s.median, "::write 4 MiB blocks + fsync"});
    }
    lines.push_back({"ActivationStoreWriter", writer, mb_text,
                     core::human_count(rows / writer_s) + " rows/s", bytes / kMB / writer_s,
                     "create + append 1024-row blocks + finish + fsync"});

    // --- 3. Shuffled vs sequential reads of the writer's store. The store
    // was just written, so both read from the page cache: this compares the
    // readers' own costs, not the disk.
    auto store = core::ActivationStore::open(store_path);
    const double read_mb = static_cast<double>(rows * act_bytes_per_row) / kMB;
    const bench::Stats seq = seconds([&] {
      for (int64_t r = 0; r < rows; r += chunk_rows) {
        for (const auto& h : hook_names) store.rows(h, r, std::min(chunk_rows, rows - r));
      }
    }, cpu);
    const double seq_s = seq.median;
    lines.push_back({"sequential read (rows)", seq, core::human_count(rows) + " rows",
                     core::human_count(rows / seq_s) + " rows/s", read_mb / seq_s,
                     "12 hooks, 1024-row blocks, in order"});
    int64_t served = 0;
    const bench::Stats shuf = seconds([&] {
      served = 0;
      core::ShuffledBatches batches(store, /*hooks: all*/ {},
                                    core::ShuffleOptions().batch_size(4096).seed(a->seed));
      while (auto b = batches.next()) served += b->token_ids.size(0);
    }, cpu);
    MECHLAB_ASSERT(served == rows);
    const double shuf_s = shuf.median;
    lines.push_back({"shuffled read (ShuffledBatches)", shuf, core::human_count(rows) + " rows",
                     core::human_count(rows / shuf_s) + " rows/s", read_mb / shuf_s,
                     "12 hooks, batch 4096, default buffer, check_finite on"});

    // Rates are of the medians.
    std::printf("\n| %-31s | %8s | %17s | %4s | %13s | %16s | %8s | %s\n", "case", "median s",
                "IQR s (q1 - q3)", "runs", "work", "rate", "MB/s", "note");
    for (const auto& l : lines) {
      char mbps[32] = "-", iqr[48];
      if (l.mb_per_s >= 0) std::snprintf(mbps, sizeof mbps, "%.1f", l.mb_per_s);
      std::snprintf(iqr, sizeof iqr, "%.3f - %.3f", l.seconds.q1, l.seconds.q3);
      std::printf("| %-31s | %8.3f | %17s | %4lld | %13s | %16s | %8s | %s\n", l.name.c_str(),
                  l.seconds.median, iqr, static_cast<long long>(l.seconds.n), l.work.c_str(),
                  l.rate.c_str(), mbps, l.note.c_str());
    }
    // Rates over the same work, so each ratio is baseline time / case time.
    std::printf("\nratios of medians:\n");
    std::printf("  cache job / forward only (tokens/s)        %.3f  (~1: writing hidden behind "
                "compute)\n", fwd_s / job_s);
    std::printf("  writer / raw write, pooled (MB/s)          %.3f  (goal >= 0.7)\n",
                raw_s / writer_s);
    std::printf("  shuffled / sequential read (rows/s)        %.3f\n", seq_s / shuf_s);
  });
}

}  // namespace mechlab::cli
